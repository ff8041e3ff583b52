"""The curves, sweep and lukv-table subcommands: outputs equal the library's, bad input exits 2."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import budgetopt
from budgetopt import cli
from budgetopt._progress import Progress
from budgetopt.curves import load_curves
from budgetopt.lukv import load_lukv_table, lukv_table
from budgetopt.profile import curves_from_scores

SHAPE = (3, 2, 60)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    oracles = [rng.gamma(0.5, size=SHAPE).astype(np.float32) for _ in range(3)]
    scores = rng.normal(size=SHAPE).astype(np.float32)
    paths = []
    for i, o in enumerate(oracles):
        paths.append(str(tmp_path / f"q_{i}.npy"))
        np.save(paths[-1], o)
    spath = str(tmp_path / "snapkv.npy")
    np.save(spath, scores)
    return {"dir": tmp_path, "oracles": oracles, "scores": scores, "oracle_paths": paths, "scores_path": spath}


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- curves -------------------------------------------------------------------------------
def test_curves_writes_the_mean_curve(files, capsys):
    out_path = files["dir"] / "curves.npz"
    code, _, err = run(["curves", "--oracle", *files["oracle_paths"], "--scores", files["scores_path"],
                        "--sink", 2, "--window", 3, "-o", out_path], capsys)
    assert code == 0, err
    curves = load_curves(out_path)
    expected = np.mean([curves_from_scores(o, files["scores"], sink=2, window=3).utility for o in files["oracles"]], axis=0)
    np.testing.assert_allclose(curves.utility, expected, rtol=1e-12)
    np.testing.assert_array_equal(curves.grid, np.arange(5, 61))
    assert curves.meta["sink"] == 2 and curves.meta["window"] == 3 and curves.meta["pairs"] == 3
    assert curves.meta["aggregate"] == "mean_curve"


def test_curves_median_and_per_pair_scores(files, capsys):
    out_path = files["dir"] / "curves.npz"
    rng = np.random.default_rng(1)
    spaths = []
    scores = []
    for i in range(3):
        scores.append(rng.normal(size=SHAPE))
        spaths.append(str(files["dir"] / f"s_{i}.npy"))
        np.save(spaths[-1], scores[-1])
    code, _, err = run(["curves", "--oracle", *files["oracle_paths"], "--scores", *spaths,
                        "--sink", 0, "--window", 0, "--aggregate", "median_curve", "-o", out_path], capsys)
    assert code == 0, err
    expected = np.median([curves_from_scores(o, s).utility for o, s in zip(files["oracles"], scores)], axis=0)
    np.testing.assert_allclose(load_curves(out_path).utility, expected, rtol=1e-12)


# -- sweep --------------------------------------------------------------------------------
def test_sweep_prints_rows_equal_to_the_library(files, capsys):
    curves_path = files["dir"] / "c.npz"
    curves = curves_from_scores(files["oracles"][0], files["scores"], sink=1, window=1)
    budgetopt.save_curves(curves_path, curves)
    code, out, err = run(["sweep", curves_path, "--budgets", "0.1:0.3:0.1", "--format", "json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    budgets = [r["budget"] for r in payload["rows"]]
    assert budgets == [0.1, 0.2, 0.3]
    totals = [budgetopt.tokens_from_fraction(b, curves.capacity) for b in budgets]
    direct = budgetopt.sweep(curves, totals)
    for i, row in enumerate(payload["rows"]):
        assert row["total_tokens"] == totals[i]
        assert row["used"] == direct.used[i]
        assert row["utility"] == pytest.approx(direct.utility[i], rel=1e-12)
        assert row["upper_bound"] == pytest.approx(direct.upper_bound[i], rel=1e-12)
        assert row["gap"] == pytest.approx(direct.gap[i], abs=1e-12)


def test_sweep_table_comma_list_and_floor(files, capsys):
    curves_path = files["dir"] / "c.npz"
    budgetopt.save_curves(curves_path, curves_from_scores(files["oracles"][0], files["scores"], sink=1, window=1))
    code, out, err = run(["sweep", curves_path, "--budgets", "0.5,0.25", "--min-budget", 4], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("capacity=360 tokens")
    assert [line.split()[:2] for line in lines[2:]] == [["0.5", "180"], ["0.25", "90"]]


def test_sweep_plot(files, capsys):
    pytest.importorskip("matplotlib")
    curves_path = files["dir"] / "c.npz"
    budgetopt.save_curves(curves_path, curves_from_scores(files["oracles"][0], files["scores"]))
    plot = files["dir"] / "frontier.png"
    code, _, err = run(["sweep", curves_path, "--budgets", "0.05:0.95:0.05", "--plot", plot], capsys)
    assert code == 0, err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "budgets", ["0:0.5:0.1", "0.1:1.5:0.1", "0.5:0.1:0.1", "0.1:0.5:0", "a,b", "0.1:0.2", "1.2", "nan"]
)
def test_sweep_bad_budgets_exit_2(files, capsys, budgets):
    curves_path = files["dir"] / "c.npz"
    budgetopt.save_curves(curves_path, curves_from_scores(files["oracles"][0], files["scores"]))
    with pytest.raises(SystemExit) as info:
        cli.main(["sweep", str(curves_path), "--budgets", budgets])
    assert info.value.code == 2
    assert "--budgets" in capsys.readouterr().err


def test_sweep_bad_plot_suffix_exit_2_before_work(files, capsys):
    curves_path = files["dir"] / "c.npz"
    budgetopt.save_curves(curves_path, curves_from_scores(files["oracles"][0], files["scores"]))
    with pytest.raises(SystemExit) as info:
        cli.main(["sweep", str(curves_path), "--plot", str(files["dir"] / "f.txt")])
    assert info.value.code == 2
    assert "--plot must end in .png or .pdf or .svg" in capsys.readouterr().err


def test_sweep_infeasible_floor_exit_2(files, capsys):
    curves_path = files["dir"] / "c.npz"
    budgetopt.save_curves(curves_path, curves_from_scores(files["oracles"][0], files["scores"]))
    code, _, err = run(["sweep", curves_path, "--budgets", "0.1", "--min-budget", 30], capsys)
    assert code == 2
    assert err.startswith("budgetopt sweep: error:") and "below" in err


# -- lukv-table ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra,kwargs", [
    ([], {}),
    (["--layer-local", "--aggregate", "mean_curve", "--min-keep-fraction", "0.05"],
     {"layerwise": False, "aggregate": "mean_curve", "min_keep_fraction": 0.05}),
])
def test_lukv_table_equals_the_library(files, capsys, extra, kwargs):
    out_path = files["dir"] / "table.npy"
    code, _, err = run(["lukv-table", "--oracle", *files["oracle_paths"], "--scores", files["scores_path"],
                        "--sink", 2, "--window", 2, "--workers", 2, "-o", out_path, *extra], capsys)
    assert code == 0, err
    expected = lukv_table(files["oracles"], files["scores"], sink=2, window=2, **kwargs)
    np.testing.assert_array_equal(load_lukv_table(out_path), expected)
    assert "\r" not in err  # stderr is not a terminal under pytest: no progress bar


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda f: ["--oracle", f["oracle_paths"][0], str(f["dir"] / "missing.npy")], r"missing\.npy: no such file \(--oracle\)"),
        (lambda f: ["--oracle", *f["oracle_paths"], "--scores", f["scores_path"], f["scores_path"]],
         r"--scores takes one file shared by all --oracle files or one per oracle file \(3\); got 2"),
        (lambda f: ["--oracle", f["nan_path"]], r"--oracle .*nan\.npy must be finite; found NaN"),
        (lambda f: ["--oracle", f["oracle_paths"][0], f["short_path"]], r"--scores .*snapkv\.npy must have the same shape as --oracle .*short\.npy"),
        (lambda f: ["--oracle", f["npz_path"]], r"npz archive"),
        (lambda f: ["--oracle", f["obj_path"]], r"obj\.npy: holds an object \(pickled\) array; budgetopt never unpickles"),
        (lambda f: ["--sink", "40", "--window", "20"], r"more tokens than sink \+ window = 60"),
    ],
)
@pytest.mark.parametrize("command", ["lukv-table", "curves"])
def test_bad_input_exit_2_clear_message_no_file(files, capsys, change, match, command):
    d = files["dir"]
    files["nan_path"] = str(d / "nan.npy")
    np.save(files["nan_path"], np.full(SHAPE, np.nan))
    files["short_path"] = str(d / "short.npy")
    np.save(files["short_path"], np.ones((3, 2, 50)))
    files["npz_path"] = str(d / "x.npz")
    np.savez(files["npz_path"], a=np.ones(SHAPE))
    files["obj_path"] = str(d / "obj.npy")
    np.save(files["obj_path"], np.array([None, 1], dtype=object), allow_pickle=True)
    args = {"--oracle": files["oracle_paths"], "--scores": [files["scores_path"]], "--sink": ["1"], "--window": ["1"]}
    override = change(files)
    key = None
    for token in override:
        if token.startswith("--"):
            key = token
            args[key] = []
        else:
            args[key].append(token)
    suffix = ".npy" if command == "lukv-table" else ".npz"
    out_path = d / f"out{suffix}"
    argv = [command] + [x for k, v in args.items() for x in [k, *v]] + ["-o", str(out_path)]
    before = set(os.listdir(d))
    code = exit_code(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"budgetopt {command}: error: ")
    assert "Traceback" not in err
    assert re.search(match, err), err
    assert set(os.listdir(d)) == before  # no output, no temporary file


def exit_code(argv):
    """cli.main's exit code, whether it returns it or exits (usage errors exit via argparse)."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("workers", ["0", "-2", "two"])
def test_bad_workers_exit_2(files, capsys, workers):
    code = exit_code(["lukv-table", "--oracle", *files["oracle_paths"], "--scores", files["scores_path"],
                      "--sink", "1", "--window", "1", "--workers", workers, "-o", str(files["dir"] / "t.npy")])
    assert code == 2
    assert "--workers: must be a positive integer or -1" in capsys.readouterr().err
    assert not (files["dir"] / "t.npy").exists()


def test_output_suffix_checked_before_work(files, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["lukv-table", "--oracle", *files["oracle_paths"], "--scores", files["scores_path"],
                  "--sink", "1", "--window", "1", "-o", str(files["dir"] / "table.npz")])
    assert info.value.code == 2
    assert "-o/--output must end in .npy" in capsys.readouterr().err


# -- progress -----------------------------------------------------------------------------
class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_counter_without_tqdm(monkeypatch):
    fake = _TTY()
    monkeypatch.setattr(sys, "stderr", fake)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    progress = Progress(3, True, "lukv-table")
    for i in range(1, 4):
        progress(i, 3)
    progress.close()
    assert fake.getvalue() == "\rlukv-table: 1/3 pairs\rlukv-table: 2/3 pairs\rlukv-table: 3/3 pairs\n"


def test_progress_uses_tqdm_on_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    fake = _TTY()
    monkeypatch.setattr(sys, "stderr", fake)
    progress = Progress(2, True, "lukv-table")
    progress(1, 2)
    progress(2, 2)
    assert progress.bar.n == 2  # tqdm throttles drawing, so check its count
    progress.close()
    assert "lukv-table" in fake.getvalue()


@pytest.mark.parametrize("enabled,tty", [(False, True), (True, False)])
def test_progress_silent_when_disabled_or_not_a_terminal(monkeypatch, enabled, tty):
    fake = _TTY() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", fake)
    progress = Progress(2, enabled, "x")
    progress(1, 2)
    progress.close()
    assert fake.getvalue() == ""


def test_subprocess_end_to_end(files):
    """The installed entry point path: python -m budgetopt, exit codes as documented."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out_path = files["dir"] / "t.npy"
    base = [sys.executable, "-m", "budgetopt", "lukv-table", "--oracle", *files["oracle_paths"],
            "--scores", files["scores_path"], "--sink", "1", "--window", "1"]
    ok = subprocess.run(base + ["-o", str(out_path), "--no-progress"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert load_lukv_table(out_path).shape == (99, 3, 2)
    bad = subprocess.run(base[:-4] + ["--sink", "-1", "--window", "1", "-o", str(out_path)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
