"""Mean KL per question template (the calibration lines' three questions, ``q000`` "Summarise the
section about X.", ``q001`` "Which functions are described above?", ``q002`` "What does Y do,
according to the text?"), and on how many examples ``probes`` and ``request`` decode different
answers: ``python by_question.py`` from this folder, with budgetopt importable."""
import os

from budgetopt.evaluation import load_records, summarise

here = os.path.dirname(os.path.abspath(__file__))
records = load_records(here)
templates = {"q000": "Summarise the section about X.", "q001": "Which functions are described above?",
             "q002": "What does Y do, according to the text?"}
for key, text in templates.items():
    subset = [r for r in records if r["id"].endswith(key)]
    block = summarise(subset)["settings"]["question"]
    print(f"{key} {text!r}: n = {len(subset)}")
    for c in block["compressions"]:
        cells = {r["method"]: r for r in block["rows"] if r["compression"] == c}
        print(f"  {c:.2f} " + "  ".join(f"{m} {r['kl']:.3f}" for m, r in cells.items() if m != "full"))
for c in sorted({res["compression"] for r in records for res in r["settings"]["question"]["results"]}):
    rows = [{res["method"]: res for res in r["settings"]["question"]["results"] if res["compression"] == c}
            for r in records]
    differ = sum(row["probes"]["answer_ids"] != row["request"]["answer_ids"] for row in rows)
    print(f"{c:.2f}: probes and request decode different answers on {differ} of {len(rows)} examples")

# The three questions of a context share it: a bootstrap over the 12 contexts (each context's
# mean KL difference over its questions; equal sizes, so their mean is the overall mean) is
# the honest interval when contexts, not questions, are the independent draws.
from budgetopt.evaluation import bootstrap_mean_interval  # noqa: E402

print("paired mean KL differences, bootstrap over contexts (95%)")
for a, b in (("probes", "request"), ("probes", "lukv"), ("probes_rank", "probes"), ("probes_rank", "lukv"),
             ("request", "lukv")):
    for c in (0.5, 0.75, 0.9):
        by_context = {}
        for r in records:
            res = {x["method"]: x for x in r["settings"]["question"]["results"] if x["compression"] == c}
            by_context.setdefault(r["id"].rsplit("-", 1)[0], []).append(res[a]["kl"] - res[b]["kl"])
        means = [sum(v) / len(v) for v in by_context.values()]
        lo, hi = bootstrap_mean_interval(means)
        lower = sum(m < 0 for m in means)
        print(f"  {a} - {b} at {c:.2f}: {sum(means) / len(means):+.3f} [{lo:+.3f}, {hi:+.3f}], "
              f"lower on {lower} of {len(means)} contexts")
