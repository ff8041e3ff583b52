"""How kernels run: the ``jit`` decorator, small calls run as plain Python, where compiled
code is cached, and the compile clock.

Every kernel module decorates its functions with :func:`jit` instead of ``numba.njit``, so
the settings below hold for all of them.

**Small calls are not compiled.** Compiling every kernel a solve needs takes seconds (about
8 s of CPU for the greedy, 25 s for ``method="exact"``), while on the problems a first call
usually brings (the shipped example: 256 heads, 16k grid points) the same kernels run as
plain Python in well under a second. So a kernel called from Python runs its Python
function (``py_func``, the very source numba compiles) when

1. numba has not compiled or loaded it yet in this process,
2. the arrays passed to it (and inside tuples passed to it) hold at most
   :data:`INTERPRET_MAX_ELEMENTS` elements in all, and
3. this process has spent less than :data:`INTERPRET_SECONDS` of CPU time running kernels
   as Python.

Otherwise it is compiled (or loaded from the cache below) as before, and from then on always
runs compiled. The first rule keeps warm processes compiled, the second sends large problems
straight to compiled code, the third bounds what a small but hard problem (an exact search
with many DP states, say) can cost before compiling pays. Inner kernel calls go through
the same rule. On the example the greedy spends about 0.1 s that way and ``method="exact"``
about 1 s; a hard exact search of that size runs a few seconds as Python, then compiles.
Answers do not depend on the path: the kernels sum in an explicit order, start float
accumulators as float64 where the values are float32 (numpy would keep a float32 sum), and
sort with ``kind="mergesort"`` where the order of ties decides something, and
``tests/test_kernels_interpreted.py`` checks every solver bit for bit in both modes on
seeded problems, ties included. One sort leaves the order of ties to the implementation: the
LP of the exact solver's cardinality bound (``_kernels_exact._lp_fill``) fills tied segments
in numba's or numpy's order; the test's tied knapsack classes (on which that bound runs) give
the same answers and bounds both ways. :func:`kernel_mode` forces one mode (benchmarks time compiled code only:
``kernel_mode("compiled")``); ``BUDGETOPT_KERNELS=compiled`` (or ``python``) sets it for a
process.

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

import contextlib
import hashlib
import os
import threading
import time
import warnings
from pathlib import Path

import numba as nb
import numpy as np
from numba.core import event
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator
from numba.core.registry import CPUDispatcher

__all__ = ["jit", "kernel_mode", "cache_dir", "compile_seconds", "Stopwatch", "announce_compiling",
           "INTERPRET_MAX_ELEMENTS", "INTERPRET_SECONDS"]

#: A kernel call whose array arguments hold more elements than this is compiled.
INTERPRET_MAX_ELEMENTS = 1 << 16
#: CPU seconds of kernels run as plain Python after which a process compiles every kernel.
INTERPRET_SECONDS = 3.0

_PACKAGE = Path(__file__).resolve().parent


def jit(function=None, **options):
    """``numba.njit(nogil=True, **options)`` with the disk cache described above.

    Usable bare (``@jit``) or with options (``@jit(inline="always")``).
    """

    def build(fn):
        dispatcher = _Kernel(py_func=fn, locals={}, targetoptions={"nopython": True, "nogil": True, **options})
        cache = _kernel_cache(fn)
        if cache is not None:
            # What numba's ``cache=True`` does (Dispatcher.enable_caching), with our locator.
            dispatcher._cache = cache
        return dispatcher

    return build if function is None else build(function)


class _Kernel(CPUDispatcher):
    """numba's dispatcher, but a call from Python may run the plain function (see the module
    docstring). Compiled callers call it as any numba function."""

    def __call__(self, *args, **kwargs):
        if _MODE.interprets(self, args):
            return _MODE.run(self.py_func, args, kwargs)
        return super().__call__(*args, **kwargs)


def _elements(args, limit):
    """Whether the arrays in ``args`` (and in tuples among them) hold at most ``limit``
    elements in all."""
    total = 0
    for a in args:
        if isinstance(a, np.ndarray):
            total += a.size
        elif isinstance(a, tuple):
            total += sum(x.size for x in a if isinstance(x, np.ndarray))
        if total > limit:
            return False
    return True


_MODES = ("auto", "python", "compiled")


class _Mode:
    """Which kernels run as Python: ``"auto"`` (the module docstring's rules), ``"python"``
    or ``"compiled"``, for the whole process; the seconds run as Python so far, and (per
    thread) whether a Python-run kernel is running, whose inner calls it times."""

    def __init__(self, mode):
        self.mode = mode
        self.spent = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()

    def interprets(self, kernel, args):
        if self.mode == "auto":
            nested = getattr(self._local, "depth", 0) > 0
            return ((nested or self.spent < INTERPRET_SECONDS) and not kernel.overloads
                    and _elements(args, INTERPRET_MAX_ELEMENTS))
        return self.mode == "python"

    def run(self, fn, args, kwargs):
        if getattr(self._local, "depth", 0):  # an inner call: the outer one is timed
            return fn(*args, **kwargs)
        self._local.depth = 1
        start = time.thread_time()  # CPU time: a busy machine does not use the allowance up
        try:
            return _as_numba_returns(fn(*args, **kwargs))
        finally:
            self._local.depth = 0
            with self._lock:
                self.spent += time.thread_time() - start


def _as_numba_returns(value):
    """``value`` with numpy scalars as the Python scalars a compiled kernel returns (in
    tuples and named tuples too), so callers see one type whichever way a kernel ran."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        items = [_as_numba_returns(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _mode_from_environment():
    mode = os.environ.get("BUDGETOPT_KERNELS", "auto") or "auto"
    if mode not in _MODES:
        warnings.warn(f"BUDGETOPT_KERNELS must be one of {', '.join(_MODES)}; got {mode!r}, using 'auto'",
                      RuntimeWarning, stacklevel=2)
        mode = "auto"
    return mode


_MODE = _Mode(_mode_from_environment())


@contextlib.contextmanager
def kernel_mode(mode):
    """Run kernels in ``mode`` while the block runs (in every thread of the process):
    ``"compiled"`` (what benchmarks time), ``"python"`` (every kernel called from Python
    runs as plain Python) or ``"auto"`` (the rules above).

    Examples
    --------
    >>> import budgetopt
    >>> from budgetopt._kernels_jit import kernel_mode
    >>> with kernel_mode("python"):
    ...     a = budgetopt.allocate([[0.0, 0.5, 0.6], [0.0, 0.2, 0.9]], 3)
    >>> a.budgets.tolist()
    [1, 2]
    """
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {', '.join(_MODES)}; got {mode!r}")
    before, _MODE.mode = _MODE.mode, mode
    try:
        yield
    finally:
        _MODE.mode = before


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
