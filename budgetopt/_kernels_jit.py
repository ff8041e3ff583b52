"""How kernels are compiled: the ``jit`` decorator, where compiled code is cached, and the
compile clock.

Every kernel module decorates its functions with :func:`jit` instead of ``numba.njit``, so
the settings below hold for all of them.

**Where the cache lives.** numba's own ``cache=True`` writes next to the source, into the
installed package's ``__pycache__``. A later ``pip install -e .`` (or an uninstall) removes
the package's files but not numba's, and the folder left behind, holding only
``__pycache__``, is imported as an empty namespace package that hides the real one. So the
kernels are cached in a user cache directory instead, one folder per installed copy of the
package:

1. ``$BUDGETOPT_CACHE_DIR`` when set;
2. else ``$NUMBA_CACHE_DIR/budgetopt`` when numba's own variable is set;
3. else the platform's user cache directory (``~/.cache/budgetopt`` on Linux).

Reinstalling the same sources reuses the cache. Where no location is writable (a read-only
home, say), kernels are compiled in memory, once per process.

**When it is stale.** numba checks a cached kernel against its own module's source only, so
editing a kernel that another module inlines or calls could leave a stale caller. Here the
source stamp of every kernel is one hash over all the ``_kernels*.py`` files: editing any of
them recompiles all.

**The compile clock.** :func:`compile_seconds` is the time the calling thread has spent in
numba's compiler (compiling, or loading from the cache). A :class:`Stopwatch` leaves it out,
so a result's ``seconds`` (and a time limit) measures the solve alone, whatever was compiled
on the way. :func:`announce_compiling` lets a front end print one line when compiling starts.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import numba as nb
from numba.core import event
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

__all__ = ["jit", "cache_dir", "compile_seconds", "Stopwatch", "announce_compiling"]

_PACKAGE = Path(__file__).resolve().parent


def jit(function=None, **options):
    """``numba.njit(nogil=True, **options)`` with the disk cache described above.

    Usable bare (``@jit``) or with options (``@jit(inline="always")``).
    """

    def build(fn):
        dispatcher = nb.njit(nogil=True, **options)(fn)
        cache = _kernel_cache(fn)
        if cache is not None:
            # What numba's ``cache=True`` does (Dispatcher.enable_caching), with our locator.
            dispatcher._cache = cache
        return dispatcher

    return build if function is None else build(function)


def cache_dir():
    """The folder this installed copy caches its compiled kernels in, or None when no
    location is writable (kernels then compile in memory)."""
    return _cache_dir()


_NO_DIR = object()
_chosen_dir = _NO_DIR


def _cache_dir():
    global _chosen_dir
    if _chosen_dir is _NO_DIR:
        _chosen_dir = _writable(_cache_root() / _CacheLocator.get_suitable_cache_subpath(__file__))
    return _chosen_dir


def _cache_root():
    if os.environ.get("BUDGETOPT_CACHE_DIR"):
        return Path(os.environ["BUDGETOPT_CACHE_DIR"])
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "budgetopt"
    from numba.misc.appdirs import AppDirs

    return Path(AppDirs(appname="budgetopt", appauthor=False).user_cache_dir)


def _writable(path):
    """``path`` as a str once it exists and this process may write there, else None (no
    file is written to find out: this runs when the kernel modules are imported)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(path) if os.access(path, os.W_OK | os.X_OK) else None


_stamp = None


def _source_stamp():
    """One hash over every kernel module's source (name and bytes)."""
    global _stamp
    if _stamp is None:
        digest = hashlib.sha256(nb.__version__.encode())
        for path in sorted(_PACKAGE.glob("_kernels*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        _stamp = digest.hexdigest()
    return _stamp


class _Locator(_CacheLocator):
    """numba cache locator: :func:`cache_dir`, stamped by :func:`_source_stamp`."""

    def __init__(self, py_func, path):
        self._lineno = py_func.__code__.co_firstlineno
        self._path = path

    def ensure_cache_path(self):
        os.makedirs(self._path, exist_ok=True)

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return _source_stamp()

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        path = _cache_dir()
        return None if path is None else cls(py_func, path)


class _CacheImpl(CompileResultCacheImpl):
    _locator_classes = [_Locator]


class _KernelCache(FunctionCache):
    _impl_class = _CacheImpl


def _kernel_cache(fn):
    if _cache_dir() is None:
        return None
    try:
        return _KernelCache(fn)
    except RuntimeError:  # no locator (numba's NUMBA_CACHE_LOCATOR_CLASSES may override ours)
        return None


# --- the compile clock --------------------------------------------------------------------


class _CompileClock(event.Listener):
    """Adds up, per thread, the time it holds numba's compiler lock (outermost acquisitions
    only: the lock is re-entrant)."""

    def __init__(self):
        self._local = threading.local()

    @property
    def total(self):
        return getattr(self._local, "total", 0.0)

    def on_start(self, ev):
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.start = time.perf_counter()
        self._local.depth = depth + 1

    def on_end(self, ev):
        self._local.depth -= 1
        if self._local.depth == 0:
            self._local.total = self.total + time.perf_counter() - self._local.start


class _Announcer(event.Listener):
    """Calls ``notify`` once, when numba first compiles (not loads) something."""

    def __init__(self):
        self.pending = None

    def on_start(self, ev):
        pending, self.pending = self.pending, None
        if pending is not None:
            pending()

    def on_end(self, ev):
        pass


_CLOCK = _CompileClock()
_ANNOUNCER = _Announcer()
event.register("numba:compiler_lock", _CLOCK)
event.register("numba:compile", _ANNOUNCER)


def compile_seconds():
    """Seconds the calling thread has spent in numba's compiler so far (compiling or loading)."""
    return _CLOCK.total


class Stopwatch:
    """Seconds since it was made, less the time spent in numba's compiler meanwhile (in this
    thread): what a solve costs once its kernels are compiled."""

    def __init__(self):
        self._start = time.perf_counter()
        self._compiling = _CLOCK.total

    def seconds(self):
        return time.perf_counter() - self._start - (_CLOCK.total - self._compiling)


def announce_compiling(notify):
    """Call ``notify()`` (once) when numba next starts compiling; ``None`` cancels."""
    _ANNOUNCER.pending = notify
