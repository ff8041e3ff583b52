"""The .npz curves format: round trips, and a loader that fails only with its own errors."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetopt import BudgetoptError, Curves, CurvesFileError, load_curves, save_curves
from generators import problems, scaled


# -- round trips ------------------------------------------------------------------------------
def test_round_trip_with_meta_shared_grid(tmp_path):
    c = Curves(np.arange(12.0).reshape(2, 2, 3), [0, 4, 8], meta={"model": "llama", "sink": 4, "window": [1, 2]})
    path = tmp_path / "c.npz"
    assert save_curves(path, c) is None
    back = load_curves(path)
    assert back == c
    assert back.meta == {"model": "llama", "sink": 4, "window": [1, 2]}
    assert back.head_shape == (2, 2) and back.shared_grid


def test_round_trip_per_head_grid_and_str_path(tmp_path):
    c = Curves([[0.5, 0.25], [1.0, 2.0]], [[0, 3], [2, 2]])
    path = str(tmp_path / "c.npz")
    save_curves(path, c)
    back = load_curves(path)
    assert back == c and not back.shared_grid


def test_save_accepts_a_bare_array(tmp_path):
    save_curves(tmp_path / "c.npz", [[0.0, 1.0, 1.5]])
    back = load_curves(tmp_path / "c.npz")
    assert back == Curves([[0.0, 1.0, 1.5]])


def test_save_keeps_the_path_as_given_and_leaves_no_temp_files(tmp_path):
    save_curves(tmp_path / "curves.bin", Curves([[0.0]]))
    assert sorted(os.listdir(tmp_path)) == ["curves.bin"]
    assert load_curves(tmp_path / "curves.bin") == Curves([[0.0]])


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "c.npz"
    save_curves(path, Curves([[0.0, 1.0]]))
    save_curves(path, Curves([[0.0, 2.0]]))
    assert load_curves(path) == Curves([[0.0, 2.0]])
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_save_into_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CurvesFileError, match="does not exist"):
        save_curves(tmp_path / "nope" / "c.npz", Curves([[0.0]]))


def test_failed_write_leaves_nothing(tmp_path):
    from budgetopt.curves import write_atomic

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "x.npz", boom)
    assert os.listdir(tmp_path) == []


@given(problems(bounds=False))
@settings(max_examples=scaled(25))
def test_round_trip_random(tmp_path_factory, p):
    c = Curves(p["utility"], p["grid"], meta={"n": int(p["total_budget"])})
    path = tmp_path_factory.mktemp("rt") / "c.npz"
    save_curves(path, c)
    assert load_curves(path) == c


def test_missing_grid_key_means_arange(tmp_path):
    np.savez(tmp_path / "c.npz", utility=np.zeros((2, 4)))
    np.testing.assert_array_equal(load_curves(tmp_path / "c.npz").grid, np.arange(4))


def test_unknown_keys_are_ignored_even_object_arrays(tmp_path):
    np.savez(
        tmp_path / "c.npz",
        utility=np.zeros((1, 2)),
        extra=np.array([{"a": 1}], dtype=object),
        notes=np.array("hello"),
    )
    assert load_curves(tmp_path / "c.npz") == Curves(np.zeros((1, 2)))


def test_meta_as_bytes_json(tmp_path):
    np.savez(tmp_path / "c.npz", utility=np.zeros((1, 2)), meta=np.array(b'{"scorer": "snapkv"}'))
    assert load_curves(tmp_path / "c.npz").meta == {"scorer": "snapkv"}


# -- every failure is the package's own error, naming the file ---------------------------------
def _load_error(path, pattern=None):
    with pytest.raises(CurvesFileError, match=pattern) as info:
        load_curves(path)
    assert str(path) in str(info.value), "the message should start with the path"
    return str(info.value)


def test_missing_file(tmp_path):
    _load_error(tmp_path / "absent.npz", "no such file")


def test_directory(tmp_path):
    _load_error(tmp_path, "directory")


def test_npy_instead_of_npz(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((2, 3)))
    _load_error(tmp_path / "c.npy", r"\.npy|npz")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip file at all", b"PK\x03\x04garbage", bytes(range(256)) * 4],
    ids=["empty", "text", "zip-magic", "binary"],
)
def test_corrupt_bytes(tmp_path, content):
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    _load_error(path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
def test_truncated_archive(tmp_path, keep):
    good = tmp_path / "good.npz"
    save_curves(good, Curves(np.random.default_rng(0).random((8, 64)), meta={"m": 1}))
    data = good.read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: int(len(data) * keep)])
    _load_error(path)


def test_zip_member_with_garbage_npy(tmp_path):
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("utility.npy", b"\x93NUMPY garbage")
    _load_error(path, "utility")


def test_missing_utility_key_lists_found_keys(tmp_path):
    np.savez(tmp_path / "c.npz", utilities=np.zeros((2, 3)), grid=np.arange(3))
    msg = _load_error(tmp_path / "c.npz", "missing key 'utility'")
    assert "utilities" in msg


def test_nan_in_file_reports_location(tmp_path):
    u = np.zeros((2, 3))
    u[1, 2] = np.nan
    np.savez(tmp_path / "c.npz", utility=u)
    msg = _load_error(tmp_path / "c.npz", "`utility` must be finite")
    assert "head 1, point 2" in msg


@pytest.mark.parametrize(
    ("grid", "pattern"),
    [([0, 2, 1], "non-decreasing"), ([-1, 0, 1], "non-negative"), ([0, 1], "shape"), ([0, 0.5, 1], "whole")],
)
def test_bad_grid_in_file(tmp_path, grid, pattern):
    np.savez(tmp_path / "c.npz", utility=np.zeros((2, 3)), grid=np.asarray(grid))
    _load_error(tmp_path / "c.npz", pattern)


@pytest.mark.parametrize("key", ["utility", "grid", "meta"])
def test_object_arrays_are_refused_and_never_unpickled(tmp_path, key):
    # Unpickling this array would create `marker`; the loader must refuse it instead.
    marker = tmp_path / f"unpickled-{key}"

    class Trap:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    arrays = {"utility": np.zeros((1, 2)), "grid": np.arange(2)}
    arrays[key] = np.array([Trap(), Trap()], dtype=object)
    np.savez(tmp_path / "c.npz", **arrays)
    msg = _load_error(tmp_path / "c.npz", "object")
    assert key in msg and "unpickl" in msg
    assert not marker.exists(), "the loader unpickled an object array"


@pytest.mark.parametrize(
    "meta",
    [
        np.array("{not json"),
        np.array("[1, 2]"),
        np.array('"a string"'),
        np.array(3.0),
        np.array(["{}", "{}"]),
        np.array(b"\xff\xfe"),
    ],
    ids=["bad-json", "json-list", "json-str", "number", "str-vector", "bad-utf8"],
)
def test_bad_meta(tmp_path, meta):
    np.savez(tmp_path / "c.npz", utility=np.zeros((1, 2)), meta=meta)
    _load_error(tmp_path / "c.npz", "meta")


# -- fuzzing: any archive gives Curves or the package's own error -----------------------------
_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@st.composite
def _arrays(draw):
    kind = draw(st.sampled_from(["float", "float-nan", "int", "uint", "bool", "complex", "str", "bytes", "object"]))
    shape = draw(_shapes)
    n = int(np.prod(shape))
    if kind in ("float", "float-nan"):
        values = draw(st.lists(st.floats(allow_nan=kind == "float-nan", allow_infinity=kind == "float-nan", width=64), min_size=n, max_size=n))
        return np.asarray(values, dtype=np.float64).reshape(shape)
    if kind == "int":
        return np.asarray(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), dtype=np.int64).reshape(shape)
    if kind == "uint":
        return np.asarray(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), dtype=np.uint64).reshape(shape)
    if kind == "bool":
        return np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool).reshape(shape)
    if kind == "complex":
        return (np.arange(n) + 1j).reshape(shape)
    if kind == "str":
        return np.asarray(draw(st.lists(st.text(max_size=5), min_size=n, max_size=n)) or [""], dtype=str)[:n].reshape(shape)
    if kind == "bytes":
        return np.asarray(draw(st.lists(st.binary(max_size=5), min_size=n, max_size=n)) or [b""], dtype=bytes)[:n].reshape(shape)
    arr = np.empty(shape, dtype=object)
    for i in range(n):
        arr.flat[i] = draw(st.sampled_from([None, 1.5, "x", {"a": 1}]))
    return arr


_keys = st.one_of(st.sampled_from(["utility", "grid", "meta"]), st.text("abcxyz_", min_size=1, max_size=6))


@given(st.dictionaries(_keys, _arrays(), max_size=4))
@settings(max_examples=scaled(150))
def test_fuzz_loader_returns_curves_or_own_error(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("fuzz") / "c.npz"
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    try:
        c = load_curves(path)
    except BudgetoptError as exc:
        assert isinstance(exc, CurvesFileError), type(exc)
        assert str(path) in str(exc)
        if "utility" in arrays and any(arrays[k].dtype == object for k in ("utility", "grid", "meta") if k in arrays):
            # An object array under a key the loader reads is refused as such, before any
            # other check could look inside it.
            assert "object" in str(exc), str(exc)
        return
    # Loaded: then it is valid and reflects the file.
    assert isinstance(c, Curves)
    assert c.utility.shape == arrays["utility"].shape
    assert np.all(np.isfinite(c.utility))
    assert np.all(np.diff(c.grid2d, axis=-1) >= 0) and np.all(c.grid >= 0)
    for key in ("utility", "grid", "meta"):
        assert key not in arrays or arrays[key].dtype != object


@given(st.binary(max_size=300), st.integers(0, 400))
@settings(max_examples=scaled(60))
def test_fuzz_loader_on_mangled_bytes(tmp_path_factory, noise, where):
    # Overwrite part of a valid archive with random bytes.
    d = tmp_path_factory.mktemp("mangle")
    save_curves(d / "good.npz", Curves(np.arange(6.0).reshape(2, 3), meta={"k": "v"}))
    data = bytearray((d / "good.npz").read_bytes())
    where = min(where, len(data))
    data[where : where + len(noise)] = noise
    (d / "bad.npz").write_bytes(bytes(data))
    try:
        load_curves(d / "bad.npz")
    except BudgetoptError as exc:
        assert isinstance(exc, CurvesFileError)


def test_meta_written_as_json_string(tmp_path):
    save_curves(tmp_path / "c.npz", Curves([[0.0]], meta={"a": [1, 2]}))
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert set(z.files) == {"utility", "grid", "meta"}
        assert json.loads(str(z["meta"])) == {"a": [1, 2]}


def test_saved_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    # Regression: atomic writes went through mkstemp, so outputs were readable by root only.
    old = os.umask(0o022)
    try:
        save_curves(tmp_path / "c.npz", Curves([[0.0, 1.0]]))
    finally:
        os.umask(old)
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o644
