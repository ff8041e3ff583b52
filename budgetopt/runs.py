"""Profile run directories: what ``budgetopt profile`` writes, and loading (merging) them.

A run directory holds::

    RUN/
      meta.json                        the run's settings (model, scorer, sink, window, ...)
      pairs/c{ctx:05d}_q{q:03d}.npz    one per finished (context, question) pair
      probes/c{ctx:05d}_p{p:03d}.npz   one per finished (context, probe), when the
                                       calibration file has probes

Each pair file holds float32 ``oracle``, ``scores`` and ``value_norms`` arrays of shape
``(layers, kv_heads, T)`` (``T``: that context's tokens) and ``meta``, a JSON object. Every
file is written atomically (a temporary file, synced, renamed into place), so a pair file
that exists is a finished pair: resuming skips exactly those. Pair ``i`` in global order
(contexts in calibration order, their questions in order) belongs to shard ``K/N`` when
``i % N == K``.

Probes (generic queries of the calibration file, :mod:`budgetopt.calibration`) are profiled
like questions and stored beside the pairs, under the same identity rules, in ``probes/``;
``meta.json`` then records ``"probes"`` (probes per context) and ``"probe_tokens"`` (their
decode steps per context); runs without probes record neither, so their identity is what it
was. Probes are never pairs: :func:`load_profile_run` and every table built from a run read
``pairs/`` only; :func:`load_probe_run` reads ``probes/``. Probe ``i`` in global probe order
belongs to shard ``K/N`` when ``i % N == K``.

A run has an identity, ``meta["run_id"]``: a hash of every setting that makes its arrays
what they are (the model's fingerprint, scorer, profiling settings, calibration hash; not
the device, versions, shard or file paths). ``meta.json`` is written first, every pair file
carries the ``run_id`` of the run it was written for, and writers and readers check it: a
pair of another run is never resumed, merged or read. While a process writes a run it holds
a lock (``RUN/.lock``, ``flock``; it dies with the process), and a second writer is refused.

Everything here is numpy and the standard library; the profiling itself (torch) lives in
:mod:`budgetopt.torch.profiling.run`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import check_input_file, check_output_dir, loads_json, read_npz, write_atomic
from .curves import Curves
from .errors import CurvesFileError, InvalidInputError, InvalidTypeError

__all__ = ["ProfileRun", "load_profile_run", "load_probe_run", "parse_shard", "lukv_table_from_run",
           "curves_from_run"]

#: ``meta.json["format"]`` of the run directories this module reads and writes.
FORMAT = "budgetopt-profile/1"
#: ``"format"`` of the JSON file written beside a table built from runs.
TABLE_FORMAT = "budgetopt-lukv-table/1"

#: Most pairs a run may hold (a run is a calibration set, not a corpus); guards readers of meta.json.
MAX_RUN_PAIRS = 10**6
#: Largest meta.json read.
MAX_META_BYTES = 16 * 2**20

_PAIR_FILE = re.compile(r"^c(\d{5,})_q(\d{3,})\.npz$")
_PROBE_FILE = re.compile(r"^c(\d{5,})_p(\d{3,})\.npz$")
#: ``(folder, file-name pattern, pair meta field, meta.json count field)`` of pairs and of probes.
_KINDS = {"pairs": ("pairs", _PAIR_FILE, "question", "questions"),
          "probes": ("probes", _PROBE_FILE, "probe", "probes")}
_MEMBERS = ("oracle", "scores", "value_norms")
# Settings that may differ between shards of one run: where each shard ran and which shard it is.
_PER_MACHINE = ("shard", "device", "versions")


def pair_file_name(context, question):
    """``c{context:05d}_q{question:03d}.npz``."""
    return f"c{context:05d}_q{question:03d}.npz"


def probe_file_name(context, probe):
    """``c{context:05d}_p{probe:03d}.npz``."""
    return f"c{context:05d}_p{probe:03d}.npz"


def parse_shard(value, *, ref="`shard`"):
    """``(K, N)`` from ``"K/N"`` (or a ``(K, N)`` pair), ``None`` for ``None``; errors name
    the value ``ref``.

    Examples
    --------
    >>> parse_shard("1/4")
    (1, 4)
    >>> parse_shard(None) is None
    True
    """
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not match:
            raise InvalidInputError(f"{ref} must look like K/N (for example 0/4); got {value!r}")
        k, n = int(match.group(1)), int(match.group(2))
    else:
        try:
            k, n = value
        except (TypeError, ValueError):
            raise InvalidTypeError(f"{ref} must be 'K/N' or a (K, N) pair; got {value!r}") from None
        if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in (k, n)):
            raise InvalidTypeError(f"{ref} must hold two integers; got {value!r}")
        k, n = int(k), int(n)
    if n < 1 or not 0 <= k < n:
        raise InvalidInputError(f"{ref} K/N needs N >= 1 and 0 <= K < N; got {k}/{n}")
    return k, n


def shard_label(shard):
    """``"K/N"`` for a parsed shard, ``None`` for ``None``."""
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def in_shard(index, shard):
    """Whether global pair ``index`` belongs to ``shard`` (``None``: every pair)."""
    return shard is None or index % shard[1] == shard[0]


def _identity(meta):
    """``meta`` without the settings shards may differ in (shard, device, versions, paths)."""
    out = {k: v for k, v in meta.items() if k not in _PER_MACHINE and k != "run_id"}
    for key in ("model", "calibration"):
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k != "path"}
    return out


def run_id(meta):
    """The identity of a run: a hash of its settings (:func:`_identity`, without ``run_id``).

    Two runs share it exactly when resuming one with the other's settings is allowed, so
    shards of one run share it and a run with any other setting (model fingerprint, scorer,
    calibration, ...) does not."""
    text = json.dumps(_identity(meta), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# -- the writer's lock -------------------------------------------------------------------------
LOCK_NAME = ".lock"


class RunLock:
    """An exclusive lock on a run directory, held while one process writes it.

    ``flock`` on ``RUN/.lock``: the kernel releases it when the process ends, however it
    ends, so a crashed writer never leaves the run locked. Where ``fcntl`` does not exist
    (Windows) nothing is locked. Use :func:`lock_run_dir`; release with :meth:`release` or
    ``with``.
    """

    def __init__(self, run_dir, fd, created):
        self.run_dir = os.path.realpath(os.fspath(run_dir))
        self._fd = fd
        self._created = created

    def release(self):
        """Drop the lock. A lock file this lock created is removed again when the directory
        holds no run (no ``meta.json``): a refused or failed start leaves nothing behind."""
        if self._fd is not None:
            if self._created and not os.path.exists(os.path.join(self.run_dir, "meta.json")):
                try:
                    os.unlink(os.path.join(self.run_dir, LOCK_NAME))
                except OSError:
                    pass
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def check(self, run_dir):
        """Raise unless this lock is held and is ``run_dir``'s."""
        if self._fd is None and _fcntl() is not None or self.run_dir != os.path.realpath(os.fspath(run_dir)):
            raise InvalidInputError(f"{run_dir}: the lock given is not held on this run directory")


def _fcntl():
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return None
    return fcntl


def lock_run_dir(run_dir):
    """Create ``run_dir`` if needed and lock it for writing; :class:`InvalidInputError` if
    another process (or another writer in this one) holds it.

    Returns a :class:`RunLock`."""
    run_dir = check_output_dir(run_dir)
    try:
        run_dir.mkdir(exist_ok=True)
        path = run_dir / LOCK_NAME
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise CurvesFileError(f"{path}: is not a regular file (budgetopt's lock file for this run)")
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise CurvesFileError(f"{run_dir}: cannot be locked for writing ({exc.strerror or exc})") from None
    fcntl = _fcntl()
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            os.close(fd)
            raise InvalidInputError(
                f"{run_dir}: another process (pid {holder}) is writing this run; wait for it to finish, "
                "or use another directory"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError:
            pass
    return RunLock(run_dir, fd, created)


def _difference(a, b, prefix=""):
    """The first key (dotted) where two JSON objects differ, with both values."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            show = lambda v: json.dumps(v) if len(json.dumps(v)) <= 60 else json.dumps(v)[:57] + "..."
            return f"{prefix}{key}: {show(va)} vs {show(vb)}"
    return None


# -- writing -------------------------------------------------------------------------------
def read_run_meta(run_dir):
    """The ``meta.json`` of ``run_dir`` as a dict, or :class:`CurvesFileError`.

    Every field a reader uses is checked (:func:`check_run_meta`); the file must be a regular
    file of at most 16 MiB holding standard JSON nested at most 64 deep."""
    run_dir = Path(run_dir)
    path = run_dir / "meta.json"
    if not run_dir.is_dir():
        raise CurvesFileError(f"{run_dir}: no such profile run directory")
    if not path.exists():
        raise CurvesFileError(f"{run_dir}: not a profile run directory (no meta.json)")
    check_input_file(path, "profile run's meta.json")
    if path.stat().st_size > MAX_META_BYTES:
        raise CurvesFileError(f"{path}: {path.stat().st_size} bytes; a run's meta.json holds at most {MAX_META_BYTES}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CurvesFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    meta = loads_json(data, str(path))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CurvesFileError(f"{path}: not a budgetopt profile run (format {found!r}, expected {FORMAT!r})")
    check_run_meta(meta, path)
    return meta


def _is_count(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < 2**62


def check_run_meta(meta, path):
    """Check the fields of a run's ``meta.json`` that readers use; ``path`` names the file.

    ``layers`` and ``kv_heads`` are whole numbers >= 1; ``n_pairs`` a whole number in
    ``[1, MAX_RUN_PAIRS]``; ``questions`` (optional) a list of whole numbers >= 1 adding up to
    ``n_pairs``; ``context_tokens`` (optional) one whole number >= 1 per context; ``sink`` and
    ``window`` whole numbers >= 0 or null; ``scorer``, ``model`` and ``calibration``
    objects; ``run_id`` a string; ``shard`` null, ``"K/N"`` or a list of those (a merged run).
    A wrong field raises :class:`CurvesFileError` naming the file and the field.
    """

    def bad(field, rule, value):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise CurvesFileError(f"{path}: field {field!r} must be {rule}; got {shown}")

    for key in ("layers", "kv_heads", "n_pairs"):
        if key not in meta:
            raise CurvesFileError(f"{path}: missing key {key!r}")
    for key in ("layers", "kv_heads"):
        if not _is_count(meta[key], 1) or meta[key] > 2**20:
            bad(key, "a whole number in [1, 2**20]", meta[key])
    if not _is_count(meta["n_pairs"], 1) or meta["n_pairs"] > MAX_RUN_PAIRS:
        bad("n_pairs", f"a whole number in [1, {MAX_RUN_PAIRS}]", meta["n_pairs"])
    questions = meta.get("questions")
    if "questions" in meta:
        if (not isinstance(questions, list) or not questions or len(questions) > MAX_RUN_PAIRS
                or not all(_is_count(n, 1) for n in questions)):
            bad("questions", "a non-empty list of whole numbers >= 1 (questions per context)", questions)
        if sum(questions) != meta["n_pairs"]:
            bad("questions", f"a list adding up to n_pairs = {meta['n_pairs']}", questions)
    if "n_contexts" in meta and questions is not None and meta["n_contexts"] != len(questions):
        bad("n_contexts", f"the length of 'questions' ({len(questions)})", meta["n_contexts"])
    if "context_tokens" in meta:
        tokens = meta["context_tokens"]
        n = len(questions) if questions is not None else None
        if (not isinstance(tokens, list) or (n is not None and len(tokens) != n) or len(tokens) > MAX_RUN_PAIRS
                or not all(_is_count(t, 1) for t in tokens)):
            rule = "a list of whole numbers >= 1" + (f", one per context ({n})" if n is not None else "")
            bad("context_tokens", rule, tokens)
    for key in ("probes", "probe_tokens"):
        if key in meta:
            value = meta[key]
            n = len(questions) if questions is not None else None
            if (not isinstance(value, list) or (n is not None and len(value) != n) or len(value) > MAX_RUN_PAIRS
                    or not all(_is_count(v) for v in value)):
                bad(key, "a list of whole numbers >= 0" + (f", one per context ({n})" if n is not None else ""),
                    value)
    for key in ("sink", "window"):
        if meta.get(key) is not None and not _is_count(meta[key]):
            bad(key, "a whole number >= 0 or null", meta[key])
    if "run_id" in meta and not isinstance(meta["run_id"], str):
        bad("run_id", "a string", meta["run_id"])
    for key in ("scorer", "model", "calibration"):
        if key in meta and not isinstance(meta[key], dict):
            bad(key, "a JSON object", meta[key])
    if isinstance(meta.get("scorer"), dict) and not isinstance(meta["scorer"].get("name", ""), str):
        bad("scorer.name", "a string", meta["scorer"]["name"])
    shard = meta.get("shard")
    shards = shard if isinstance(shard, list) else [shard]
    for one in shards:
        if one is not None:
            try:
                parse_shard(one if isinstance(one, str) else None)
            except InvalidInputError:
                one = None
                bad("shard", "null or 'K/N'", shard)
            if not isinstance(one, str):
                bad("shard", "null or 'K/N'", shard)


def open_run_dir(run_dir, meta, *, resume=True, lock=None):
    """Create or reopen a run directory for writing; returns the finished ``{(c, q), ...}``
    (finished probes as ``("probe", c, p)``).

    A new directory (or an empty existing one) gets ``meta.json`` (with its ``run_id``,
    :func:`run_id`, added to ``meta``). An existing run is resumed when ``resume`` is true
    and its settings equal ``meta`` (apart from the device, versions and file paths), and
    every pair file in it must then belong to this run (its ``run_id``); with
    ``resume=False`` its pair files are deleted first. Leftover temporary files of an
    interrupted write are removed. A non-empty directory that is not a run is refused.

    ``lock``: the :class:`RunLock` the caller holds on ``run_dir`` for the whole run (see
    :func:`lock_run_dir`); without one, the directory is locked for this call only. Either
    way a run that another process is writing is refused.
    """
    own = lock is None
    if own:
        lock = lock_run_dir(run_dir)
    try:
        lock.check(run_dir)
        return _open_locked(Path(run_dir), meta, resume)
    finally:
        if own:
            lock.release()


def _open_locked(run_dir, meta, resume):
    pairs = run_dir / "pairs"
    meta["run_id"] = run_id(meta)
    if any(entry.name != LOCK_NAME for entry in os.scandir(run_dir)):
        old = read_run_meta(run_dir) if (run_dir / "meta.json").exists() else None
        if old is None:
            raise CurvesFileError(
                f"{run_dir}: is not empty and not a profile run directory (no meta.json); "
                "choose a new or empty directory"
            )
        if resume:
            diff = _difference(_identity(old), _identity(meta)) or (
                None if old.get("shard") == meta.get("shard") else
                f"shard: {json.dumps(old.get('shard'))} vs {json.dumps(meta.get('shard'))}"
            )
            if diff:
                raise InvalidInputError(
                    f"{run_dir}: holds a run with other settings ({diff}); use a new directory, "
                    "or --no-resume / resume=False to start it over"
                )
    else:
        old = None
    expected = meta["run_id"]  # pairs already there must be this run's
    if resume and old is not None and old.get("run_id") is None:
        del meta["run_id"]  # a run written before run identities: it stays one, with nothing to check
        expected = None
    pairs.mkdir(parents=True, exist_ok=True)
    finished = set()
    stale = []
    for kind, (folder, pattern, field, _) in _KINDS.items():
        if not (run_dir / folder).is_dir():
            continue
        for entry in os.scandir(run_dir / folder):
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                stale.append(entry.path)  # a write that never finished (no writer holds the lock)
                continue
            match = pattern.match(entry.name)
            if match:
                if resume:
                    key = (int(match.group(1)), int(match.group(2)))
                    _check_pair_identity(Path(entry.path), key, expected, field)
                    finished.add(key if kind == "pairs" else ("probe", *key))
                else:
                    stale.append(entry.path)
    for path in stale:
        os.unlink(path)
    text = json.dumps(meta, indent=1) + "\n"
    write_atomic(run_dir / "meta.json", lambda f: f.write(text.encode("utf-8")))
    return finished


def _check_pair_identity(path, key, expected, field="question"):
    """Refuse the pair file ``path`` unless it is a regular file written for the run whose
    ``run_id`` is ``expected`` (None: nothing to check)."""
    if not path.is_file():
        raise CurvesFileError(f"{path}: is not a regular file (a pair file must be one)")
    if expected is None:
        return
    text = read_npz(path, ("meta",), max_bytes_of={"meta": MAX_META_BYTES}).get("meta")
    if text is None or text.dtype.kind != "U" or text.ndim != 0:
        raise CurvesFileError(f"{path}: member 'meta' must be one JSON string")
    pair_meta = loads_json(str(text.item()), f"{path}: member 'meta' is not a JSON string")
    found = pair_meta.get("run_id") if isinstance(pair_meta, dict) else None
    if found != expected:
        raise InvalidInputError(
            f"{path}: belongs to another run (run_id {found!r}, this run's is {expected!r}); "
            "pairs of runs with other settings are never mixed (remove the file, or start over)"
        )
    if (pair_meta.get("context"), pair_meta.get(field)) != key:
        raise CurvesFileError(f"{path}: its meta does not name context {key[0]}, {field} {key[1]}")


def write_pair(run_dir, context, question, *, oracle, scores, value_norms, meta, lock=None, probe=False):
    """Write one pair file atomically (float32 arrays, JSON meta; nothing pickled).

    ``probe=True``: the file of probe ``question`` of the context, in ``probes/``.

    The run's identity is checked first: when ``meta`` carries a ``run_id`` it must be the
    one in the run's ``meta.json`` (the run was not replaced meanwhile); the pair file
    carries the run's ``run_id`` either way. Without
    ``lock`` (the caller's :class:`RunLock`) the run is locked for this write, so no pair
    is written while another process writes the run."""
    own = lock is None
    if own:
        lock = lock_run_dir(run_dir)
    try:
        lock.check(run_dir)
        wanted = meta.get("run_id")
        current = read_run_meta(run_dir).get("run_id")
        if wanted is not None and current != wanted:
            raise InvalidInputError(
                f"{run_dir}: its meta.json now describes another run (run_id {current!r}, this writer's is "
                f"{wanted!r}); the pair is not written"
            )
        if current is not None:
            meta = {**meta, "run_id": current}  # every pair carries its run's identity
        arrays = {}
        for name, value in (("oracle", oracle), ("scores", scores), ("value_norms", value_norms)):
            arrays[name] = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
        text = np.array(json.dumps(meta))
        if probe:
            (Path(run_dir) / "probes").mkdir(exist_ok=True)
            path = Path(run_dir) / "probes" / probe_file_name(context, question)
        else:
            path = Path(run_dir) / "pairs" / pair_file_name(context, question)
        write_atomic(path, lambda f: np.savez(f, meta=text, **arrays))
        return path
    finally:
        if own:
            lock.release()


# -- reading -------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ProfileRun:
    """Oracle and scorer arrays of a profile run, in global pair order.

    Attributes
    ----------
    meta : dict
        The run's ``meta.json`` (``shard`` is ``None`` when every pair is present).
    pairs : tuple of (int, int)
        ``(context, question)`` of each pair held, in global order.
    oracles, scores, value_norms : tuple of numpy.ndarray
        float32 ``(layers, kv_heads, T)`` per pair. The questions of one context share one
        ``scores`` and one ``value_norms`` array object (they come from the same prefill).
    pair_meta : tuple of dict
        Each pair file's ``meta`` (token counts, generated tokens, seconds).
    missing : tuple of (int, int)
        Pairs of the run that are not held (only with ``partial=True``).
    probes : ProfileRun or None
        The run's probes (``(context, probe)`` pairs), when ``profile_model`` returned it for a
        calibration file with probes; None otherwise (read them with :func:`load_probe_run`).
    """

    meta: dict
    pairs: tuple
    oracles: tuple
    scores: tuple
    value_norms: tuple
    pair_meta: tuple
    missing: tuple = ()
    probes: object = None

    @property
    def head_shape(self):
        """``(layers, kv_heads)``."""
        return (int(self.meta["layers"]), int(self.meta["kv_heads"]))

    def __repr__(self):
        return (
            f"ProfileRun(pairs={len(self.pairs)}, head_shape={self.head_shape}, "
            f"scorer={self.meta.get('scorer', {}).get('name')!r}, missing={len(self.missing)})"
        )


def all_pairs(meta, found=(), *, count_field="questions"):
    """Every ``(context, question)`` of a run, in global order.

    From ``meta["questions"]`` (questions per context) when the run records it; otherwise
    (a run written by another tool, which need not record it) the pairs ``found`` on disk.
    ``count_field="probes"``: every ``(context, probe)`` likewise."""
    if count_field in meta:
        return [(c, q) for c, n in enumerate(meta[count_field]) for q in range(int(n))]
    return sorted(set(found))


def _read_pair(path, context, question, meta, need_context_arrays, length=None, field="question"):
    """``(oracle, scores or None, value_norms or None, pair meta)`` of one pair file.

    ``length`` is the context's token count when known (from ``meta["context_tokens"]`` or
    the context's first pair); otherwise the oracle's own."""
    if length is None and "context_tokens" in meta:
        length = int(meta["context_tokens"][context])
    wanted = _MEMBERS if need_context_arrays else ("oracle",)
    limits = None
    if length is not None:  # the shape is known: refuse a larger member before inflating it
        # (room for 8-byte floats, so that a float64 array of the right shape gets its own message)
        expected = int(meta["layers"]) * int(meta["kv_heads"]) * int(length) * 8
        limits = {name: expected for name in wanted}
        limits["meta"] = MAX_META_BYTES
    archive = read_npz(path, (*wanted, "meta"), max_bytes_of=limits)
    missing = [m for m in (*wanted, "meta") if m not in archive]
    if missing:
        raise CurvesFileError(f"{path}: missing member(s) {', '.join(missing)}")
    out = {}
    shape = None
    for name in wanted:
        arr = archive[name]
        if shape is None:
            t = length if length is not None else (arr.shape[-1] if arr.ndim == 3 else -1)
            shape = (int(meta["layers"]), int(meta["kv_heads"]), int(t))
        if arr.dtype != np.float32 or arr.shape != shape:
            raise CurvesFileError(
                f"{path}: member {name!r} must be float32 of shape {shape} (layers, kv_heads, "
                f"context tokens); got {arr.dtype} {arr.shape}"
            )
        out[name] = arr
    text = archive["meta"]
    if text.dtype.kind != "U" or text.ndim != 0:
        raise CurvesFileError(f"{path}: member 'meta' must be one JSON string; got {text.dtype} {text.shape}")
    pair_meta = loads_json(str(text.item()), f"{path}: member 'meta' is not a JSON string")
    if not isinstance(pair_meta, dict) or (pair_meta.get("context"), pair_meta.get(field)) != (context, question):
        raise CurvesFileError(f"{path}: its meta does not name context {context}, {field} {question}")
    if meta.get("run_id") is not None and pair_meta.get("run_id") != meta["run_id"]:
        raise InvalidInputError(
            f"{path}: belongs to another run (run_id {pair_meta.get('run_id')!r}, the run's is "
            f"{meta['run_id']!r}); pairs of runs with other settings are never mixed"
        )
    return out["oracle"], out.get("scores"), out.get("value_norms"), pair_meta


def load_profile_run(*paths, partial=False):
    """Load one profile run directory, or merge the directories of a sharded run.

    Parameters
    ----------
    *paths : str or os.PathLike
        Run directories written by ``budgetopt profile`` / ``profile_model``: one run, or its
        shards (in any order). Their ``meta.json`` must agree apart from ``shard``, the
        device, versions and file paths (shards may run on different machines).
    partial : bool, optional
        False (default): every pair of the run must be present exactly once. True: missing
        pairs are allowed (listed in :attr:`ProfileRun.missing`), for example one shard on
        its own or a run still in progress.

    Returns
    -------
    ProfileRun
        Pairs in global order, whatever the shards; the same arrays as one unsharded run.

    Raises
    ------
    CurvesFileError
        A directory is not a run, a pair file is unreadable or has the wrong shape or dtype,
        or holds a pickled object (never unpickled).
    InvalidInputError
        The runs disagree (the message names the first differing setting), a pair is held
        twice, or pairs are missing (without ``partial``).

    Notes
    -----
    Reads each oracle once, and ``scores`` / ``value_norms`` once per context (from the
    context's first pair held). Memory: all oracles of the run, plus one scores and one
    value-norm array per context.

    Examples
    --------
    >>> import os, tempfile
    >>> run = os.path.join(tempfile.mkdtemp(), "run")
    >>> meta = {"format": FORMAT, "layers": 1, "kv_heads": 2, "questions": [2],
    ...         "context_tokens": [5], "n_pairs": 2, "shard": None}
    >>> open_run_dir(run, meta)
    set()
    >>> for q in range(2):
    ...     a = np.full((1, 2, 5), 0.1 * (q + 1), np.float32)
    ...     _ = write_pair(run, 0, q, oracle=a, scores=a, value_norms=a,
    ...                    meta={"context": 0, "question": q})
    >>> r = load_profile_run(run)
    >>> r.pairs, r.oracles[1].shape, r.scores[0] is r.scores[1]
    (((0, 0), (0, 1)), (1, 2, 5), True)
    """
    return _load_run(paths, partial, "pairs")


def load_probe_run(*paths, partial=False):
    """The probes of a profile run (or of its shards), as a :class:`ProfileRun`.

    As :func:`load_profile_run`, but its ``pairs`` are ``(context, probe)`` and its oracles
    those of the calibration file's probes (``probes/``), profiled like questions with each
    line's ``probe_tokens`` decode steps; ``scores`` and ``value_norms`` are the context's.
    A run without probes gives an empty :class:`ProfileRun`.

    Raises
    ------
    CurvesFileError, InvalidInputError
        As :func:`load_profile_run`.

    Examples
    --------
    >>> import os, tempfile
    >>> run = os.path.join(tempfile.mkdtemp(), "run")
    >>> meta = {"format": FORMAT, "layers": 1, "kv_heads": 1, "questions": [1], "probes": [2],
    ...         "probe_tokens": [8], "context_tokens": [4], "n_pairs": 1, "shard": None}
    >>> open_run_dir(run, meta)
    set()
    >>> a = np.ones((1, 1, 4), np.float32)
    >>> _ = write_pair(run, 0, 0, oracle=a, scores=a, value_norms=a, meta={"context": 0, "question": 0})
    >>> for p in range(2):
    ...     _ = write_pair(run, 0, p, oracle=a * p, scores=a, value_norms=a,
    ...                    meta={"context": 0, "probe": p}, probe=True)
    >>> load_profile_run(run).pairs, load_probe_run(run).pairs
    (((0, 0),), ((0, 0), (0, 1)))
    """
    return _load_run(paths, partial, "probes")


def _load_run(paths, partial, kind):
    folder_name, pattern, field, count_field = _KINDS[kind]
    if not paths:
        raise InvalidInputError("`paths` must name at least one profile run directory")
    if not isinstance(partial, (bool, np.bool_)):
        raise InvalidTypeError(f"`partial` must be True or False; got {partial!r}")
    metas = [read_run_meta(p) for p in paths]
    for p, m in zip(paths[1:], metas[1:]):
        diff = _difference(_identity(metas[0]), _identity(m))
        if diff:
            raise InvalidInputError(f"{p}: is not a shard of the same run as {paths[0]} ({diff})")
    meta = dict(metas[0])
    if kind == "probes" and "probes" not in meta:
        meta["probes"] = [0] * len(meta["questions"]) if "questions" in meta else []
    recorded = count_field in meta
    expected_set = set(all_pairs(meta, count_field=count_field)) if recorded else None
    where = {}
    for p in paths:
        pairs_dir = Path(p) / folder_name
        if not pairs_dir.is_dir():
            continue
        for entry in sorted(os.listdir(pairs_dir)):
            match = pattern.match(entry)
            if not match:
                continue
            if not (pairs_dir / entry).is_file():  # a FIFO or device would block or never end
                raise CurvesFileError(f"{pairs_dir / entry}: is not a regular file (a pair file must be one)")
            key = (int(match.group(1)), int(match.group(2)))
            if recorded and key not in expected_set:
                raise CurvesFileError(
                    f"{pairs_dir / entry}: context {key[0]}, {field} {key[1]} is not a {'pair' if kind == 'pairs' else 'probe'} "
                    "of this run "
                    f"({len(meta[count_field])} contexts)"
                )
            if key in where:
                raise InvalidInputError(
                    f"pair {entry} is in both {where[key][0]} and {p}; give each shard once"
                )
            where[key] = (p, pairs_dir / entry)
    expected = all_pairs(meta, where, count_field=count_field)
    missing = tuple(k for k in expected if k not in where)
    name_of = pair_file_name if kind == "pairs" else probe_file_name
    if missing and not partial:
        shown = ", ".join(name_of(*k) for k in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise InvalidInputError(
            f"{len(missing)} of {len(expected)} {kind} are missing ({shown}); give every shard's "
            "directory, finish the run, or pass partial=True"
        )
    complete = not missing and (recorded or len(where) == int(meta["n_pairs"]))
    if not complete and not partial:  # without per-context question counts, which is unknown
        raise InvalidInputError(
            f"{int(meta['n_pairs']) - len(where)} of {int(meta['n_pairs'])} pairs are missing (the run's "
            "meta.json does not record which); give every shard's directory, finish the run, or pass partial=True"
        )
    held = [k for k in expected if k in where]
    oracles, scores, norms, pair_meta = [], [], [], []
    per_context = {}
    for c, q in held:
        first = c not in per_context
        length = None if first else per_context[c][0].shape[-1]
        oracle, s, v, pm = _read_pair(where[(c, q)][1], c, q, meta, first, length, field)
        if first:
            s.setflags(write=False)
            v.setflags(write=False)
            per_context[c] = (s, v)
        oracle.setflags(write=False)
        oracles.append(oracle)
        scores.append(per_context[c][0])
        norms.append(per_context[c][1])
        pair_meta.append(pm)
    if complete:
        meta["shard"] = None
    elif len(paths) > 1:
        meta["shard"] = [m.get("shard") for m in metas]
    return ProfileRun(
        meta=meta, pairs=tuple(held), oracles=tuple(oracles), scores=tuple(scores),
        value_norms=tuple(norms), pair_meta=tuple(pair_meta), missing=missing,
    )


# -- from a run to tables and curves ---------------------------------------------------------
def _sink_window(run, sink, window):
    sink = run.meta.get("sink") if sink is None else sink
    window = run.meta.get("window") if window is None else window
    if sink is None or window is None:
        raise InvalidInputError("`sink` and `window` must be given (the run's meta.json does not record them)")
    return sink, window


def _example_run(oracle):
    """A new run directory (in a temporary folder) holding one pair whose oracle, scores and
    value norms are ``oracle`` ``(layers, kv_heads, T)``, with sink 1 and window 1: a stand-in
    for ``budgetopt profile`` in the examples."""
    import tempfile

    layers, kv_heads, tokens = oracle.shape
    run_dir = os.path.join(tempfile.mkdtemp(), "run")
    open_run_dir(run_dir, {"format": FORMAT, "layers": layers, "kv_heads": kv_heads, "questions": [1],
                           "context_tokens": [tokens], "n_pairs": 1, "sink": 1, "window": 1})
    write_pair(run_dir, 0, 0, oracle=oracle, scores=oracle, value_norms=oracle, meta={"context": 0, "question": 0})
    return run_dir


def _check_run(run):
    if not isinstance(run, ProfileRun):
        raise InvalidTypeError(f"`run` must be a ProfileRun (see load_profile_run); got {type(run).__name__}")
    if not run.pairs:
        raise InvalidInputError("`run` holds no pairs")


def lukv_table_from_run(run, *, sink=None, window=None, min_keep_fraction=0.01, layerwise=True,
                        aggregate="mean_ratio", workers=1, progress=None):
    """The LU-KV table ``(99, layers, kv_heads)`` of a profile run, and its JSON description.

    :func:`budgetopt.lukv_table` over the run's pairs (each context's scores ranked once).
    ``sink`` and ``window`` default to the run's; the other parameters are those of
    :func:`budgetopt.lukv_table`. Contexts may differ in length with ``"mean_ratio"``
    (ratios are averaged); ``"mean_curve"`` needs one length.

    Returns
    -------
    table : numpy.ndarray of float64, shape ``(99, layers, kv_heads)``
    meta : dict
        What the table was built from: model, scorer, sink, window, calibration (path and
        sha256), the run's profiling settings and the table settings; save it beside the table
        (:func:`save_table_with_meta`).

    Examples
    --------
    ``_example_run`` writes a one-pair run directory (the oracle also as scores), as in
    :func:`load_profile_run`'s example:

    >>> run_dir = _example_run(np.linspace(0, 1, 20, dtype=np.float32).reshape(1, 2, 10))
    >>> table, info = lukv_table_from_run(load_profile_run(run_dir))
    >>> table.shape, info["sink"], info["pairs"]
    ((99, 1, 2), 1, 1)
    """
    from .lukv import lukv_table

    _check_run(run)
    sink, window = _sink_window(run, sink, window)
    table = lukv_table(
        list(run.oracles), list(run.scores), sink=sink, window=window,
        min_keep_fraction=min_keep_fraction, layerwise=layerwise, aggregate=aggregate,
        progress=progress, workers=workers,
    )
    meta = _derived_meta(run, sink, window)
    meta.update(
        format=TABLE_FORMAT,
        shape=list(table.shape),
        lukv={"min_keep_fraction": float(min_keep_fraction), "layerwise": bool(layerwise), "aggregate": aggregate},
    )
    return table, meta


def curves_from_run(run, *, sink=None, window=None, aggregate="mean_curve", resolution=None):
    """Utility curves of a profile run: the mean (or median) over its pairs.

    Each pair's curves are :func:`budgetopt.curves_from_scores` of its oracle and its
    context's scores. ``sink`` and ``window`` default to the run's.

    Contexts of one token count give a token grid, as before. Contexts of different token
    counts (real calibration text) give a **relative grid**: point ``k`` keeps ``k /
    resolution`` of each context, each pair's curve resampled there before the pairs are
    combined (:func:`budgetopt.curves_from_pairs` describes the grid, its first point and its
    ``meta``). ``resolution`` asks for a relative grid whatever the lengths.

    Parameters
    ----------
    run : ProfileRun
    sink, window : int, optional
    aggregate : {"mean_curve", "median_curve"}, optional
    resolution : int, optional
        Points of the relative grid (default 1000 where the contexts differ in length).

    Returns
    -------
    Curves
        With ``meta`` describing the run (model, scorer, calibration, settings) and the grid:
        ``length`` for a token grid; ``"grid": "relative"``, ``resolution``, ``min_length``
        and ``max_length`` for a relative one. Budgets allocated on a relative grid are
        applied to a context of any length with ``head_capacity=resolution``.

    Examples
    --------
    ``_example_run`` writes a one-pair run directory (the oracle also as scores), as in
    :func:`load_profile_run`'s example:

    >>> run_dir = _example_run(np.array([[[0.1, 0.5, 0.2, 0.2]]], np.float32))
    >>> c = curves_from_run(load_profile_run(run_dir))
    >>> c.grid.tolist(), np.round(c.utility, 3).tolist()
    ([2, 3, 4], [[[0.3, 0.8, 1.0]]])
    >>> r = curves_from_run(load_profile_run(run_dir), resolution=4)   # quarters of the context
    >>> r.grid.tolist(), np.round(r.utility, 3).tolist(), r.meta["resolution"]
    ([2, 3, 4], [[[0.3, 0.8, 1.0]]], 4)
    """
    from .profile import DEFAULT_RESOLUTION, check_resolution, curves_from_scores, relative_curves

    _check_run(run)
    if aggregate not in ("mean_curve", "median_curve"):
        raise InvalidInputError(f"`aggregate` must be 'mean_curve' or 'median_curve'; got {aggregate!r}")
    if resolution is not None:
        resolution = check_resolution(resolution)
    sink, window = _sink_window(run, sink, window)
    lengths = [int(o.shape[-1]) for o in run.oracles]
    meta = _derived_meta(run, sink, window)
    meta["aggregate"] = aggregate
    if resolution is not None or len(set(lengths)) > 1:
        short = min(lengths)
        if short <= sink + window:
            raise InvalidInputError(
                f"`sink` + `window` ({sink} + {window}) must be below every context's token count; "
                f"the shortest context has {short}"
            )
        return relative_curves(zip(run.oracles, run.scores), lengths, sink=sink, window=window,
                               resolution=DEFAULT_RESOLUTION if resolution is None else resolution,
                               aggregate=aggregate, meta=meta)
    utilities, grid = [], None
    for oracle, scores in zip(run.oracles, run.scores):
        curves = curves_from_scores(oracle, scores, sink=sink, window=window)
        utilities.append(curves.utility)
        grid = curves.grid
    stack = np.stack(utilities)
    utility = stack.mean(axis=0) if aggregate == "mean_curve" else np.median(stack, axis=0)
    meta.update(length=lengths[0])
    return Curves(utility, grid, meta=meta)


def _derived_meta(run, sink, window):
    """The description of what a table or curves came from."""
    from . import __version__

    m = run.meta
    keys = ("model", "scorer", "calibration", "max_new_tokens", "head_reduce", "step_reduce",
            "sampling", "temperature", "seed", "dtype", "tokenization", "layers", "kv_heads", "heads", "run_id")
    return {
        "sink": int(sink),
        "window": int(window),
        **{k: m[k] for k in keys if k in m},
        "profile_sink": m.get("sink"),
        "profile_window": m.get("window"),
        "pairs": len(run.pairs),
        "contexts": len({c for c, _ in run.pairs}),
        "complete": not run.missing,
        "budgetopt_version": __version__,
    }


def table_meta_path(table_path):
    """Where the JSON description of ``table.npy`` goes: ``table.json`` beside it."""
    p = Path(table_path)
    return p.with_suffix(".json") if p.suffix else p.with_name(p.name + ".json")


def save_table_with_meta(path, table, meta, *, inputs=(), within=()):
    """Write an LU-KV table (``.npy``) and its JSON description beside it, both atomically.

    Both files pass the output checks (neither may be one of ``inputs`` or lie inside one of
    the directories ``within``) before anything is written; both are written to temporary
    files and synced, then renamed into place together: a failed write (a full disk, a
    file-size limit) leaves the previous table and description as they were.
    """
    from ._io import write_atomic_group
    from .lukv import _check_table

    arr = _check_table(table, "table")
    meta_path = table_meta_path(path)
    text = json.dumps({**meta, "table": Path(path).name}, indent=1) + "\n"
    write_atomic_group(
        [(path, lambda f: np.save(f, arr, allow_pickle=False)),
         (meta_path, lambda f: f.write(text.encode("utf-8")))],
        inputs=inputs, within=within,
    )
    return meta_path
