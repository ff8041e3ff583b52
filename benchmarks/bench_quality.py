"""Allocation quality: how much held-out oracle mass each budget allocator keeps.

Calibrate on some contexts, measure on held-out ones. For each held-out request (one context
and one question) and each global compression ``c`` (kvpress's ``compression_ratio``, the
fraction *removed*), every method gives each layer and KV head a keep count; a head keeping
``b`` tokens keeps its ``sink`` first and ``window`` last tokens plus the ``b - sink - window``
middle tokens the scorer ranks highest (exactly the curves of
:func:`budgetopt.curves_from_scores`). We report the oracle mass those tokens hold, as a
fraction of the request's total oracle mass ("retained mass"). All methods share the scorer
and the token choice within a head; they differ only in how many tokens each head keeps.

Methods (the baselines are small functions below, each citing the rule it follows; they are
comparison points, not library features):

* ``uniform`` -- every head keeps the same share (SnapKV's default).
* ``pyramidkv`` -- PyramidKV's layer schedule (Cai et al. 2024), beta = 20.
* ``adakv`` -- AdaKV (Feng et al. 2024): per layer, top-k over the concatenated heads' scores
  of the held-out request itself, with the safeguard alpha = 0.2 (computed online).
* ``headkv`` -- HeadKV-style (Fu et al. 2024) static per-head split: a base share plus a
  shared pool split in proportion to a head-importance score from calibration.
* ``duoattention`` -- DuoAttention-style (Xiao et al. 2024) binary heads at the same total:
  the most important heads keep everything, the others only sink + window.
* ``raw_greedy`` -- the marginal-gain greedy on the calibration mean curves *without* the
  concave hull (one token at a time, largest next gain first).
* ``lukv_mean_ratio`` / ``lukv_mean_curve`` -- :func:`budgetopt.lukv_table` with
  ``aggregate="mean_ratio"`` (published) and ``"mean_curve"``, applied with kvpress's rounding.
* ``allocate_mean_curve`` -- :func:`budgetopt.allocate` (global, floor sink + window) on the
  calibration mean curves.
* ``own_optimum`` -- each held-out request's own allocation (:func:`budgetopt.allocate` on its
  own curves): the ceiling, not available at inference. Its certified gap is reported.

Per method and compression: mean and worst held-out retained mass, and the share of the
uniform -> ceiling gain it takes, ``(mean - uniform) / (own_optimum - uniform)``.

Data: ``--run DIR [DIR ...]`` reads ``budgetopt profile`` run directories (real attention;
two folds over the contexts); without it, the seeded synthetic worlds of
``benchmarks/heldout_aggregate.py`` are used. Every table says which. Static methods are
calibrated at one length (the median context length) and applied to a held-out context of
another length through prune ratios and kvpress's rounding, as ``LUKVPress`` does; when the
calibration contexts differ in length, ``lukv_mean_ratio`` averages per-pair tables and
``lukv_mean_curve`` solves the mean of the curves resampled to that length (with the table's
floor). The largest ratio of tokens used to the total is reported per method: the rounding
and the sink + window floor can give table methods slightly more than the total.

Usage::

    python benchmarks/bench_quality.py                       # synthetic, full (~1-2 min)
    python benchmarks/bench_quality.py --quick               # tiny, seconds (run by the tests)
    python benchmarks/bench_quality.py --run RUN [RUN ...]   # profile run directories
    python benchmarks/bench_quality.py --record --figures docs/img   # the committed record and figures

``bench_profile_heldout.py --out runs`` makes two such run directories with ``budgetopt
profile``'s code (``runs/smollm2-snapkv`` and ``runs/smollm2-snapkv-heldout``). The report
(``bench_quality_<data>.txt`` and ``.json``) goes into a new folder under ``benchmarks/out/``;
``--record`` writes ``benchmarks/results/bench_quality_<data>.*``, ``--output PATH.json``
anywhere (``--quick`` writes nothing unless given one of them).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import add_output_options, output_path, record  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt.allocators import (  # noqa: E402
    ADAKV_ALPHA, HEADKV_POOL, PYRAMID_BETA, adakv_counts, duoattention_counts, headkv_counts, pyramidkv_counts,
    split_integer, uniform_counts,
)
from budgetopt.curves import write_atomic  # noqa: E402
from budgetopt.lukv import compression_ratios, lukv_table  # noqa: E402
from budgetopt.profile import curves_from_scores  # noqa: E402
from budgetopt.rounding import keep_counts_from_prune_ratios, tokens_evicted  # noqa: E402
from budgetopt.runs import read_run_meta  # noqa: E402
from heldout_aggregate import add_world_arguments, make_context, make_world  # noqa: E402

METHODS = (
    "uniform",
    "pyramidkv",
    "adakv",
    "headkv",
    "duoattention",
    "raw_greedy",
    "lukv_mean_ratio",
    "lukv_mean_curve",
    "allocate_mean_curve",
    "own_optimum",
)
TABLE_COMPRESSIONS = (0.5, 0.75, 0.8, 0.9, 0.95)


# -- small shared helpers ----------------------------------------------------------------------
def retained(utility, counts, protected):
    """Fraction of the total oracle mass kept when each head keeps ``counts`` tokens."""
    idx = np.asarray(counts) - protected
    kept = np.take_along_axis(utility, idx[..., None], axis=-1)[..., 0].sum()
    return kept / utility[..., -1].sum()


def kept_total(c, heads, length, protected):
    """Tokens kept over ``heads`` heads of ``length`` tokens at compression ``c`` (LU-KV's
    ``round(c * N)`` rule), never fewer than the always-kept sink + window tokens."""
    tokens = heads * length
    return max(tokens - tokens_evicted(c, tokens), heads * protected)


def counts_from_ratios(ratios, length, protected):
    """Prune ratios -> keep counts by kvpress's rule, never below the protected tokens."""
    return np.maximum(keep_counts_from_prune_ratios(ratios, length), protected)


# -- baselines: budgetopt.allocators (comparison points; each follows the cited rule) -----------
def raw_greedy_counts(utility, total, protected):
    """The marginal-gain greedy on raw (non-convexified) curves: starting from sink + window
    tokens per head, repeatedly give one token to the head whose *next* token adds the most
    utility (a heap). Without the concave hull it stalls at a head's flat stretch even when a
    steep rise follows -- the failure LU-KV's hull relaxation fixes."""
    layers, heads, k = utility.shape
    u = utility.reshape(-1, k)
    pos = np.zeros(u.shape[0], np.int64)
    heap = [(-(u[h, 1] - u[h, 0]), h) for h in range(u.shape[0]) if k > 1]
    heapq.heapify(heap)
    for _ in range(total - u.shape[0] * protected):
        if not heap:
            break
        _, h = heapq.heappop(heap)
        pos[h] += 1
        if pos[h] + 1 < k:
            heapq.heappush(heap, (-(u[h, pos[h] + 1] - u[h, pos[h]]), h))
    return pos.reshape(layers, heads) + protected


# -- data --------------------------------------------------------------------------------------
# Settings every run given to --run must share (calibration files may differ: a second run of
# new contexts is more held-out data for the same model and scorer).
RUN_SETTINGS = ("layers", "kv_heads", "sink", "window", "max_new_tokens", "head_reduce", "step_reduce")


def read_run_dirs(dirs):
    """Pairs of ``budgetopt profile`` run directories: ``(meta, [(context, question, oracle,
    scores), ...])`` in calibration order.

    Directories of one calibration file (same sha256) are shards of one run, merged by
    :func:`budgetopt.load_profile_run` (incomplete runs allowed); runs of different calibration
    files must share model, scorer and profiling settings, and their contexts follow one
    another (renumbered) in the order given.
    """
    groups = {}
    for d in dirs:
        try:
            meta = read_run_meta(d)
        except budgetopt.BudgetoptError as exc:
            raise SystemExit(f"--run: {exc}") from None
        key = json.dumps((meta.get("calibration") or {}).get("sha256"))
        groups.setdefault(key, []).append(d)
    runs = []
    for group in groups.values():
        try:
            runs.append(budgetopt.load_profile_run(*group, partial=True))
        except budgetopt.BudgetoptError as exc:
            raise SystemExit(f"--run: the run directories disagree or are unreadable: {exc}") from None
    first = runs[0].meta

    def identity(meta):
        model = meta.get("model")
        scorer = meta.get("scorer")
        return ({k: model.get(k) for k in ("name", "model_type")} if isinstance(model, dict) else model,
                scorer.get("name") if isinstance(scorer, dict) else scorer,
                [meta.get(k) for k in RUN_SETTINGS])

    for run in runs[1:]:
        if identity(run.meta) != identity(first):
            raise SystemExit(f"--run: the run directories disagree (model, scorer or settings): "
                             f"{identity(first)} vs {identity(run.meta)}")
    pairs, offset = [], 0
    for run in runs:
        if run.missing:
            print(f"--run: {len(run.missing)} pair(s) of a run are missing; using the "
                  f"{len(run.pairs)} present", file=sys.stderr)
        for (c, q), o, s in zip(run.pairs, run.oracles, run.scores):
            pairs.append((offset + c, q, o, s))
        offset += 1 + max((c for c, _ in run.pairs), default=-1)
    if not pairs:
        raise SystemExit("--run: no finished pairs found")
    return first, pairs


def synthetic_splits(args):
    """Seeded synthetic worlds (benchmarks/heldout_aggregate.py): one (calibration, held-out)
    split per seed, each a list of (oracle, scores) pairs; the held-out contexts are new ones."""
    for split in range(args.splits):
        rng = np.random.default_rng(split)
        world = make_world(rng, args.layers, args.heads, args.length)
        contexts = [make_context(rng, world, args.questions, args.scorer_noise) for _ in range(args.contexts)]
        pairs = [[(o, s) for o in oracles] for oracles, s in contexts]
        half = args.contexts // 2
        yield [p for c in pairs[:half] for p in c], [p for c in pairs[half:] for p in c]


def real_splits(pairs):
    """Two folds over the run's contexts: first half calibrates and the second is held out, then
    the other way round. Questions of one context never straddle the split."""
    contexts = sorted({c for c, _, _, _ in pairs})
    half = len(contexts) // 2
    if half == 0:
        raise SystemExit("--run: need at least two contexts to hold one out")
    a, b = set(contexts[:half]), set(contexts[half:])
    groups = [[(o, s) for c, _, o, s in pairs if c in g] for g in (a, b)]
    yield groups[0], groups[1]
    yield groups[1], groups[0]


# -- calibration -------------------------------------------------------------------------------
def resample(utility, points):
    """Curves ``(L, H, K)`` on ``points`` equally spaced kept fractions of the selectable range."""
    k = utility.shape[-1]
    if k == points:
        return utility
    x_old, x_new = np.linspace(0, 1, k), np.linspace(0, 1, points)
    flat = utility.reshape(-1, k)
    return np.stack([np.interp(x_new, x_old, row) for row in flat]).reshape(utility.shape[:-1] + (points,))


def calibrate(cal, sink, window, compressions):
    """Everything the static methods learn from the calibration pairs."""
    protected = sink + window
    lengths = [o.shape[-1] for o, _ in cal]
    length = int(np.median(lengths))
    same = all(t == length for t in lengths)
    curves = [curves_from_scores(o, s, sink=sink, window=window).utility for o, s in cal]
    mean_u = np.mean([resample(u, length - protected + 1) for u in curves], axis=0)
    layers, heads, _ = mean_u.shape
    importance = np.mean([u[..., -1] - u[..., 0] for u in curves], axis=0)
    ratios = compression_ratios()
    rows = [int(np.argmin(np.abs(ratios - c))) for c in compressions]
    cal_o, cal_s = [o for o, _ in cal], [s for _, s in cal]
    if same:
        mean_ratio = lukv_table(cal_o, cal_s, sink=sink, window=window, aggregate="mean_ratio")
        mean_curve = lukv_table(cal_o, cal_s, sink=sink, window=window, aggregate="mean_curve")
    else:  # contexts of different lengths: per-pair tables averaged, and the resampled mean curve
        mean_ratio = np.mean([lukv_table([o], s, sink=sink, window=window) for o, s in cal], axis=0)
        mean_curve = None
    grid = np.arange(protected, length + 1)
    static = {"raw_greedy": {}, "allocate_mean_curve": {}, "lukv_mean_ratio": {}, "lukv_mean_curve": {}}
    for c, row in zip(compressions, rows):
        total = kept_total(c, layers * heads, length, protected)
        raw = raw_greedy_counts(mean_u, total, protected)
        glob = budgetopt.allocate(budgetopt.Curves(mean_u, grid), total, min_budget=protected).budgets
        static["raw_greedy"][c] = 1.0 - raw / length
        static["allocate_mean_curve"][c] = 1.0 - glob / length
        static["lukv_mean_ratio"][c] = mean_ratio[row]
        if mean_curve is not None:
            static["lukv_mean_curve"][c] = mean_curve[row]
        else:
            floor = max(int(round(0.01 * length)), protected)
            b = budgetopt.allocate(budgetopt.Curves(mean_u, grid), max(total, layers * heads * floor),
                                   min_budget=floor).budgets
            static["lukv_mean_curve"][c] = 1.0 - b / length
    return {"static": static, "importance": importance, "length": length}


# -- evaluation --------------------------------------------------------------------------------
def evaluate(cal_info, heldout, sink, window, compressions):
    """``{method: array (requests, compressions)}`` of retained mass, plus used tokens / total
    and the ceiling's certified gap."""
    protected = sink + window
    out = {m: np.empty((len(heldout), len(compressions))) for m in METHODS}
    over = {m: 0.0 for m in METHODS}
    worst_gap = 0.0
    for i, (oracle, scores) in enumerate(heldout):
        layers, heads, length = oracle.shape
        u = curves_from_scores(oracle, scores, sink=sink, window=window).utility
        curves = budgetopt.Curves(u, np.arange(protected, length + 1))
        for j, c in enumerate(compressions):
            total = kept_total(c, layers * heads, length, protected)
            own = budgetopt.allocate(curves, total, min_budget=protected)
            worst_gap = max(worst_gap, own.gap / u[..., -1].sum())
            counts = {
                "uniform": uniform_counts(layers, heads, length, total, protected),
                "pyramidkv": pyramidkv_counts(layers, heads, length, total, protected),
                "adakv": adakv_counts(scores, total, sink, window),
                "headkv": headkv_counts(cal_info["importance"], length, total, protected),
                "duoattention": duoattention_counts(cal_info["importance"], length, total, protected),
                "own_optimum": own.budgets,
            }
            for name, table in cal_info["static"].items():
                counts[name] = counts_from_ratios(table[c], length, protected)
            for name in METHODS:
                b = counts[name]
                assert b.min() >= protected and b.max() <= length, name
                over[name] = max(over[name], b.sum() / total)
                out[name][i, j] = retained(u, b, protected)
    return out, over, worst_gap


# -- report ------------------------------------------------------------------------------------
def summarise(per_request, compressions):
    """Per method and compression: mean, worst, share of the uniform -> ceiling gain."""
    summary = {}
    uni = per_request["uniform"].mean(axis=0)
    top = per_request["own_optimum"].mean(axis=0)
    for m, values in per_request.items():
        mean = values.mean(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(top - uni > 1e-12, (mean - uni) / (top - uni), np.nan)
        summary[m] = {
            f"{c:g}": {"mean": float(mean[j]), "worst": float(values[:, j].min()), "gain_share": float(share[j])}
            for j, c in enumerate(compressions)
        }
    return summary


def format_report(result):
    lines = [f"Allocation quality on {result['data']} data: held-out retained oracle mass "
             f"(fraction of each request's total)"]
    lines.append(result["data_description"])
    lines.append("Cells: mean / worst over held-out requests / share of the uniform -> own-optimum gain")
    cs = [c for c in result["compressions"] if c in TABLE_COMPRESSIONS] or result["compressions"]
    head = f"{'method':<20}" + "".join(f"{f'c={c:g}':>24}" for c in cs)
    lines += [head, "-" * len(head)]
    for m in METHODS:
        cells = []
        for c in cs:
            s = result["summary"][m][f"{c:g}"]
            share = "   -" if not np.isfinite(s["gain_share"]) else f"{s['gain_share']:+.2f}"
            cells.append(f"{s['mean']:.4f} / {s['worst']:.4f} / {share}")
        lines.append(f"{m:<20}" + "".join(f"{cell:>24}" for cell in cells))
    lines.append(f"own_optimum certified gap: at most {result['ceiling_max_relative_gap']:.2e} of the total mass")
    lines.append("largest used/total per method: " + ", ".join(
        f"{m} {v:.4f}" for m, v in result["max_used_over_total"].items()))
    env = result["environment"]
    lines.append(f"machine: {env['machine']['cpu_model']}, {env['machine']['cores']} cores; "
                 f"commit {env['git']['commit']}; {result['seconds']:.1f} s")
    lines.append(f"command: {env['command']}")
    return "\n".join(lines) + "\n"


def figure_quality(result, path):
    """Retained mass (mean over held-out requests) vs compression, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = result["compressions"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for m in METHODS:
            y = [result["summary"][m][f"{c:g}"]["mean"] for c in cs]
            style = {"ls": "--", "color": "k"} if m == "own_optimum" else {}
            ax.plot(cs, y, marker="o", ms=3, label=m, **style)
        ax.set_xlabel("compression (fraction of the cache removed)")
        ax.set_ylabel("held-out retained oracle mass")
        ax.set_title(f"Allocation quality, held out ({result['title']})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)


def parse_compressions(text):
    values = sorted({float(x) for x in text.split(",") if x.strip()})
    if not values or any(not 0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"compressions must be numbers in (0, 1); got {text!r}")
    return values


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", nargs="+", metavar="DIR", help="budgetopt profile run directories (real data)")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic world (seconds; used by the tests)")
    add_world_arguments(parser)  # the synthetic world (without --run)
    parser.add_argument("--compressions", type=parse_compressions,
                        default=parse_compressions("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95"))
    add_output_options(parser, "bench_quality_<data>", out_flag="--output", out_help="JSON report (the text report goes next to it)")
    parser.add_argument("--figures", metavar="DIR", help="also write quality_<data>.png to DIR")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.heads, args.length, args.contexts, args.questions, args.splits = 3, 2, 160, 4, 2, 1
        args.sink, args.window = 2, 6
        args.compressions = list(TABLE_COMPRESSIONS)
    t0 = time.perf_counter()
    env = record("bench_quality.py", argv)
    if args.run:
        meta, pairs = read_run_dirs(args.run)
        sink, window = int(meta["sink"]), int(meta["window"])
        splits = list(real_splits(pairs))
        lengths = sorted({o.shape[-1] for _, _, o, _ in pairs})
        model = meta.get("model", {})
        scorer = meta.get("scorer", {})
        data = "real"
        name = model.get("name") or Path(str(model.get("path", "model"))).name if isinstance(model, dict) else model
        title = (f"real: {name}, {scorer.get('name', scorer) if isinstance(scorer, dict) else scorer}, "
                 f"{len(pairs)} pairs, 2 folds")
        description = (f"real: {model.get('name') or model.get('path') if isinstance(model, dict) else model}, "
                       f"scorer {scorer.get('name', scorer) if isinstance(scorer, dict) else scorer}, "
                       f"{meta['layers']} layers x {meta['kv_heads']} KV heads, {len(pairs)} pairs from "
                       f"{len({c for c, *_ in pairs})} contexts (T = {lengths[0]}..{lengths[-1]}), "
                       f"sink={sink}, window={window}; run directories {', '.join(map(str, args.run))}; "
                       f"2 folds (calibrate on half the contexts, hold out the others, then swap)")
    else:
        sink, window = args.sink, args.window
        splits = list(synthetic_splits(args))
        data = "synthetic"
        title = f"synthetic: {args.layers} x {args.heads} heads, T={args.length}, {args.splits} worlds"
        half = args.contexts // 2
        description = (f"synthetic (benchmarks/heldout_aggregate.py worlds): {args.layers} layers x "
                       f"{args.heads} KV heads, T={args.length}, sink={sink}, window={window}; "
                       f"{args.splits} seeded world(s), each {half * args.questions} calibration and "
                       f"{(args.contexts - half) * args.questions} held-out requests (new contexts)")
    per_request = {m: [] for m in METHODS}
    over = {m: 0.0 for m in METHODS}
    gap = 0.0
    for cal, heldout in splits:
        info = calibrate(cal, sink, window, args.compressions)
        res, o, g = evaluate(info, heldout, sink, window, args.compressions)
        for m in METHODS:
            per_request[m].append(res[m])
            over[m] = max(over[m], o[m])
        gap = max(gap, g)
    per_request = {m: np.concatenate(v) for m, v in per_request.items()}
    result = {
        "data": data,
        "data_description": description,
        "title": title,
        "compressions": args.compressions,
        "summary": summarise(per_request, args.compressions),
        "per_request": {m: v.tolist() for m, v in per_request.items()},
        "ceiling_max_relative_gap": gap,
        "max_used_over_total": over,
        "environment": env,
    }
    result["seconds"] = time.perf_counter() - t0
    text = format_report(result)
    sys.stdout.write(text)
    if not args.quick or args.output or args.record:
        out = Path(output_path(args.output, args.record, f"bench_quality_{data}", ".json"))
        write_atomic(out, lambda f: f.write((json.dumps(result, indent=1) + "\n").encode()))
        write_atomic(out.with_suffix(".txt"), lambda f: f.write(text.encode()))
    if args.figures:
        figure_quality(result, Path(args.figures) / f"quality_{data}.png")
    return result


if __name__ == "__main__":
    main()
