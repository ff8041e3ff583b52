"""Installing and reinstalling: where compiled kernels are cached, and install orders that
must not break ``import budgetopt``.

numba's own ``cache=True`` wrote into the installed package's ``__pycache__``; after ``pip
install .``, a first solve and ``pip install -e .``, that folder survived the uninstall and
was imported as an empty namespace package hiding the editable install. budgetopt now caches
its kernels in a user cache directory (``budgetopt._kernels_jit``).
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(**extra):
    """This environment for a child process; its kernels compiled (not run as plain Python,
    as small calls are by default), so that it writes the cache these tests look at."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BUDGETOPT_CACHE_DIR")}
    env["BUDGETOPT_KERNELS"] = "compiled"
    env.update(extra)
    return env


def _run(args, *, env, cwd="/", timeout=600):
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def test_kernels_are_cached_in_the_cache_directory_not_the_package(tmp_path):
    """A solve in a fresh process writes numba's index and data files under
    BUDGETOPT_CACHE_DIR, in one folder for this copy of the package, and none beside the
    package's sources; a second process loads them instead of compiling."""
    cache = tmp_path / "cache"
    before = {p.name for p in (REPO / "budgetopt" / "__pycache__").glob("*.nb*")}
    script = textwrap.dedent("""
        import numba
        from numba.core import event
        import budgetopt
        from budgetopt import _kernels_jit
        compiled = []
        class Count(event.Listener):
            def on_start(self, ev): compiled.append(1)
            def on_end(self, ev): pass
        event.register("numba:compile", Count())
        budgetopt.allocate([[0.0, 1.0, 1.5], [0.0, 0.2, 2.0]], 2)
        print(_kernels_jit.cache_dir(), len(compiled))
    """)
    env = _env(PYTHONPATH=str(REPO), BUDGETOPT_CACHE_DIR=str(cache))
    where, first = _run([sys.executable, "-c", script], env=env).split()
    assert Path(where).parent == cache and Path(where).name.startswith("budgetopt_")
    assert any(p.suffix == ".nbi" for p in Path(where).iterdir()), "no numba index file in the cache directory"
    assert int(first) > 0
    _, second = _run([sys.executable, "-c", script], env=env).split()
    assert int(second) == 0, "the second process compiled again instead of loading the cache"
    after = {p.name for p in (REPO / "budgetopt" / "__pycache__").glob("*.nb*")}
    assert after <= before, f"numba files written beside the sources: {sorted(after - before)}"


def test_editing_any_kernel_module_invalidates_every_cached_kernel(tmp_path, monkeypatch):
    """The source stamp of every kernel is one hash over all kernel modules: a kernel that
    inlines one from another module cannot be loaded stale after that module changes."""
    from budgetopt import _kernels_jit

    first = _kernels_jit._source_stamp()
    package = tmp_path / "budgetopt"
    package.mkdir()
    for path in (REPO / "budgetopt").glob("_kernels*.py"):
        shutil.copy(path, package / path.name)
    monkeypatch.setattr(_kernels_jit, "_PACKAGE", package)
    monkeypatch.setattr(_kernels_jit, "_stamp", None)
    assert _kernels_jit._source_stamp() == first
    with open(package / "_kernels_bracket.py", "a") as f:
        f.write("\n# an edit\n")
    monkeypatch.setattr(_kernels_jit, "_stamp", None)
    assert _kernels_jit._source_stamp() != first


def _venv_python(tmp_path):
    """A fresh venv that sees this interpreter's packages (numpy, numba, setuptools) but
    has budgetopt installed only by the test; without pip of its own, so this
    interpreter's pip installs into it (``pip --python``) with this setuptools."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=300)
    return str(venv / "bin" / "python")


def _source_copy(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "budgetopt", src / "budgetopt", ignore=shutil.ignore_patterns("__pycache__"))
    return src


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout")
def test_no_install_order_breaks_import(tmp_path):
    """The README's order and its neighbours, in a fresh venv: ``pip install .``, a solve,
    ``pip install -e .``, uninstall, ``pip install .`` again; after each step ``import
    budgetopt`` works from ``/`` and reaches the real package."""
    python = _venv_python(tmp_path)
    src = _source_copy(tmp_path)
    env = _env(BUDGETOPT_CACHE_DIR=str(tmp_path / "cache"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-build-isolation"]
    check = [python, "-c", "import budgetopt, sys; a = budgetopt.allocate([[0.0, 1.0], [0.0, 2.0]], 1); "
             "print(budgetopt.__file__, a.budgets.tolist())"]

    def imports_from(where):
        out = _run(check, env=env).split()
        assert out[0].startswith(str(where)), f"budgetopt imported from {out[0]}, not {where}"
        assert out[1:] == ["[0,", "1]"]

    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).strip())
    _run(pip + [str(src)], env=env, cwd=tmp_path)
    imports_from(site / "budgetopt")
    _run([python, "-m", "budgetopt", "solve", "--example", "--budget", "0.2"], env=env)
    assert not list((site / "budgetopt").rglob("*.nb[ic]")), "compiled kernels were cached inside site-packages"
    _run(pip + ["-e", str(src)], env=env, cwd=tmp_path)
    assert not (site / "budgetopt").exists(), "the regular install left a budgetopt folder behind"
    imports_from(src / "budgetopt")
    _run([sys.executable, "-m", "pip", "--python", python, "uninstall", "-y", "-q", "budgetopt"], env=env)
    _run(pip + [str(src)], env=env, cwd=tmp_path)
    imports_from(site / "budgetopt")
