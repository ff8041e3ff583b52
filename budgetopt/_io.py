"""File input and output shared by the library and the command line.

* :func:`check_input_file` and :func:`check_output_file`: the checks a path gets before any
  work (it exists; it is a regular file, not a directory, device or FIFO; an output is not
  also an input).
* :func:`write_atomic`: write beside the destination, then rename into place, so a failed or
  interrupted write leaves neither a partial file nor a temporary one.
* :func:`read_npz` and :func:`read_npy`: NumPy files read without unpickling and without
  inflating more than a stated limit (:func:`max_array_bytes`): every member's declared
  shape, dtype and stored size is checked before its data is read.
* :func:`c_stdout_to_stderr`: C-level stdout sent to stderr for a while (HiGHS banners).

Nothing here imports a solver; every error is a :class:`~budgetopt.errors.CurvesFileError`
(or :class:`~budgetopt.errors.InvalidTypeError` for a path of the wrong type) whose message
starts with the file's name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import sys
import tempfile
import zipfile

import numpy as np

from .errors import CurvesFileError, InvalidInputError, InvalidTypeError

__all__ = [
    "MAX_ARRAY_BYTES",
    "MAX_ARRAY_BYTES_ENV",
    "max_array_bytes",
    "as_path",
    "check_input_file",
    "check_output_file",
    "write_atomic",
    "write_atomic_group",
    "read_npz",
    "read_npy",
    "c_stdout_to_stderr",
    "MAX_JSON_DEPTH",
    "json_depth",
    "loads_json",
]

#: Default limit on the bytes one array of a ``.npz``/``.npy`` file may take once read (1 GiB).
MAX_ARRAY_BYTES = 2**30
#: Environment variable that overrides :data:`MAX_ARRAY_BYTES` (a whole number of bytes).
MAX_ARRAY_BYTES_ENV = "BUDGETOPT_MAX_ARRAY_BYTES"
_HEADER_LIMIT = 10_000  # bytes of a .npy header (NumPy's own default limit)


def max_array_bytes(value=None):
    """The per-array byte limit in force: ``value`` if given, else the environment variable
    ``BUDGETOPT_MAX_ARRAY_BYTES``, else :data:`MAX_ARRAY_BYTES` (1 GiB).

    Examples
    --------
    >>> max_array_bytes(4096)
    4096
    """
    source = "`max_bytes`"
    if value is None:
        text = os.environ.get(MAX_ARRAY_BYTES_ENV)
        if text is None or not text.strip():
            return MAX_ARRAY_BYTES
        source = f"environment variable {MAX_ARRAY_BYTES_ENV}"
        try:
            value = int(text.strip())
        except ValueError:
            raise InvalidInputError(f"{source} must be a whole number of bytes; got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"{source} must be a whole number of bytes; got {type(value).__name__}")
    if value < 1:
        raise InvalidInputError(f"{source} must be >= 1 byte; got {value}")
    return int(value)


def _limit_hint(limit):
    return (
        f"the limit of {_size(limit)} per array (raise it with max_bytes= or the environment "
        f"variable {MAX_ARRAY_BYTES_ENV})"
    )


def _size(n):
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit} ({n} bytes)"
    return f"{n} bytes"


# -- paths -----------------------------------------------------------------------------------
def as_path(path, name="path"):
    """``path`` as a str, or :class:`InvalidTypeError` for anything but a str or PathLike."""
    if isinstance(path, (str, os.PathLike)):
        text = os.fspath(path)
        if isinstance(text, str):
            return text
    kind = "a file object" if hasattr(path, "read") or hasattr(path, "write") else type(path).__name__
    raise InvalidTypeError(f"`{name}` must be a file name (str or os.PathLike); got {kind}")


def check_output_dir(out):
    """``out`` as a Path, for a directory a command is about to create or reuse:
    :class:`CurvesFileError` when it is something other than a directory, or does not exist
    and neither does its parent."""
    from pathlib import Path

    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not out.exists() and not parent.is_dir():
        raise CurvesFileError(f"{out}: parent directory {str(parent)!r} does not exist")
    if out.exists() and not out.is_dir():
        raise CurvesFileError(f"{out}: exists and is not a directory")
    return out


def check_input_file(path, what, role=None):
    """``path`` as a str, or :class:`CurvesFileError` if it is missing or not a regular file.

    ``what`` names the expected kind of file; ``role``, when given, is appended to the
    message (for example the command-line option the path came from)."""
    path = as_path(path)
    note = f" ({role})" if role else ""
    if path == "":
        raise CurvesFileError(f"an empty file name is not a {what}{note}")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CurvesFileError(f"{path}: no such file{note}") from None
    except OSError as exc:
        raise CurvesFileError(f"{path}: cannot be read ({exc.strerror or exc}){note}") from None
    if stat.S_ISDIR(mode):
        raise CurvesFileError(f"{path}: is a directory, not a {what}{note}")
    if not stat.S_ISREG(mode):
        raise CurvesFileError(f"{path}: is not a regular file (a device, FIFO or socket), not a {what}{note}")
    return path


def check_output_file(path, *, inputs=(), within=(), name="path"):
    """The file that writing ``path`` will replace, after the checks every output gets.

    Refused, with a :class:`CurvesFileError` naming ``path``: an empty name, a name ending in
    a path separator, a missing directory, an existing destination that is not a regular file
    (a directory, device node, FIFO or socket), and a destination that is the same file as
    one of ``inputs`` (compared by device and inode, so another spelling or a link to an
    input is caught), and a destination inside one of the directories ``within`` (the run
    directories a command reads). A symbolic link is written through: its target is replaced
    and the link kept; the returned path is that target.
    """
    path = as_path(path, name)
    if path == "":
        raise CurvesFileError(f"{name}: an empty file name cannot be written")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise CurvesFileError(f"{path}: names a directory (it ends in {path[-1]!r}); give a file name")
    target = os.path.realpath(path)  # a symlink is written through
    directory = os.path.dirname(target) or "."
    if not os.path.isdir(directory):
        shown = os.path.dirname(path) or "."
        raise CurvesFileError(f"{path}: directory {shown!r} does not exist")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise CurvesFileError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    for folder in within:
        if folder is None:
            continue
        root = os.path.realpath(os.fspath(folder))
        if os.path.commonpath([root, target]) == root:
            raise CurvesFileError(
                f"{path}: is inside {os.fspath(folder)}, a directory this command reads; writing "
                "there could destroy its files (choose an output outside it)"
            )
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise CurvesFileError(f"{path}: is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise CurvesFileError(
                f"{path}: is not a regular file (a device, FIFO or socket); budgetopt writes only "
                "regular files"
            )
        for source in inputs:
            if source is None:
                continue
            try:
                other = os.stat(os.fspath(source))
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                raise CurvesFileError(
                    f"{path}: is the same file as the input {os.fspath(source)}; writing it would "
                    "destroy the input (choose another output name)"
                )
    return target


def write_atomic(path, write, *, inputs=(), within=()):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    ``path`` first passes :func:`check_output_file` (with ``inputs`` and ``within``). The
    data is flushed and ``fsync``-ed before the rename, and every error on the way (a full
    disk, a file-size limit, a failing flush or close) is raised, never ignored. ``file`` is a
    plain writable stream without a file descriptor, so libraries that would write through
    the descriptor themselves (and drop a late error) write through Python instead. An
    existing destination keeps its permission bits; a new one gets the usual
    ``0666 & ~umask``. A symbolic link is written through (its target is replaced, the link
    stays). On any error or interruption (an exception, ``KeyboardInterrupt``,
    ``SystemExit`` raised by a signal handler) the temporary file is removed and the
    destination is untouched. File-system errors become :class:`CurvesFileError` naming
    ``path``, never the temporary file.
    """
    write_atomic_group([(path, write)], inputs=inputs, within=within)


def write_atomic_group(items, *, inputs=(), within=()):
    """Write several files as :func:`write_atomic` does, all or none.

    ``items`` is a sequence of ``(path, write)``. Every destination is checked first, then
    every file is written to its temporary file and synced; only when all succeeded are they
    renamed into place, in order. If a rename fails, the destinations already replaced get
    their previous contents back (kept as hard links meanwhile), so a table and its
    description are replaced together or not at all.
    """
    shown = [as_path(p) for p, _ in items]
    targets = [check_output_file(p, inputs=inputs, within=within) for p in shown]
    if len(set(targets)) != len(targets):
        raise CurvesFileError(f"{shown[-1]}: is written twice by one command (choose distinct output names)")
    temps, backups = [None] * len(items), [None] * len(items)
    try:
        for i, (name, target, (_, write)) in enumerate(zip(shown, targets, items)):
            temps[i] = _write_temp(name, target, write)
        replaced = []
        try:
            for i, (name, target) in enumerate(zip(shown, targets)):
                if len(items) > 1:
                    backups[i] = _backup(name, target)
                try:
                    os.replace(temps[i], target)
                except OSError as exc:
                    raise CurvesFileError(f"{name}: cannot be written ({exc.strerror or exc})") from None
                temps[i] = None
                replaced.append(i)
            for directory in {os.path.dirname(t) or "." for t in targets}:
                _fsync_directory(directory)
        except BaseException:
            for i in reversed(replaced):  # put the previous files back
                try:
                    if backups[i] is not None:
                        os.replace(backups[i], targets[i])
                        backups[i] = None
                    else:
                        os.unlink(targets[i])
                except OSError:
                    pass
            raise
    finally:
        for leftover in (*temps, *backups):
            if leftover is not None:
                try:
                    os.unlink(leftover)
                except OSError:
                    pass


class _Stream:
    """A writable, seekable stream over a file, without ``fileno``: NumPy's ``tofile`` fast path
    (which drops the error of its final flush) is not taken, every write goes through here."""

    closed = False

    def __init__(self, f, name):
        self._f = f
        self.name = name

    def writable(self):
        return True

    def seekable(self):
        return True

    def write(self, data):
        return self._f.write(data)

    def read(self, size=-1):  # NumPy tells a stream from a path by this attribute
        raise OSError("the output stream is not readable")

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def flush(self):
        self._f.flush()


def _write_temp(shown, target, write):
    """A synced temporary file beside ``target`` holding what ``write`` wrote."""
    directory = os.path.dirname(target) or "."
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    except OSError as exc:
        raise CurvesFileError(f"{shown}: cannot be written ({exc.strerror or exc})") from None
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
        f = os.fdopen(fd, "wb")
        try:
            stream = _Stream(f, tmp)
            write(stream)
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()  # a failing close (a late write error) raises too
        os.chmod(tmp, mode)  # mkstemp makes 0600
        done, tmp = tmp, None
        return done
    except OSError as exc:
        raise CurvesFileError(f"{shown}: cannot be written ({exc.strerror or exc})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _backup(shown, target):
    """A hard link to ``target``'s current file (a copy where the file system has no hard
    links), to restore it; None if there is no such file."""
    if not os.path.exists(target):
        return None
    directory = os.path.dirname(target) or "."
    for attempt in range(100):
        name = os.path.join(directory, f".{os.path.basename(target)}.{os.getpid()}.{attempt}.bak")
        try:
            os.link(target, name)
            return name
        except FileExistsError:
            continue
        except OSError:
            pass
        try:  # no hard links here: a copy, created exclusively
            with open(target, "rb") as src, open(name, "xb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            return name
        except FileExistsError:
            continue
        except OSError as exc:
            try:
                os.unlink(name)
            except OSError:
                pass
            raise CurvesFileError(f"{shown}: cannot be replaced safely ({exc.strerror or exc})") from None
    raise CurvesFileError(f"{shown}: cannot be replaced safely (no free backup name)")


def _fsync_directory(directory):
    """Make a rename in ``directory`` durable (where the platform allows syncing a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the data itself is synced
    finally:
        os.close(fd)


def _umask():
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- reading NumPy files -----------------------------------------------------------------------
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _magic(path):
    """The first bytes of ``path``, after checking it is a regular file (a FIFO or device named
    like a data file would block or never end)."""
    check_input_file(path, "NumPy file")
    try:
        with open(path, "rb") as f:
            return f.read(6)
    except OSError as exc:
        raise CurvesFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read_header(f, where, limit, available):
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream ``f``, checked against
    ``limit`` bytes and the ``available`` bytes after the header (None: unknown)."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=_HEADER_LIMIT)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=_HEADER_LIMIT)
        else:
            raise CurvesFileError(f"{where}: .npy format version {version} is not supported (1.0 or 2.0)")
    except CurvesFileError:
        raise
    except Exception as exc:
        raise CurvesFileError(f"{where}: not a readable .npy file ({_short(exc)})") from None
    if dtype.hasobject:
        raise CurvesFileError(f"{where}: holds an object (pickled) array; budgetopt never unpickles")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > limit:
        raise CurvesFileError(
            f"{where}: its array {tuple(shape)} of {dtype} would take {_size(nbytes)}, above "
            + _limit_hint(limit)
        )
    if available is not None and nbytes > available - (f.tell() - start):
        raise CurvesFileError(
            f"{where}: is truncated (its header declares {_size(nbytes)} of data; the file holds less)"
        )
    return shape, fortran, dtype


def _short(exc):
    text = str(exc).split("\n")[0]
    return text if len(text) < 200 else text[:200] + "..."


def read_npz(path, keys, *, max_bytes=None, max_bytes_of=None):
    """The arrays ``keys`` of the ``.npz`` archive ``path`` that are present (a dict).

    Each member is checked before it is read: its stored (uncompressed) size and the shape
    and dtype in its header must fit :func:`max_array_bytes` ``(max_bytes)``, or the limit
    that ``max_bytes_of`` (a dict key -> bytes) sets for that key, and it must not be an
    object array. The members read must also fit that limit together (a file of many
    arrays, each under the limit, is refused as a whole). A zip bomb is refused in
    milliseconds, by its declared sizes alone. Only a regular file is opened.
    """
    path = as_path(path)
    limit = max_array_bytes(max_bytes)
    magic = _magic(path)
    if magic == _NPY_MAGIC:
        raise CurvesFileError(f"{path}: is a single .npy array, not an .npz archive")
    if magic[:4] != _ZIP_MAGIC:
        raise CurvesFileError(f"{path}: not an .npz archive (no zip header)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise CurvesFileError(f"{path}: not a readable .npz archive ({_short(exc)})") from None
    with archive:
        members = {}
        for info in archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            members.setdefault(key, info)
        present = [key for key in keys if key in members]
        declared = 0
        for key in present:  # every header first: nothing is inflated before all fit
            info = members[key]
            where = f"{path}: member {key!r}"
            key_limit = min(limit, (max_bytes_of or {}).get(key, limit))
            if info.file_size > key_limit + _HEADER_LIMIT + 128:
                raise CurvesFileError(
                    f"{where} would expand to {_size(info.file_size)}, above " + _limit_hint(key_limit)
                )
            try:
                with archive.open(info) as f:
                    shape, _, dtype = _read_header(f, where, key_limit, info.file_size)
            except CurvesFileError:
                raise
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
                raise CurvesFileError(f"{where} is unreadable ({_short(exc)})") from None
            declared += math.prod(shape) * dtype.itemsize
        if declared > limit:
            raise CurvesFileError(
                f"{path}: its arrays would expand to {_size(declared)} together, above the limit of "
                f"{_size(limit)} per file (raise it with max_bytes= or the environment variable "
                f"{MAX_ARRAY_BYTES_ENV})"
            )
        out = {}
        for key in present:
            where = f"{path}: member {key!r}"
            try:
                with archive.open(members[key]) as f:
                    out[key] = np.lib.format.read_array(
                        f, allow_pickle=False, max_header_size=_HEADER_LIMIT
                    )
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
                raise CurvesFileError(f"{where} is unreadable ({_short(exc)})") from None
    return out


def read_npy(path, *, max_bytes=None, mmap=False, what="a single .npy array"):
    """The array in the ``.npy`` file ``path``, after its header is checked.

    ``what`` names what the file should hold, for the error on an ``.npz`` archive.

    With ``mmap=False`` the declared size must fit :func:`max_array_bytes` ``(max_bytes)``;
    with ``mmap=True`` the file is memory-mapped read-only (nothing is inflated: the data
    must actually be in the file). Never unpickles.
    """
    path = as_path(path)
    magic = _magic(path)
    if magic[:4] == _ZIP_MAGIC:
        raise CurvesFileError(f"{path}: is an .npz archive, not {what}")
    if magic != _NPY_MAGIC:
        raise CurvesFileError(f"{path}: not a .npy file (no NumPy header)")
    limit = math.inf if mmap else max_array_bytes(max_bytes)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            _read_header(f, path, limit, size)
        if mmap:
            return np.load(path, mmap_mode="r", allow_pickle=False, max_header_size=_HEADER_LIMIT)
        return np.load(path, allow_pickle=False, max_header_size=_HEADER_LIMIT)
    except CurvesFileError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise CurvesFileError(f"{path}: not a readable .npy file ({_short(exc)})") from None


# -- JSON --------------------------------------------------------------------------------------
#: Deepest nesting of arrays and objects that budgetopt reads from a JSON text.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text):
    """The deepest nesting of ``[`` and ``{`` in the JSON ``text`` (strings skipped), in O(len).

    Examples
    --------
    >>> json_depth('{"a": [1, {"b": "[[["}]}')
    3
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets.encode("ascii"), np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def loads_json(text, where, *, error=CurvesFileError, max_depth=MAX_JSON_DEPTH, standard=True):
    """``json.loads(text)`` of JSON nested at most ``max_depth`` deep; otherwise ``error`` (a
    budgetopt error type) whose message starts with ``where``. ``standard``: refuse NaN and
    Infinity (False: read them, for a caller that checks each field and names it)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{where}: not valid UTF-8 ({exc.reason})") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{where}: JSON nested {depth} deep; at most {max_depth} levels are read")

    def refuse(name):
        raise ValueError(f"{name} is not standard JSON")

    try:
        return json.loads(text, parse_constant=refuse if standard else None)
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:
        raise error(f"{where}: not valid JSON ({_short(exc)})") from None


# -- C-level stdout ----------------------------------------------------------------------------
@contextlib.contextmanager
def c_stdout_to_stderr():
    """Send C-level stdout to stderr meanwhile: HiGHS prints a banner to stdout whenever a
    ``highspy.Highs`` object is made (cvxpy makes two), which would corrupt a caller's
    stdout (for example the CLI's JSON)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no usable fd 1: nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        try:
            sys.stdout.flush()
        except ValueError:
            pass
        os.dup2(saved, 1)
        os.close(saved)
