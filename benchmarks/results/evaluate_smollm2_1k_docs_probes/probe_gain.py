"""The probe gain the `probes` and `probes_rank` rows used: the RequestAllocator that
`budgetopt evaluate` fits on the run (the same functions it calls), and its info["probes"].

Usage (from the folder holding smollm2/, run/ and cal.jsonl): python probe_gain.py > probe_gain.json
"""

import json
import sys

from transformers import AutoTokenizer

from budgetopt.cli_evaluate import _with_probes
from budgetopt.runs import load_profile_run
from budgetopt.torch.evaluate import _probe_allocator

model, run_dir, calibration = (sys.argv[1:] + ["smollm2", "run", "cal.jsonl"][len(sys.argv) - 1:])[:3]
tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
run, probe_ids = _with_probes(load_profile_run(run_dir), [run_dir], calibration, tokenizer)
allocator, probe_tokens = _probe_allocator(run, int(run.meta["sink"]), int(run.meta["window"]), probe_ids)
print(json.dumps({"probe_tokens": probe_tokens, "probes": allocator.info["probes"]}, indent=1))
