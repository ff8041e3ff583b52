"""RequestAllocator: kernels against direct references, fit/allocate rules, files, validation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import budgetopt
from budgetopt import _kernels_request as kr
from budgetopt import request as rq
from budgetopt import request_fit
from budgetopt.rounding import blend_budgets, token_counts
from budgetopt.errors import CurvesFileError, InfeasibleError, InvalidInputError, InvalidTypeError


def world(seed, shape=(2, 3), length=80, contexts=3, questions=2, power=2.0):
    """Contexts whose oracle is a noisy power of the scores: pairs (oracles, scores, norms)."""
    rng = np.random.default_rng(seed)
    conc = rng.uniform(0.2, 2.0, shape + (1,))
    oracles, scores, norms = [], [], []
    for _ in range(contexts):
        T = int(length * rng.uniform(0.8, 1.0))
        s = rng.gamma(conc * np.exp(0.5 * rng.normal(size=shape + (1,))), size=shape + (T,)) + 1e-9
        n = rng.lognormal(0.0, 0.5, shape + (T,))
        for _ in range(questions):
            o = s ** power * n * rng.lognormal(0.0, 0.3, shape + (T,))
            oracles.append(o / o.sum())
            scores.append(s)
            norms.append(n)
    return oracles, scores, norms


# -- kernels -------------------------------------------------------------------------------
def direct_mass(row, sink, window, counts):
    row = np.asarray(row, np.float64)
    mid = np.sort(row[sink:len(row) - window])[::-1]
    protected = row[:sink].sum() + row[len(row) - window:].sum()
    cum = protected + np.concatenate([[0.0], np.cumsum(mid)])
    return cum[counts] / cum[-1]


def direct_mass_by_scores(row, weight, sink, window, counts):
    """Share of ``weight`` held by the protected tokens and the top-scored middle tokens."""
    row, weight = np.asarray(row, np.float64), np.asarray(weight, np.float64)
    length = len(row)
    order = np.argsort(-row[sink:length - window], kind="stable")
    mid = weight[sink:length - window][order]
    protected = weight[:sink].sum() + weight[length - window:].sum()
    cum = protected + np.concatenate([[0.0], np.cumsum(mid)])
    return cum[counts] / cum[-1]


def test_mass_curves_exact_when_each_bin_holds_equal_values():
    rng = np.random.default_rng(0)
    values = (2.0 ** rng.integers(-20, 5, size=(5, 300))).astype(np.float32)  # powers of two: one value per bin
    values[2, 50:120] = 0.0
    norms = rng.random((5, 300)).astype(np.float32)
    out = np.empty((2, 5, 0))
    for r in range(5):
        # counts at the ends of runs of equal values: exact whatever the order inside a run
        mid = np.sort(values[r, 4:294])[::-1]
        counts = np.concatenate([[0], np.flatnonzero(np.diff(mid) != 0) + 1, [290]]).astype(np.int64)
        out = np.empty((2, 5, counts.size))
        assert kr.mass_curves(values, values.view(np.uint32), norms, norms.view(np.uint32), True, 4, 6, counts, 0, out) == -1
        np.testing.assert_allclose(out[0, r], direct_mass(values[r], 4, 6, counts), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out[1, r], direct_mass_by_scores(values[r], values[r] * norms[r], 4, 6, counts),
                                   rtol=1e-6, atol=1e-9)


def test_mass_curves_close_to_sorted_reference_and_uniform_without_weight():
    rng = np.random.default_rng(1)
    values = rng.gamma(0.3, size=(6, 1000)).astype(np.float32)
    values[5] = 0.0
    counts = np.rint(np.linspace(0, 1, 33) * 1000).astype(np.int64)
    out = np.empty((1, 6, 33))
    assert kr.mass_curves(values, values.view(np.uint32), values, values.view(np.uint32), False, 0, 0, counts, 0, out) == -1
    out = out[0]
    for r in range(5):
        # inside one bin the values differ by at most 2 ** (1 / 8): the interpolation error is small
        np.testing.assert_allclose(out[r], direct_mass(values[r], 0, 0, counts), atol=0.01)
        assert np.all(np.diff(out[r]) >= -1e-12) and out[r, 0] == 0 and out[r, -1] == pytest.approx(1.0)
    np.testing.assert_allclose(out[5], counts / 1000)


def test_mass_curves_short_rows_are_read_exactly_whatever_the_sample_size():
    rng = np.random.default_rng(2)
    values = rng.gamma(0.3, size=(3, 500)).astype(np.float32)
    norms = rng.random((3, 500)).astype(np.float32)
    counts = np.rint(np.linspace(0, 1, 17) ** 2 * 490).astype(np.int64)
    outs = []
    for n_sample in (0, 246, 10_000):  # 490 middle tokens: fewer than 2 * 246, no sampling
        out = np.empty((2, 3, counts.size))
        assert kr.mass_curves(values, values.view(np.uint32), norms, norms.view(np.uint32), True, 4, 6, counts,
                              n_sample, out) == -1
        outs.append(out)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def pooled_scores(rng, n, T):
    """Rows shaped like a pooled attention scorer's: heavy-tailed, neighbours alike."""
    raw = rng.gamma(rng.uniform(0.05, 1.0, (n, 1)), size=(n, T)) * np.exp(rng.normal(0.0, 1.0, (n, T)))
    kernel = np.ones(5) / 5
    return np.stack([np.convolve(r, kernel, mode="same") for r in raw]).astype(np.float32)


def test_mass_curves_sampled_rows_close_to_sorted_reference():
    rng = np.random.default_rng(3)
    T, sink, window = 20_000, 4, 32
    values = pooled_scores(rng, 6, T)
    norms = rng.lognormal(0.0, 0.5, (6, T)).astype(np.float32)
    counts = np.rint((np.arange(65) / 64) ** 2 * (T - sink - window)).astype(np.int64)
    exact, sampled = np.empty((2, 6, 65)), np.empty((2, 6, 65))
    for out, n_sample in ((exact, 0), (sampled, 1024)):
        assert kr.mass_curves(values, values.view(np.uint32), norms, norms.view(np.uint32), True, sink, window,
                              counts, n_sample, out) == -1
    for r in range(6):
        np.testing.assert_allclose(exact[0, r], direct_mass(values[r], sink, window, counts), atol=0.005)
        np.testing.assert_allclose(exact[1, r], direct_mass_by_scores(values[r], values[r] * norms[r], sink, window,
                                                                      counts), atol=0.005)
    # the sample of ~1,000 of 20,000 tokens moves no share by more than a few hundredths, and the
    # top tokens (counted exactly) only through the estimated total
    assert np.abs(sampled - exact).max() < 0.04
    assert np.abs(sampled - exact).mean() < 0.006
    for out in (exact, sampled):
        assert np.all(np.diff(out, axis=-1) >= -1e-12) and np.all(out[..., 0] >= 0)
        np.testing.assert_allclose(out[..., -1], 1.0)
    # shares among the top ~1.5% are exact up to one common factor (the total)
    top = counts <= 0.01 * (T - sink - window)
    top &= counts > 0
    ratio = sampled[0][:, top] / exact[0][:, top]
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-9)


def test_mass_curves_sampled_rows_see_every_bad_or_negative_value():
    rng = np.random.default_rng(4)
    T = 8_000
    values = pooled_scores(rng, 3, T)
    norms = rng.random((3, T)).astype(np.float32)
    counts = np.rint(np.linspace(0, 1, 9) * (T - 2)).astype(np.int64)
    out = np.empty((2, 3, counts.size))
    for bad in (np.nan, np.inf):
        v = values.copy()
        v[1, 1002] = bad  # neither in the pilot nor in the sample
        assert kr.mass_curves(v, v.view(np.uint32), norms, norms.view(np.uint32), True, 1, 1, counts, 256,
                              out) == 4 * 1 + 1
        n = norms.copy()
        n[2, 1002] = bad
        assert kr.mass_curves(values, values.view(np.uint32), n, n.view(np.uint32), True, 1, 1, counts, 256,
                              out) == 4 * 2 + 2
    n = norms.copy()
    n[0, 5] = -1.0
    assert kr.mass_curves(values, values.view(np.uint32), n, n.view(np.uint32), True, 1, 1, counts, 256,
                          out) == 4 * 0 + 2
    # a negative value anywhere sends the row through the exact, shifted pass
    v = values.copy()
    v[2, 1002] = -1e-3
    sampled, exact = np.empty_like(out), np.empty_like(out)
    for o, n_sample in ((sampled, 256), (exact, 0)):
        assert kr.mass_curves(v, v.view(np.uint32), norms, norms.view(np.uint32), True, 1, 1, counts, n_sample,
                              o) == -1
    np.testing.assert_array_equal(sampled[:, 2], exact[:, 2])
    shifted = v[2].astype(np.float64) + 1e-3
    np.testing.assert_allclose(exact[0, 2], direct_mass(shifted, 1, 1, counts), atol=0.005)


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_proxy_curves_threaded_equal_one_thread_and_name_the_first_bad_head(monkeypatch, threads):
    rng = np.random.default_rng(5)
    scores = rng.gamma(0.3, size=(3, 4, 900)).astype(np.float32)
    norms = rng.lognormal(0.0, 0.5, (3, 4, 900)).astype(np.float32)
    counts = np.rint(np.linspace(0, 1, 17) * (900 - 8)).astype(np.int64)

    def run(n_threads, s, n):
        monkeypatch.setattr(rq, "THREADS", n_threads)
        monkeypatch.setattr(rq, "THREADED_TOKENS", 1)  # thread even this small request
        return rq.proxy_curves(s, n, 4, 4, counts, sample=16)

    for n in (None, norms):
        np.testing.assert_array_equal(run(threads, scores, n), run(1, scores, n))
    # two bad heads in different blocks: every thread count reports the first, (1, 2)
    bad = scores.copy()
    bad[1, 2, 500] = np.nan
    bad[2, 3, 10] = np.inf
    for n_threads in (1, threads):
        with pytest.raises(InvalidInputError, match=r"at head \(1, 2\)"):
            run(n_threads, bad, None)
    bad_norms = norms.copy()
    bad_norms[2, 0, 7] = -1.0
    bad_norms[0, 3, 7] = np.nan
    for n_threads in (1, threads):
        with pytest.raises(InvalidInputError, match=r"value_norms.*at head \(0, 3\)"):
            run(n_threads, scores, bad_norms)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_proxy_curves_threaded_in_a_forked_child(monkeypatch):
    import os

    rng = np.random.default_rng(6)
    scores = rng.gamma(0.3, size=(2, 4, 300)).astype(np.float32)
    counts = np.rint(np.linspace(0, 1, 9) * (300 - 8)).astype(np.int64)
    monkeypatch.setattr(rq, "THREADS", 2)
    monkeypatch.setattr(rq, "THREADED_TOKENS", 1)
    want = rq.proxy_curves(scores, None, 4, 4, counts)  # threaded in the parent first
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: threads start anew after the fork
        try:
            got = rq.proxy_curves(scores, None, 4, 4, counts)
            os.write(write, b"1" if np.array_equal(got, want) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    import select
    import signal

    ready, _, _ = select.select([read], [], [], 30)
    answer = os.read(read, 1) if ready else b""
    os.close(read)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert ready, "the forked child did not answer within 30 s"
    assert answer == b"1"


def piecewise_per_token(u, grid):
    """Per-token curves (n, grid[-1] - grid[0] + 1) interpolating the grid points linearly."""
    x = np.arange(grid[0], grid[-1] + 1)
    return np.stack([np.interp(x, grid, row) for row in u]), x


@pytest.mark.parametrize("seed", range(4))
def test_lp_split_is_optimal_on_concave_curves(seed):
    rng = np.random.default_rng(seed)
    n, G = 5, 9
    grid = np.unique(np.rint(np.linspace(0, 1, G) ** 2 * 30).astype(np.int64)) + 3
    slopes = -np.sort(-rng.gamma(0.5, size=(n, grid.size - 1)), axis=1)
    u = np.concatenate([np.zeros((n, 1)), np.cumsum(slopes * np.diff(grid), axis=1)], axis=1)
    per_token, x = piecewise_per_token(u, grid)
    for total in (n * 3, n * 3 + 1, 70, 111, n * 33):
        budgets = np.empty(n, np.int64)
        lp, lam = kr.lp_split(u, np.ascontiguousarray(np.broadcast_to(grid, u.shape)), total, budgets)
        assert budgets.sum() == total and np.all(budgets >= 3) and np.all(budgets <= 33)
        value = kr.curve_values(u, np.ascontiguousarray(np.broadcast_to(grid, u.shape)), budgets)
        exact = budgetopt.allocate(budgetopt.Curves(per_token, x), total, method="dp")
        assert value == pytest.approx(exact.utility, abs=1e-9)
        assert lp == pytest.approx(value, abs=1e-9)  # concave: the LP value is reached


def test_lp_split_bounds_the_optimum_on_nonconcave_curves():
    rng = np.random.default_rng(5)
    n = 4
    grid = np.array([2, 4, 7, 11, 16, 22])
    u = np.cumsum(rng.random((n, grid.size)), axis=1)
    g = np.ascontiguousarray(np.broadcast_to(grid, u.shape))
    per_token, x = piecewise_per_token(u, grid)
    for total in (8, 30, 55, 88):
        budgets = np.empty(n, np.int64)
        lp, _ = kr.lp_split(u, g, total, budgets)
        exact = budgetopt.allocate(budgetopt.Curves(per_token, x), total, method="dp")
        assert budgets.sum() == total
        assert lp >= exact.utility - 1e-9
        assert kr.curve_values(u, g, budgets) <= exact.utility + 1e-9


# -- fit and allocate ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    oracles, scores, norms = world(0)
    return {
        "scores": budgetopt.RequestAllocator.fit(oracles, scores, sink=2, window=3, shrinkage=0.5),
        "norms": budgetopt.RequestAllocator.fit(oracles, scores, value_norms=norms, sink=2, window=3,
                                                shrinkage=0.5),
        "static": budgetopt.RequestAllocator.fit(oracles, scores, sink=2, window=3, shrinkage=1.0),
        "data": (oracles, scores, norms),
    }


@pytest.mark.parametrize("T", [6, 7, 40, 333])
@pytest.mark.parametrize("layerwise", [True, False])
def test_allocate_any_length(fitted, T, layerwise):
    ra = fitted["norms"]
    rng = np.random.default_rng(T)
    scores = rng.gamma(0.5, size=(2, 3, T))
    norms = rng.random((2, 3, T))
    floor = max(round(0.01 * T), 5)
    for total in (6 * floor, 6 * floor + 1, (6 * floor + 6 * T) // 2, 6 * T):
        a = ra.allocate(scores, total, value_norms=norms, layerwise=layerwise)
        assert a.budgets.shape == (2, 3) and a.budgets.dtype == np.int64
        assert a.used == total == a.total_budget
        assert np.all(a.budgets >= floor) and np.all(a.budgets <= T)
        assert a.upper_bound >= a.utility - 1e-12 and a.method == "request"


def test_budgets_count_sink_and_window(fitted):
    ra = fitted["scores"]  # sink 2, window 3
    T = 50
    a = ra.allocate(np.random.default_rng(0).random((2, 3, T)), 6 * 5)
    np.testing.assert_array_equal(a.budgets, 5)  # only the protected tokens fit
    with pytest.raises(InfeasibleError, match="total_budget"):
        ra.allocate(np.random.default_rng(0).random((2, 3, T)), 6 * 5 - 1)
    with pytest.raises(InfeasibleError, match="at most"):
        ra.allocate(np.random.default_rng(0).random((2, 3, T)), 6 * T + 1)


def test_layerwise_false_keeps_the_static_layer_totals(fitted):
    ra, static = fitted["norms"], fitted["static"]
    rng = np.random.default_rng(3)
    for T, total in ((64, 150), (90, 101), (90, 400)):
        s, n = rng.gamma(0.4, size=(2, 3, T)), rng.random((2, 3, T))
        a = ra.allocate(s, total, value_norms=n, layerwise=False)
        per_layer = static.allocate(s, total).budgets.sum(axis=1)  # static curves, global split
        np.testing.assert_array_equal(a.budgets.sum(axis=1), per_layer)
        np.testing.assert_array_equal(ra.layer_totals(T, total), per_layer)


def test_shrinkage_one_is_the_static_mean_curve_split():
    # oracle = scores: every pair's curves are concave, so are their mean and its interpolation,
    # and the split is the exact optimum of the mean curves (checked by the dp).
    rng = np.random.default_rng(7)
    T, sink, window = 30, 1, 2
    scores = [rng.gamma(0.5, size=(2, 2, T)) + 1e-6 for _ in range(3)]
    oracles = [s.copy() for s in scores]
    ra = budgetopt.RequestAllocator.fit(oracles, scores, sink=sink, window=window, shrinkage=1.0,
                                        fractions=np.linspace(0, 1, 28))
    mean = np.mean([budgetopt.curves_from_scores(o, s, sink=sink, window=window).utility / o.sum()
                    for o, s in zip(oracles, scores)], axis=0).reshape(4, -1)
    grid = np.arange(sink + window, T + 1)
    for request_scores in (rng.random((2, 2, T)), rng.gamma(3.0, size=(2, 2, T))):
        for total in (20, 33, 61, 100):
            a = ra.allocate(request_scores, total)
            ref = budgetopt.allocate(budgetopt.Curves(mean, grid), total, method="dp", min_budget=3)
            got = mean[np.arange(4), a.budgets.reshape(-1) - (sink + window)].sum()
            assert got == pytest.approx(ref.utility, abs=1e-9)
            assert a.utility == pytest.approx(got, abs=1e-9)  # grid has every token: no interpolation


def test_static_ignores_the_request_and_fitted_model_uses_it(fitted):
    rng = np.random.default_rng(11)
    flat, peaked = np.ones((2, 3, 60)), np.ones((2, 3, 60))
    peaked[:, :, 10:13] = 1e4
    s = fitted["static"]
    assert np.array_equal(s.allocate(flat, 120).budgets, s.allocate(peaked, 120).budgets)
    ra = fitted["scores"]
    assert not np.array_equal(ra.predict_curves(flat)[0], ra.predict_curves(peaked)[0])
    del rng


def test_regression_learns_a_predictive_feature():
    # The oracle is the scores themselves, each head with a fixed share of the mass: the
    # score-mass proxy is the oracle shape (up to histogram binning), so its coefficient is
    # near 1 and the fitted model beats the static curves on a held-out context.
    rng = np.random.default_rng(2)
    conc = rng.uniform(0.1, 2.0, (3, 2, 1))
    share = rng.dirichlet(np.ones(6)).reshape(3, 2, 1)
    ctx = [rng.gamma(conc * np.exp(rng.normal(size=(3, 2, 1))), size=(3, 2, 200)) + 1e-9 for _ in range(7)]
    ctx = [c / c.sum(axis=-1, keepdims=True) * share for c in ctx]
    ra = budgetopt.RequestAllocator.fit(ctx[:6], ctx[:6], sink=0, window=0, shrinkage=0.0)
    inner = (ra.fractions > 0.01) & (ra.fractions < 0.6)
    assert np.all(np.abs(ra.beta[0, inner] - 1.0) < 0.2)
    held = ctx[6]
    curves = budgetopt.curves_from_scores(held, held)
    u = curves.utility.reshape(6, -1)
    static = budgetopt.RequestAllocator(**{k: getattr(ra, k) for k in (
        "fractions", "mean_shape", "weight", "mean_proxy", "beta", "sink", "window", "min_keep_fraction",
        "features", "info")}, shrinkage=1.0)
    for total in (120, 240, 600):
        got = u[np.arange(6), ra.allocate(held, total).budgets.reshape(-1)].sum()
        base = u[np.arange(6), static.allocate(held, total).budgets.reshape(-1)].sum()
        assert got > base


def test_cross_validation_picks_a_safe_shrinkage():
    oracles, scores, norms = world(4, contexts=4)
    ra = budgetopt.RequestAllocator.fit(oracles, scores, value_norms=norms, sink=2, window=3)
    cv = ra.info["cv"]
    chosen = cv["shrinkage"][str(ra.shrinkage)]
    assert chosen["worst"] >= -request_fit.CV_MAX_LOSS or ra.shrinkage == 1.0
    assert chosen["mean_gain"] == max(v["mean_gain"] for v in cv["shrinkage"].values()
                                      if v["worst"] >= -request_fit.CV_MAX_LOSS) or ra.shrinkage == 1.0
    assert ra.info["contexts"] == 4 and ra.info["pairs"] == 8
    one = budgetopt.RequestAllocator.fit(oracles[:2], scores[0], sink=2, window=3)
    assert one.shrinkage == 1.0 and one.info["contexts"] == 1


def with_shrinkage(ra, shrinkage):
    return rq.RequestAllocator(**{k: getattr(ra, k) for k in (
        "fractions", "mean_shape", "weight", "mean_proxy", "beta", "sink", "window", "min_keep_fraction",
        "features", "info")}, shrinkage=shrinkage)


def test_cross_validation_figures_match_a_direct_leave_one_context_out():
    # the figures behind the default shrinkage, recomputed through the public API: fit on the
    # other contexts, allocate the held-out pairs, read the retained mass off their own curves
    oracles, scores, norms = world(6, contexts=4)
    sink, window = 2, 3
    ra = budgetopt.RequestAllocator.fit(oracles, scores, value_norms=norms, sink=sink, window=window)
    groups = [i // 2 for i in range(len(oracles))]
    gains = {s: [] for s in request_fit.SHRINKAGES}
    for g in range(4):
        train = [i for i in range(len(oracles)) if groups[i] != g]
        full = budgetopt.RequestAllocator.fit([oracles[i] for i in train], [scores[i] for i in train],
                                              value_norms=[norms[i] for i in train], sink=sink, window=window,
                                              shrinkage=0.0)
        for i in (i for i in range(len(oracles)) if groups[i] == g):
            T = scores[i].shape[-1]
            u = budgetopt.curves_from_scores(oracles[i], scores[i], sink=sink, window=window).utility.reshape(6, -1)
            floor = max(round(0.01 * T), sink + window)
            kept = {}
            for s in request_fit.SHRINKAGES:
                a = with_shrinkage(full, s)
                kept[s] = np.array([
                    u[np.arange(6), a.allocate(scores[i], max(6 * T - round(c * 6 * T), 6 * floor),
                                               value_norms=norms[i]).budgets.reshape(-1) - sink - window].sum()
                    / u[:, -1].sum() for c in request_fit.CV_COMPRESSIONS])
            for s in request_fit.SHRINKAGES:
                gains[s].append(kept[s] - kept[1.0])
    for s in request_fit.SHRINKAGES:
        assert ra.info["cv"]["shrinkage"][str(s)]["mean_gain"] == pytest.approx(np.mean(gains[s]), abs=1e-12)
        assert ra.info["cv"]["shrinkage"][str(s)]["worst"] == pytest.approx(np.min(gains[s]), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_blend_keeps_the_total_and_each_head_between_its_two_budgets(seed):
    rng = np.random.default_rng(seed)
    n = 40
    static = rng.integers(3, 90, n)
    request = rng.permutation(static)  # the same total
    for s in (0.0, 0.1, 0.5, 0.875, 1.0):
        b = blend_budgets(static, request, s)
        assert b.sum() == static.sum() and b.dtype == np.int64
        assert np.all(b >= np.minimum(static, request)) and np.all(b <= np.maximum(static, request))
        assert np.all(np.abs(b - (s * static + (1 - s) * request)) < 1.0)
    assert np.array_equal(blend_budgets(static, request, 0.0), request)
    assert np.array_equal(blend_budgets(static, request, 1.0), static)


def test_shrinkage_blends_the_static_and_the_request_split(fitted):
    ra = fitted["norms"]
    full, static = with_shrinkage(ra, 0.0), with_shrinkage(ra, 1.0)
    rng = np.random.default_rng(12)
    for T in (50, 77):
        s = rng.gamma(0.4, size=(2, 3, T)) + 1e-9
        n = rng.random((2, 3, T))
        for total in (6 * 5, 6 * T // 3, 6 * T - 1):
            for layerwise in (True, False):
                a = ra.allocate(s, total, value_norms=n, layerwise=layerwise).budgets
                b0 = full.allocate(s, total, value_norms=n, layerwise=layerwise).budgets
                b1 = static.allocate(s, total, value_norms=n, layerwise=layerwise).budgets
                assert a.sum() == total
                assert np.all(a >= np.minimum(b0, b1)) and np.all(a <= np.maximum(b0, b1))
                assert np.all(np.abs(a - (0.5 * b0 + 0.5 * b1)) < 1.0)


def test_deterministic(fitted):
    oracles, scores, norms = fitted["data"]
    a = budgetopt.RequestAllocator.fit(oracles, scores, value_norms=norms, sink=2, window=3)
    b = budgetopt.RequestAllocator.fit(oracles, scores, value_norms=norms, sink=2, window=3)
    for key in ("mean_shape", "weight", "mean_proxy", "beta"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.shrinkage == b.shrinkage and a.info == b.info
    s = np.random.default_rng(0).random((2, 3, 77))
    x, y = a.allocate(s, 200, value_norms=s), b.allocate(s, 200, value_norms=s)
    assert x.budgets.tolist() == y.budgets.tolist() and x.utility == y.utility


# -- files ---------------------------------------------------------------------------------
def test_save_load_round_trip_is_bit_identical(fitted, tmp_path):
    ra = fitted["norms"]
    path = tmp_path / "ra.npz"
    ra.save(path)
    back = budgetopt.RequestAllocator.load(path)
    for key in ("fractions", "mean_shape", "weight", "mean_proxy", "beta"):
        assert getattr(back, key).tobytes() == getattr(ra, key).tobytes()
    assert (back.shrinkage, back.sink, back.window, back.min_keep_fraction, back.features, back.info) == (
        ra.shrinkage, ra.sink, ra.window, ra.min_keep_fraction, ra.features, ra.info)
    s = np.random.default_rng(1).random((2, 3, 50))
    assert back.allocate(s, 100, value_norms=s).budgets.tolist() == ra.allocate(s, 100, value_norms=s).budgets.tolist()


def test_load_reads_within_the_array_size_limit(fitted, tmp_path, monkeypatch):
    """Allocator files go through the bounded reader, like every other file budgetopt reads."""
    path = tmp_path / "ra.npz"
    fitted["norms"].save(path)
    monkeypatch.setenv("BUDGETOPT_MAX_ARRAY_BYTES", "16")
    with pytest.raises(CurvesFileError, match="BUDGETOPT_MAX_ARRAY_BYTES"):
        budgetopt.RequestAllocator.load(path)


def test_load_errors(fitted, tmp_path):
    with pytest.raises(CurvesFileError, match="no such file"):
        budgetopt.RequestAllocator.load(tmp_path / "missing.npz")
    path = tmp_path / "curves.npz"
    budgetopt.save_curves(path, budgetopt.Curves([[0.0, 1.0]]))
    with pytest.raises(CurvesFileError, match="missing key"):
        budgetopt.RequestAllocator.load(path)
    ra = fitted["scores"]
    arrays = dict(fractions=ra.fractions, mean_shape=ra.mean_shape, weight=ra.weight, mean_proxy=ra.mean_proxy,
                  beta=np.array([object()], dtype=object), meta=np.array('{"format": "budgetopt-request/1"}'))
    bad = tmp_path / "pickled.npz"
    np.savez(bad, **arrays)
    with pytest.raises(CurvesFileError, match="never unpickles"):
        budgetopt.RequestAllocator.load(bad)
    arrays["beta"] = ra.beta
    arrays["meta"] = np.array('{"format": "budgetopt-request/1"}')
    np.savez(bad, **arrays)
    with pytest.raises(CurvesFileError, match="earlier budgetopt.*fit the allocator again"):
        budgetopt.RequestAllocator.load(bad)
    arrays["meta"] = np.array('{"format": "other"}')
    np.savez(bad, **arrays)
    with pytest.raises(CurvesFileError, match="format"):
        budgetopt.RequestAllocator.load(bad)


def test_save_is_atomic_into_missing_directory(fitted, tmp_path):
    with pytest.raises(CurvesFileError, match="does not exist"):
        fitted["scores"].save(tmp_path / "nope" / "ra.npz")
    assert not list(tmp_path.iterdir())


# -- validation ----------------------------------------------------------------------------
def test_fit_validation():
    oracles, scores, norms = world(1)
    fit = budgetopt.RequestAllocator.fit
    with pytest.raises(InvalidInputError, match="one 3-D array"):
        fit(oracles[0], scores[0], sink=1, window=1)
    with pytest.raises(InvalidInputError, match="at least one"):
        fit([], scores, sink=1, window=1)
    with pytest.raises(InvalidInputError, match="one array per oracle"):
        fit(oracles, scores[:2], sink=1, window=1)
    with pytest.raises(InvalidInputError, match="layers and KV heads"):
        fit([oracles[0], oracles[1][:1]], [scores[0], scores[1][:1]], sink=1, window=1)
    with pytest.raises(InvalidInputError, match="value_norms"):
        fit(oracles, scores, value_norms=[-n for n in norms], sink=1, window=1)
    with pytest.raises(InvalidInputError, match="shrinkage"):
        fit(oracles, scores, sink=1, window=1, shrinkage=1.5)
    with pytest.raises(InvalidTypeError, match="sink"):
        fit(oracles, scores, sink=1.5, window=1)
    with pytest.raises(InvalidInputError, match="min_keep_fraction"):
        fit(oracles, scores, sink=1, window=1, min_keep_fraction=1.0)
    with pytest.raises(InvalidInputError, match="fractions"):
        fit(oracles, scores, sink=1, window=1, fractions=[0.0, 0.5])
    bad = [o.copy() for o in oracles]
    bad[1][0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match=r"oracles\[1\]"):
        fit(bad, scores, sink=1, window=1)


def test_allocate_validation(fitted):
    ra, rn = fitted["scores"], fitted["norms"]
    s = np.random.default_rng(0).random((2, 3, 40))
    with pytest.raises(InvalidInputError, match=r"scores.*\(2, 3, T\)"):
        ra.allocate(s[:1], 50)
    with pytest.raises(InvalidInputError, match="sink \\+ window"):
        ra.allocate(s[..., :5], 30)
    bad = s.copy()
    bad[0, 0, 3] = np.inf
    with pytest.raises(InvalidInputError, match=r"scores.*finite.*head \(0, 0\)"):
        ra.allocate(bad, 50)
    with pytest.raises(InvalidInputError, match=r"value_norms.*non-negative.*head \(1, 2\)"):
        n = np.ones_like(s)
        n[1, 2, 7] = -1.0
        rn.allocate(s, 50, value_norms=n)
    with pytest.raises(InvalidTypeError, match="scores"):
        ra.allocate(s.astype(str), 50)
    with pytest.raises(InvalidTypeError, match="total_budget"):
        ra.allocate(s, 50.5)
    with pytest.raises(InvalidTypeError, match="layerwise"):
        ra.allocate(s, 50, layerwise="no")
    with pytest.raises(InvalidInputError, match="value_norms.*required"):
        rn.allocate(s, 50)
    with pytest.raises(InvalidInputError, match="value_norms.*shape"):
        rn.allocate(s, 50, value_norms=s[..., :10])


def test_negative_scores_are_ranked_above_their_minimum(fitted):
    ra = fitted["scores"]
    s = np.random.default_rng(2).normal(size=(2, 3, 64))
    a = ra.allocate(s, 150)
    b = ra.allocate(s - s.min() + 0.0, 150)  # the proxy weighs tokens above each head's minimum
    assert a.budgets.sum() == 150
    assert np.abs(a.budgets - b.budgets).max() <= 2


# -- benchmark smoke -----------------------------------------------------------------------
def test_bench_request_quick():
    spec = importlib.util.spec_from_file_location(
        "bench_request", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_request.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--quick"])
    summary = result["data"][0]["summary"]["mean"]
    for name, values in summary.items():
        assert all(0.0 <= v <= 1.0 for v in values), name
        assert all(o >= v - 1e-3 for o, v in zip(summary["own"], values)), name  # own curves, greedy
    assert summary["mean_curve"] != summary["uniform"]


def test_token_counts_round_each_point_half_to_even():
    """Against Python's ``round`` (half to even) point by point, halves included."""
    rng = np.random.default_rng(22)
    for middle in (0, 1, 2, 7, 64, 1000, 32735):
        fractions = np.concatenate([rng.random(40), np.arange(65) / 64.0, [0.5, 0.25, 0.75]])
        got = token_counts(fractions, middle)
        assert got.dtype == np.int64
        assert got.tolist() == [round(float(x) * middle) for x in fractions]
