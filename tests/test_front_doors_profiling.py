"""Hostile and careless input at the profiling front doors: run directories, calibration
files, tables and their descriptions, plots, allocator files (issue 20).

Tests are grouped by the class of failure they guard against, and named after it:
``test_user_data_destroyed_*``, ``test_wrong_answer_*``, ``test_crash_*``, ``test_unbounded_*``,
``test_runs_mixed_*``. The rule is always the same: one clear error (a typed budgetopt error in
Python; exit 2 and one line on stderr from the CLI) or a correct result, and no file lost,
replaced or silently mixed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from budgetopt import CurvesFileError, save_curves
from budgetopt._io import write_atomic, write_atomic_group
from budgetopt.curves import Curves
from budgetopt.runs import FORMAT, open_run_dir, write_pair
from helpers import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS, KV, LENGTH = 3, 2, 30


def small_run(run_dir, *, questions=(2, 1), step_reduce="max", seed=0):
    """A complete run directory of seeded random pairs, written with the run helpers."""
    meta = {
        "format": FORMAT, "model": {"name": "tiny", "model_type": "llama"}, "layers": LAYERS,
        "kv_heads": KV, "scorer": {"name": "knorm"}, "sink": 2, "window": 1, "step_reduce": step_reduce,
        "questions": list(questions), "context_tokens": [LENGTH] * len(questions),
        "n_pairs": sum(questions), "n_contexts": len(questions), "shard": None,
    }
    open_run_dir(run_dir, meta)
    rng = np.random.default_rng(seed)
    for c, n in enumerate(questions):
        scores = rng.normal(size=(LAYERS, KV, LENGTH)).astype(np.float32)
        norms = rng.random((LAYERS, KV, LENGTH)).astype(np.float32)
        for q in range(n):
            oracle = rng.gamma(0.5, size=(LAYERS, KV, LENGTH)).astype(np.float32)
            write_pair(run_dir, c, q, oracle=oracle, scores=scores, value_norms=norms,
                       meta={"context": c, "question": q})
    return run_dir


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def digests(folder):
    """``{relative path: sha256}`` of every file below ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = digest(path)
    return out


def one_error_line(code, out, err, *needles):
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


# == 1. user data destroyed =====================================================================
def test_user_data_destroyed_table_description_never_replaces_the_calibration(tmp_path, capfd):
    data = tmp_path / "data"
    data.mkdir()
    calib = data / "calib.json"
    calib.write_text('{"context": "a b c d e f g", "questions": ["q"]}\n')
    before = digests(tmp_path)
    # the table's description would be data/calib.json: the calibration file itself
    code, out, err = run_cli(capfd, "profile", tmp_path / "no-model", "--calibration", calib, "--scorer", "knorm",
                             "-o", tmp_path / "run", "--table", data / "calib.npy")
    one_error_line(code, out, err, "--table", "calib.json", "same file as the input")
    assert digests(tmp_path) == before


def test_user_data_destroyed_table_inside_the_model_or_run_directory_is_refused(tmp_path, capfd):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    calib = tmp_path / "calib.jsonl"
    calib.write_text('{"context": "a b c d e f g", "questions": ["q"]}\n')
    before = digests(tmp_path)
    for table in (model / "config.npy", tmp_path / "run" / "t.npy"):
        (tmp_path / "run").mkdir(exist_ok=True)
        code, out, err = run_cli(capfd, "profile", model, "--calibration", calib, "--scorer", "knorm",
                                 "-o", tmp_path / "run", "--table", table)
        one_error_line(code, out, err, "--table", "a directory this command reads")
        os.rmdir(tmp_path / "run")
    assert digests(tmp_path) == before


@pytest.mark.parametrize("command, target", [
    ("lukv-table", "meta.npy"),                     # its description would be RUN/meta.json
    ("lukv-table", "pairs/new.npy"),
    ("curves", "pairs/c00000_q000.npz"),            # a pair file
    ("curves", "meta.npz"),
])
def test_user_data_destroyed_outputs_inside_a_run_that_is_read_are_refused(tmp_path, capfd, command, target):
    run = small_run(str(tmp_path / "run"))
    before = digests(run)
    code, out, err = run_cli(capfd, command, run, "-o", os.path.join(run, target))
    one_error_line(code, out, err, "a directory this command reads")
    assert digests(run) == before


def test_user_data_destroyed_plot_never_overwrites_its_input(tmp_path, capfd):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    curves_png = tmp_path / "curves.png"  # curves saved under a figure's name
    utility = np.cumsum(rng.random((2, 2, 5)), axis=-1)
    save_curves(curves_png, Curves(utility, np.arange(1, 6)))
    table_png = tmp_path / "table.png"
    np.save(tmp_path / "t.npy", np.full((99, 2, 2), 0.5))
    os.replace(tmp_path / "t.npy", table_png)
    before = digests(tmp_path)
    code, out, err = run_cli(capfd, "plot", curves_png, "--heads", "0,0", "-o", curves_png)
    one_error_line(code, out, err, "same file as the input")
    code, out, err = run_cli(capfd, "plot", "--table", table_png, "--compression", "0.5", "--heatmap",
                             "-o", table_png)
    one_error_line(code, out, err, "same file as the input")
    assert digests(tmp_path) == before


def test_user_data_destroyed_description_that_is_a_fifo_or_directory_is_refused(tmp_path, capfd):
    run = small_run(str(tmp_path / "run"))
    os.mkfifo(tmp_path / "t.json")
    code, out, err = run_cli(capfd, "lukv-table", run, "-o", tmp_path / "t.npy")
    one_error_line(code, out, err, "t.json", "not a regular file")
    os.unlink(tmp_path / "t.json")
    (tmp_path / "t.json").mkdir()
    code, out, err = run_cli(capfd, "lukv-table", run, "-o", tmp_path / "t.npy")
    one_error_line(code, out, err, "t.json", "is a directory")
    assert not (tmp_path / "t.npy").exists()


def _old_table(tmp_path, capfd):
    """A run, and a table t.npy with its description t.json built from it."""
    run = small_run(str(tmp_path / "run"))
    code, _, err = run_cli(capfd, "lukv-table", run, "-o", tmp_path / "t.npy")
    assert code == 0, err
    return run, {name: digest(tmp_path / name) for name in ("t.npy", "t.json")}


def test_user_data_destroyed_full_disk_keeps_the_previous_table_and_description(tmp_path, capfd):
    """A real write error: the file-size limit (RLIMIT_FSIZE) in a fresh interpreter."""
    run, before = _old_table(tmp_path, capfd)
    small_run(str(tmp_path / "run2"), seed=1)  # another run: its table differs
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG)
        from budgetopt import cli
        import budgetopt.runs, budgetopt.lukv, numpy              # loaded before the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # the table takes ~4.9 kB
        sys.exit(cli.main(["lukv-table", {str(tmp_path / "run2")!r}, "-o", {str(tmp_path / "t.npy")!r}]))
    """)
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    one_error_line(proc.returncode, proc.stdout, proc.stderr, "t.npy: cannot be written", "too large")
    assert {name: digest(tmp_path / name) for name in ("t.npy", "t.json")} == before
    assert sorted(os.listdir(tmp_path)) == ["run", "run2", "t.json", "t.npy"]  # no temporary file left


@pytest.mark.parametrize("fail", ["write-description", "rename-description", "fsync"])
def test_user_data_destroyed_failed_replace_keeps_both_files(tmp_path, capfd, monkeypatch, fail):
    run, before = _old_table(tmp_path, capfd)
    small_run(str(tmp_path / "run2"), seed=1)
    real_replace, real_fsync, calls = os.replace, os.fsync, []

    def replace(src, dst):
        calls.append(dst)
        if fail == "rename-description" and str(dst).endswith("t.json"):
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    if fail == "fsync":
        monkeypatch.setattr(os, "fsync", fsync)
    if fail == "write-description":  # the table's temporary file is complete; the description's fails
        import budgetopt._io as io_module

        real_write = io_module._Stream.write

        def write(self, data):
            if os.path.basename(self.name).startswith(".t.json."):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(self, data)

        monkeypatch.setattr(io_module._Stream, "write", write)
    code, out, err = run_cli(capfd, "lukv-table", tmp_path / "run2", "-o", tmp_path / "t.npy")
    monkeypatch.undo()
    one_error_line(code, out, err, "cannot be written")
    assert {name: digest(tmp_path / name) for name in ("t.npy", "t.json")} == before
    assert sorted(os.listdir(tmp_path)) == ["run", "run2", "t.json", "t.npy"]
    if fail == "rename-description":  # the table was renamed first, then put back
        assert [os.path.basename(c) for c in calls[:2]] == ["t.npy", "t.json"]


def test_user_data_destroyed_numpy_writes_through_python_so_errors_surface(tmp_path):
    """np.save on a real file writes through its descriptor and drops a late flush error; the
    stream write_atomic hands out has no descriptor, so each write's error is raised."""
    target = tmp_path / "t.npy"
    target.write_bytes(b"old")
    seen = []

    def save(f):
        seen.append(hasattr(f, "fileno"))
        np.save(f, np.zeros(10))

    write_atomic(target, save)
    assert seen == [False] and np.load(target).tolist() == [0.0] * 10

    def failing_save(f):
        real = f.write

        def write(data):
            real(data)
            raise OSError(errno.ENOSPC, "No space left on device")

        f.write = write
        np.save(f, np.zeros(10))

    target.write_bytes(b"old")
    with pytest.raises(CurvesFileError, match="No space left"):
        write_atomic(target, failing_save)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["t.npy"]


def test_user_data_destroyed_group_write_refuses_one_file_twice(tmp_path):
    with pytest.raises(CurvesFileError, match="written twice"):
        write_atomic_group([(tmp_path / "a", lambda f: f.write(b"1")), (tmp_path / "a", lambda f: f.write(b"2"))])
    assert os.listdir(tmp_path) == []


# == 2. wrong answers ===========================================================================
def _allocator_file(tmp_path):
    from budgetopt import RequestAllocator

    rng = np.random.default_rng(3)
    scores = [rng.random((2, 2, 40)) for _ in range(3)]
    oracles = [s ** 2 for s in scores]
    ra = RequestAllocator.fit(oracles, scores, sink=1, window=1, shrinkage=0.5)
    path = tmp_path / "ra.npz"
    ra.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return ra, path, arrays


def _edit_allocator(path, arrays, *, meta_text=None, **changes):
    out = dict(arrays)
    meta = json.loads(str(arrays["meta"]))
    for key, value in changes.items():
        if key in out and key != "meta":
            out[key] = value
        else:
            meta[key] = value
    out["meta"] = np.array(meta_text if meta_text is not None else json.dumps(meta))
    np.savez(path, **out)


@pytest.mark.parametrize("change, match", [
    ({"shrinkage": float("nan")}, "shrinkage"),
    ({"shrinkage": 2.0}, "shrinkage"),
    ({"shrinkage": -0.1}, "shrinkage"),
    ({"shrinkage": "0.5"}, "shrinkage"),
    ({"min_keep_fraction": float("nan")}, "min_keep_fraction"),
    ({"min_keep_fraction": 1.0}, "min_keep_fraction"),
    ({"sink": -1}, "sink"),
    ({"sink": 1.5}, "sink"),
    ({"sink": True}, "sink"),
    ({"window": None}, "window"),
    ({"features": "scores"}, "features"),
    ({"features": ["scores", "scores"]}, "features"),
    ({"info": [1, 2]}, "info"),
    ({"fractions": lambda g: g[::-1].copy()}, "fractions"),              # reversed grid
    ({"fractions": lambda g: g[[0, 2, 1, *range(3, g.size)]]}, "fractions"),  # unsorted
    ({"fractions": lambda g: np.where(g == 1.0, np.nan, g)}, "fractions"),
    ({"weight": np.full((2, 2), 2.0)}, "weight"),
    ({"weight": np.zeros((0, 2))}, "weight"),
])
def test_wrong_answer_allocator_load_checks_every_field_like_fit(tmp_path, change, match):
    from budgetopt import RequestAllocator

    ra, path, arrays = _allocator_file(tmp_path)
    change = {k: v(arrays[k]) if callable(v) else v for k, v in change.items()}
    _edit_allocator(path, arrays, **change)
    with pytest.raises(CurvesFileError, match=match) as info:
        RequestAllocator.load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_wrong_answer_allocator_load_round_trip_is_unchanged(tmp_path):
    from budgetopt import RequestAllocator

    ra, path, arrays = _allocator_file(tmp_path)
    again = RequestAllocator.load(path)
    scores = np.random.default_rng(9).random((2, 2, 50))
    assert (again.shrinkage, again.sink, again.window, again.min_keep_fraction) == (0.5, 1, 1, ra.min_keep_fraction)
    np.testing.assert_array_equal(again.allocate(scores, 80).budgets, ra.allocate(scores, 80).budgets)


def test_wrong_answer_allocator_min_total_budget_is_every_heads_floor(tmp_path):
    ra, _, _ = _allocator_file(tmp_path)
    for length in (3, 10, 50, 400):
        floor = min(max(round(ra.min_keep_fraction * length), ra.sink + ra.window), length)
        assert ra.min_total_budget(length) == ra.layers * ra.kv_heads * floor
        if length > ra.sink + ra.window:  # the smallest total allocate accepts
            assert int(ra.allocate(np.ones((2, 2, length)), ra.min_total_budget(length)).budgets.sum()) \
                == ra.min_total_budget(length)


# == 3. crashes instead of refusals ==============================================================
def test_crash_lone_surrogate_in_calibration_is_refused(tmp_path, capfd):
    from budgetopt.calibration import read_calibration
    from budgetopt.errors import InvalidInputError

    for line, field in (('{"context": "ab\\ud800cd", "questions": ["q"]}', "context"),
                        ('{"context": "abc", "questions": ["q\\udfff"]}', "questions[0]"),
                        ('{"context": "abc", "questions": [{"question": "q", "answer_prefix": "\\ud83d"}]}',
                         "questions[0] answer_prefix")):
        calib = tmp_path / "calib.jsonl"
        calib.write_text('{"context": "fine", "questions": ["q"]}\n' + line + "\n")
        with pytest.raises(InvalidInputError, match=rf"calib.jsonl:2: {re.escape(field)}.*lone surrogate"):
            read_calibration(calib)
        code, out, err = run_cli(capfd, "profile", tmp_path, "--calibration", calib, "--scorer", "knorm",
                                 "-o", tmp_path / "run")
        one_error_line(code, out, err, "calib.jsonl:2", "lone surrogate")
    # a surrogate pair written as two escapes is one character, and fine
    calib.write_text('{"context": "smile \\ud83d\\ude00", "questions": ["q"]}\n')
    assert read_calibration(calib).contexts[0].context == "smile \U0001F600"


def test_crash_deeply_nested_json_is_refused_everywhere(tmp_path, capfd):
    from budgetopt import RequestAllocator
    from budgetopt.calibration import read_calibration
    from budgetopt.errors import InvalidInputError

    deep = "[" * 100_000 + "]" * 100_000
    calib = tmp_path / "calib.jsonl"
    calib.write_text('{"context": "abc", "questions": ["q"], "extra": ' + deep + "}\n")
    with pytest.raises(InvalidInputError, match="calib.jsonl:1: JSON nested 100001 deep; at most 64"):
        read_calibration(calib)
    # meta.json of a run
    run = small_run(str(tmp_path / "run"))
    meta = json.loads(open(os.path.join(run, "meta.json")).read())
    text = json.dumps(meta)[:-1] + ', "extra": ' + deep + "}"
    open(os.path.join(run, "meta.json"), "w").write(text)
    code, out, err = run_cli(capfd, "lukv-table", run, "-o", tmp_path / "t.npy")
    one_error_line(code, out, err, "meta.json: JSON nested")
    # a pair file's meta
    run2 = small_run(str(tmp_path / "run2"))
    pair = os.path.join(run2, "pairs", "c00000_q000.npz")
    with np.load(pair) as f:
        members = {k: f[k] for k in f.files}
    members["meta"] = np.array('{"context": 0, "question": 0, "x": ' + deep + "}")
    np.savez(pair, **members)
    code, out, err = run_cli(capfd, "curves", run2, "-o", tmp_path / "c.npz")
    one_error_line(code, out, err, "c00000_q000.npz: member 'meta'", "nested")
    # an allocator's meta
    _, path, arrays = _allocator_file(tmp_path)
    meta = json.loads(str(arrays["meta"]))
    _edit_allocator(path, arrays, meta_text=json.dumps(meta)[:-1] + ', "x": ' + deep + "}")
    with pytest.raises(CurvesFileError, match="key 'meta': JSON nested"):
        RequestAllocator.load(path)
    assert not (tmp_path / "t.npy").exists() and not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("field, value", [
    ("layers", "3"), ("layers", 0), ("layers", True), ("kv_heads", 2.0), ("kv_heads", None),
    ("n_pairs", -1), ("n_pairs", 10**12), ("questions", [2, "1"]), ("questions", [2, 0]),
    ("questions", {"a": 1}), ("questions", [2, 2]), ("context_tokens", [30]), ("context_tokens", [30, -5]),
    ("context_tokens", "30"), ("sink", -2), ("sink", "2"), ("window", 1.5), ("scorer", "knorm"),
    ("scorer", {"name": 3}), ("model", ["tiny"]), ("shard", 3), ("shard", "2/1"), ("n_contexts", 7),
])
def test_crash_hand_edited_meta_json_names_the_file_and_field(tmp_path, capfd, field, value):
    from budgetopt import load_profile_run

    run = small_run(str(tmp_path / "run"))
    path = os.path.join(run, "meta.json")
    meta = json.loads(open(path).read())
    meta[field] = value
    open(path, "w").write(json.dumps(meta))
    shown = field.split(".")[0]
    with pytest.raises(CurvesFileError, match=rf"meta.json: field '{shown}"):
        load_profile_run(run)
    for command in ("lukv-table", "curves"):
        code, out, err = run_cli(capfd, command, run, "-o", tmp_path / ("t.npy" if command == "lukv-table" else "c.npz"))
        one_error_line(code, out, err, "meta.json", f"field '{shown}")


# == 4. unbounded memory or time =================================================================
def test_unbounded_zip_bomb_pair_is_refused_by_the_shape_the_meta_promises(tmp_path, capfd, monkeypatch):
    run = small_run(str(tmp_path / "run"))
    pair = os.path.join(run, "pairs", "c00000_q001.npz")
    with np.load(pair) as f:
        members = {k: f[k] for k in f.files}
    members["oracle"] = np.zeros((LAYERS, KV, 2_000_000), np.float32)  # 48 MB of zeros, ~50 kB compressed
    np.savez_compressed(pair, **members)
    assert os.path.getsize(pair) < 1_000_000
    reads = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, *a, **k: reads.append(1) or real(f, *a, **k))
    from budgetopt import load_profile_run

    with pytest.raises(CurvesFileError, match=r"c00000_q001.npz: member 'oracle' would expand to 45.8 MiB"):
        load_profile_run(run)
    # context 0's first pair was read whole (3 arrays + meta); nothing of the bomb was inflated
    assert len(reads) == 4
    monkeypatch.undo()
    code, out, err = run_cli(capfd, "lukv-table", run, "-o", tmp_path / "t.npy")
    one_error_line(code, out, err, "c00000_q001.npz", "would expand")


def test_unbounded_read_npz_caps_a_files_total(tmp_path):
    from budgetopt._io import read_npz

    path = tmp_path / "many.npz"
    np.savez(path, **{f"a{i}": np.zeros(100) for i in range(5)})  # 800 bytes each, 4000 together
    assert len(read_npz(path, [f"a{i}" for i in range(5)], max_bytes=4096)) == 5
    with pytest.raises(CurvesFileError, match=r"many.npz: its arrays would expand to .* together, above the limit"):
        read_npz(path, [f"a{i}" for i in range(5)], max_bytes=3000)
    assert len(read_npz(path, ["a0", "a1"], max_bytes=3000)) == 2


def test_unbounded_fifo_named_like_a_pair_file_does_not_hang(tmp_path):
    run = small_run(str(tmp_path / "run"))
    pair = os.path.join(run, "pairs", "c00001_q000.npz")
    os.unlink(pair)
    os.mkfifo(pair)
    env = dict(os.environ, PYTHONPATH=REPO)
    for argv in (["curves", run, "-o", str(tmp_path / "c.npz")], ["lukv-table", run, "-o", str(tmp_path / "t.npy")]):
        proc = subprocess.run([sys.executable, "-m", "budgetopt", *argv], capture_output=True, text=True,
                              env=env, timeout=120)
        one_error_line(proc.returncode, proc.stdout, proc.stderr, "c00001_q000.npz", "not a regular file")
    from budgetopt._io import read_npy, read_npz

    for reader in (lambda p: read_npz(p, ["oracle"]), read_npy):
        with pytest.raises(CurvesFileError, match="not a regular file"):
            reader(pair)


@pytest.mark.parametrize("questions", [[10**9], [10**6, 1], [2, 10**7]])
def test_unbounded_pair_counts_in_meta_json_are_capped(tmp_path, capfd, questions):
    run = small_run(str(tmp_path / "run"))
    path = os.path.join(run, "meta.json")
    meta = json.loads(open(path).read())
    meta.update(questions=questions, n_pairs=sum(questions), context_tokens=[LENGTH] * len(questions),
                n_contexts=len(questions))
    open(path, "w").write(json.dumps(meta))
    code, out, err = run_cli(capfd, "lukv-table", run, "-o", tmp_path / "t.npy")
    one_error_line(code, out, err, "meta.json: field 'n_pairs'")


def test_unbounded_counts_in_meta_json_are_checked_against_the_files(tmp_path, capfd):
    run = small_run(str(tmp_path / "run"))
    path = os.path.join(run, "meta.json")
    meta = json.loads(open(path).read())
    meta.update(questions=[2, 10**6 - 2], n_pairs=10**6, context_tokens=[LENGTH, LENGTH])
    open(path, "w").write(json.dumps(meta))
    code, out, err = run_cli(capfd, "curves", run, "-o", tmp_path / "c.npz")
    one_error_line(code, out, err, "999997 of 1000000 pairs are missing")


def test_unbounded_plot_heads_are_capped_and_deduplicated(tmp_path, capfd):
    pytest.importorskip("matplotlib")
    from budgetopt import plot
    from budgetopt.errors import InvalidInputError

    utility = np.cumsum(np.random.default_rng(0).random((10, 10, 6)), axis=-1)
    curves = Curves(utility, np.arange(1, 7))
    path = tmp_path / "c.npz"
    save_curves(path, curves)
    many = [f"{i % 10},{(i // 10) % 10}" for i in range(5000)]   # 100 distinct heads
    code, out, err = run_cli(capfd, "plot", path, "--heads", *many, "-o", tmp_path / "f.png")
    one_error_line(code, out, err, "--heads: at most 64 distinct heads", "got 100")
    code, _, err = run_cli(capfd, "plot", path, "--heads", *(["0,0", "1,1"] * 500), "-o", tmp_path / "f.png")
    assert code == 0, err
    fig = plot.curves_figure(curves, [(0, 0), (1, 1), (0, 0)])
    assert [line.get_label() for line in fig.axes[0].lines] == [
        "curve (0, 0)", "hull (0, 0)", "curve (1, 1)", "hull (1, 1)"]
    with pytest.raises(InvalidInputError, match="at most 64 distinct heads; got 65"):
        plot.curves_figure(curves, [(i // 10, i % 10) for i in range(65)])


# == 5. runs silently mixed ======================================================================
def _run_meta(step_reduce="max"):
    return {"format": FORMAT, "model": {"name": "tiny"}, "layers": LAYERS, "kv_heads": KV,
            "scorer": {"name": "knorm"}, "sink": 2, "window": 1, "step_reduce": step_reduce,
            "questions": [2, 1], "context_tokens": [LENGTH, LENGTH], "n_pairs": 3, "shard": None}


HOLDER = textwrap.dedent("""
    import os, sys, time
    from budgetopt.runs import lock_run_dir, open_run_dir
    run, meta, ready = sys.argv[1], eval(sys.argv[2]), sys.argv[3]
    lock = lock_run_dir(run)
    open_run_dir(run, meta, lock=lock)
    tmp = os.path.join(run, "pairs", ".c00000_q000.npz.inflight.tmp")   # a pair being written
    open(tmp, "wb").write(b"half a pair")
    open(ready, "w").close()
    time.sleep(600)
""")


def _hold(run, meta, tmp_path):
    """A second process that holds ``run`` for writing (until killed); returns it once it does."""
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), repr(meta), str(ready)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(600):
        if ready.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert ready.exists(), proc.communicate()[1]
    return proc


def test_runs_mixed_second_writer_is_refused_while_a_process_holds_the_run(tmp_path):
    from budgetopt.errors import InvalidInputError

    run = tmp_path / "run"
    holder = _hold(run, _run_meta(), tmp_path)
    try:
        inflight = run / "pairs" / ".c00000_q000.npz.inflight.tmp"
        before = digests(run)
        for attempt in (lambda: open_run_dir(run, _run_meta("sum"), resume=False),   # --no-resume, other settings
                        lambda: open_run_dir(run, _run_meta()),                        # an identical second run
                        lambda: write_pair(run, 0, 0, oracle=np.zeros((LAYERS, KV, LENGTH)),
                                           scores=np.zeros((LAYERS, KV, LENGTH)),
                                           value_norms=np.zeros((LAYERS, KV, LENGTH)),
                                           meta={"context": 0, "question": 0})):
            with pytest.raises(InvalidInputError, match=rf"another process \(pid {holder.pid}\) is writing this run"):
                attempt()
        assert inflight.exists() and digests(run) == before  # the holder's in-flight file is untouched
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its process: the run can be written again (the stale temporary file goes)
    assert open_run_dir(run, _run_meta()) == set()
    assert not inflight.exists()


def test_runs_mixed_pairs_of_another_run_are_never_resumed_merged_or_read(tmp_path, capfd):
    from budgetopt import load_profile_run
    from budgetopt.errors import InvalidInputError

    first = small_run(str(tmp_path / "first"))
    other = small_run(str(tmp_path / "other"), step_reduce="sum", seed=5)
    foreign = os.path.join(other, "pairs", "c00000_q001.npz")
    mine = os.path.join(first, "pairs", "c00000_q001.npz")
    os.replace(foreign, mine)  # a pair file copied in from a run with other settings
    match = r"c00000_q001.npz: belongs to another run"
    with pytest.raises(InvalidInputError, match=match):
        load_profile_run(first)
    for command, out in (("lukv-table", "t.npy"), ("curves", "c.npz")):
        code, stdout, err = run_cli(capfd, command, first, "-o", tmp_path / out)
        one_error_line(code, stdout, err, "c00000_q001.npz: belongs to another run")
    meta = json.loads(open(os.path.join(first, "meta.json")).read())
    meta.pop("run_id")
    with pytest.raises(InvalidInputError, match=match):  # resuming it
        open_run_dir(first, meta)
    # shards: a shard directory holding a pair of another run is refused when merged
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for d, shard in ((a, "0/2"), (b, "1/2")):
        open_run_dir(d, dict(_run_meta(), shard=shard))
    rng = np.random.default_rng(0)
    arrays = {k: rng.random((LAYERS, KV, LENGTH)) for k in ("oracle", "scores", "value_norms")}
    write_pair(a, 0, 0, meta={"context": 0, "question": 0}, **arrays)
    write_pair(a, 1, 0, meta={"context": 1, "question": 0}, **arrays)
    write_pair(b, 0, 1, meta={"context": 0, "question": 1}, **arrays)
    assert len(load_profile_run(a, b).pairs) == 3
    os.replace(os.path.join(other, "pairs", "c00001_q000.npz"), os.path.join(b, "pairs", "c00001_q000.npz"))
    os.unlink(os.path.join(a, "pairs", "c00001_q000.npz"))
    with pytest.raises(InvalidInputError, match="c00001_q000.npz: belongs to another run"):
        load_profile_run(a, b)


def test_runs_mixed_a_writer_stops_when_the_run_is_replaced_under_it(tmp_path):
    from budgetopt.errors import InvalidInputError
    from budgetopt.runs import lock_run_dir

    run = tmp_path / "run"
    meta = _run_meta()
    with lock_run_dir(run) as lock:
        open_run_dir(run, meta, lock=lock)
        mine = meta["run_id"]
    open_run_dir(run, _run_meta("sum"), resume=False)  # someone starts it over with other settings
    zeros = np.zeros((LAYERS, KV, LENGTH))
    with pytest.raises(InvalidInputError, match="meta.json now describes another run"):
        write_pair(run, 0, 0, oracle=zeros, scores=zeros, value_norms=zeros,
                   meta={"context": 0, "question": 0, "run_id": mine})
    assert os.listdir(run / "pairs") == []


def test_runs_mixed_run_id_covers_every_setting_but_the_machine(tmp_path):
    from budgetopt.runs import run_id

    base = dict(_run_meta(), calibration={"path": "/a/c.jsonl", "sha256": "ab"}, device="cpu", versions={"torch": "1"})
    same = dict(base, device="cuda:1", versions={"torch": "2"}, shard="1/4",
                calibration={"path": "/b/c.jsonl", "sha256": "ab"})
    assert run_id(base) == run_id(same)
    for change in ({"step_reduce": "sum"}, {"sink": 3}, {"calibration": {"path": "/a/c.jsonl", "sha256": "cd"}},
                   {"model": {"name": "tiny", "fingerprint": "x"}}, {"scorer": {"name": "snapkv"}}):
        assert run_id(dict(base, **change)) != run_id(base), change
    assert not (tmp_path / "anything").exists()


def test_runs_mixed_refused_start_leaves_no_lock_file_behind(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(CurvesFileError, match="not a profile run directory"):
        open_run_dir(folder, _run_meta())
    assert os.listdir(folder) == ["notes.txt"]


def test_user_data_destroyed_failed_replace_restores_without_hard_links(tmp_path, capfd, monkeypatch):
    """On a file system without hard links the previous table is kept as a copy meanwhile."""
    run, before = _old_table(tmp_path, capfd)
    small_run(str(tmp_path / "run2"), seed=1)
    real_replace = os.replace

    def no_links(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    def replace(src, dst):
        if str(dst).endswith("t.json"):
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "replace", replace)
    code, out, err = run_cli(capfd, "lukv-table", tmp_path / "run2", "-o", tmp_path / "t.npy")
    monkeypatch.undo()
    one_error_line(code, out, err, "t.json: cannot be written")
    assert {name: digest(tmp_path / name) for name in ("t.npy", "t.json")} == before
    assert sorted(os.listdir(tmp_path)) == ["run", "run2", "t.json", "t.npy"]
    # and a successful replace on such a file system leaves no backup behind
    monkeypatch.setattr(os, "link", no_links)
    code, _, err = run_cli(capfd, "lukv-table", tmp_path / "run2", "-o", tmp_path / "t.npy")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["run", "run2", "t.json", "t.npy"]
    assert digest(tmp_path / "t.npy") != before["t.npy"]
