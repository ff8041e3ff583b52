"""The ``budgetopt profile`` command, and profile run directories as input to ``lukv-table``
and ``curves``.

Kept apart from :mod:`budgetopt.cli` so that the core command line never imports torch: the
profiling code is imported inside :func:`cmd_profile` only. Like :mod:`budgetopt.cli`, it
imports only the standard library and :mod:`budgetopt._cli_common` at module level.
"""

from __future__ import annotations

import os
import sys

from ._cli_common import (
    UsageError,
    check_output_path,
    check_table_output,
    non_negative_int,
    positive_int,
    positive_number,
)
from ._progress import Progress


def shard_argument(text):
    """``(K, N)`` from ``--shard K/N``, or from ``env``: the rank and world size a launcher such
    as torchrun sets. Errors name ``--shard``."""
    from .runs import parse_shard

    if text == "env":
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            raise UsageError("--shard env needs the RANK and WORLD_SIZE environment variables (torchrun sets them)")
        text = f"{rank}/{world}"
    return parse_shard(text, ref="--shard")


def add_profile_command(sub):
    """Register ``profile`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "profile",
        help="profile a local model on a calibration file into oracle and scorer arrays (a run directory)",
        description="Profile MODEL_DIR (local files only) on a calibration file: per (context, question) "
                    "pair, oracle, scorer and value-norm arrays written to a resumable run directory.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory (save_pretrained layout; never downloaded)")
    p.add_argument("--calibration", required=True, metavar="FILE",
                   help='JSON lines, each {"context": str, "questions": [str, ...]} (see docs/profiling.md)')
    p.add_argument("--scorer", required=True,
                   help="kvpress scorer name: snapkv, keydiff, expected_attention, knorm, tova, ...")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run directory to write (or resume)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default auto: cuda:$LOCAL_RANK if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="model dtype (default: the checkpoint's)")
    p.add_argument("--sink", type=non_negative_int, default=4, help="first tokens always kept (default 4)")
    p.add_argument("--window", type=non_negative_int, default=1, help="last tokens always kept (default 1)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens generated per question (default 64)")
    p.add_argument("--head-reduce", choices=["max", "mean"], default="max",
                   help="over each KV group's query heads (default max, published)")
    p.add_argument("--step-reduce", choices=["max", "sum"], default="max",
                   help="over generated steps (default max, published)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (seeded)")
    p.add_argument("--temperature", type=positive_number, default=0.7, help="with --sample (default 0.7, published)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    p.add_argument("--shard", metavar="K/N",
                   help="profile pairs i with i %% N == K only; 'env' reads RANK/WORLD_SIZE (torchrun)")
    p.add_argument("--no-resume", action="store_true", help="start the run directory over instead of resuming it")
    p.add_argument("--table", metavar="TABLE.npy",
                   help="then write the LU-KV table (and TABLE.json describing it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args):
    from .calibration import read_calibration

    shard = shard_argument(args.shard) if args.shard is not None else None
    reads = dict(inputs=[args.calibration], within=[args.output, args.model_dir])
    table_path = check_table_output(args.table, option="--table", **reads) if args.table else None
    if table_path is not None and shard is not None:
        raise UsageError(
            "--table needs every pair; with --shard, build the table from all shard directories "
            "afterwards: budgetopt lukv-table RUN_0 RUN_1 ... -o table.npy"
        )
    out = os.path.abspath(args.output)
    if not os.path.isdir(os.path.dirname(out)):
        raise UsageError(f"-o/--output: directory {os.path.dirname(out)!r} does not exist")
    calibration = read_calibration(args.calibration)  # before the model loads: fast errors
    try:
        from .torch.profiling.run import load_local_model, profile_model
    except ImportError as exc:
        from .errors import MissingDependencyError

        raise MissingDependencyError(
            f"budgetopt profile needs torch, transformers and kvpress (pip install 'budgetopt[kvpress]'): {exc}"
        ) from None
    from .torch.profiler import resolve_scorer

    resolve_scorer(args.scorer)  # an unknown name fails before the model loads
    model, tokenizer = load_local_model(args.model_dir, device=args.device, dtype=args.dtype)
    run = profile_model(
        model, tokenizer, calibration, scorer=args.scorer, out_dir=args.output, sink=args.sink,
        window=args.window, max_new_tokens=args.max_new_tokens, head_reduce=args.head_reduce,
        step_reduce=args.step_reduce, sampling=args.sample, temperature=args.temperature,
        seed=args.seed, shard=shard, resume=not args.no_resume,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    sys.stderr.write(
        f"wrote {args.output}: {len(run.pairs)} pair(s) of {run.meta['n_pairs']}, "
        + (f"{len(run.probes.pairs)} probe(s), " if run.probes is not None else "")
        + f"{run.meta['layers']} layers x {run.meta['kv_heads']} KV heads, scorer {run.meta['scorer']['name']}\n"
    )
    if table_path is not None:
        _write_table(run, table_path, sink=None, window=None, min_keep_fraction=0.01, layerwise=True,
                     aggregate="mean_ratio", workers=-1, progress=False, reads=reads)
    return 0


def _write_table(run, path, *, sink, window, min_keep_fraction, layerwise, aggregate, workers, progress,
                 reads):
    from .runs import lukv_table_from_run, save_table_with_meta

    bar = Progress(len(run.pairs), progress, "lukv-table")
    try:
        table, meta = lukv_table_from_run(
            run, sink=sink, window=window, min_keep_fraction=min_keep_fraction, layerwise=layerwise,
            aggregate=aggregate, workers=workers, progress=bar,
        )
    finally:
        bar.close()
    meta_path = save_table_with_meta(path, table, meta, **reads)
    sys.stderr.write(
        f"wrote {path} and {meta_path}: table {table.shape} (rows: compression 1%..99%) from "
        f"{len(run.pairs)} pair(s), sink {meta['sink']}, window {meta['window']}\n"
    )


def check_pair_source(args):
    """Either run directories or ``--oracle``/``--scores``/``--sink``/``--window``; not both."""
    if args.runs:
        if args.oracle or args.scores:
            raise UsageError("give run directories or --oracle/--scores files, not both")
        return True
    missing = [name for name, value in (("--oracle", args.oracle), ("--scores", args.scores),
                                        ("--sink", args.sink), ("--window", args.window)) if value is None]
    if missing:
        raise UsageError(
            f"give profile run directories (RUN ...) or the arguments {', '.join(missing)}"
        )
    return False


def cmd_lukv_table_from_runs(args):
    from .runs import load_profile_run

    reads = dict(within=args.runs)
    output = check_table_output(args.output, **reads)
    run = load_profile_run(*args.runs)
    _write_table(run, output, sink=args.sink, window=args.window, min_keep_fraction=args.min_keep_fraction,
                 layerwise=not args.layer_local, aggregate=args.aggregate, workers=args.workers,
                 progress=not args.no_progress, reads=reads)
    return 0


def grid_unit(curves):
    """What one grid step of ``curves`` is, for messages: ``"tokens"``, or thousandths (or
    ``1/resolution``) of each context on a relative grid."""
    if curves.meta.get("grid") == "relative":
        return f"units of 1/{curves.meta['resolution']} of each context"
    return "tokens"


def grid_words(curves):
    """How ``budgetopt curves`` describes the grid it wrote."""
    grid = curves.grid
    if curves.meta.get("grid") == "relative":
        r = curves.meta["resolution"]
        return (f"relative grid {int(grid[0])}..{r} of {r} (fraction of each context kept; contexts of "
                f"{curves.meta['min_length']}..{curves.meta['max_length']} tokens; apply with head_capacity={r})")
    return f"grid {int(grid[0])}..{int(grid[-1])} tokens"


def cmd_curves_from_runs(args):
    from .curves import save_curves
    from .runs import curves_from_run, load_profile_run

    output = check_output_path(args.output, (".npz",), within=args.runs)
    run = load_profile_run(*args.runs)
    curves = curves_from_run(run, sink=args.sink, window=args.window, aggregate=args.aggregate,
                             resolution=args.resolution)
    save_curves(output, curves)
    sys.stderr.write(f"wrote {output}: {len(run.pairs)} pair(s), head shape {curves.head_shape}, "
                     f"{grid_words(curves)}\n")
    return 0
