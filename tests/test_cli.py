"""`budgetopt solve` and `budgetopt inspect`: outputs, and exit code 2 for every bad input.

Most cases call ``budgetopt.cli.main(argv)`` in this process and capture file descriptors 1
and 2 (pytest's ``capfd``), so solver output written by C code below Python (HiGHS banners)
is caught too. A few run a real interpreter (``python -m budgetopt``) to check the process
boundary: exit status, no traceback, JSON on stdout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest

import budgetopt
from budgetopt import Curves, allocate, save_curves, tokens_from_fraction
from budgetopt import cli
from helpers import run_cli, run_process

FIELDS = {"budgets", "used", "total_budget", "utility", "upper_bound", "gap", "method", "seconds"}


run = run_cli  # run(capfd, *argv) -> (exit code, stdout, stderr)


@pytest.fixture
def curves_file(tmp_path):
    """A (2 layers x 3 heads, 5 points) curves file with a per-token grid, and its Curves."""
    rng = np.random.default_rng(3)
    curves = Curves(np.cumsum(rng.random((2, 3, 5)), axis=-1).round(4), meta={"model": "toy"})
    path = tmp_path / "curves.npz"
    save_curves(path, curves)
    return path, curves


def _expect_solution(payload, curves, total, method="greedy", **kw):
    assert FIELDS <= set(payload), f"missing fields {FIELDS - set(payload)}"
    a = allocate(curves, total, method=method, **kw)
    assert payload["budgets"] == a.budgets.tolist()  # nested lists in head shape
    assert np.asarray(payload["budgets"]).shape == curves.head_shape
    assert payload["total_budget"] == total and isinstance(payload["total_budget"], int)
    assert payload["used"] == int(np.sum(payload["budgets"])) <= total
    assert payload["utility"] == pytest.approx(a.utility, abs=1e-9)
    assert payload["upper_bound"] == pytest.approx(a.upper_bound, abs=1e-6)
    assert payload["gap"] == pytest.approx(payload["upper_bound"] - payload["utility"], abs=1e-9)
    assert payload["method"] == method
    assert payload["seconds"] >= 0


# -- solve: outputs -----------------------------------------------------------------------
def test_solve_budget_fraction_prints_json(capfd, curves_file):
    path, curves = curves_file
    code, out, err = run(capfd, "solve", path, "--budget", 0.3)
    assert code == 0, err
    _expect_solution(json.loads(out), curves, tokens_from_fraction(0.3, curves.capacity))


@pytest.mark.parametrize("fraction", [1, 1.0, 0.05])
def test_solve_budget_fraction_edges(capfd, curves_file, fraction):
    path, curves = curves_file
    code, out, err = run(capfd, "solve", path, "--budget", fraction)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["total_budget"] == tokens_from_fraction(fraction, curves.capacity)
    if fraction == 1:
        assert payload["used"] == curves.capacity  # monotone per-token curves keep everything


@pytest.mark.parametrize("tokens", [0, 7, 24, 1000])
def test_solve_tokens(capfd, curves_file, tokens):
    path, curves = curves_file
    code, out, err = run(capfd, "solve", path, "--tokens", tokens)
    assert code == 0, err
    _expect_solution(json.loads(out), curves, tokens)


@pytest.mark.parametrize(("avg", "total"), [("2", 12), ("1.5", 9), ("0", 0), ("2.5", 15)])
def test_solve_avg_tokens_is_per_head_mean(capfd, curves_file, avg, total):
    path, curves = curves_file
    code, out, err = run(capfd, "solve", path, "--avg-tokens", avg)
    assert code == 0, err
    _expect_solution(json.loads(out), curves, total)


@pytest.mark.parametrize("method", ["greedy", "dp", "milp", "cvxpy"])
def test_solve_methods_stdout_is_pure_json(capfd, curves_file, method):
    # HiGHS prints banners from C code; they must not reach stdout.
    path, curves = curves_file
    code, out, err = run(capfd, "solve", path, "--tokens", 11, "--method", method)
    assert code == 0, err
    _expect_solution(json.loads(out), curves, 11, method=method)


def test_solve_min_and_max_budget(capfd, curves_file):
    path, curves = curves_file
    code, out, err = run(capfd, "solve", path, "--tokens", 12, "--min-budget", 1, "--max-budget", 3)
    assert code == 0, err
    payload = json.loads(out)
    _expect_solution(payload, curves, 12, min_budget=1, max_budget=3)
    b = np.asarray(payload["budgets"])
    assert b.min() >= 1 and b.max() <= 3


def test_solve_output_json_file(capfd, curves_file, tmp_path):
    path, curves = curves_file
    target = tmp_path / "out.json"
    code, out, err = run(capfd, "solve", path, "--tokens", 10, "-o", target)
    assert code == 0, err
    assert out == ""
    _expect_solution(json.loads(target.read_text()), curves, 10)


def test_solve_output_npz_file(capfd, curves_file, tmp_path):
    path, curves = curves_file
    target = tmp_path / "out.npz"
    code, out, err = run(capfd, "solve", path, "--tokens", 10, "--method", "dp", "-o", target)
    assert code == 0, err
    assert out == ""
    with np.load(target, allow_pickle=False) as z:
        budgets = z["budgets"]
        assert budgets.shape == curves.head_shape and budgets.dtype == np.int64
        assert budgets.tolist() == allocate(curves, 10, method="dp").budgets.tolist()
        assert int(z["used"]) == int(budgets.sum()) and int(z["total_budget"]) == 10
        assert str(z["method"]) == "dp"


def test_solve_output_overwrites_atomically(capfd, curves_file, tmp_path):
    path, _ = curves_file
    target = tmp_path / "out.json"
    target.write_text("old")
    code, _, err = run(capfd, "solve", path, "--tokens", 10, "-o", target)
    assert code == 0, err
    json.loads(target.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.npz", "out.json"]


def test_solve_table_has_a_row_per_layer(capfd, curves_file):
    path, curves = curves_file
    code, out, err = run(capfd, "solve", path, "--tokens", 13, "--format", "table")
    assert code == 0, err
    budgets = allocate(curves, 13).budgets
    lines = [line for line in out.splitlines() if line.strip()]
    rows = [line.split() for line in lines if line.split()[0].isdigit()]
    assert len(rows) == curves.head_shape[0]
    for layer, row in enumerate(rows):
        assert int(row[0]) == layer
        assert [int(v) for v in row[1 : 1 + curves.head_shape[1]]] == budgets[layer].tolist()
    assert "13" in lines[0]  # the title states the total


def test_solve_example(capfd):
    code, out, err = run(capfd, "solve", "--example", "--budget", 0.2)
    assert code == 0, err
    payload = json.loads(out)
    assert np.asarray(payload["budgets"]).shape == (32, 8)
    example = budgetopt.load_curves(cli.example_path())
    assert payload["total_budget"] == tokens_from_fraction(0.2, example.capacity)
    assert payload["used"] <= payload["total_budget"]
    assert payload["gap"] >= 0


def test_example_is_small_and_valid():
    path = cli.example_path()
    assert os.path.getsize(path) < 1_000_000
    c = budgetopt.load_curves(path)
    assert c.head_shape == (32, 8)


# -- inspect -------------------------------------------------------------------------------
def test_inspect_json_on_a_hand_case(capfd, tmp_path):
    # Head 0 concave; head 1 convex: its middle point lies .5 below the chord 0 -> 1.
    path = tmp_path / "c.npz"
    save_curves(path, Curves([[0.0, 0.6, 0.7], [0.0, 0.0, 1.0]], [0, 2, 4]))
    code, out, err = run(capfd, "inspect", path, "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    assert info["heads"] == 2 and info["capacity"] == 8
    assert info["concave"] is False
    assert info["largest_hull_gap"] == pytest.approx(0.5)


def test_inspect_text_mentions_the_essentials(capfd, curves_file):
    path, curves = curves_file
    code, out, err = run(capfd, "inspect", path)
    assert code == 0, err
    text = out.lower()
    for word in ("heads", "grid", "capacity", "concave", "gap"):
        assert word in text
    assert str(curves.capacity) in out


def test_inspect_example(capfd):
    code, out, err = run(capfd, "inspect", "--example", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["heads"] == 256


# -- bad input: exit code 2, a short message naming the problem, no traceback, no file -------
def _bad_files(tmp_path):
    """name -> (path, expected words in the message)."""
    d = tmp_path / "bad"
    d.mkdir()
    files = {}

    def npz(name, **arrays):
        np.savez(d / name, **arrays)
        return d / name

    nan = np.zeros((2, 3))
    nan[1, 2] = np.nan
    inf = np.zeros((2, 3))
    inf[0, 1] = np.inf
    files["missing"] = (d / "absent.npz", ["no such file"])
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not an archive")
    files["corrupt"] = (d / "corrupt.npz", ["corrupt.npz"])
    files["missing-key"] = (npz("nokey.npz", grid=np.arange(3)), ["utility"])
    files["nan"] = (npz("nan.npz", utility=nan), ["NaN", "head 1, point 2"])
    files["inf"] = (npz("inf.npz", utility=inf), ["inf", "head 0, point 1"])
    files["grid-shape"] = (npz("shape.npz", utility=np.zeros((2, 3)), grid=np.arange(4)), ["grid", "shape"])
    files["1d"] = (npz("oned.npz", utility=np.zeros(3)), ["utility"])
    files["empty"] = (npz("empty.npz", utility=np.zeros((0, 3))), ["utility"])
    files["decreasing"] = (npz("dec.npz", utility=np.zeros((2, 3)), grid=[0, 2, 1]), ["non-decreasing"])
    files["negative"] = (npz("neg.npz", utility=np.zeros((2, 3)), grid=[-1, 0, 1]), ["non-negative"])
    files["object"] = (npz("obj.npz", utility=np.array([[0.0, None]], dtype=object)), ["object"])
    files["complex"] = (npz("cplx.npz", utility=np.zeros((2, 3), dtype=complex)), ["utility", "complex"])
    files["bad-meta"] = (npz("meta.npz", utility=np.zeros((2, 3)), meta=np.array("{oops")), ["meta"])
    np.save(d / "single.npy", np.zeros((2, 3)))
    files["npy"] = (d / "single.npy", ["npz"])
    files["directory"] = (d, ["directory"])
    return files


BAD_FILES = ["missing", "corrupt", "missing-key", "nan", "inf", "grid-shape", "1d", "empty", "decreasing",
             "negative", "object", "complex", "bad-meta", "npy", "directory"]


def _assert_clean_failure(code, out, err, words, target=None):
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("budgetopt") and "error" in last, err
    assert len(err) < 2000, "the message should be short"
    for word in words:
        assert word.lower() in err.lower(), f"{word!r} not in {err!r}"
    if target is not None:
        assert not os.path.exists(target), "an output file was written on failure"
        assert not [p for p in os.listdir(os.path.dirname(target)) if p.startswith(".")], "temporary file left"


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_curves_file_solve(capfd, tmp_path, case):
    path, words = _bad_files(tmp_path)[case]
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    target = out_dir / "out.json"
    code, out, err = run(capfd, "solve", path, "--budget", 0.5, "-o", target)
    _assert_clean_failure(code, out, err, words, target)


@pytest.mark.parametrize("case", ["missing", "corrupt", "nan", "decreasing", "object", "npy"])
def test_bad_curves_file_inspect(capfd, tmp_path, case):
    path, words = _bad_files(tmp_path)[case]
    code, out, err = run(capfd, "inspect", path)
    _assert_clean_failure(code, out, err, words)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--budget", "0"], ["--budget"]),
        (["--budget", "1.5"], ["--budget"]),
        (["--budget", "-0.2"], ["--budget"]),
        (["--budget", "abc"], ["--budget"]),
        (["--budget", "nan"], ["--budget"]),
        (["--budget", "inf"], ["--budget"]),
        (["--tokens", "-1"], ["--tokens"]),
        (["--tokens", "2.5"], ["--tokens"]),
        (["--tokens", "x"], ["--tokens"]),
        (["--avg-tokens", "-1"], ["--avg-tokens"]),
        (["--avg-tokens", "nan"], ["--avg-tokens"]),
        ([], ["--budget"]),  # no budget at all
        (["--budget", "0.5", "--tokens", "3"], ["--tokens"]),  # two budgets
        (["--tokens", "3", "--method", "simplex"], ["--method", "greedy"]),
        (["--tokens", "3", "--min-budget", "2"], ["min_budget"]),  # 6 heads x 2 > 3: infeasible
        (["--tokens", "3", "--min-budget", "-1"], ["--min-budget"]),
        (["--tokens", "3", "--min-budget", "3", "--max-budget", "2"], ["min_budget"]),
        (["--tokens", "3", "--format", "xml"], ["--format"]),
        (["--tokens", "3", "--example"], ["--example"]),  # a file and --example
        (["--tokens", "3", "-o", "OUT/out.txt"], [".json"]),  # unknown output suffix
        (["--tokens", "3", "-o", "OUT/missing-dir/out.json"], ["does not exist"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_arguments_solve(capfd, curves_file, tmp_path, args, words):
    path, _ = curves_file
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    args = [a.replace("OUT", str(out_dir)) for a in args]
    target = None
    if "-o" not in args:
        target = out_dir / "out.json"
        args = [*args, "-o", target]
    else:
        target = args[args.index("-o") + 1]
    code, out, err = run(capfd, "solve", path, *args)
    _assert_clean_failure(code, out, err, words, target if os.path.isdir(os.path.dirname(target)) else None)
    assert os.listdir(out_dir) in ([], ["missing-dir"]) and not os.path.exists(out_dir / "missing-dir")


def test_solve_dp_too_large_is_a_clean_error(capfd, tmp_path):
    path = tmp_path / "big.npz"
    save_curves(path, Curves(np.zeros((2, 3)), [0, 1, 10**12]))
    code, out, err = run(capfd, "solve", path, "--budget", 0.5, "--method", "dp")
    _assert_clean_failure(code, out, err, ["dp"])


def test_unknown_subcommand_and_no_subcommand(capfd):
    code, out, err = run(capfd, "frobnicate")
    assert code == 2 and "Traceback" not in err
    code, out, err = run(capfd)
    assert code == 2 and "Traceback" not in err


# -- the real process boundary ---------------------------------------------------------------
def test_process_example_json_and_clean_bad_input(tmp_path):
    ok = run_process("solve", "--example", "--budget", 0.2)
    assert ok.returncode == 0, ok.stderr
    payload = json.loads(ok.stdout)
    assert FIELDS <= set(payload) and np.asarray(payload["budgets"]).shape == (32, 8)

    u = np.zeros((2, 3))
    u[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", utility=u)
    target = tmp_path / "out.json"
    bad = run_process("solve", tmp_path / "nan.npz", "--budget", 0.5, "-o", target)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "NaN" in bad.stderr and bad.stdout == ""
    assert not target.exists()


@pytest.mark.parametrize("method", ["milp", "cvxpy"])
def test_process_exact_methods_keep_stdout_json(tmp_path, method):
    path = tmp_path / "c.npz"
    save_curves(path, Curves(np.cumsum(np.random.default_rng(1).random((4, 6)), axis=-1)))
    res = run_process("solve", path, "--tokens", 9, "--method", method)
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)  # nothing but JSON on stdout
    assert payload["method"] == method and payload["total_budget"] == 9


@pytest.mark.skipif(shutil.which("budgetopt") is None, reason="console script not installed (pip install -e .)")
def test_console_script(tmp_path):
    res = subprocess.run(["budgetopt", "solve", "--example", "--tokens", "20000"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["total_budget"] == 20000
    assert math.isfinite(json.loads(res.stdout)["utility"])
