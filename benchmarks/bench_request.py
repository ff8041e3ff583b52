"""Benchmark: per-request budgets (budgetopt.RequestAllocator) against static tables, held out.

Leave-one-context-out: for each context, every method is fitted on the pairs of the other
contexts and judged on the held-out context's pairs by the oracle mass the budgets retain
(the scorer's top tokens plus sink and window), as a fraction of the pair's total mass, at
compressions 50/80/90% (kvpress ``compression_ratio``: fraction removed). Methods:

* ``uniform``: every head keeps ``T - round(c T)`` (kvpress rounding), at least the floor;
* ``adakv``: AdaKV-style, per layer: the layer keeps ``H`` uniform budgets' worth and its
  heads' middle tokens compete by raw score (each head keeps at least the floor);
* ``mean_ratio``: each calibration pair solved alone, prune ratios averaged (LU-KV's
  published aggregate), applied with kvpress's largest-remainder rounding. Solved on the
  allocator's fraction grid so that contexts of different lengths combine;
* ``mean_curve``: the static curves of the allocator (``shrinkage=1``): averaged curve
  shapes and head weights, one global split;
* ``request``: ``RequestAllocator.fit`` with its defaults (shrinkage by inner
  cross-validation), given the held-out request's scores (and value norms);
* variants: fixed shrinkage 0 (the request's split alone) and 0.5 (budgets halfway between
  the static and the request's split), and the default without value norms;
* ``own``: the held-out pair's own curves solved by ``budgetopt.sweep`` (unreachable);
* references (unreachable, split on the grid like the allocator's curves): the pair's true
  shapes with static weights, its true weights with static shapes, the held-out context's
  mean curve over its questions (``ref: context mean``: the evaluated question included, so
  in-sample) and over its other questions only (``ref: context mean LOQO``, where every
  context has at least two questions).

Data: a profile run directory (``--run``, pair files as written by ``budgetopt profile``;
real attention) or seeded synthetic worlds (``--synthetic``, labelled as such): each head
has a world-level attention concentration that each context perturbs (visible in the
context's scores), per-token value norms that weigh the oracle (visible in ``value_norms``),
and a question-level reshuffle no prefill feature can see.

Also times ``allocate`` at 32 layers x 8 KV heads x 32,768 tokens (compilation excluded), on
independent and on pooled (SnapKV-like) scores, optionally against the allocator of another
git revision (``--baseline REV``, interleaved in the same run), and measures what the sampled
proxies of such long heads change against reading every token.

Usage::

    python benchmarks/bench_request.py --synthetic                 # synthetic worlds
    python benchmarks/bench_request.py --run RUN [RUN2 ...]         # profile run directories
    python benchmarks/bench_request.py --synthetic --quick         # seconds; used by a test
    python benchmarks/bench_request.py --timing-only --baseline REV  # speed against revision REV

``bench_profile_heldout.py --out runs`` makes two profile run directories with ``budgetopt
profile``'s code (``runs/smollm2-snapkv`` and ``runs/smollm2-snapkv-heldout``). The report
(``.txt``) and figures (``.json``) go into a new folder under ``benchmarks/out/``;
``--record --name NAME`` writes ``benchmarks/results/NAME.*``, ``--out STEM`` anywhere
(``--quick`` writes nothing unless given one of them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import RESULTS, baseline_package, new_folder, record  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt import request as rq  # noqa: E402
from budgetopt import request_fit, request_split  # noqa: E402
from budgetopt._io import write_atomic  # noqa: E402
from budgetopt.rounding import keep_counts_from_prune_ratios, token_counts  # noqa: E402

COMPRESSIONS = (0.5, 0.8, 0.9)


# -- data ----------------------------------------------------------------------------------
def read_run(path):
    """Pairs of a profile run directory, grouped by context: [(scores, norms, [oracles])].

    Read with :func:`budgetopt.load_profile_run` (never unpickles; an incomplete run is used
    as far as it goes).
    """
    run = budgetopt.load_profile_run(path, partial=True)
    contexts = {}
    for (c, _), oracle, scores, norms in zip(run.pairs, run.oracles, run.scores, run.value_norms):
        contexts.setdefault(c, (scores, norms, []))[2].append(oracle)
    return run.meta, [contexts[c] for c in sorted(contexts)]


def synthetic_world(seed, layers, heads, length, n_contexts, questions):
    """Seeded synthetic contexts: [(scores, norms, [oracles])] (see the module docstring)."""
    rng = np.random.default_rng(seed)
    conc = rng.uniform(0.05, 1.5, (layers, heads, 1))
    spread = rng.uniform(0.1, 0.8, (layers, heads, 1))     # how much contexts move a head's concentration
    sens = rng.uniform(0.1, 1.5, (layers, heads, 1))       # question-level reshuffle (unpredictable)
    weight = rng.lognormal(0.0, 0.5, (layers, heads, 1))
    norm_spread = rng.uniform(0.1, 1.0, (layers, heads, 1))
    contexts = []
    for c in range(n_contexts):
        T = int(length * rng.uniform(0.75, 1.0))
        shape = (layers, heads, T)
        a = conc * np.exp(spread * rng.normal(size=(layers, heads, 1)))
        base = rng.gamma(a, size=shape) + 1e-12
        norms = rng.lognormal(0.0, norm_spread, shape)
        scores = (base / base.sum(-1, keepdims=True)) * np.exp(0.7 * rng.normal(size=shape))
        oracles = []
        for _ in range(questions):
            o = base * norms * np.exp(sens * rng.normal(size=shape))
            o /= o.sum(axis=-1, keepdims=True)
            o *= weight * rng.lognormal(0.0, 0.4, (layers, heads, 1))
            oracles.append(o.astype(np.float32))
        contexts.append((scores.astype(np.float32), (norms / norms.sum(-1, keepdims=True)).astype(np.float32), oracles))
    return contexts


# -- methods -------------------------------------------------------------------------------
def floor_of(T, sink, window, mkf=0.01):
    return max(int(round(mkf * T)), sink + window)


def totals_for(n, T, sink, window):
    cap = n * T
    return [max(cap - int(round(c * cap)), n * floor_of(T, sink, window)) for c in COMPRESSIONS]


def retained(utility, budgets, sink, window):
    """Retained fraction of one pair's mass: ``utility`` per-token ``(n, T - s - w + 1)``."""
    b = budgets.reshape(-1)
    return float(utility[np.arange(b.size), b - (sink + window)].sum() / utility[:, -1].sum())


def per_layer_counts(ratios, T, floor):
    return np.maximum(keep_counts_from_prune_ratios(ratios, T), floor)


def adakv(scores, T, sink, window, c):
    """AdaKV-style per-layer split by raw score above each head's floor."""
    L, H, _ = scores.shape
    floor = floor_of(T, sink, window)
    layer_total = H * (T - int(round(c * T)))
    out = np.full((L, H), floor, np.int64)
    f0 = floor - sink - window
    for layer in range(L):
        mid = -np.sort(-scores[layer, :, sink:T - window].astype(np.float64), axis=-1)[:, f0:]
        extra = max(layer_total - H * floor, 0)
        if extra == 0:
            continue
        flat = mid.reshape(-1)
        cut = np.partition(flat, flat.size - extra)[flat.size - extra]
        above = (mid > cut).sum(axis=1)
        ties = extra - above.sum()
        at = (mid == cut)
        for h in range(H):  # ties by head order
            t = min(ties, int(at[h].sum()))
            above[h] += t
            ties -= t
        out[layer] += above
    return out


def mean_ratio_fit(contexts, sink, window, fractions):
    """Mean keep fraction per head at each compression, over calibration pairs (grid solves)."""
    keep = []
    for scores, _, oracles in contexts:
        order = rq.rank_middle(scores.astype(np.float64) if scores.dtype != np.float32 else scores, sink, window)
        for o in oracles:
            T = o.shape[-1]
            counts = token_counts(fractions, T - sink - window)
            _, _, util = request_fit.oracle_shapes(o.astype(np.float64), order, sink, window, counts)
            u = np.ascontiguousarray(util[:, counts])
            n = u.shape[0]
            floor = floor_of(T, sink, window)
            u, grid = request_split.with_floor(u, counts + sink + window, floor, T)
            keep.append([request_split.split(u, grid, tot)[0] / T for tot in totals_for(n, T, sink, window)])
    return np.mean(keep, axis=0)  # (compressions, n)


def grid_split(u, fractions, T, sink, window, total):
    """Budgets of curves ``u`` (n, G) on the fraction grid for one request of ``T`` tokens."""
    tokens = token_counts(fractions, T - sink - window) + sink + window
    u, grid = request_split.with_floor(np.ascontiguousarray(u), tokens, floor_of(T, sink, window), T)
    return request_split.split(u, grid, total)[0]


def evaluate(contexts, sink, window, *, variants=True, log=print):
    L, H = contexts[0][0].shape[:2]
    n = L * H
    names = ["uniform", "adakv", "mean_ratio", "mean_curve", "request"]
    if variants:
        names += ["request s=0.5", "request s=0", "request scores only"]
        names += ["ref: true shape", "ref: true weights", "ref: context mean"]
        if all(len(c[2]) >= 2 for c in contexts):
            names += ["ref: context mean LOQO"]
    names += ["own"]
    has_norms = contexts[0][1] is not None
    rows = []  # per held-out pair: {name: [retained at each compression]}
    chosen = []
    for held in range(len(contexts)):
        cal = [c for i, c in enumerate(contexts) if i != held]
        cal_o = [o for _, _, os_ in cal for o in os_]
        cal_s = [s for s, _, os_ in cal for _ in os_]
        cal_n = [nm for _, nm, os_ in cal for _ in os_] if has_norms else None
        fits = {"request": budgetopt.RequestAllocator.fit(cal_o, cal_s, value_norms=cal_n, sink=sink, window=window)}
        chosen.append(fits["request"].shrinkage)
        fits["mean_curve"] = rq.RequestAllocator(
            **{k: getattr(fits["request"], k) for k in ("fractions", "mean_shape", "weight", "mean_proxy", "beta",
                                                       "sink", "window", "min_keep_fraction", "features", "info")},
            shrinkage=1.0)
        if variants:
            for s in (0.5, 0.0):
                fits[f"request s={s:g}"] = rq.RequestAllocator(
                    **{k: getattr(fits["request"], k) for k in ("fractions", "mean_shape", "weight", "mean_proxy",
                                                               "beta", "sink", "window", "min_keep_fraction",
                                                               "features", "info")}, shrinkage=s)
            if has_norms:
                fits["request scores only"] = budgetopt.RequestAllocator.fit(cal_o, cal_s, sink=sink, window=window)
            else:
                fits["request scores only"] = fits["request"]
        ratio_keep = mean_ratio_fit(cal, sink, window, fits["request"].fractions)
        scores, norms, oracles = contexts[held]
        T = scores.shape[-1]
        floor = floor_of(T, sink, window)
        tots = totals_for(n, T, sink, window)
        fr = fits["request"].fractions
        counts = token_counts(fr, T - sink - window)
        utils = [budgetopt.curves_from_scores(o, scores, sink=sink, window=window).utility.reshape(n, -1)
                 for o in oracles]
        sampled_all = [u[:, counts] / u[:, -1].sum() for u in utils]
        context_mean = np.mean(sampled_all, axis=0)
        static_u = fits["request"].weight.reshape(-1, 1) * fits["request"].mean_shape.reshape(n, -1)
        for q, (o, util) in enumerate(zip(oracles, utils)):
            curves = budgetopt.Curves(util, np.arange(sink + window, T + 1))
            sampled = util[:, counts] / util[:, -1].sum()
            true_w = sampled[:, -1:]
            true_s = sampled / np.where(true_w > 0, true_w, 1.0)
            own = budgetopt.sweep(curves, tots, min_budget=floor)
            row = {name: [] for name in names}
            for j, c in enumerate(COMPRESSIONS):
                row["uniform"].append(retained(util, per_layer_counts(np.full((L, H), c), T, floor), sink, window))
                row["adakv"].append(retained(util, adakv(scores, T, sink, window, c), sink, window))
                row["mean_ratio"].append(retained(util, per_layer_counts(1 - ratio_keep[j].reshape(L, H), T, floor),
                                                  sink, window))
                for name, ra in fits.items():
                    nm = norms if "scores_x_norms" in ra.features else None
                    row[name].append(retained(util, ra.allocate(scores, tots[j], value_norms=nm).budgets, sink, window))
                if variants:
                    refs = {"ref: true shape": fits["request"].weight.reshape(-1, 1) * true_s,
                            "ref: true weights": true_w * static_u / np.where(
                                static_u[:, -1:] > 0, static_u[:, -1:], 1.0),
                            "ref: context mean": context_mean}
                    if "ref: context mean LOQO" in names:  # the context's other questions only
                        refs["ref: context mean LOQO"] = np.mean(
                            [u for i, u in enumerate(sampled_all) if i != q], axis=0)
                    for name, u in refs.items():
                        row[name].append(retained(util, grid_split(u, fr, T, sink, window, tots[j]), sink, window))
                row["own"].append(retained(util, own.budgets[j], sink, window))
            rows.append(row)
        log(f"  held-out context {held}: shrinkage {chosen[-1]}, {len(oracles)} pairs")
    table = {name: np.array([r[name] for r in rows]) for name in names}  # (pairs, compressions)
    return names, table, chosen


def summarise(names, table, chosen):
    out = {"mean": {name: table[name].mean(axis=0).tolist() for name in names}, "chosen_shrinkage": chosen}
    j = COMPRESSIONS.index(0.8)
    for static in ("mean_curve", "mean_ratio"):
        gap = table["own"][:, j].mean() - table[static][:, j].mean()
        out[f"gap_closed_vs_{static}"] = {
            name: float((table[name][:, j].mean() - table[static][:, j].mean()) / gap) if gap > 0 else None
            for name in names}
        out[f"worst_vs_{static}"] = {name: (table[name] - table[static]).min(axis=0).tolist() for name in names}
    return out


def report(names, table, summary, log):
    log("retained oracle mass (fraction), mean over held-out pairs; compression " +
        "/".join(f"{c:.0%}" for c in COMPRESSIONS))
    log(f"{'method':<22}" + "".join(f"{c:>10.0%}" for c in COMPRESSIONS) +
        f"{'gap closed@80 vs curve':>24}{'vs ratio':>10}{'worst vs curve (50/80/90)':>30}")
    for name in names:
        m = table[name].mean(axis=0)
        g1 = summary["gap_closed_vs_mean_curve"][name]
        g2 = summary["gap_closed_vs_mean_ratio"][name]
        w = summary["worst_vs_mean_curve"][name]
        log(f"{name:<22}" + "".join(f"{v:>10.4f}" for v in m) +
            f"{(g1 if g1 is not None else float('nan')):>24.3f}{(g2 if g2 is not None else float('nan')):>10.3f}"
            + f"{' ' * 6}" + " ".join(f"{v:+.4f}" for v in w))


# -- timing --------------------------------------------------------------------------------
def _median_times(fn, repeats):
    """Median wall and process-CPU seconds (all threads) of ``repeats`` warm calls."""
    fn()  # compile / warm
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return float(np.median(wall)), float(np.median(cpu))


def one_thread(fn):
    """``fn()`` with the allocator reading the heads in the calling thread only."""
    saved, rq.THREADS = rq.THREADS, 1
    try:
        return fn()
    finally:
        rq.THREADS = saved


def timing(layers=32, heads=8, length=32768, repeats=7, baseline=None, log=print):
    """``allocate`` at ``layers x heads x length`` against ``scores.sum()`` (wall and CPU); with
    ``baseline`` (a git revision) the same calls of that revision's allocator, interleaved."""
    contexts = synthetic_world(0, layers, heads, 512, 3, 2)
    cal_o = [o for _, _, os_ in contexts for o in os_]
    cal_s = [s for s, _, os_ in contexts for _ in os_]
    cal_n = [nm for _, nm, os_ in contexts for _ in os_]
    rng = np.random.default_rng(1)
    scores = rng.gamma(0.3, size=(layers, heads, length)).astype(np.float32)
    norms = rng.lognormal(0.0, 0.5, (layers, heads, length)).astype(np.float32)
    # pooled like SnapKV's scores (a moving average of 5): the high values come in runs
    raw = rng.gamma(0.3, size=(layers, heads, length + 4))
    pooled = np.cumsum(raw, axis=-1)
    pooled = ((pooled[..., 4:] - np.concatenate([np.zeros((layers, heads, 1)), pooled[..., :-5]], axis=-1)) / 5)
    pooled = np.maximum(pooled, 0.0).astype(np.float32)
    total = budgetopt.tokens_from_fraction(0.2, layers * heads * length)
    cases = {"scores.sum()": lambda: scores.sum()}
    packages = [("", budgetopt)] + ([(f"[{baseline}] ", baseline_package(baseline))] if baseline else [])
    for tag, pkg in packages:
        with_norms = pkg.RequestAllocator.fit(cal_o, cal_s, value_norms=cal_n, sink=4, window=32, shrinkage=0.5)
        scores_only = pkg.RequestAllocator.fit(cal_o, cal_s, sink=4, window=32, shrinkage=0.5)
        cases.update({
            f"{tag}allocate, norms, global":
                lambda a=with_norms: a.allocate(scores, total, value_norms=norms),
            f"{tag}allocate, norms, layerwise=False":
                lambda a=with_norms: a.allocate(scores, total, value_norms=norms, layerwise=False),
            f"{tag}allocate, scores only, global": lambda a=scores_only: a.allocate(scores, total),
            f"{tag}allocate, norms, global, pooled scores":
                lambda a=with_norms: a.allocate(pooled, total, value_norms=norms),
            f"{tag}allocate, scores only, global, pooled scores": lambda a=scores_only: a.allocate(pooled, total),
        })
        if pkg is budgetopt:  # the same calls in the calling thread alone
            cases.update({
                "allocate, norms, global, 1 thread":
                    lambda a=with_norms: one_thread(lambda: a.allocate(scores, total, value_norms=norms)),
                "allocate, scores only, global, 1 thread":
                    lambda a=scores_only: one_thread(lambda: a.allocate(scores, total)),
            })
    out = {}
    for _ in range(2):  # interleaved rounds: every case sees the same machine load
        for name, fn in cases.items():
            out.setdefault(name, []).append(_median_times(fn, repeats))
    out = {k: {"wall": float(np.median([w for w, _ in v])), "cpu": float(np.median([c for _, c in v]))}
           for k, v in out.items()}
    base = out["scores.sum()"]
    log(f"allocate timing, {layers} layers x {heads} KV heads x {length} tokens, 20% kept "
        f"(median of {repeats} warm calls, 2 interleaved rounds; "
        f"{rq.THREADS} allocator threads unless marked; CPU: process time, all threads):")
    for k, v in out.items():
        log(f"  {k:<55} wall {v['wall'] * 1e3:8.2f} ms ({v['wall'] / layers * 1e3:.3f} per layer)   "
            f"CPU {v['cpu'] * 1e3:8.2f} ms ({v['cpu'] / layers * 1e3:.3f} per layer)   "
            f"{v['wall'] / base['wall']:.1f}x / {v['cpu'] / base['cpu']:.1f}x the sum")
    out["sampling"] = sampling_error(cal_o, cal_s, cal_n, {"iid": scores, "pooled": pooled}, norms, total, log)
    return out


def sampling_error(cal_o, cal_s, cal_n, requests, norms, total, log):
    """What the sampled proxies of long heads change against reading every token: the proxies
    themselves and the budgets of the full correction (``shrinkage=0``)."""
    full = budgetopt.RequestAllocator.fit(cal_o, cal_s, value_norms=cal_n, sink=4, window=32, shrinkage=0.0)
    T = norms.shape[-1]
    counts = token_counts(full.fractions, T - 36)
    out = {}
    saved = rq.SAMPLE
    for name, scores in requests.items():
        got = {}
        for sample in (saved, 0):
            rq.SAMPLE = sample
            try:
                got[sample] = (rq.proxy_curves(scores, norms, 4, 32, counts),
                               full.allocate(scores, total, value_norms=norms).budgets)
            finally:
                rq.SAMPLE = saved
        d = np.abs(got[saved][0] - got[0][0])
        moved = int(np.abs(got[saved][1] - got[0][1]).sum()) // 2
        out[name] = {"proxy_max_abs": d.max(axis=(1, 2)).tolist(), "proxy_mean_abs": d.mean(axis=(1, 2)).tolist(),
                     "tokens_moved": moved, "share_moved": moved / total}
        log(f"  sampled proxies ({name} scores, SAMPLE={saved}) against every token: |difference| max "
            f"{d.max():.4f}, mean {d.mean():.5f}; budgets of shrinkage 0: {moved} of {total} tokens "
            f"({moved / total:.2%}) elsewhere")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", nargs="+", help="profile run directories (real attention); several are merged "
                        "(their sink, window, model and scorer must agree)")
    parser.add_argument("--synthetic", action="store_true", help="seeded synthetic worlds")
    parser.add_argument("--seeds", type=int, default=3, help="synthetic worlds")
    parser.add_argument("--quick", action="store_true", help="a tiny synthetic run, no timing, no files")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--baseline", help="also time the allocator of this git revision (interleaved)")
    parser.add_argument("--timing-only", action="store_true", help="only the timing, no held-out evaluation")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", metavar="STEM", help="write the report (.txt) and figures (.json) with this path stem "
                       "(default: a new folder benchmarks/out/bench_request-DATE-TIME/)")
    group.add_argument("--record", action="store_true",
                       help="write the committed record benchmarks/results/NAME.* (NAME: --name)")
    parser.add_argument("--name", default="bench_request", help="file name of the report (default bench_request)")
    args = parser.parse_args(argv)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    env = record("bench_request.py", argv, dirty_paths=("budgetopt", "benchmarks/bench_request.py"))
    result = {"environment": env, "compressions": list(COMPRESSIONS), "data": []}
    t0 = time.perf_counter()
    datasets = []
    if args.quick:
        datasets.append(("synthetic quick (seed 0, 2 x 2 heads, T~256, 4 contexts x 2 questions)",
                         synthetic_world(0, 2, 2, 256, 4, 2), 4, 8))
    else:
        if args.synthetic:
            for seed in range(args.seeds):
                datasets.append((f"synthetic world seed {seed} (8 layers x 4 KV heads, T~1024, 8 contexts x 4 questions)",
                                 synthetic_world(seed, 8, 4, 1024, 8, 4), 4, 16))
        if args.run:
            meta, contexts = read_run(args.run[0])
            for other in args.run[1:]:
                m2, c2 = read_run(other)
                for key in ("sink", "window", "max_new_tokens", "layers", "kv_heads"):
                    if m2.get(key) != meta.get(key):
                        raise SystemExit(f"{other}: {key} {m2.get(key)!r} differs from {meta.get(key)!r}")
                if (m2["model"].get("path"), m2["scorer"]["name"]) != (meta["model"].get("path"), meta["scorer"]["name"]):
                    raise SystemExit(f"{other}: model or scorer differs from {args.run[0]}")
                contexts += c2
            datasets.append((f"real run {' + '.join(args.run)} ({meta.get('model', {}).get('path')}, scorer "
                             f"{meta.get('scorer', {}).get('name')}, {len(contexts)} contexts, "
                             f"{sum(len(c[2]) for c in contexts)} pairs)", contexts, meta["sink"], meta["window"]))
    if args.timing_only:
        datasets = []
    for label, contexts, sink, window in datasets:
        log(f"== {label}; sink={sink}, window={window}; leave one context out")
        names, table, chosen = evaluate(contexts, sink, window, variants=not args.quick, log=log)
        summary = summarise(names, table, chosen)
        report(names, table, summary, log)
        result["data"].append({"label": label, "summary": summary,
                               "per_pair": {k: v.tolist() for k, v in table.items()}})
    if not (args.quick or args.no_timing):
        result["timing"] = timing(baseline=args.baseline, log=log)
    log(f"({time.perf_counter() - t0:.1f} s; {env['command']}; commit {(env['git']['commit'] or 'unknown')[:10]}"
        f"{' + uncommitted changes' if env['git']['uncommitted'] else ''})")
    if args.out or args.record or not args.quick:
        out = args.out or str((RESULTS if args.record else new_folder(args.name)) / args.name)
        write_atomic(out + ".json", lambda f: f.write(json.dumps(result, indent=1).encode()))
        write_atomic(out + ".txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
        print(f"wrote {out}.txt and .json")
    return result


if __name__ == "__main__":
    main()
