"""Start-up of the package and of the ``budgetopt`` console script.

``import budgetopt`` loads no numerical library (public names are imported on first use), and
the console script answers Ctrl-C at any moment of its start-up with exit 130 and one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import budgetopt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("numpy", "scipy", "numba", "torch", "matplotlib")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def console_script():
    """The console-script wrapper for ``budgetopt`` as pip writes it, from pyproject.toml."""
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        match = re.search(r'^budgetopt\s*=\s*"([\w.]+):(\w+)"\s*$', f.read(), re.M)
    module, func = match.groups()
    return (
        "import re\nimport sys\n"
        f"from {module} import {func}\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        f"    sys.exit({func}())\n"
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """PYTHONPATH at this checkout, byte code cached (as after an install) in a temporary
    folder; one full run first, so the interrupted runs below load compiled modules."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    warm = subprocess.run([sys.executable, "-c", console_script(), "solve", "--example", "--budget", "0.5"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert warm.returncode == 0, warm.stderr
    return env


def interrupt_after(env, delay_ms, argv, *, module=False):
    """Start the console script (or ``python -m budgetopt``), wait until the interpreter is
    up (it closes a pipe just before the script's first line), then ``delay_ms`` more, and
    send SIGINT. Returns ``(returncode, stdout, stderr)``."""
    read_end, write_end = os.pipe()
    ready = f"import os; os.close({write_end})\n"
    if module:
        code = ready + "import runpy; runpy.run_module('budgetopt', run_name='__main__', alter_sys=True)\n"
    else:
        code = ready + console_script()
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, pass_fds=(write_end,))
    os.close(write_end)
    assert os.read(read_end, 1) == b""  # end of file: the interpreter has started
    os.close(read_end)
    try:
        proc.wait(timeout=delay_ms / 1000)
    except subprocess.TimeoutExpired:
        pass
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_import_budgetopt_loads_no_numerical_library():
    code = (
        "import sys, budgetopt, budgetopt.cli\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_names_load_on_first_use():
    assert set(budgetopt.__all__) <= set(dir(budgetopt))
    for name in budgetopt.__all__:
        value = getattr(budgetopt, name)
        assert getattr(value, "__name__", name) == name  # the object itself, not a module
    from budgetopt import allocate, Curves  # noqa: F401 - the import statement form
    assert allocate is budgetopt.api.allocate and Curves is budgetopt.curves.Curves
    with pytest.raises(AttributeError, match="module 'budgetopt' has no attribute 'alocate'"):
        budgetopt.alocate  # noqa: B018


@pytest.mark.parametrize("delay_ms", [20, 50, 100, 200, 400, 800])
def test_ctrl_c_during_console_script_start_up_exits_130_with_one_line(env, delay_ms):
    code, out, err = interrupt_after(env, delay_ms, ["solve", "--example", "--budget", "0.5"])
    assert "Traceback" not in err and "Error" not in err, err
    if code == 0:  # it finished before the signal: a complete answer
        assert json.loads(out)["used"] > 0 and err == ""
    else:
        assert (code, out, err) == (130, "", "budgetopt: interrupted\n")


#: A command whose work calls back from C code into Python (as numba's compiler does through
#: ctypes) and receives the signal there, then runs for 20 s unless the signal stops it.
SIGNAL_IN_CALLBACK = """
import argparse, ctypes, signal, sys, time
from budgetopt._cli_common import run_guarded

def command(args):
    ctypes.CFUNCTYPE(None)(lambda: signal.raise_signal(signal.{sig}))()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pass
    print("finished")
    return 0

def build_parser():
    parser = argparse.ArgumentParser(prog="budgetopt")
    parser.add_subparsers(dest="command").add_parser("work").set_defaults(func=command)
    return parser

sys.exit(run_guarded(build_parser, ["work"], exiting=True))
"""


@pytest.mark.parametrize("sig, expected", [("SIGINT", (130, "budgetopt: interrupted\n")),
                                           ("SIGTERM", (143, "budgetopt: terminated by SIGTERM\n"))])
def test_a_signal_that_lands_in_a_callback_from_c_still_stops_the_command(env, sig, expected):
    # ctypes cannot pass an exception out of a callback: it prints it and goes on. Before the
    # guard delivered such a signal again, this command printed a traceback and finished.
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_CALLBACK.format(sig=sig)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert (proc.returncode, proc.stderr) == expected
    assert proc.stdout == "" and time.monotonic() - start < 15


@pytest.mark.parametrize("delay_s", [1.0, 2.5])
def test_ctrl_c_while_numba_compiles_exits_130_with_one_line(env, tmp_path, delay_s):
    # Compiled kernels and an empty cache: the signal arrives while numba compiles.
    compiling = {**env, "BUDGETOPT_KERNELS": "compiled", "BUDGETOPT_CACHE_DIR": str(tmp_path)}
    code, out, err = interrupt_after(compiling, delay_s * 1000, ["solve", "--example", "--budget", "0.5"])
    if code == 0:
        assert json.loads(out)["used"] > 0 and err == ""
    else:
        assert (code, out, err) == (130, "", "budgetopt: interrupted\n")


@pytest.mark.parametrize("delay_ms", [20, 200])
def test_ctrl_c_during_python_m_budgetopt_start_up_exits_130_with_one_line(env, delay_ms):
    code, out, err = interrupt_after(env, delay_ms, ["solve", "--example", "--budget", "0.5"], module=True)
    assert "Traceback" not in err, err
    if code == 0:
        assert json.loads(out)["used"] > 0 and err == ""
    else:
        assert (code, out, err) == (130, "", "budgetopt: interrupted\n")


def test_python_m_budgetopt_runs_a_command(env):
    out = subprocess.run([sys.executable, "-m", "budgetopt", "solve", "--example", "--tokens", "20000"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert json.loads(out.stdout)["used"] <= 20000
    bad = subprocess.run([sys.executable, "-m", "budgetopt", "solve", "--example", "--tokens", "x"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines()[-1] == "budgetopt solve: error: argument --tokens: must be a whole number >= 0; got 'x'"
