"""RequestAllocator with probe queries (experimental, issue 21): the deviation rule.

References: the pairs' and probes' curves computed by a direct sort in numpy, the rule's
least squares by explicit loops, and the allocator without probes on the corrected curves.
"""

import os

import numpy as np
import pytest

import budgetopt
from budgetopt.errors import CurvesFileError, InvalidInputError
from budgetopt.request import RequestAllocator

SINK, WINDOW = 2, 3


def world(seed=0, contexts=4, questions=2, probes=2, L=2, H=3, noise=0.5):
    """Seeded contexts: scores, per-question oracles and per-probe oracles sharing a context factor."""
    rng = np.random.default_rng(seed)
    data = []
    for c in range(contexts):
        T = int(rng.integers(40, 70))
        scores = rng.gamma(0.5, size=(L, H, T))
        base = scores * rng.lognormal(0.0, 0.7, (L, H, T))
        oracles = [base * rng.lognormal(0.0, noise, (L, H, T)) for _ in range(questions)]
        probe = [base * rng.lognormal(0.0, noise, (L, H, T)) for _ in range(probes)]
        data.append((scores, oracles, probe))
    return data


def direct_curve(oracle, scores, counts):
    """Kept mass per head at the grid's middle-token counts, as a share of the total: (n, G)."""
    L, H, T = oracle.shape
    out = np.empty((L * H, counts.size))
    for i, (l, h) in enumerate(np.ndindex(L, H)):
        mid = oracle[l, h, SINK:T - WINDOW]
        order = np.argsort(-scores[l, h, SINK:T - WINDOW], kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(mid[order])]) + oracle[l, h, :SINK].sum() + oracle[l, h, T - WINDOW:].sum()
        out[i] = cum[counts]
    return out / oracle.sum()


def counts_for(ra, T):
    return np.round(ra.fractions * (T - SINK - WINDOW)).astype(np.int64)


def fit(data, **kw):
    oracles = [o for _, os_, _ in data for o in os_]
    scores = [s for s, os_, _ in data for _ in os_]
    probes = [p for _, os_, p in data for _ in os_]
    return RequestAllocator.fit(oracles, scores, sink=SINK, window=WINDOW, probe_oracles=probes, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coefficients_are_the_direct_least_squares(seed):
    data = world(seed)
    ra = fit(data, shrinkage=1.0, probe_gain=1.0)
    real, probe, group = [], [], []
    for c, (s, os_, ps) in enumerate(data):
        counts = counts_for(ra, s.shape[-1])
        assert np.array_equal(counts, budgetopt.request.token_counts(ra.fractions, s.shape[-1] - SINK - WINDOW))
        pc = np.mean([direct_curve(p, s, counts) for p in ps], axis=0)
        for o in os_:
            real.append(direct_curve(o, s, counts))
            probe.append(pc)
            group.append(c)
    real, probe, group = np.array(real), np.array(probe), np.array(group)
    G = ra.fractions.size
    num, den = np.zeros(G), np.zeros(G)
    for p in range(len(real)):
        others = group != group[p]
        m = real[others].mean(axis=0)
        pbar = np.mean([probe[np.flatnonzero(group == c)[0]] for c in np.unique(group[others])], axis=0)
        for g in range(G):
            num[g] += np.sum((real[p][:, g] - m[:, g]) * (probe[p][:, g] - pbar[:, g]))
            den[g] += np.sum((probe[p][:, g] - pbar[:, g]) ** 2)
    expected = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    np.testing.assert_allclose(ra.probe_beta, expected, rtol=1e-9, atol=1e-12)
    mean_probe = np.mean([probe[np.flatnonzero(group == c)[0]] for c in range(len(data))], axis=0)
    np.testing.assert_allclose(ra.mean_probe.reshape(mean_probe.shape), mean_probe, rtol=1e-9, atol=1e-12)
    # the fitted static curves are the mean of the pairs' curves, as without probes
    np.testing.assert_allclose((ra.weight[..., None] * ra.mean_shape).reshape(real.shape[1:]), real.mean(axis=0),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_allocation_splits_the_directly_corrected_curves(seed):
    data = world(seed)
    ra = fit(data[:-1], shrinkage=1.0, probe_gain=1.0)
    s, _, ps = data[-1]
    T = s.shape[-1]
    delta = ra.probe_beta * (np.mean([direct_curve(p, s, counts_for(ra, T)) for p in ps], axis=0)
                             - ra.mean_probe.reshape(-1, ra.fractions.size))
    static = ra.weight[..., None] * ra.mean_shape
    corrected = static + delta.reshape(static.shape)
    # an allocator without probes whose static curves are the corrected ones: the same budgets
    twin = RequestAllocator(fractions=ra.fractions, mean_shape=corrected / ra.weight[..., None], weight=ra.weight,
                            mean_proxy=ra.mean_proxy, beta=ra.beta, shrinkage=1.0, sink=SINK, window=WINDOW,
                            min_keep_fraction=ra.min_keep_fraction, features=ra.features, info={})
    n = static.shape[0] * static.shape[1]
    for total in (n * 8, n * 20, n * (T - 5)):
        for layerwise in (True, False):
            got = ra.allocate(s, total, probe_oracles=ps, layerwise=layerwise)
            want = twin.allocate(s, total, layerwise=layerwise)
            assert np.array_equal(got.budgets, want.budgets) and int(got.budgets.sum()) == total
            assert got.utility == pytest.approx(want.utility, rel=1e-12)
    # the request's split moves by the same correction
    ra_mix = fit(data[:-1], shrinkage=0.5, probe_gain=1.0)
    plain = RequestAllocator(**{k: getattr(ra_mix, k) for k in ("fractions", "mean_shape", "weight", "mean_proxy",
                                                                 "beta", "shrinkage", "sink", "window",
                                                                 "min_keep_fraction", "features", "info")})
    u, tokens = ra_mix.predict_curves(s, probe_oracles=np.stack(ps))
    u0, tokens0 = plain.predict_curves(s)
    assert np.array_equal(tokens, tokens0)
    np.testing.assert_allclose(u - u0, delta.reshape(u.shape), rtol=1e-12, atol=1e-15)


def test_zero_gain_is_the_allocator_without_probes():
    data = world(5)
    oracles = [o for _, os_, _ in data[:-1] for o in os_]
    scores = [s for s, os_, _ in data[:-1] for _ in os_]
    plain = RequestAllocator.fit(oracles, scores, sink=SINK, window=WINDOW)
    zero = fit(data[:-1], probe_gain=0.0)
    assert plain.probe_beta is None and zero.shrinkage == plain.shrinkage
    s, _, ps = data[-1]
    for total in (60, 200):
        assert np.array_equal(zero.allocate(s, total, probe_oracles=ps).budgets, plain.allocate(s, total).budgets)


def test_save_load_round_trip(tmp_path):
    data = world(1)
    ra = fit(data[:-1])
    path = os.path.join(tmp_path, "ra.npz")
    ra.save(path)
    back = RequestAllocator.load(path)
    np.testing.assert_array_equal(back.probe_beta, ra.probe_beta)
    np.testing.assert_array_equal(back.mean_probe, ra.mean_probe)
    s, _, ps = data[-1]
    assert np.array_equal(back.allocate(s, 100, probe_oracles=ps).budgets, ra.allocate(s, 100, probe_oracles=ps).budgets)
    # a file without probes loads as before; half a probe rule is refused
    plain = RequestAllocator(**{k: getattr(ra, k) for k in ("fractions", "mean_shape", "weight", "mean_proxy", "beta",
                                                             "shrinkage", "sink", "window", "min_keep_fraction",
                                                             "features", "info")})
    plain.save(path)
    assert RequestAllocator.load(path).probe_beta is None
    with np.load(path) as z:
        arrays = dict(z)
    np.savez(path, **arrays, probe_beta=ra.probe_beta)
    with pytest.raises(CurvesFileError, match=r"'probe_beta' and 'mean_probe' must come together"):
        RequestAllocator.load(path)


def test_errors_name_the_argument():
    data = world(2)
    oracles = [o for _, os_, _ in data for o in os_]
    scores = [s for s, os_, _ in data for _ in os_]
    probes = [p for _, os_, p in data for _ in os_]
    kw = dict(sink=SINK, window=WINDOW)
    with pytest.raises(InvalidInputError, match=r"`probe_oracles` must be a list with one entry per pair \(8\)"):
        RequestAllocator.fit(oracles, scores, probe_oracles=probes[:-1], **kw)
    with pytest.raises(InvalidInputError, match=r"`probe_oracles\[3\]\[0\]` must have shape"):
        RequestAllocator.fit(oracles, scores, probe_oracles=probes[:3] + [[p[..., 1:] for p in probes[3]]] + probes[4:],
                             **kw)
    with pytest.raises(InvalidInputError, match=r"`probe_oracles\[0\]\[1\]` must hold finite values >= 0"):
        RequestAllocator.fit(oracles, scores, probe_oracles=[[probes[0][0], -probes[0][1]]] + probes[1:], **kw)
    with pytest.raises(InvalidInputError, match=r"`probe_oracles\[0\]` must be a non-empty list"):
        RequestAllocator.fit(oracles, scores, probe_oracles=[[]] + probes[1:], **kw)
    with pytest.raises(InvalidInputError, match=r"at least two contexts"):
        RequestAllocator.fit(oracles[:2], scores[:2], probe_oracles=probes[:2], **kw)
    with pytest.raises(InvalidInputError, match=r"cross-validation, which needs pairs from at least three contexts"):
        RequestAllocator.fit(oracles[:4], scores[:4], probe_oracles=probes[:4], **kw)
    with pytest.raises(InvalidInputError, match=r"`probe_gain` must be a finite number >= 0"):
        RequestAllocator.fit(oracles, scores, probe_oracles=probes, probe_gain=-1.0, **kw)
    ra = RequestAllocator.fit(oracles, scores, probe_oracles=probes, **kw)
    s, _, ps = data[0]
    with pytest.raises(InvalidInputError, match=r"`probe_oracles` are required"):
        ra.allocate(s, 100)
    with pytest.raises(InvalidInputError, match=r"`layer_totals` is not available for an allocator fitted with probes"):
        ra.layer_totals(s.shape[-1], 100)
    with pytest.raises(InvalidInputError, match=r"`allocate_layer` is not available"):
        ra.allocate_layer(0, s[0], 30)
    plain = RequestAllocator.fit(oracles, scores, **kw)
    with pytest.raises(InvalidInputError, match=r"`probe_oracles` given, but this allocator was fitted without probes"):
        plain.allocate(s, 100, probe_oracles=ps)


def kept_mass(oracle, scores, budgets):
    """Oracle fraction kept by sink, window and each head's top-scored middle tokens (direct)."""
    L, H, T = oracle.shape
    kept = 0.0
    for (l, h), b in zip(np.ndindex(L, H), budgets.reshape(-1)):
        mid = oracle[l, h, SINK:T - WINDOW]
        order = np.argsort(-scores[l, h, SINK:T - WINDOW], kind="stable")
        kept += oracle[l, h, :SINK].sum() + oracle[l, h, T - WINDOW:].sum() + mid[order[:b - SINK - WINDOW]].sum()
    return kept / oracle.sum()


@pytest.mark.parametrize("seed,noise", [(0, 0.5), (4, 0.5), (0, 0.1), (4, 0.2)])
def test_cross_validated_gain_is_the_folds_allocations(seed, noise):
    from budgetopt.request_fit import CV_COMPRESSIONS, CV_MAX_LOSS
    from budgetopt.request_probes import GAINS
    from budgetopt.rounding import tokens_evicted

    data = world(seed, contexts=4, noise=noise)
    ra = fit(data)
    cv = ra.info["probes"]["cv"]["gain"]
    assert ra.info["probes"]["gain"] in GAINS
    diffs = {g: [] for g in GAINS}
    per_context = {g: [] for g in GAINS}
    for c in range(len(data)):
        rest = data[:c] + data[c + 1:]
        s, os_, ps = data[c]
        T = s.shape[-1]
        by_gain = {g: fit(rest, shrinkage=1.0, probe_gain=g) for g in GAINS}
        n = s.shape[0] * s.shape[1]
        floor = max(int(round(0.01 * T)), SINK + WINDOW)
        held = {g: np.zeros((len(os_), len(CV_COMPRESSIONS))) for g in GAINS}
        for q, o in enumerate(os_):
            for j, comp in enumerate(CV_COMPRESSIONS):
                total = max(n * T - tokens_evicted(comp, n * T), n * floor)
                base = kept_mass(o, s, by_gain[0.0].allocate(s, total, probe_oracles=ps).budgets)
                for g in GAINS:
                    held[g][q, j] = kept_mass(o, s, by_gain[g].allocate(s, total, probe_oracles=ps).budgets) - base
        for g in GAINS:
            diffs[g].extend(held[g].ravel())
            per_context[g].append(held[g].mean(axis=0))
    for g in GAINS:
        assert cv[str(g)]["mean_gain"] == pytest.approx(np.mean(diffs[g]), abs=1e-12)
        assert cv[str(g)]["worst_pair"] == pytest.approx(np.min(diffs[g]), abs=1e-12)
        assert cv[str(g)]["worst_context"] == pytest.approx(np.min(per_context[g]), abs=1e-12)
    allowed = [g for g in GAINS if np.min(per_context[g]) >= -CV_MAX_LOSS and np.mean(diffs[g]) > 0]
    expected = max(allowed, key=lambda g: (np.mean(diffs[g]), -g)) if allowed else 0.0
    assert ra.info["probes"]["gain"] == expected
    if noise < 0.5:  # probes close to the questions: the cross-validation keeps them
        assert expected > 0


def test_probes_unrelated_to_the_answers_give_no_gain():
    rng = np.random.default_rng(9)
    data = [(s, os_, [rng.gamma(0.5, size=s.shape) for _ in range(2)]) for s, os_, _ in world(6, contexts=5)]
    ra = fit(data)
    assert ra.info["probes"]["gain"] == 0.0
    assert not np.any(ra.probe_beta)


def test_bad_request_scores_are_named_before_the_probes_are_read():
    data = world(3)
    ra = fit(data[:-1])
    s, _, ps = data[-1]
    bad = s.copy()
    bad[1, 2, 7] = np.nan
    with pytest.raises(InvalidInputError, match=r"scores"):
        ra.allocate(bad, 100, probe_oracles=ps)
