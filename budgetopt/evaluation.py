"""Summaries of ``budgetopt evaluate`` runs: accuracy with intervals, agreement, KL, paired tests.

The evaluator (:mod:`budgetopt.torch.evaluate`) writes one JSON record per example; this
module turns records into a report (a dict, Markdown and a figure). Standard library and
numpy only, so a report can be rebuilt from an evaluation directory without torch.

Statistics:

* accuracy: share of examples the task's scorer accepts, with the Wilson score interval
  (95%), over the examples that have accepted answers (``n_answered``; a record's
  ``correct`` is null for an example without answers, and its accuracy is null when none
  has);
* agreement: share of examples whose answer equals the full-cache answer, token for token;
* KL: the mean over the full-cache answer's tokens of ``KL(full || method)`` of the
  next-token distributions (teacher forced on the full-cache answer), averaged over
  examples; NLL: the mean negative log-likelihood of the full-cache answer's tokens;
* paired comparisons between two methods on the same examples: an exact two-sided sign test
  on the per-example KL (ties dropped) and on correctness (examples with answers where
  exactly one is right), and a percentile bootstrap interval (95%, seeded) of the mean KL
  difference.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ._io import check_input_file, loads_json
from .errors import CurvesFileError

__all__ = ["wilson_interval", "sign_test", "bootstrap_mean_interval", "summarise", "format_markdown",
           "load_records", "read_record", "plot_report"]

_Z95 = 1.959963984540054


def wilson_interval(successes, n, *, z=_Z95):
    """Wilson score interval of a binomial proportion.

    Examples
    --------
    >>> [round(x, 4) for x in wilson_interval(8, 10)]
    [0.4902, 0.9433]
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(wins, losses):
    """Exact two-sided sign test p-value for ``wins`` against ``losses`` (ties excluded).

    Examples
    --------
    >>> round(sign_test(9, 1), 4)
    0.0215
    >>> sign_test(0, 0)
    1.0
    """
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def bootstrap_mean_interval(values, *, reps=2000, seed=0, level=0.95):
    """Percentile bootstrap interval of the mean of ``values`` (seeded, so reproducible).

    Examples
    --------
    >>> lo, hi = bootstrap_mean_interval([1.0, 2.0, 3.0, 4.0])
    >>> 1.0 <= lo <= 2.5 <= hi <= 4.0
    True
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(reps, x.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


#: Largest example record or ``meta.json`` read (16 MiB).
MAX_RECORD_BYTES = 16 * 2**20


def read_json_file(path, what):
    """The JSON value of ``path``, a regular file of at most :data:`MAX_RECORD_BYTES` holding
    standard JSON; :class:`CurvesFileError` naming the file otherwise (never a hang on a FIFO
    or a device)."""
    path = check_input_file(path, what)
    size = os.stat(path).st_size
    if size > MAX_RECORD_BYTES:
        raise CurvesFileError(f"{path}: {size} bytes; a {what} holds at most {MAX_RECORD_BYTES}")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CurvesFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return loads_json(data, path)


def read_record(path):
    """One example record (``examples/ID.json``), checked for the fields the report and a
    resumed evaluation read; :class:`CurvesFileError` naming the file otherwise."""
    hint = "; delete it to evaluate the example again"
    try:
        record = read_json_file(path, "example record")
    except CurvesFileError as exc:
        raise CurvesFileError(f"{exc}{hint}") from None
    if not (isinstance(record, dict) and record.get("id") == Path(path).stem and isinstance(record.get("task"), str)
            and isinstance(record.get("settings"), dict) and all(map(_good_block, record["settings"].values()))):
        raise CurvesFileError(f"{path}: is not an example record of budgetopt evaluate (its id, task or "
                              f"results are missing or malformed){hint}")
    return record


def _good_block(block):
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    return (isinstance(block, dict) and isinstance(block.get("reference"), dict)
            and isinstance(block["reference"].get("answer_ids"), list) and isinstance(block.get("results"), list)
            and all(isinstance(r, dict) and isinstance(r.get("method"), str) and number(r.get("compression"))
                    and number(r.get("kl")) and number(r.get("nll")) and number(r.get("kept_fraction"))
                    and r.get("correct") in (True, False, None) and isinstance(r.get("agree"), bool)
                    for r in block["results"]))


def load_records(out_dir):
    """The example records of an evaluation directory, sorted by id (:func:`read_record`)."""
    folder = Path(out_dir) / "examples"
    if not folder.is_dir():
        raise CurvesFileError(f"{out_dir}: not an evaluation directory (no examples/)")
    return [read_record(folder / name) for name in sorted(os.listdir(folder))
            if name.endswith(".json") and not name.startswith(".")]


def summarise(records, *, seed=0):
    """The report of a list of example records (see :func:`budgetopt.torch.evaluate.evaluate_example`).

    Returns
    -------
    dict
        ``{"n_examples", "n_answered", "tasks", "settings": {setting: {"rows": [...],
        "by_task": [...], "pairs": [...]}}}``. A row: ``method, compression, n, n_answered,
        accuracy, accuracy_low, accuracy_high, agreement, kl, kl_low, kl_high, nll,
        kept_fraction``; a per-task row: ``method, compression, task, n, n_answered,
        accuracy, kl``; a pair: ``a, b, compression, n, n_answered, kl_diff`` (mean of
        a − b), ``kl_diff_low/high`` (bootstrap), ``kl_wins`` (examples where a's KL is
        lower), ``kl_losses``, ``kl_p``, ``correct_wins``, ``correct_losses``, ``correct_p``.

        ``n`` counts the examples of a cell, ``n_answered`` those with accepted answers
        (a record whose ``correct`` is not null). Accuracy and its interval and the
        correctness counts and test are over the ``n_answered`` examples, and null when
        ``n_answered`` is 0; agreement, KL and NLL are over all ``n``.

    Examples
    --------
    Two examples, the second without answers: accuracy counts the first only.

    >>> def record(i, correct, kl):
    ...     res = {"method": "m", "compression": 0.5, "correct": correct, "agree": True, "kl": kl,
    ...            "nll": 1.0, "kept_fraction": 0.5}
    ...     return {"id": f"e{i}", "task": "user", "settings": {"question": {"results": [res]}}}
    >>> row = summarise([record(0, True, 0.25), record(1, None, 0.75)])["settings"]["question"]["rows"][0]
    >>> row["n"], row["n_answered"], row["accuracy"], row["kl"]
    (2, 1, 1.0, 0.5)
    """
    settings = {}
    tasks = sorted({r["task"] for r in records})
    for record in records:
        for setting, block in record["settings"].items():
            table = settings.setdefault(setting, {})
            for res in block["results"]:
                key = (res["method"], float(res["compression"]))
                table.setdefault(key, {})[record["id"]] = (res, record["task"])
    answered = lambda res: res["correct"] is not None
    out = {"n_examples": len(records),
           "n_answered": sum(any(answered(res) for block in r["settings"].values() for res in block["results"])
                             for r in records),
           "tasks": tasks, "settings": {}}
    for setting, table in settings.items():
        methods = list(dict.fromkeys(m for m, _ in table))
        comps = sorted({c for _, c in table})
        rows, by_task, pairs = [], [], []
        for c in comps:
            for m in methods:
                cell = table.get((m, c), {})
                res = [v[0] for v in cell.values()]
                n = len(res)
                if not n:
                    continue
                scored = [r for r in res if answered(r)]
                k = sum(bool(r["correct"]) for r in scored)
                lo, hi = wilson_interval(k, len(scored)) if scored else (None, None)
                kl = [r["kl"] for r in res]
                klo, khi = bootstrap_mean_interval(kl, seed=seed)
                rows.append({"method": m, "compression": c, "n": n, "n_answered": len(scored),
                             "accuracy": k / len(scored) if scored else None, "accuracy_low": lo,
                             "accuracy_high": hi, "agreement": float(np.mean([bool(r["agree"]) for r in res])),
                             "kl": float(np.mean(kl)), "kl_low": klo, "kl_high": khi,
                             "nll": float(np.mean([r["nll"] for r in res])),
                             "kept_fraction": float(np.mean([r["kept_fraction"] for r in res]))})
                for task in tasks:
                    tres = [v[0] for v in cell.values() if v[1] == task]
                    if tres:
                        tscored = [bool(r["correct"]) for r in tres if answered(r)]
                        by_task.append({"method": m, "compression": c, "task": task, "n": len(tres),
                                        "n_answered": len(tscored),
                                        "accuracy": float(np.mean(tscored)) if tscored else None,
                                        "kl": float(np.mean([r["kl"] for r in tres]))})
            others = [m for m in methods if m != "full"]
            for i, a in enumerate(others):
                for b in others[i + 1:]:
                    ca, cb = table.get((a, c), {}), table.get((b, c), {})
                    ids = sorted(set(ca) & set(cb))
                    if not ids:
                        continue
                    ka = np.array([ca[e][0]["kl"] for e in ids])
                    kb = np.array([cb[e][0]["kl"] for e in ids])
                    scored = [e for e in ids if answered(ca[e][0]) and answered(cb[e][0])]
                    ra = np.array([bool(ca[e][0]["correct"]) for e in scored], dtype=bool)
                    rb = np.array([bool(cb[e][0]["correct"]) for e in scored], dtype=bool)
                    lo, hi = bootstrap_mean_interval(ka - kb, seed=seed)
                    wins, losses = int((ka < kb).sum()), int((ka > kb).sum())
                    cw, cl = (int((ra & ~rb).sum()), int((rb & ~ra).sum())) if scored else (None, None)
                    pairs.append({"a": a, "b": b, "compression": c, "n": len(ids), "n_answered": len(scored),
                                  "kl_diff": float((ka - kb).mean()),
                                  "kl_diff_low": lo, "kl_diff_high": hi, "kl_wins": wins, "kl_losses": losses,
                                  "kl_p": sign_test(wins, losses), "correct_wins": cw, "correct_losses": cl,
                                  "correct_p": sign_test(cw, cl) if scored else None})
        out["settings"][setting] = {"methods": methods, "compressions": comps, "rows": rows, "by_task": by_task,
                                    "pairs": pairs}
    return out


_SETTING_TITLES = {"question": "question after the compressed context (kvpress's default)",
                   "query_aware": "question inside the compressed context (query-aware)"}


def format_markdown(report, *, meta=None):
    """The report as Markdown: per setting, one table of methods x compression, the accuracy
    per task, and the paired comparisons."""
    lines = ["# budgetopt evaluate: answers under compression", ""]
    if meta:
        lines.append(f"Model `{meta.get('model', '?')}`, tasks {', '.join(meta.get('tasks', []))}, "
                     f"{report['n_examples']} example(s), about {meta.get('context_tokens', '?')} context tokens, "
                     f"greedy answers of at most {meta.get('max_new_tokens', '?')} tokens.")
        cal = meta.get("calibration")
        if cal:
            lines.append(f"Calibration: {cal.get('pairs', '?')} pair(s) from a profile run (scorer "
                         f"{cal.get('scorer', '?')}); {cal.get('disjointness', '')}")
        fit = (meta.get("probe_fit") or {}).get("probes")
        if fit:
            chosen = "given by --probe-gain" if meta.get("probe_gain") is not None else "chosen by cross-validation"
            by_gain = {float(g): v for g, v in ((fit.get("cv") or {}).get("gain") or {}).items()}
            cv = by_gain.get(float(fit["gain"]))
            risk = (f" (held out there: mean gain {100 * cv['mean_gain']:+.2f} points of oracle mass, worst "
                    f"context {100 * cv['worst_context']:+.2f}, worst pair {100 * cv['worst_pair']:+.2f})") if cv else ""
            lines.append(f"Probe methods: {meta['probe_fit'].get('probe_tokens', '?')} probe tokens, probe gain "
                         f"{fit['gain']:g} {chosen} on the calibration contexts{risk}.")
        lines.append("")
    lines += ["Compression is kvpress's `compression_ratio`, the fraction of the cache removed. Accuracy: the task's "
              "scorer, with a 95% Wilson interval. Agreement: the answer equals the full-cache answer. KL: mean "
              "over the full-cache answer's tokens of KL(full || method), teacher forced; NLL: of the full-cache "
              "answer. Kept: tokens the cache keeps and does not hide, read from the cache.", ""]
    if report["n_answered"] == 0:
        lines += ["No example has accepted answers: accuracy and the correctness test do not apply (–); agreement, "
                  "KL and NLL count every example.", ""]
    elif report["n_answered"] < report["n_examples"]:
        lines += [f"{report['n_examples'] - report['n_answered']} of the {report['n_examples']} example(s) have no "
                  "accepted answers: accuracy and the correctness test count only the examples with answers "
                  "(their number follows as n= where it is smaller than the row's n), and read – where none has "
                  "answers. Agreement, KL and NLL count every example.", ""]
    for setting, block in report["settings"].items():
        lines += [f"## {_SETTING_TITLES.get(setting, setting)}", "",
                  "| compression | method | n | accuracy (95% CI) | agreement | KL (95% CI) | NLL | kept |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in block["rows"]:
            lines.append(f"| {r['compression']:.2f} | {r['method']} | {r['n']} | {_accuracy_cell(r)} | "
                         f"{r['agreement']:.2f} | "
                         f"{r['kl']:.3f} ({r['kl_low']:.3f}-{r['kl_high']:.3f}) | {r['nll']:.3f} | "
                         f"{r['kept_fraction']:.3f} |")
        if len(report["tasks"]) > 1:
            lines += ["", "Accuracy per task:", "",
                      "| compression | method | " + " | ".join(report["tasks"]) + " |",
                      "|---|---|" + "---|" * len(report["tasks"])]
            cells = {(t["compression"], t["method"], t["task"]): t for t in block["by_task"]}
            for r in block["rows"]:
                vals = []
                for task in report["tasks"]:
                    t = cells.get((r["compression"], r["method"], task))
                    vals.append(("–" if t["accuracy"] is None else f"{t['accuracy']:.2f} (n={t['n_answered']})")
                                if t else "")
                lines.append(f"| {r['compression']:.2f} | {r['method']} | " + " | ".join(vals) + " |")
        if block["pairs"]:
            lines += ["", "Paired comparisons (same examples): mean KL difference a − b with a 95% bootstrap "
                      "interval; KL sign test (examples where a's KL is lower / higher); correctness sign test "
                      "(a right and b wrong / the reverse).", "",
                      "| compression | a | b | n | KL a − b (95% CI) | KL lower/higher | p | correct a/b only | p |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for p in block["pairs"]:
                lines.append(f"| {p['compression']:.2f} | {p['a']} | {p['b']} | {p['n']} | {p['kl_diff']:+.3f} "
                             f"({p['kl_diff_low']:+.3f} to {p['kl_diff_high']:+.3f}) | {p['kl_wins']}/{p['kl_losses']} | "
                             f"{p['kl_p']:.3g} | {_correct_cells(p)} |")
        lines.append("")
    return "\n".join(lines)


def _accuracy_cell(row):
    """A row's accuracy with its interval; ``n=`` when fewer examples than the row's have answers."""
    if row["accuracy"] is None:
        return "–"
    cell = f"{row['accuracy']:.2f} ({row['accuracy_low']:.2f}-{row['accuracy_high']:.2f})"
    return cell if row["n_answered"] == row["n"] else f"{cell} n={row['n_answered']}"


def _correct_cells(pair):
    """A pair's correctness counts and sign test p, as two cells."""
    if pair["correct_p"] is None:
        return "– | –"
    counts = f"{pair['correct_wins']}/{pair['correct_losses']}"
    if pair["n_answered"] != pair["n"]:
        counts += f" n={pair['n_answered']}"
    return f"{counts} | {pair['correct_p']:.3g}"


def plot_report(report, path):
    """Accuracy and KL against compression, one line per method and a row per setting (needs
    matplotlib). Returns the path written."""
    from .errors import MissingDependencyError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("the figure needs matplotlib (pip install matplotlib)") from None
    settings = list(report["settings"])
    fig, axes = plt.subplots(len(settings), 2, figsize=(10, 3.6 * len(settings)), squeeze=False)
    for row, setting in enumerate(settings):
        block = report["settings"][setting]
        for method in block["methods"]:
            rs = [r for r in block["rows"] if r["method"] == method]
            xs = [r["compression"] for r in rs]
            style = dict(marker="o", linestyle="--" if method == "full" else "-", label=method)
            axes[row, 0].plot(xs, [np.nan if r["accuracy"] is None else r["accuracy"] for r in rs], **style)
            axes[row, 1].plot(xs, [r["kl"] for r in rs], **style)
        axes[row, 0].set_title(f"accuracy ({setting})")
        axes[row, 1].set_title(f"KL to the full-cache answer ({setting})")
        for ax in axes[row]:
            ax.set_xlabel("compression ratio (fraction removed)")
            ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    from ._io import write_atomic

    write_atomic(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=110))
    plt.close(fig)
    return path
