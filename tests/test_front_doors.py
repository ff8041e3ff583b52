"""Hostile and careless input at every front door: outputs, memory limits, typed errors.

Each test is named after the rule it checks. The rule is always the same: the user gets a
clear error (a budgetopt error type in Python; exit 2 and one line on stderr from the CLI,
130 after Ctrl-C, 143 after SIGTERM) and nothing is lost: no input overwritten, no partial
or temporary file left behind.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import budgetopt
from budgetopt import (
    BudgetoptError,
    Curves,
    CurvesFileError,
    InvalidInputError,
    InvalidTypeError,
    load_curves,
    save_curves,
)
from budgetopt import _cli_common
from budgetopt._io import MAX_ARRAY_BYTES_ENV, write_atomic
from helpers import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


run = run_cli  # run(capfd, *argv) -> (exit code, stdout, stderr)


def env_with_repo(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def one_error_line(err, command):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"budgetopt {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def listing(directory):
    return sorted(os.listdir(directory))


@pytest.fixture
def curves_file(tmp_path):
    rng = np.random.default_rng(5)
    curves = Curves(np.cumsum(rng.random((2, 3, 6)), axis=-1), meta={"model": "toy"})
    path = tmp_path / "curves.npz"
    save_curves(path, curves)
    return path, curves


# -- outputs -----------------------------------------------------------------------------------
def test_output_that_is_not_a_regular_file_is_refused(tmp_path, curves_file, capfd):
    path, curves = curves_file
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    (tmp_path / "dir.json").mkdir()
    device = tmp_path / "null.json"
    os.symlink(os.devnull, device)  # a link to a device node: written through, so refused
    for target, says in ((fifo, "not a regular file"), (tmp_path / "dir.json", "is a directory"),
                         (device, "not a regular file")):
        code, out, err = run(capfd, "solve", path, "--budget", "0.5", "-o", target)
        assert code == 2 and out == ""
        assert says in one_error_line(err, "solve")
        with pytest.raises(CurvesFileError, match=says):
            save_curves(target, curves)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.path.islink(device)
    assert listing(tmp_path) == ["curves.npz", "dir.json", "fifo.json", "null.json"]


def test_output_that_is_an_input_is_refused(tmp_path, curves_file, capfd):
    path, _ = curves_file
    before = path.read_bytes()
    os.link(path, tmp_path / "hard.npz")
    os.symlink(path, tmp_path / "soft.npz")
    spellings = [path, f"{tmp_path}/./curves.npz", tmp_path / "hard.npz", tmp_path / "soft.npz"]
    for target in spellings:
        code, out, err = run(capfd, "solve", path, "--budget", "0.5", "-o", target)
        assert code == 2 and out == ""
        assert "same file as the input" in one_error_line(err, "solve")
    code, _, err = run(capfd, "solve", path, "--budget", "0.5", "-o", tmp_path / "other.npz")
    assert code == 0  # a different file: fine
    # curves/lukv-table: the output may not be one of the --oracle/--scores files either
    arr = np.random.default_rng(0).random((1, 2, 16)).astype(np.float32)
    np.save(tmp_path / "o.npy", arr)
    code, _, err = run(capfd, "lukv-table", "--oracle", tmp_path / "o.npy", "--scores", tmp_path / "o.npy",
                       "--sink", 1, "--window", 1, "-o", tmp_path / "o.npy")
    assert code == 2 and "same file as the input" in err
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), arr)
    assert path.read_bytes() == before


def test_output_keeps_an_existing_files_mode(tmp_path, curves_file, capfd):
    path, curves = curves_file
    out = tmp_path / "out.json"
    out.write_text("old")
    os.chmod(out, 0o640)
    code, _, _ = run(capfd, "solve", path, "--budget", "0.5", "-o", out)
    assert code == 0 and json.loads(out.read_text())["used"] >= 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    os.chmod(path, 0o604)
    save_curves(path, curves)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o604


def test_output_symlink_is_written_through(tmp_path, curves_file, capfd):
    path, curves = curves_file
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    os.symlink("real.json", link)
    code, _, _ = run(capfd, "solve", path, "--budget", "0.5", "-o", link)
    assert code == 0
    assert os.path.islink(link) and os.readlink(link) == "real.json"
    assert json.loads(real.read_text())["total_budget"] == budgetopt.tokens_from_fraction(0.5, curves.capacity)
    dangling = tmp_path / "new.npz"
    os.symlink("made.npz", dangling)  # a dangling link: its target is created
    save_curves(dangling, curves)
    assert os.path.islink(dangling) and load_curves(tmp_path / "made.npz") == curves


def test_output_empty_name_or_trailing_separator_is_refused(tmp_path, curves_file, capfd):
    path, curves = curves_file
    for target, says in (("", "empty"), (f"{tmp_path}/name/", "names a directory"),
                         ("name.json/", "names a directory")):
        code, out, err = run(capfd, "solve", path, "--budget", "0.5", "-o", target)
        assert code == 2 and out == ""
        assert says in err and err.count("\n") == 1
        with pytest.raises(CurvesFileError, match=says):
            save_curves(target, curves)
    assert listing(tmp_path) == ["curves.npz"]


def test_write_error_names_the_target_not_the_temporary_file(tmp_path):
    target = tmp_path / "out.npz"

    def full_disk(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device", f.name)

    with pytest.raises(CurvesFileError) as info:
        write_atomic(target, full_disk)
    message = str(info.value)
    assert message.startswith(f"{target}: cannot be written") and "No space left" in message
    assert ".tmp" not in message
    assert listing(tmp_path) == []
    # a directory that exists but cannot hold the file (here: a path below a regular file)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CurvesFileError, match="does not exist"):
        save_curves(tmp_path / "file" / "c.npz", [[0.0, 1.0]])


def signal_when_ready(script, ready, signum, during=lambda: None):
    """Run ``script`` in a fresh interpreter; once it creates the file ``ready``, call
    ``during()`` and send ``signum``. Returns ``(returncode, stdout, stderr, during())``."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_with_repo())
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never reached the point to interrupt"
            time.sleep(0.02)
        seen = during()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err, seen


_SLOW_WRITE = """
import os, sys, time
import numpy as np
def slow_savez(f, **arrays):
    f.write(b"partial data")
    f.flush()
    open({ready!r}, "w").close()
    time.sleep(60)
np.savez = slow_savez
from budgetopt.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"])
def test_interrupted_write_leaves_no_temporary_file(tmp_path, curves_file, signum, code):
    path, _ = curves_file
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ready = tmp_path / "ready"
    argv = ["solve", str(path), "--budget", "0.5", "-o", str(out_dir / "budgets.npz")]
    script = _SLOW_WRITE.format(ready=str(ready), argv=argv)
    during = lambda: len(listing(out_dir))  # noqa: E731 - the temporary file, mid-write
    returncode, out, err, seen = signal_when_ready(script, ready, signum, during)
    assert seen == 1
    assert returncode == code, err
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert ("interrupted" if signum == signal.SIGINT else "terminated by SIGTERM") in err
    assert listing(out_dir) == []


def test_ctrl_c_during_a_solve_exits_130_with_one_line(tmp_path, curves_file):
    path, _ = curves_file
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import sys, time
        import budgetopt.api, budgetopt.cli
        def slow_allocate(*a, **k):
            open({str(ready)!r}, "w").close()
            time.sleep(60)
        budgetopt.api.allocate = slow_allocate
        sys.exit(budgetopt.cli.main(["solve", {str(path)!r}, "--budget", "0.5"]))
    """)
    returncode, out, err, _ = signal_when_ready(script, ready, signal.SIGINT)
    assert returncode == 130 and out == "" and err == "budgetopt: interrupted\n"


# -- memory ------------------------------------------------------------------------------------
def _zip_bomb(path, n_bytes):
    """An .npz whose 'utility' member holds a valid .npy of ``n_bytes`` zero bytes of float64,
    deflated (about 1000:1), written without ever holding the data in memory."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (n_bytes // 8,)}
    text = repr(header).encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    head = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text
    chunk = bytes(1 << 24)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(head + chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    middle = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)  # the same bytes every time
    crc = zlib.crc32(head)
    repeats = n_bytes // len(chunk)
    for _ in range(repeats):
        crc = zlib.crc32(chunk, crc)
    with zipfile.ZipFile(path, "w") as z:
        info = zipfile.ZipInfo("utility.npy", date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = len(head) + n_bytes
        info.CRC = crc
        body = [first] + [middle] * (repeats - 1) + [comp.flush()]
        info.compress_size = sum(len(b) for b in body)
        info.header_offset = z.fp.tell()
        z.fp.write(info.FileHeader(zip64=False))
        for b in body:
            z.fp.write(b)
        z.filelist.append(info)
        z.NameToInfo[info.filename] = info
        z.start_dir = z.fp.tell()
        z._didModify = True


class _peak_memory:
    """Peak bytes allocated through Python and numpy inside the block (tracemalloc): a check
    that work was refused before it was done, whatever the machine's speed."""

    def __enter__(self):
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return False


def test_zip_bomb_is_refused_before_inflating_naming_member_and_limit(tmp_path, capfd):
    bomb = tmp_path / "bomb.npz"
    _zip_bomb(bomb, 2 * 2**30)
    assert os.path.getsize(bomb) < 3 * 2**20  # 2 GiB of data in under 3 MB
    with zipfile.ZipFile(bomb) as z:  # a valid archive: its first bytes are a real .npy header
        with z.open("utility.npy") as f:
            assert np.lib.format.read_magic(f) == (1, 0)
            assert np.lib.format.read_array_header_1_0(f)[0] == (2**28,)
    with _peak_memory() as peak, pytest.raises(CurvesFileError) as info:
        load_curves(bomb)
    assert peak.bytes < 2**24, "the member was inflated before it was refused"
    message = str(info.value)
    assert "member 'utility'" in message and "1 GiB" in message and MAX_ARRAY_BYTES_ENV in message
    code, out, err = run(capfd, "inspect", bomb)
    assert code == 2 and out == "" and "member 'utility'" in one_error_line(err, "inspect")


def test_array_size_limit_is_settable_by_keyword_and_environment(tmp_path, monkeypatch, curves_file):
    path, curves = curves_file
    with pytest.raises(CurvesFileError, match=r"above the limit of 100 bytes.*max_bytes="):
        load_curves(path, max_bytes=100)
    assert load_curves(path, max_bytes=10**6) == curves
    monkeypatch.setenv(MAX_ARRAY_BYTES_ENV, "100")
    with pytest.raises(CurvesFileError, match="member 'utility'"):
        load_curves(path)
    assert load_curves(path, max_bytes=10**6) == curves  # the keyword wins
    monkeypatch.setenv(MAX_ARRAY_BYTES_ENV, "lots")
    with pytest.raises(InvalidInputError, match=MAX_ARRAY_BYTES_ENV):
        load_curves(path)
    table = np.full((99, 2, 3), 0.5)
    budgetopt.save_lukv_table(tmp_path / "t.npy", table)
    monkeypatch.setenv(MAX_ARRAY_BYTES_ENV, "1000")
    with pytest.raises(CurvesFileError, match=r"t\.npy: its array \(99, 2, 3\) of float64"):
        budgetopt.load_lukv_table(tmp_path / "t.npy")
    np.testing.assert_array_equal(budgetopt.load_lukv_table(tmp_path / "t.npy", max_bytes=5000), table)


def test_npy_header_declaring_more_than_the_file_holds_is_refused(tmp_path, capfd):
    path = tmp_path / "liar.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (99, 1000, 1000)})
        f.write(bytes(64))
    with _peak_memory() as peak, pytest.raises(CurvesFileError, match="truncated"):
        budgetopt.load_lukv_table(path)
    assert peak.bytes < 2**24, "the declared array was allocated before the file was refused"
    code, _, err = run(capfd, "lukv-table", "--oracle", path, "--scores", path, "--sink", 1, "--window", 1,
                       "-o", tmp_path / "t.npy")
    assert code == 2 and "truncated" in one_error_line(err, "lukv-table")


def test_sweep_budgets_above_the_limit_are_refused_before_building_them(curves_file, capfd):
    path, _ = curves_file
    with _peak_memory() as peak:
        code, out, err = run(capfd, "sweep", path, "--budgets", "1e-12:1:1e-12")
    assert peak.bytes < 2**24, "the budgets were built before they were refused"
    assert code == 2 and out == "" and "more than 10000 budgets" in err
    code, _, err = run(capfd, "sweep", path, "--budgets", "0.0001:1:0.0001")
    assert code == 0


def test_solve_needs_a_small_multiple_of_its_data(tmp_path):
    """Peak memory of `budgetopt solve` on a 10 MB curves file, above the same command on a
    tiny file (same imports and compiled kernels), stays below 4x the data."""
    rng = np.random.default_rng(8)
    save_curves(tmp_path / "small.npz", Curves(np.cumsum(rng.random((2, 2, 50)), axis=-1)))
    big = Curves(np.cumsum(rng.random((32, 8, 5000)), axis=-1))
    save_curves(tmp_path / "big.npz", big)

    def peak(name):
        code = ("import resource, sys; from budgetopt.cli import main; "
                f"main(['solve', {str(tmp_path / name)!r}, '--budget', '0.2', '-o', {str(tmp_path / 'out.json')!r}]); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env_with_repo(), timeout=300)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stderr.strip().splitlines()[-1]) * 1024  # kilobytes on Linux

    extra = peak("big.npz") - peak("small.npz")
    assert extra < 4 * big.utility.nbytes, (extra, big.utility.nbytes)


# -- errors, not crashes -------------------------------------------------------------------------
def test_deeply_nested_or_huge_meta_is_an_error(tmp_path, capfd):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.npz"
    np.savez(path, utility=np.zeros((1, 2)), meta=np.array('{"a": ' + deep + "}"))
    with pytest.raises(CurvesFileError, match="nested too deeply"):
        load_curves(path)
    code, _, err = run(capfd, "inspect", path)
    assert code == 2 and "nested too deeply" in one_error_line(err, "inspect")
    nested = {}
    for _ in range(100_000):
        nested = {"a": nested}
    with pytest.raises(InvalidInputError, match="`meta` is nested too deeply"):
        Curves([[0.0, 1.0]], meta=nested)
    with pytest.raises(InvalidInputError, match="`meta` is .* bytes as JSON, above the limit"):
        Curves([[0.0, 1.0]], meta={"blob": "x" * (2**24 + 1)})
    big = tmp_path / "big.npz"
    np.savez(big, utility=np.zeros((1, 2)), meta=np.array(json.dumps({"blob": "x" * 2000})))
    with pytest.raises(CurvesFileError, match="member 'meta'"):
        load_curves(big, max_bytes=1000)
    nan = tmp_path / "nan.npz"
    np.savez(nan, utility=np.zeros((1, 2)), meta=np.array('{"a": NaN}'))
    with pytest.raises(CurvesFileError, match="standard JSON"):
        load_curves(nan)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--avg-tokens", "1e308"], "too large"),
        (["--tokens", "9" * 400], "too large"),
        (["--tokens", "4611686018427387904"], "too large"),
        (["--budget", "0.5", "--min-budget", str(10**30)], "too large"),
        (["--budget", "0.5", "--max-budget", str(10**30)], "too large"),
        (["--avg-tokens", "inf"], "finite"),
    ],
    ids=["avg-1e308", "tokens-400-digits", "tokens-2**62", "floor-1e30", "cap-1e30", "avg-inf"],
)
def test_huge_numbers_say_too_large(curves_file, capfd, flags, says):
    path, _ = curves_file
    code, out, err = run(capfd, "solve", path, *flags)
    assert code == 2 and out == ""
    last = err.strip().splitlines()[-1]  # argparse prints its usage lines, then the error
    assert last.startswith("budgetopt solve: error: ") and says in last
    assert "Traceback" not in err and "dtype object" not in err


class _Opaque:
    pass


@pytest.mark.parametrize(
    "call, kind, says",
    [
        (lambda c: budgetopt.allocate(c, 2**63), InvalidInputError, "`total_budget` is too large"),
        (lambda c: budgetopt.allocate(c, np.uint64(2**64 - 1)), InvalidInputError, "`total_budget` is too large"),
        (lambda c: budgetopt.sweep(c, np.array([3, 2**64 - 1], np.uint64)), InvalidInputError, r"`totals\[1\]` is too large"),
        (lambda c: budgetopt.sweep(c, [1, 2**70]), InvalidInputError, r"`totals\[1\]` is too large"),
        (lambda c: budgetopt.allocate(c, 3, min_budget=[[1, 1, 1], [1, 1]]), InvalidTypeError, "`min_budget`"),
        (lambda c: budgetopt.allocate(c, 3, max_budget=[[1, 2**70, 1], [1, 1, 1]]), InvalidInputError, "`max_budget` values are too large"),
        (lambda c: Curves(c.utility, meta={"x": _Opaque()}), InvalidTypeError, "`meta` must be JSON-serialisable"),
        (lambda c: Curves(c.utility, meta={"x": float("nan")}), InvalidTypeError, "`meta` must be JSON-serialisable"),
        (lambda c: Curves(c.utility, meta={1: {2, 3}}), InvalidTypeError, "`meta`"),
        (lambda c: load_curves(None), InvalidTypeError, "`path` must be a file name"),
        (lambda c: load_curves(open(os.devnull, "rb")), InvalidTypeError, "got a file object"),
        (lambda c: save_curves(None, c), InvalidTypeError, "`path` must be a file name"),
        (lambda c: budgetopt.load_lukv_table(3), InvalidTypeError, "`path` must be a file name"),
        (lambda c: budgetopt.keep_counts_from_prune_ratios(["a"], 10), InvalidTypeError, "`prune_ratios` must hold real numbers"),
        (lambda c: budgetopt.keep_counts_from_prune_ratios([[0.1], [0.1, 0.2]], 10), InvalidTypeError, "`prune_ratios`"),
        (lambda c: budgetopt.tokens_from_fraction(0.2, 10.7), InvalidInputError, "`capacity` must be a whole number"),
        (lambda c: budgetopt.tokens_from_fraction("0.2", 10), InvalidTypeError, "`fraction` must be a real number"),
        (lambda c: budgetopt.tokens_from_fraction(0.2, "10"), InvalidTypeError, "`capacity` must be a whole number"),
        (lambda c: budgetopt.keep_counts_from_prune_ratios([0.5], 10.5), InvalidInputError, "`length` must be a whole number"),
        (lambda c: budgetopt.keep_counts_from_prune_ratios([0.5], "10"), InvalidTypeError, "`length`"),
        (lambda c: budgetopt.allocate(c, "12"), InvalidTypeError, "`total_budget`"),
        (lambda c: budgetopt.sweep(c, "12"), InvalidTypeError, "`totals`"),
    ],
    ids=["total-2**63", "total-uint64", "sweep-uint64", "sweep-2**70", "ragged-min", "huge-max",
         "meta-object", "meta-nan", "meta-set", "load-None", "load-file-object", "save-None",
         "table-int", "prune-str", "prune-ragged", "capacity-10.7", "fraction-str", "capacity-str",
         "length-10.5", "length-str", "total-str", "totals-str"],
)
def test_api_inputs_get_typed_errors_naming_the_argument(call, kind, says):
    curves = Curves(np.cumsum(np.ones((2, 3, 4)), axis=-1))
    with pytest.raises(kind, match=says) as info:
        call(curves)
    assert isinstance(info.value, BudgetoptError)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: Curves(m),
        lambda m: Curves(np.cumsum(np.ones((2, 4)), -1), m.astype(int)[0]),
        lambda m: budgetopt.allocate(np.ones((2, 4)), 2, min_budget=np.ma.array([1, 1], mask=[0, 1])),
        lambda m: budgetopt.allocate(np.ones((2, 4)), np.ma.masked),
        lambda m: budgetopt.sweep(np.ones((2, 4)), np.ma.array([1, 2], mask=[0, 1])),
        lambda m: budgetopt.keep_counts_from_prune_ratios(m[0] / 10, 10),
        lambda m: budgetopt.curves_from_scores(m, m, sink=0, window=0),
        lambda m: budgetopt.save_lukv_table("never.npy", np.ma.array(np.zeros((99, 1, 2)), mask=True)),
    ],
    ids=["utility", "grid", "min_budget", "total", "totals", "prune_ratios", "oracle", "table"],
)
def test_masked_arrays_are_refused_not_silently_unmasked(call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    masked = np.ma.array([[0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 3.0, 9.0]], mask=[[0, 0, 1, 0], [0] * 4])
    with pytest.raises(InvalidTypeError, match="masked array"):
        call(masked)
    assert listing(tmp_path) == []


def test_non_numpy_files_get_no_unpickling_advice(tmp_path, capfd):
    import pickle

    text = tmp_path / "notes.npz"
    text.write_text("hello")
    pickled = tmp_path / "p.npz"
    pickled.write_bytes(pickle.dumps({"utility": [1, 2]}))
    npy_pickle = tmp_path / "p.npy"
    npy_pickle.write_bytes(pickle.dumps([1.0]))
    obj = tmp_path / "obj.npz"
    np.savez(obj, utility=np.array([None, 1], dtype=object))
    for path, says in ((text, "not an .npz archive"), (pickled, "not an .npz archive"),
                       (obj, "never unpickles")):
        with pytest.raises(CurvesFileError, match=says) as info:
            load_curves(path)
        assert "allow_pickle" not in str(info.value) and "unsafe" not in str(info.value)
        code, _, err = run(capfd, "inspect", path)
        assert code == 2 and "allow_pickle" not in err
    with pytest.raises(CurvesFileError, match="not a .npy file") as info:
        budgetopt.load_lukv_table(npy_pickle)
    assert "allow_pickle" not in str(info.value)


def test_json_output_is_standard_json(curves_file, capfd, tmp_path):
    path, _ = curves_file

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))

    for argv in (["solve", path, "--budget", "0.3"], ["solve", path, "--tokens", "0"],
                 ["inspect", path, "--format", "json"], ["sweep", path, "--budgets", "0.1,1", "--format", "json"]):
        code, out, _ = run(capfd, *argv)
        assert code == 0
        strict(out)
    # every non-finite float becomes null, by the one helper that writes JSON
    assert _cli_common.dumps({"a": [float("inf"), 1.5], "b": float("nan")}) == '{"a": [null, 1.5], "b": null}'


def test_sweep_plot_into_an_unwritable_place_fails_before_printing(tmp_path, curves_file, capfd):
    pytest.importorskip("matplotlib")
    path, _ = curves_file
    (tmp_path / "file").write_text("x")
    for plot in (tmp_path / "file" / "p.png", tmp_path / "missing" / "p.png", tmp_path / "dir.png"):
        if plot.name == "dir.png":
            plot.mkdir()
        code, out, err = run(capfd, "sweep", path, "--plot", plot)
        assert code == 2 and out == ""
        one_error_line(err, "sweep")

    def unwritable(self, *a, **k):  # a plot that fails while it is being written
        raise OSError(30, "Read-only file system")

    import matplotlib.figure

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.figure.Figure, "savefig", unwritable)
        code, out, err = run(capfd, "sweep", path, "--plot", tmp_path / "p.png")
    assert code == 2 and out == ""
    assert "p.png: cannot be written (Read-only file system)" in one_error_line(err, "sweep")
    assert sorted(listing(tmp_path)) == ["curves.npz", "dir.png", "file"]


# -- a read-only installation --------------------------------------------------------------------
def test_read_only_installation_compiles_in_memory(tmp_path):
    """No writable cache location: NUMBA_CACHE_DIR (hence budgetopt's cache below it) under a
    regular file, which cannot be created, even as root. budgetopt imports, every kernel is
    set to compile in memory, and a kernel compiles and runs. (A whole `allocate` compiled
    without a cache takes 30-50 s on two busy cores, too long for the suite; it was run by
    hand.)"""
    (tmp_path / "file").write_text("x")
    script = textwrap.dedent("""
        import numba, numba.core.caching as caching
        import numpy as np
        import budgetopt
        from budgetopt import _kernels, _kernels_bracket, _kernels_greedy, _kernels_profile, _kernels_request
        from budgetopt import _kernels_exact, _kernels_jit
        assert _kernels_jit.cache_dir() is None
        modules = (_kernels, _kernels_bracket, _kernels_greedy, _kernels_profile, _kernels_request, _kernels_exact)
        kernels = [v for m in modules for v in vars(m).values() if isinstance(v, numba.core.registry.CPUDispatcher)]
        assert len(kernels) > 25
        assert all(isinstance(k._cache, caching.NullCache) for k in kernels)
        print(_kernels._slope(np.array([0.0, 3.0]), np.array([0, 2]), 0, 1))
    """)
    env = env_with_repo(NUMBA_CACHE_DIR=str(tmp_path / "file" / "cache"), HOME=str(tmp_path / "file"))
    env.pop("BUDGETOPT_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1.5"


# -- results behave like values ----------------------------------------------------------------
def test_allocations_compare_by_solution_not_timing(make_curves):
    curves = make_curves(4, head_shape=(3, 2), n_points=7)
    total = curves.capacity // 3
    a = budgetopt.allocate(curves, total)
    b = budgetopt.allocate(curves, total)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    slower = budgetopt.Allocation(**{**a.__dict__, "seconds": a.seconds + 5.0, "stats": {}})
    assert slower == a and hash(slower) == hash(a)
    assert a != budgetopt.allocate(curves, total + 1)
    changed = np.array(a.budgets)
    changed.flat[0] += 1
    assert a != budgetopt.Allocation(**{**a.__dict__, "budgets": changed})
    assert a != budgetopt.Allocation(**{**a.__dict__, "method": "dp"})
    assert (a == "greedy") is False
    s = budgetopt.sweep(curves, [0, total, curves.capacity])
    t = budgetopt.sweep(curves, [0, total, curves.capacity])
    assert s == t and hash(s) == hash(t)
    assert s != budgetopt.sweep(curves, [0, total + 1, curves.capacity])
    assert s[1] == budgetopt.Allocation(**{**a.__dict__, "stats": {}})


def test_blocked_head_is_an_index_tuple(make_curves):
    curves = make_curves(9, head_shape=(4, 3), n_points=9)
    found = False
    for total in range(0, curves.capacity, max(1, curves.capacity // 40)):
        blocked = budgetopt.allocate(curves, total).stats["blocked_head"]
        if blocked is None:
            continue
        found = True
        assert isinstance(blocked, tuple) and len(blocked) == 2
        assert all(isinstance(i, int) for i in blocked)
        assert 0 <= blocked[0] < 4 and 0 <= blocked[1] < 3
        curves.utility[blocked]  # usable as an index
    assert found
