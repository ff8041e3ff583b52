"""Per-request head budgets: the static profile corrected by the request's own prefill scores.

A static LU-KV table gives every request the same per-head split. :class:`RequestAllocator`
keeps what offline profiling knows (each head's mean utility curve and its share of the
oracle mass) and corrects each head's curve *shape* with what the request shows at prefill:
how concentrated its scores are (and, optionally, its scores times the value-output norms).

Model, on a fixed grid of fractions ``x_k`` of each head's middle tokens (the tokens between
the ``sink`` first and ``window`` last ones)::

    shape[h](x_k) = mean_shape[h](x_k) + sum_j beta[j, k] * (proxy_j[h](x_k) - mean_proxy_j[h](x_k))
    curve[h](x_k) = weight[h] * shape[h](x_k)
    budgets       = shrinkage * split(static curves) + (1 - shrinkage) * split(curves)

``weight[h] * mean_shape[h]`` is the head's static curve: the mean over calibration pairs of
its utility curve (oracle mass kept with the scorer's top tokens plus sink and window, as a
share of the pair's total), as ``lukv_table(aggregate="mean_curve")`` averages curves;
``weight[h]`` is its mean share of the mass. ``proxy_j[h](x)`` is the share of a head's own
score mass (feature ``"scores"``) or score-times-value-norm mass (``"scores_x_norms"``) held
by its protected tokens and its ``x`` top-scored middle tokens (both ranked by score, as the
scorer keeps them). ``beta`` is a ridge regression of the
pairs' shape deviations (utility curve divided by its total, minus the head's mean) on the
proxy deviations, pooled over heads, one coefficient per feature and grid point. Each
split comes from its piecewise-linear curves by the upper-hull greedy; the two splits are
mixed in whole tokens that add up to the total (each head ends between its two budgets, so
on concave true curves the mix loses at most ``1 - shrinkage`` of what the request's split
alone would lose). ``shrinkage`` (1 = the static split alone) is chosen by
leave-one-context-out cross-validation on the calibration pairs.

This module holds the front door (:class:`RequestAllocator`: checks, fit, allocate, save and
load) and what a request's scores show (:func:`proxy_curves`, read by a few threads). The
fitting is in :mod:`budgetopt.request_fit`, the split of a total over the curves in
:mod:`budgetopt.request_split`.
"""

from __future__ import annotations

import json
import numbers
import os

import numpy as np

from . import _kernels_request as _k
from ._kernels_jit import Stopwatch
from ._threads import map_in_order
from ._checks import check_fraction, check_int, real_array
from ._io import check_input_file, loads_json, read_npz, write_atomic
from .errors import CurvesFileError, InfeasibleError, InvalidInputError, InvalidTypeError
from .profile import as_pairs, check_profile_arrays, per_pair, rank_middle
from .result import Allocation
from .request_fit import corrected, cross_validate, fit_arrays, oracle_shapes
from .request_probes import cross_validate_gain, fit_deviation, probe_curve
from .request_split import split, with_floor
from .rounding import blend_budgets, head_floor, token_counts

__all__ = ["RequestAllocator", "FORMAT"]

#: ``format`` field of a saved allocator (``/1`` files, whose shrinkage mixed the curves
#: rather than the budgets, are refused).
FORMAT = "budgetopt-request/2"

#: Features, in the order of ``beta``'s first axis.
FEATURES = ("scores", "scores_x_norms")

#: Default fraction grid: 65 points, quadratic (dense where high compression needs it).
DEFAULT_FRACTIONS = (np.arange(65) / 64.0) ** 2

#: Proxies of long heads: a head with ``M >= 8 * SAMPLE`` middle tokens counts its highest
#: values (about the top 1/64) exactly and the rest from a sample of ``SAMPLE`` to
#: ``2 * SAMPLE`` tokens (0: every head exactly).
SAMPLE = 2048

#: Threads that read a request's heads in parallel (the kernel releases the GIL; each thread
#: takes a contiguous block of heads, so the answer does not depend on it) when the request
#: holds at least :data:`THREADED_TOKENS` scores; 1 reads them in the calling thread.
THREADS = min(4, os.cpu_count() or 1)
THREADED_TOKENS = 1 << 20

# -- checks --------------------------------------------------------------------------------
def _check_norms(norms, like_shape, name, values=True):
    """Value norms shaped like the scores; with ``values``, also finite and non-negative (else
    :func:`proxy_curves` checks them in its pass)."""
    arr = real_array(norms, f"`{name}`")
    if arr.shape != like_shape:
        raise InvalidInputError(f"`{name}` must have the shape of the scores, {like_shape}; got {arr.shape}")
    if values and (not np.all(np.isfinite(arr)) or np.any(arr < 0)):
        raise InvalidInputError(f"`{name}` must be finite and non-negative")
    return arr


# -- the pieces shared by fit and allocate -------------------------------------------------
def proxy_curves(scores, norms, sink, window, counts, *, scores_name="scores", norms_name="value_norms",
                 sample=None):
    """Proxy shapes ``(J, n, G)`` of ``scores`` ``(..., T)`` (and ``norms`` of that shape, or None).

    Checks the values on the way: a NaN or infinite score, or a NaN, infinite or negative
    norm, raises :class:`InvalidInputError` naming the array and head. ``sample``: tokens
    sampled per head for the bulk of long rows (default :data:`SAMPLE`); 0 reads every token.
    """
    sample = SAMPLE if sample is None else sample
    length = scores.shape[-1]
    rows = np.ascontiguousarray(scores, dtype=np.float32).reshape(-1, length)
    n_rows = rows if norms is None else np.ascontiguousarray(norms, dtype=np.float32).reshape(rows.shape)
    out = np.empty((1 if norms is None else 2, rows.shape[0], counts.shape[0]))
    use_norms = norms is not None

    def read(a, b):  # heads a..b-1; the first bad head's code, counted from head 0
        with np.errstate(over="ignore"):
            code = _k.mass_curves(rows[a:b], rows[a:b].view(np.uint32), n_rows[a:b], n_rows[a:b].view(np.uint32),
                                  use_norms, sink, window, counts, sample, out[:, a:b])
        return code if code < 0 else code + 4 * a

    n = rows.shape[0]
    workers = min(int(THREADS), n) if rows.size >= THREADED_TOKENS else 1
    if workers <= 1:
        status = read(0, n)
    else:
        edges = np.linspace(0, n, workers + 1).astype(np.int64).tolist()
        codes = list(map_in_order(lambda i: read(edges[i], edges[i + 1]), workers, workers, name="budgetopt-request"))
        bad = [c for c in codes if c >= 0]
        status = min(bad) if bad else -1
    if status >= 0:
        head = tuple(int(i) for i in np.unravel_index(status // 4, scores.shape[:-1]))
        if status % 4 == 1:
            raise InvalidInputError(f"`{scores_name}` must be finite (within float32 range); found NaN or inf at head {head}")
        raise InvalidInputError(f"`{norms_name}` must be finite and non-negative; found a bad value at head {head}")
    return out


class RequestAllocator:
    """Per-head KV budgets for one request: static profile plus the request's own scores.

    Build it with :meth:`fit` (from calibration pairs) or :meth:`load`; call
    :meth:`allocate` at each request's prefill.

    Attributes
    ----------
    layers, kv_heads : int
        The head shape ``(L, H)`` of the calibration arrays.
    sink, window : int
        Tokens at the start and end every head keeps (counted in its budget).
    min_keep_fraction : float
        Per-head floor as a fraction of the request's ``T``.
    features : tuple of str
        ``("scores",)`` or ``("scores", "scores_x_norms")`` (fitted with value norms).
    shrinkage : float
        Weight of the static curves in ``[0, 1]``; 1 is the static profile alone.
    fractions : numpy.ndarray
        The grid of middle-token fractions, from 0 to 1.
    info : dict
        How the model was fitted (pairs, contexts, cross-validation figures); JSON-ready.
    probe_beta, mean_probe : numpy.ndarray or None
        The probe rule (``fit(probe_oracles=...)``): coefficients ``(G,)`` and the calibration
        contexts' mean probe curves ``(L, H, G)``; None for an allocator fitted without probes.
    """

    def __init__(self, *, fractions, mean_shape, weight, mean_proxy, beta, shrinkage, sink, window,
                 min_keep_fraction, features, info, probe_beta=None, mean_probe=None):
        self.fractions = np.asarray(fractions, np.float64)
        self.mean_shape = np.asarray(mean_shape, np.float64)
        self.weight = np.asarray(weight, np.float64)
        self.mean_proxy = np.asarray(mean_proxy, np.float64)
        self.beta = np.asarray(beta, np.float64)
        self.shrinkage = float(shrinkage)
        self.sink, self.window = int(sink), int(window)
        self.min_keep_fraction = float(min_keep_fraction)
        self.features = tuple(features)
        self.info = dict(info)
        for arr in (self.fractions, self.mean_shape, self.weight, self.mean_proxy, self.beta):
            arr.setflags(write=False)
        self.probe_beta = self.mean_probe = None
        if probe_beta is not None:
            self.probe_beta = np.asarray(probe_beta, np.float64)
            self.mean_probe = np.asarray(mean_probe, np.float64)
            self.probe_beta.setflags(write=False)
            self.mean_probe.setflags(write=False)

    @property
    def layers(self):
        return self.mean_shape.shape[0]

    @property
    def kv_heads(self):
        return self.mean_shape.shape[1]

    def __repr__(self):
        return (f"RequestAllocator(layers={self.layers}, kv_heads={self.kv_heads}, features={self.features}, "
                f"shrinkage={self.shrinkage}, sink={self.sink}, window={self.window})")

    # -- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, oracles, scores, *, value_norms=None, sink, window, min_keep_fraction=0.01, shrinkage=None,
            fractions=None, probe_oracles=None, probe_gain=None):
        """Learn per-head static curves and a shape correction from calibration pairs.

        Parameters
        ----------
        oracles : sequence of array_like, each ``(L, H, T)``
            Oracle importance per calibration (context, question) pair, as for
            :func:`budgetopt.lukv_table`. ``T`` may differ between pairs (the model works on
            fractions of each head's middle tokens).
        scores : array_like ``(L, H, T)``, or list/tuple of them (one per pair)
            The scorer's values at each pair's context prefill (shared by the questions of
            one context). Pairs whose scores are equal form one context for the
            cross-validation.
        value_norms : array_like ``(L, H, T)``, or list/tuple of them, optional
            The oracle's value-output norms ``n`` of each pair's context, reduced over each
            KV group. When given, the allocator also uses ``scores * value_norms`` and then
            needs them at :meth:`allocate` too.
        sink, window : int
            First and last tokens every head keeps.
        min_keep_fraction : float, optional
            Per-head floor as a fraction of ``T`` (default 0.01, as ``lukv_table``); the floor
            is ``max(round(min_keep_fraction * T), sink + window)``.
        shrinkage : float in [0, 1], optional
            Weight of the static split in the budgets (1: the static curves' split only, 0:
            the split of the request's corrected curves alone; between: whole-token budgets
            at that mix of the two splits). Default: chosen by leave-one-context-out
            cross-validation among :data:`~budgetopt.request_fit.SHRINKAGES`, as the one
            with the highest mean retained oracle mass at compressions 0.5/0.8/0.9 among
            those that never lose more than :data:`~budgetopt.request_fit.CV_MAX_LOSS` of a
            held-out pair's mass against the static split (half the 0.5% a held-out request
            may lose: the margin covers the choice itself); 1 when none gains on average or
            there is only one context.
        fractions : array_like, optional
            The grid of middle-token fractions (increasing, from 0 to 1; default 65 points
            ``(k / 64) ** 2``).
        probe_oracles : sequence, optional
            Experimental (issue 21). One entry per pair: the oracles ``(L, H, T)`` of the
            probes profiled over that pair's context (:func:`budgetopt.runs.load_probe_run`),
            a list, or an array ``(K, L, H, T)``. When given, the static curves become
            ``M + beta * (P - Pbar)`` per grid point (:mod:`budgetopt.request_probes`; ``P``
            the request's mean probe curve, ``Pbar`` the calibration contexts' mean, ``beta``
            least squares pooled over heads and pairs) in both splits, and :meth:`allocate`
            needs the request's probe oracles. Needs pairs of at least two contexts. The
            shrinkage cross-validation does not see the probes.
        probe_gain : float, optional
            Factor on the fitted ``beta`` (0 gives the static curves). Default: chosen by
            leave-one-context-out cross-validation among
            :data:`~budgetopt.request_probes.GAINS`: the best mean retained mass at
            compressions 0.5/0.8/0.9 among the gains under which no held-out context's mean
            over its pairs loses more than :data:`~budgetopt.request_fit.CV_MAX_LOSS` against
            the static curves (0 when none gains; the worst single pair is reported in
            ``info["probes"]["cv"]``); needs three contexts or more.

        Returns
        -------
        RequestAllocator

        Raises
        ------
        InvalidTypeError, InvalidInputError
            Bad arrays (as in :func:`budgetopt.lukv_table`; head shapes must agree, ``T`` may
            not), bad ``value_norms``, ``sink``, ``window``, ``min_keep_fraction``,
            ``shrinkage`` or ``fractions``; the message names the argument.

        Notes
        -----
        Per pair: one sort per head (shared by pairs with the same scores object) for the
        oracle curves, one pass over the scores for the proxies. The regression and the
        cross-validation (one refit per held-out context, then allocations of the held-out
        pairs at three compressions for each of :data:`~budgetopt.request_fit.SHRINKAGES`)
        work on the coarse grid only.
        Deterministic.

        Examples
        --------
        >>> import numpy as np, budgetopt
        >>> rng = np.random.default_rng(0)
        >>> scores = [rng.random((2, 2, 64)) for _ in range(3)]
        >>> oracles = [s ** 2 for s in scores]
        >>> ra = budgetopt.RequestAllocator.fit(oracles, scores, sink=2, window=4)
        >>> ra.layers, ra.kv_heads, ra.features
        (2, 2, ('scores',))
        >>> a = ra.allocate(rng.random((2, 2, 100)), 120)
        >>> a.budgets.shape, int(a.budgets.sum())
        ((2, 2), 120)
        """
        sink = check_int(sink, "sink")
        window = check_int(window, "window")
        min_keep_fraction = check_fraction(min_keep_fraction, "min_keep_fraction", upper_open=True)
        if shrinkage is not None:
            shrinkage = check_fraction(shrinkage, "shrinkage", upper_open=False)
        fractions = _check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
        oracles, score_list, per_pair_scores = as_pairs(oracles, scores, "(L, H, T)")
        n_pairs = len(oracles)
        norm_list = None if value_norms is None else per_pair(value_norms, n_pairs, "value_norms")[0]
        features = FEATURES if value_norms is not None else FEATURES[:1]

        head_shape = None
        pairs = []  # (context id, shapes (n, G), totals (n,), proxies (J, n, G), utility (n, T'), T)
        contexts = []  # representative scores of each context, to group pairs
        rankings = {}
        for i in range(n_pairs):
            oracle, score, _, _ = check_profile_arrays(
                oracles[i], score_list[i], sink, window, oracle_name=f"oracles[{i}]",
                scores_name=f"scores[{i}]" if per_pair_scores else "scores")
            if oracle.ndim != 3:
                raise InvalidInputError(f"`oracles[{i}]` must have shape (L, H, T) (layers, KV heads, tokens); got {oracle.shape}")
            if head_shape is None:
                head_shape = oracle.shape[:2]
            elif oracle.shape[:2] != head_shape:
                raise InvalidInputError(
                    f"`oracles[{i}]` must have the layers and KV heads of `oracles[0]`, {head_shape}; got {oracle.shape[:2]}")
            norms = None
            if norm_list is not None:
                norms = _check_norms(norm_list[i], oracle.shape, f"value_norms[{i}]" if isinstance(value_norms, (list, tuple)) else "value_norms")
            length = oracle.shape[-1]
            counts = token_counts(fractions, length - sink - window)
            key = id(score_list[i])
            if key not in rankings:
                rankings[key] = rank_middle(score, sink, window)
            shapes, totals, utility = oracle_shapes(oracle, rankings[key], sink, window, counts)
            proxies = proxy_curves(score, norms, sink, window, counts)
            ctx = next((c for c, rep in enumerate(contexts) if rep is score_list[i] or (
                rep.shape == score.shape and np.array_equal(rep, score))), None)
            if ctx is None:
                contexts.append(score)
                ctx = len(contexts) - 1
            pairs.append((ctx, shapes, totals, proxies, utility, length))

        groups = np.array([p[0] for p in pairs])
        model = fit_arrays(pairs, np.arange(n_pairs))
        info = {"pairs": n_pairs, "contexts": len(contexts)}
        if shrinkage is None:
            if len(contexts) < 2:
                shrinkage = 1.0
                info["cv"] = "one context: no cross-validation, static curves only"
            else:
                shrinkage, info["cv"] = cross_validate(pairs, groups, fractions, sink, window, min_keep_fraction)
        mean_shape, weight, mean_proxy, beta = model
        L, H = head_shape
        G = fractions.size
        probe_beta = mean_probe = None
        if probe_oracles is not None:
            if probe_gain is not None and (isinstance(probe_gain, (bool, np.bool_))
                                           or not isinstance(probe_gain, numbers.Real)
                                           or not np.isfinite(probe_gain) or probe_gain < 0):
                raise InvalidInputError(f"`probe_gain` must be a finite number >= 0 or None; got {probe_gain!r}")
            if not isinstance(probe_oracles, (list, tuple)) or len(probe_oracles) != n_pairs:
                raise InvalidInputError(
                    f"`probe_oracles` must be a list with one entry per pair ({n_pairs}): the probe oracles of "
                    f"that pair's context; got {_describe(probe_oracles)}")
            if len(contexts) < 2:
                raise InvalidInputError("`probe_oracles` need calibration pairs from at least two contexts "
                                        "(the probe coefficients are fitted across contexts); got one")
            if probe_gain is None and len(contexts) < 3:
                raise InvalidInputError("`probe_gain=None` chooses the gain by cross-validation, which needs pairs "
                                        "from at least three contexts; got two (give `probe_gain`)")
            curves, probes = [], []
            for i, (_, shapes, totals, _, _, length) in enumerate(pairs):
                arr = _check_probe_oracles(probe_oracles[i], (L, H, length), f"probe_oracles[{i}]")
                counts = token_counts(fractions, length - sink - window)
                probes.append(probe_curve(arr, rankings[id(score_list[i])], sink, window, counts))
                mass = totals.sum()
                curves.append(shapes * (totals / (mass if mass > 0 else 1.0))[:, None])
            curves, probes = np.stack(curves), np.stack(probes)
            probe_info = {}
            if probe_gain is None:
                probe_gain, probe_info["cv"] = cross_validate_gain(
                    curves, probes, groups, [p[4] for p in pairs], [p[5] for p in pairs], fractions, sink, window,
                    min_keep_fraction)
            probe_beta, mean_probe = fit_deviation(curves, probes, groups)
            probe_beta, mean_probe = float(probe_gain) * probe_beta, mean_probe.reshape(L, H, G)
            info["probes"] = {"gain": float(probe_gain), **probe_info}
        return cls(fractions=fractions, mean_shape=mean_shape.reshape(L, H, G), weight=weight.reshape(L, H),
                   mean_proxy=mean_proxy.reshape(len(features), L, H, G), beta=beta, shrinkage=shrinkage,
                   sink=sink, window=window, min_keep_fraction=min_keep_fraction, features=features, info=info,
                   probe_beta=probe_beta, mean_probe=mean_probe)

    def _probe_delta(self, scores, probe_oracles):
        """``beta * (P - Pbar)`` ``(n, G)`` for a request's validated scores, or None without probes."""
        if self.probe_beta is None:
            if probe_oracles is not None:
                raise InvalidInputError("`probe_oracles` given, but this allocator was fitted without probes")
            return None
        if probe_oracles is None:
            raise InvalidInputError("`probe_oracles` are required: this allocator was fitted with probes")
        arr = _check_probe_oracles(probe_oracles, scores.shape, "probe_oracles")
        counts = token_counts(self.fractions, scores.shape[-1] - self.sink - self.window)
        order = rank_middle(scores, self.sink, self.window)
        p = probe_curve(arr, order, self.sink, self.window, counts)
        return self.probe_beta * (p - self.mean_probe.reshape(p.shape))

    def _refuse_probes(self, what):
        if self.probe_beta is not None:
            raise InvalidInputError(
                f"`{what}` is not available for an allocator fitted with probes (its static curves depend on the "
                "request's probes); use allocate(..., probe_oracles=...), layerwise or not")

    # -- prediction ------------------------------------------------------------------------
    def _check_request(self, scores, value_norms):
        """Validated scores ``(L, H, T)`` and norms (or None) of one request."""
        arr = real_array(scores, "`scores`")
        if arr.ndim != 3 or arr.shape[:2] != (self.layers, self.kv_heads):
            raise InvalidInputError(
                f"`scores` must have shape ({self.layers}, {self.kv_heads}, T) (layers, KV heads, tokens) as the "
                f"calibration; got {arr.shape}")
        length = arr.shape[-1]
        if length <= self.sink + self.window:
            raise InvalidInputError(
                f"`scores` must have more tokens than sink + window = {self.sink + self.window}; got T = {length}")
        norms = None
        if "scores_x_norms" in self.features:
            if value_norms is None:
                raise InvalidInputError(
                    "`value_norms` are required: this allocator was fitted with value norms (features "
                    f"{self.features})")
            norms = _check_norms(value_norms, arr.shape, "value_norms", values=False)
        return arr, norms

    def _predicted(self, scores, norms, layers=slice(None)):
        """Predicted curves ``(n, G)`` on token grid ``(G,)`` for validated input: ``scores``
        (and ``norms``) hold the layers ``layers`` of the model."""
        length = scores.shape[-1]
        counts = token_counts(self.fractions, length - self.sink - self.window)
        proxies = proxy_curves(scores, norms, self.sink, self.window, counts)  # also checks the values
        shape = corrected(self.mean_shape[layers].reshape(proxies.shape[1:]), proxies,
                           self.mean_proxy[:, layers].reshape(proxies.shape), self.beta)
        return self.weight[layers].reshape(-1, 1) * shape, counts + (self.sink + self.window)

    def _static_curves(self, length, floor, layers=slice(None), delta=None):
        """The static curves of ``layers`` for a request of ``length`` tokens, floored: (u, grid);
        ``delta``: the probe rule's correction ``(n, G)`` of every head, or None."""
        G = self.fractions.size
        u = self.weight[layers].reshape(-1, 1) * self.mean_shape[layers].reshape(-1, G)
        if delta is not None:
            u = u + delta
        tokens = token_counts(self.fractions, length - self.sink - self.window) + (self.sink + self.window)
        return with_floor(np.ascontiguousarray(u), tokens, floor, length)

    def predict_curves(self, scores, *, value_norms=None, probe_oracles=None):
        """Predicted utility curves of one request on its coarse token grid.

        The static curves with their shapes corrected by the request's scores in full: the
        curves of the request's split (:attr:`shrinkage` only mixes the splits).

        Parameters
        ----------
        scores : array_like ``(L, H, T)``
            The scorer's values at this request's prefill.
        value_norms : array_like ``(L, H, T)``, optional
            Required when the allocator was fitted with them.
        probe_oracles : sequence of array_like ``(L, H, T)``, optional
            Required when the allocator was fitted with probes (their correction is added).

        Returns
        -------
        utility : numpy.ndarray ``(L, H, G)``
            Predicted retained oracle mass (each head's share of a pair's mass); between grid
            points the curves are linear.
        tokens : numpy.ndarray of int64 ``(G,)``
            Tokens kept at each grid point, sink and window included
            (``sink + window + round(fractions * (T - sink - window))``).

        Examples
        --------
        >>> import numpy as np, budgetopt
        >>> pair = np.random.default_rng(1).random((1, 2, 50))
        >>> ra = budgetopt.RequestAllocator.fit([pair ** 3], [pair], sink=1, window=1, shrinkage=1.0)
        >>> u, tokens = ra.predict_curves(np.linspace(0.1, 1.0, 160).reshape(1, 2, 80))
        >>> u.shape, int(tokens[0]), int(tokens[-1])
        ((1, 2, 65), 2, 80)
        """
        arr, norms = self._check_request(scores, value_norms)
        u, tokens = self._predicted(arr, norms)  # also checks the scores' values
        delta = self._probe_delta(arr, probe_oracles)
        if delta is not None:
            u = u + delta
        return u.reshape(self.layers, self.kv_heads, -1), tokens

    # -- allocation ------------------------------------------------------------------------
    def allocate(self, scores, total_budget, *, value_norms=None, layerwise=True, probe_oracles=None):
        """Per-head budgets for one request from its prefill scores.

        Two splits of ``total_budget`` with ``floor <= b_h <= T``
        (``floor = max(round(min_keep_fraction * T), sink + window)``), each maximising a
        predicted retained oracle mass ``sum_h curve[h](b_h)``: over the static curves, and
        over the static curves with their shapes corrected by this request's scores (see the
        module docstring); the budgets are ``shrinkage`` times the first plus
        ``1 - shrinkage`` times the second, in whole tokens adding up to ``total_budget``.

        Parameters
        ----------
        scores : array_like ``(L, H, T)``
            The scorer's values of this request's context tokens at prefill, any ``T`` above
            ``sink + window``.
        total_budget : int
            Tokens all heads keep together, sink and window included (for a kept fraction
            ``f`` of the cache use ``budgetopt.tokens_from_fraction(f, L * H * T)``), in
            ``[L * H * floor, L * H * T]``.
        value_norms : array_like ``(L, H, T)``, optional
            This request's value-output norms; required when the allocator was fitted with
            them.
        layerwise : bool, optional
            True (default): all layers and heads share ``total_budget``. False: each layer
            keeps exactly what the static curves give it for ``total_budget`` and only its
            heads trade tokens (what a per-layer press can apply during prefill; see
            :meth:`layer_totals`).
        probe_oracles : sequence of array_like ``(L, H, T)``, optional
            The oracles of this request's probes over its context; required when the
            allocator was fitted with ``probe_oracles`` (then both splits use the probe
            rule's curves, see :meth:`fit`), refused otherwise.

        Returns
        -------
        Allocation
            ``budgets`` ``(L, H)`` int64 adding up to ``total_budget``; ``utility`` is their
            value on the curves ``shrinkage * static + (1 - shrinkage) * corrected``
            (piecewise linear), ``upper_bound`` the same mix of the two splits' LP values (an
            upper bound on those curves' value at any split), ``threshold`` the same mix of
            the marginal values per token where each split's total ran out (for
            ``layerwise=False``, the largest over layers); ``method`` is ``"request"``;
            ``stats`` holds ``shrinkage`` and ``layerwise``.

        Raises
        ------
        InvalidTypeError, InvalidInputError
            Bad ``scores`` or ``value_norms`` (shape, non-finite), missing ``value_norms``,
            ``total_budget`` not a non-negative integer, bad ``layerwise``.
        InfeasibleError
            ``total_budget`` below ``L * H * floor`` or above ``L * H * T``.

        Notes
        -----
        One pass over each head's scores (a log-scale histogram, no sort; O(T) per head;
        heads with at least ``8 * SAMPLE`` middle tokens count their highest values exactly
        and the rest from a sample, see :data:`SAMPLE`), the predicted curves on the coarse
        grid (G points), their upper hulls and a sort of the hull segments, for each of the
        two splits: O(L H (T + G log(L H G))). Deterministic; requests of at least
        :data:`THREADED_TOKENS` scores are read by :data:`THREADS` threads, each a block of
        heads, with the same answer as one thread.

        Examples
        --------
        >>> import numpy as np, budgetopt
        >>> rng = np.random.default_rng(0)
        >>> s = [rng.random((2, 2, 64)) for _ in range(2)]
        >>> ra = budgetopt.RequestAllocator.fit([x ** 4 for x in s], s, sink=2, window=2, shrinkage=0.5)
        >>> a = ra.allocate(rng.random((2, 2, 64)), 100, layerwise=False)
        >>> a.budgets.sum(axis=1).tolist() == ra.layer_totals(64, 100).tolist()
        True
        """
        watch = Stopwatch()
        arr, norms = self._check_request(scores, value_norms)
        if not isinstance(layerwise, (bool, np.bool_)):
            raise InvalidTypeError(f"`layerwise` must be True or False; got {layerwise!r}")
        length = arr.shape[-1]
        total = self._check_total(total_budget, length)
        floor = head_floor(self.min_keep_fraction, length, self.sink, self.window)
        u, tokens = self._predicted(arr, norms)  # also checks the scores' values
        delta = self._probe_delta(arr, probe_oracles)
        u, grid = with_floor(u if delta is None else u + delta, tokens, floor, length)
        su, sgrid = self._static_curves(length, floor, delta=delta)
        if layerwise:
            budgets, value, lp, lam = self._solve(u, grid, su, sgrid, total)
        else:
            per_layer = self._static_layer_totals(length, total, floor, delta)
            H = self.kv_heads
            budgets = np.empty(u.shape[0], np.int64)
            value, lp, lam = 0.0, 0.0, 0.0
            for layer in range(self.layers):
                rows = slice(layer * H, (layer + 1) * H)
                b, v, bound, s = self._solve(u[rows], grid[rows], su[rows], sgrid[rows], per_layer[layer])
                budgets[rows] = b
                value += v
                lp += bound
                lam = max(lam, s)
        return Allocation.from_solution(
            budgets.reshape(self.layers, self.kv_heads), value, total_budget=total, upper_bound=lp, threshold=lam,
            method="request", status="feasible", seconds=watch.seconds(),
            stats={"shrinkage": self.shrinkage, "layerwise": bool(layerwise), "floor": floor})

    def allocate_layer(self, layer, scores, layer_total, *, value_norms=None):
        """Split one layer's tokens between its KV heads from that layer's scores alone.

        What a press calls inside each layer's hook during prefill; with ``layer_total`` from
        :meth:`layer_totals`, the per-layer answers together equal
        ``allocate(..., layerwise=False)``.

        Parameters
        ----------
        layer : int
            Layer index in ``[0, L)``.
        scores : array_like ``(H, T)``
            This layer's scores of the request's ``T`` context tokens.
        layer_total : int
            Tokens the layer's heads keep together, in ``[H * floor, H * T]``.
        value_norms : array_like ``(H, T)``, optional
            Required when the allocator was fitted with value norms.

        Returns
        -------
        numpy.ndarray of int64 ``(H,)``, adding up to ``layer_total``.

        Examples
        --------
        >>> import numpy as np, budgetopt
        >>> pairs, request = np.split(np.random.default_rng(0).random((3, 2, 2, 64)), [2])
        >>> ra = budgetopt.RequestAllocator.fit(list(pairs ** 4), list(pairs), sink=2, window=2, shrinkage=0.5)
        >>> request = request[0]
        >>> per_layer = [ra.allocate_layer(l, request[l], t) for l, t in enumerate(ra.layer_totals(64, 100))]
        >>> np.array_equal(np.stack(per_layer), ra.allocate(request, 100, layerwise=False).budgets)
        True
        """
        self._refuse_probes("allocate_layer")
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, numbers.Integral) or not 0 <= layer < self.layers:
            raise InvalidInputError(f"`layer` must be an integer in [0, {self.layers}); got {layer!r}")
        layer = int(layer)
        arr = real_array(scores, "`scores`")
        if arr.ndim != 2:
            raise InvalidInputError(
                f"`scores` must have shape ({self.kv_heads}, T) (one layer's KV heads); got "
                f"{getattr(arr, 'shape', type(arr).__name__)}")
        norms = None if value_norms is None else np.asarray(value_norms)[None]
        arr3, norms = self._check_request_layer(arr, norms)
        length = arr3.shape[-1]
        floor = head_floor(self.min_keep_fraction, length, self.sink, self.window)
        total = check_int(layer_total, "layer_total")
        H = self.kv_heads
        if not H * floor <= total <= H * length:
            raise InfeasibleError(
                f"`layer_total` must be in [kv_heads * floor, kv_heads * T] = [{H * floor}, {H * length}]; got {total}")
        u, tokens = self._predicted(arr3, norms, layers=slice(layer, layer + 1))
        u, grid = with_floor(u, tokens, floor, length)
        su, sgrid = self._static_curves(length, floor, layers=slice(layer, layer + 1))
        return self._solve(u, grid, su, sgrid, total)[0]

    def _solve(self, u, grid, su, sgrid, total):
        """Budgets for ``total`` from the request's curves ``u`` and the static ``su``, blended
        by :attr:`shrinkage`; with the blended curves' value there, their upper bound and the
        blended threshold: (budgets, value, upper bound, threshold)."""
        s = self.shrinkage
        parts = []  # (weight, curves, grid, budgets, LP value, threshold)
        if s > 0.0:
            parts.append((s, su, sgrid) + split(su, sgrid, total))
        if s < 1.0:
            parts.append((1.0 - s, u, grid) + split(u, grid, total))
        budgets = parts[0][3] if len(parts) == 1 else blend_budgets(parts[0][3], parts[1][3], s)
        value = sum(w * float(_k.curve_values(c, g, budgets)) for w, c, g, *_ in parts)
        bound = sum(q[0] * q[4] for q in parts)
        lam = sum(q[0] * q[5] for q in parts)
        return budgets, value, bound, lam

    def _check_request_layer(self, arr, norms):
        """One layer's scores ``(H, T)`` (a real array; norms ``(1, H, T)``) checked as a request."""
        if arr.shape[0] != self.kv_heads:
            raise InvalidInputError(f"`scores` must have shape ({self.kv_heads}, T) (one layer's KV heads); got {arr.shape}")
        if arr.shape[-1] <= self.sink + self.window:
            raise InvalidInputError(
                f"`scores` must have more tokens than sink + window = {self.sink + self.window}; got T = {arr.shape[-1]}")
        arr3 = arr[None]
        if "scores_x_norms" in self.features:
            if norms is None:
                raise InvalidInputError(
                    f"`value_norms` are required: this allocator was fitted with value norms (features {self.features})")
            norms = _check_norms(norms, arr3.shape, "value_norms", values=False)
        else:
            norms = None
        return arr3, norms

    def _check_total(self, total_budget, length):
        total = check_int(total_budget, "total_budget")
        n = self.layers * self.kv_heads
        floor = head_floor(self.min_keep_fraction, length, self.sink, self.window)
        if total < n * floor:
            raise InfeasibleError(
                f"`total_budget` must be at least heads * floor = {n} * {floor} = {n * floor} tokens "
                f"(floor = max(round(min_keep_fraction * T), sink + window), T = {length}); got {total}")
        if total > n * length:
            raise InfeasibleError(f"`total_budget` must be at most heads * T = {n * length} tokens; got {total}")
        return total

    def min_total_budget(self, length):
        """The fewest tokens :meth:`allocate` accepts for a ``length``-token request: every head
        keeps its floor, ``max(round(min_keep_fraction * T), sink + window)`` tokens (at most T).

        Examples
        --------
        >>> import numpy as np, budgetopt
        >>> s = [np.random.default_rng(0).random((2, 2, 40))]
        >>> budgetopt.RequestAllocator.fit(s, s, sink=1, window=2).min_total_budget(100)
        12
        """
        length = check_int(length, "length")
        return self.layers * self.kv_heads * min(head_floor(self.min_keep_fraction, length, self.sink, self.window),
                                                 length)

    def _static_layer_totals(self, length, total, floor, delta=None):
        budgets, _, _ = split(*self._static_curves(length, floor, delta=delta), total)
        return budgets.reshape(self.layers, self.kv_heads).sum(axis=1)

    def layer_totals(self, length, total_budget):
        """Tokens each layer keeps under the static curves for a request of ``length`` tokens.

        These are the per-layer totals :meth:`allocate` keeps with ``layerwise=False``; they
        depend only on ``length`` and ``total_budget``, so a per-layer press can compute them
        before the first layer's scores exist.

        Returns
        -------
        ndarray of int64, shape ``(L,)``
            The layers' totals; they add up to ``total_budget``.

        Examples
        --------
        >>> import numpy as np, budgetopt
        >>> s = [np.random.default_rng(seed).random((3, 2, 40)) for seed in (0, 1)]
        >>> int(budgetopt.RequestAllocator.fit(s, s, sink=1, window=1, shrinkage=1.0).layer_totals(40, 90).sum())
        90
        """
        self._refuse_probes("layer_totals")
        length = check_int(length, "length")
        if length <= self.sink + self.window:
            raise InvalidInputError(f"`length` must exceed sink + window = {self.sink + self.window}; got {length}")
        total = self._check_total(total_budget, length)
        return self._static_layer_totals(length, total, head_floor(self.min_keep_fraction, length, self.sink, self.window))

    # -- files -----------------------------------------------------------------------------
    def save(self, path):
        """Write the allocator to ``path`` as ``.npz`` (arrays plus a JSON ``meta``), atomically.

        Examples
        --------
        >>> import os, tempfile, numpy as np, budgetopt
        >>> s = [np.random.default_rng(0).random((1, 2, 30))]
        >>> ra = budgetopt.RequestAllocator.fit(s, s, sink=1, window=1)
        >>> path = os.path.join(tempfile.mkdtemp(), "ra.npz")
        >>> ra.save(path)
        >>> budgetopt.RequestAllocator.load(path).shrinkage
        1.0
        """
        meta = {"format": FORMAT, "sink": self.sink, "window": self.window,
                "min_keep_fraction": self.min_keep_fraction, "shrinkage": self.shrinkage,
                "features": list(self.features), "info": self.info}
        arrays = dict(fractions=self.fractions, mean_shape=self.mean_shape, weight=self.weight,
                      mean_proxy=self.mean_proxy, beta=self.beta, meta=np.array(json.dumps(meta)))
        if self.probe_beta is not None:
            arrays.update(probe_beta=self.probe_beta, mean_probe=self.mean_probe)
        write_atomic(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path):
        """Read an allocator written by :meth:`save` (never unpickles).

        Raises
        ------
        CurvesFileError
            Missing or unreadable file, wrong ``format``, a missing or object array, or
            arrays whose shapes disagree; the message starts with the path.
        """
        path = check_input_file(path, ".npz file")
        keys = ("fractions", "mean_shape", "weight", "mean_proxy", "beta", "meta")
        arrays = read_npz(path, keys + _PROBE_KEYS)
        for key in keys:
            if key not in arrays:
                raise CurvesFileError(f"{path}: missing key {key!r}; not a request allocator file")
        meta = arrays["meta"]
        if meta.dtype.kind != "U" or meta.ndim != 0:
            raise CurvesFileError(f"{path}: key 'meta' must be one JSON string; got {meta.dtype} {meta.shape}")
        meta = loads_json(str(meta.item()), f"{path}: key 'meta'", standard=False)
        if isinstance(meta, dict) and meta.get("format") == "budgetopt-request/1":
            raise CurvesFileError(
                f"{path}: written by an earlier budgetopt whose shrinkage mixed curves, not budgets "
                f"(format 'budgetopt-request/1'); fit the allocator again")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CurvesFileError(f"{path}: not a request allocator file (format {FORMAT!r} expected)")
        missing = [k for k in ("features", "shrinkage", "sink", "window", "min_keep_fraction") if k not in meta]
        if missing:
            raise CurvesFileError(f"{path}: broken request allocator file (meta lacks {', '.join(map(repr, missing))})")
        try:  # every field by the rules fit() applies to its arguments
            sink = check_int(meta["sink"], "sink")
            window = check_int(meta["window"], "window")
            min_keep_fraction = check_fraction(meta["min_keep_fraction"], "min_keep_fraction", upper_open=True)
            shrinkage = check_fraction(meta["shrinkage"], "shrinkage", upper_open=False)
            fractions = _check_fractions(arrays["fractions"])
        except (InvalidInputError, InvalidTypeError) as exc:
            raise CurvesFileError(f"{path}: broken request allocator file ({exc})") from None
        features = meta["features"]
        info = meta.get("info", {})
        try:
            if not isinstance(features, list) or tuple(features) not in (FEATURES[:1], FEATURES):
                raise ValueError(f"'features' must be {list(FEATURES[:1])} or {list(FEATURES)}; got {features!r}")
            features = tuple(features)
            if not isinstance(info, dict):
                raise ValueError(f"'info' must be a JSON object; got {type(info).__name__}")
            G = fractions.shape[0]
            if arrays["weight"].ndim != 2:
                raise ValueError(f"'weight' must have shape (layers, kv_heads); got {arrays['weight'].shape}")
            L, H = arrays["weight"].shape
            if L < 1 or H < 1:
                raise ValueError(f"'weight' must hold at least one head; got shape {(L, H)}")
            ok = (arrays["mean_shape"].shape == (L, H, G) and arrays["mean_proxy"].shape == (len(features), L, H, G)
                  and arrays["beta"].shape == (len(features), G))
            if not ok:
                raise ValueError("array shapes disagree")
            for key in keys[:-1]:
                if arrays[key].dtype.kind != "f" or not np.all(np.isfinite(arrays[key])):
                    raise ValueError(f"{key!r} must hold finite floats")
            weight = arrays["weight"]
            if weight.size and not (weight.min() >= 0.0 and weight.max() <= 1.0):
                raise ValueError("'weight' must lie in [0, 1]")
            present = [k for k in _PROBE_KEYS if k in arrays]
            if present and len(present) != len(_PROBE_KEYS):
                raise ValueError("'probe_beta' and 'mean_probe' must come together")
            if present and (arrays["probe_beta"].shape != (G,) or arrays["mean_probe"].shape != (L, H, G)):
                raise ValueError("probe array shapes disagree")
            for key in present:
                if arrays[key].dtype.kind != "f" or not np.all(np.isfinite(arrays[key])):
                    raise ValueError(f"{key!r} must hold finite floats")
        except ValueError as exc:
            raise CurvesFileError(f"{path}: broken request allocator file ({exc})") from None
        return cls(fractions=fractions, mean_shape=arrays["mean_shape"], weight=arrays["weight"],
                   mean_proxy=arrays["mean_proxy"], beta=arrays["beta"], shrinkage=shrinkage,
                   sink=sink, window=window, min_keep_fraction=min_keep_fraction,
                   features=features, info=info, probe_beta=arrays.get("probe_beta"),
                   mean_probe=arrays.get("mean_probe"))


_PROBE_KEYS = ("probe_beta", "mean_probe")


def _describe(value):
    return f"a list of {len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__


def _check_probe_oracles(value, shape, name):
    """Probe oracles as float64 ``(K, *shape)``: a non-empty list of arrays, or one array."""
    if isinstance(value, np.ndarray) and value.ndim == len(shape) + 1:
        items = list(value)
    elif isinstance(value, (list, tuple)) and value:
        items = value
    else:
        raise InvalidInputError(f"`{name}` must be a non-empty list of {shape} arrays (one per probe); got "
                                f"{_describe(value)}")
    out = []
    for k, item in enumerate(items):
        arr = real_array(item, f"`{name}[{k}]`")
        if arr.shape != tuple(shape):
            raise InvalidInputError(f"`{name}[{k}]` must have shape {tuple(shape)} (the layers, KV heads and tokens of "
                                    f"its context); got {arr.shape}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)) or (arr < 0).any():
            raise InvalidInputError(f"`{name}[{k}]` must hold finite values >= 0")
        out.append(arr)
    return np.stack(out)


def _check_fractions(fractions):
    arr = np.asarray(fractions, dtype=np.float64)
    if (arr.ndim != 1 or arr.size < 2 or not np.all(np.isfinite(arr)) or arr[0] != 0.0 or arr[-1] != 1.0
            or np.any(np.diff(arr) <= 0)):
        raise InvalidInputError("`fractions` must be an increasing 1-D grid from 0 to 1 with at least 2 points")
    return arr


