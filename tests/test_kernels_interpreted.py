"""Kernels run as plain Python on small calls (``budgetopt._kernels_jit``): every solver
gives bit-for-bit the same answer that way as compiled, and the rules that pick the path
hold."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import budgetopt
from budgetopt import _kernels_jit
from helpers import load_benchmark
from budgetopt._kernels_jit import INTERPRET_MAX_ELEMENTS, INTERPRET_SECONDS, kernel_mode


def _problems(seed):
    """Seeded curves: random, increasing, integer-valued with ties, rounded (more ties),
    and one shape scaled per head; shared, per-head and unit grids."""
    rng = np.random.default_rng(seed)
    for i in range(15):
        n_heads, k = int(rng.integers(1, 30)), int(rng.integers(2, 40))
        kind = i % 5
        if kind == 0:
            u = rng.random((n_heads, k))
        elif kind == 1:
            u = np.cumsum(rng.random((n_heads, k)), 1)
        elif kind == 2:
            u = rng.integers(0, 5, (n_heads, k)).astype(float)
        elif kind == 3:
            u = np.round(np.cumsum(rng.random((n_heads, k)), 1), 1)
        else:
            u = np.sqrt(np.arange(k))[None] * rng.integers(1, 4, (n_heads, 1))
        grid = [np.sort(rng.integers(0, 50, (n_heads, k)), 1), np.arange(k) * int(rng.integers(1, 5)), None][i % 3]
        yield budgetopt.Curves(u, grid)


def _solve_all(seed):
    """Every solver's outputs on the seeded problems, as a flat dict of arrays."""
    out = {}
    for i, curves in enumerate(_problems(seed)):
        cap = curves.capacity
        for frac in (0.1, 0.35, 0.7):
            total = int(frac * cap)
            for method in ("greedy", "exact"):
                key = f"{i}/{frac}/{method}"
                try:
                    a = budgetopt.allocate(curves, total, method=method)
                except budgetopt.BudgetoptError as e:
                    out[key] = type(e).__name__
                    continue
                out[key] = (a.budgets.copy(), a.utility, a.upper_bound, a.status,
                            {k: v for k, v in a.stats.items() if "seconds" not in k})
        try:
            out[f"{i}/sweep"] = budgetopt.sweep(curves, np.linspace(0, cap, 7).astype(int)).budgets.copy()
        except budgetopt.BudgetoptError as e:
            out[f"{i}/sweep"] = type(e).__name__
    rng = np.random.default_rng(seed + 1)
    for i in range(4):
        t = int(rng.integers(40, 120))
        dtype = np.float32 if i % 2 else np.float64  # runs store float32 arrays
        oracles = [(rng.random((3, 2, t)) ** 3).astype(dtype) for _ in range(4)]
        scores = [rng.normal(size=(3, 2, t)).astype(dtype) for _ in range(2)]
        pairs = [scores[0], scores[0], scores[1], scores[1]]
        out[f"lukv{i}"] = budgetopt.lukv_table(oracles, pairs, sink=2, window=1)
        out[f"curves{i}"] = budgetopt.curves_from_scores(oracles[0], scores[0], sink=2, window=1).utility
        ra = budgetopt.RequestAllocator.fit(oracles, pairs, sink=2, window=1, shrinkage=0.5)
        request = rng.normal(size=(3, 2, t + 7)).astype(dtype)
        total = int(0.3 * 3 * 2 * (t + 7))
        out[f"request{i}"] = ra.allocate(request, total)
        out[f"request{i}/layer"] = ra.allocate(request, total, layerwise=False)
    return out


def _same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert np.array_equal(np.asarray(a), np.asarray(b)), where
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b and type(a) is type(b), f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("seed", [0, 1])
def test_every_solver_answers_bit_for_bit_the_same_run_as_python(seed):
    with kernel_mode("compiled"):
        compiled = _solve_all(seed)
    with kernel_mode("python"):
        interpreted = _solve_all(seed)
    _same(compiled, interpreted)


def test_exact_on_tied_knapsack_classes_is_the_same_run_as_python():
    """Pisinger's classes on a small data range: many tied slopes, and the cardinality bound
    (whose LP sorts tied segments in an unspecified order) runs on some of them."""
    instances = load_benchmark("instances_exact")
    bounded = 0
    for kind in ("weakly", "strongly"):
        for seed in range(3):
            curves, total = instances.pisinger(kind, 30, 10, seed, data_range=100)
            runs = []
            for mode in ("compiled", "python"):
                with kernel_mode(mode):
                    a = budgetopt.allocate(curves, total, method="exact")
                runs.append((a.budgets.copy(), a.utility, a.upper_bound, a.status,
                             {k: v for k, v in a.stats.items() if "seconds" not in k}))
            _same(*runs, where=f"{kind} {seed}")
            bounded += runs[0][4]["cardinality_bound"] is not None
    assert bounded > 0, "no instance ran the cardinality bound"


def _fresh_kernel():
    """A kernel no other test has compiled (no disk cache: defined here)."""

    def double_sum(a):
        total = 0.0
        for x in a:
            total += 2.0 * x
        return total

    return _kernels_jit._Kernel(py_func=double_sum, locals={}, targetoptions={"nopython": True, "nogil": True})


@pytest.fixture
def python_runs(monkeypatch):
    """Auto mode with the whole allowance left; the list of functions run as Python."""
    monkeypatch.setattr(_kernels_jit._MODE, "mode", "auto")
    monkeypatch.setattr(_kernels_jit._MODE, "spent", 0.0)
    runs = []
    real = _kernels_jit._MODE.run

    def run(fn, args, kwargs):
        runs.append(fn.__name__)
        return real(fn, args, kwargs)

    monkeypatch.setattr(_kernels_jit._MODE, "run", run)
    return runs


def test_small_calls_run_as_python_until_compiled(python_runs):
    kernel = _fresh_kernel()
    small = np.arange(10.0)
    assert kernel(small) == 90.0
    assert python_runs == ["double_sum"] and not kernel.overloads, "a small first call was compiled"
    big = np.ones(INTERPRET_MAX_ELEMENTS + 1)
    assert kernel(big) == 2.0 * big.size
    assert python_runs == ["double_sum"] and kernel.overloads, "a call above INTERPRET_MAX_ELEMENTS ran as Python"
    assert kernel(small) == 90.0
    assert python_runs == ["double_sum"], "a compiled kernel ran as Python again"


def test_the_allowance_is_cpu_time_run_as_python(python_runs):
    kernel = _fresh_kernel()
    start = time.thread_time()
    kernel(np.ones(INTERPRET_MAX_ELEMENTS))
    used = time.thread_time() - start
    assert 0.0 < _kernels_jit._MODE.spent <= used


def test_arrays_inside_tuples_count_towards_the_size_rule():
    half = INTERPRET_MAX_ELEMENTS // 2 + 1
    assert _kernels_jit._elements((np.ones(half - 2),), INTERPRET_MAX_ELEMENTS)
    assert not _kernels_jit._elements(((np.ones(half), 3), np.ones(half)), INTERPRET_MAX_ELEMENTS)


def test_after_the_allowance_every_kernel_compiles(python_runs, monkeypatch):
    monkeypatch.setattr(_kernels_jit._MODE, "spent", INTERPRET_SECONDS)
    kernel = _fresh_kernel()
    assert kernel(np.arange(3.0)) == 6.0
    assert kernel.overloads and not python_runs


def test_python_results_are_the_scalars_numba_returns():
    def pair(a):
        return a[0], a.sum() > 0

    kernel = _kernels_jit._Kernel(py_func=pair, locals={}, targetoptions={"nopython": True})
    with kernel_mode("python"):
        got = kernel(np.arange(3, dtype=np.int64))
    assert got == (0, True) and type(got[0]) is int and type(got[1]) is bool


def test_forced_modes(python_runs):
    kernel = _fresh_kernel()
    with kernel_mode("compiled"):
        assert kernel(np.arange(3.0)) == 6.0
    assert kernel.overloads and not python_runs
    with kernel_mode("python"):
        assert kernel(np.arange(3.0)) == 6.0
    assert python_runs == ["double_sum"], "mode 'python' ran the compiled kernel"
    with pytest.raises(ValueError, match="`mode` must be one of auto, python, compiled; got 'fast'"):
        with kernel_mode("fast"):
            pass


def test_an_unknown_environment_value_warns_and_means_auto(monkeypatch):
    monkeypatch.setenv("BUDGETOPT_KERNELS", "turbo")
    with pytest.warns(RuntimeWarning, match="BUDGETOPT_KERNELS must be one of auto, python, compiled; got 'turbo'"):
        assert _kernels_jit._mode_from_environment() == "auto"
    monkeypatch.setenv("BUDGETOPT_KERNELS", "python")
    assert _kernels_jit._mode_from_environment() == "python"


def test_the_console_script_warns_about_an_unknown_mode_in_one_line():
    env = {**os.environ, "BUDGETOPT_KERNELS": "turbo"}
    proc = subprocess.run([sys.executable, "-m", "budgetopt", "solve", "--example", "--budget", "0.2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ("budgetopt: warning: BUDGETOPT_KERNELS must be one of auto, python, compiled; "
                           "got 'turbo', using 'auto'\n")
    assert json.loads(proc.stdout)["method"] == "greedy"
