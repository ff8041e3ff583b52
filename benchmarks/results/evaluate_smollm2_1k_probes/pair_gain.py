"""Paired KL of ``probes`` at --probe-gain 0.5 (gain_0.5/) against ``lukv`` and ``request`` of the
main run (this folder), on the examples both hold: ``python pair_gain.py`` from this folder, with
budgetopt importable. Checks that the examples, the full-cache answers and ``request``'s rows
are the same in both runs before pairing."""
import glob
import json
import os

from budgetopt.evaluation import summarise

here = os.path.dirname(os.path.abspath(__file__))
load = lambda d: {os.path.basename(f): json.load(open(f)) for f in glob.glob(os.path.join(here, d, "examples", "*.json"))}
main, gain = load("."), load("gain_0.5")
records = []
for name, rb in sorted(gain.items()):
    ra = main[name]
    qa, qb = ra["settings"]["question"], rb["settings"]["question"]
    assert ra["context_sha256"] == rb["context_sha256"] and qa["reference"]["answer_ids"] == qb["reference"]["answer_ids"]
    for r in qb["results"]:
        if r["method"] == "request":
            (same,) = [x for x in qa["results"] if x["method"] == "request" and x["compression"] == r["compression"]]
            assert same["answer_ids"] == r["answer_ids"] and abs(same["kl"] - r["kl"]) < 1e-9
    res = [r for r in qa["results"] if r["method"] in ("lukv", "request")]
    res += [{**r, "method": "probes_gain_0.5"} for r in qb["results"] if r["method"] == "probes"]
    records.append({**ra, "settings": {"question": {**qa, "results": res}}})
report = summarise(records)["settings"]["question"]
for row in report["rows"]:
    print(f"{row['compression']:.2f} {row['method']:16s} n={row['n']} accuracy {row['accuracy']:.2f} "
          f"KL {row['kl']:.3f} ({row['kl_low']:.3f}-{row['kl_high']:.3f})")
for p in report["pairs"]:
    print(f"{p['compression']:.2f} {p['a']} - {p['b']}: {p['kl_diff']:+.3f} ({p['kl_diff_low']:+.3f} to "
          f"{p['kl_diff_high']:+.3f}), a lower/higher {p['kl_wins']}/{p['kl_losses']} (p {p['kl_p']:.3g}), "
          f"correct a/b only {p['correct_wins']}/{p['correct_losses']}")
