"""docs/extending.md followed end to end: its solver and its scorer, taken from the page's code
blocks, registered the way the page says, used through the public front doors, then removed.

References share no code with the recipe: tests/reference_exact.py's enumeration and
``method="dp"`` for the solver, key norms read from the model's own cache for the scorer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import budgetopt
from budgetopt import cli
from budgetopt._invariants import check_allocation, tolerance
from generators import random_curves
from reference_exact import brute_force as reference_brute_force

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def section(title):
    """The text of the page's ``## title`` section."""
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/extending.md has no section {title!r}"
    return match.group(1)


def code(title, language):
    """The fenced ``language`` blocks of one section, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", section(title), re.S | re.M)


def registrations(title):
    """``(file, name, value expression)`` of each ``+`` line of the section's diff blocks; the
    file is the last ``# path`` comment line before it (None if none)."""
    found, where = [], None
    for block in code(title, "diff"):
        for line in block.splitlines():
            comment = re.match(r"^ # (\S+\.py)$", line)
            if comment:
                where = comment.group(1)
            m = re.match(r'^\+\s*"(\w+)": (.+?),?$', line)
            if m:
                found.append((where, m.group(1), m.group(2)))
    return found


def test_the_page_is_linked_from_the_index():
    assert "](extending.md)" in (PAGE.parent / "index.md").read_text(encoding="utf-8")


def test_new_solver_recipe(monkeypatch, tmp_path, capsys):
    from budgetopt import api, result

    namespace = {}
    (solver_code,) = code("A new solver", "python")
    exec(compile(solver_code, "docs/extending.md", "exec"), namespace)
    (method_file, name, solver), (stats_file, stats_name, stats) = registrations("A new solver")
    assert (method_file, stats_file, stats_name) == ("budgetopt/api.py", "budgetopt/result.py", name)
    keys = tuple(re.findall(r'"(\w+)"', stats))
    assert keys == ("lp_bound", "candidates")

    with monkeypatch.context() as m:
        m.setitem(api.METHODS, name, namespace[solver.rpartition(".")[2]])  # the page's "+" lines,
        m.setitem(result.STATS_KEYS, name, keys)  # undone when the block ends
        for seed, head_shape, k, grid, frac, lo in [(0, (3,), 4, "unit", 0.5, None), (1, (2, 2), 3, "per_head", 0.8, 1),
                                                    (2, (4,), 3, "shared", 0.7, None)]:
            curves = budgetopt.Curves(*random_curves(seed, head_shape, k, kind="random", grid=grid))
            total = int(frac * curves.capacity)
            a = budgetopt.allocate(curves, total, method=name, min_budget=lo)
            assert (a.method, a.status, tuple(a.stats)) == (name, "optimal", keys)
            check_allocation(curves, a, total_budget=total, min_budget=lo)
            best, _ = reference_brute_force(curves, total, min_budget=lo)
            assert abs(a.utility - best) <= tolerance(curves)
            assert abs(a.utility - budgetopt.allocate(curves, total, method="dp", min_budget=lo).utility) <= tolerance(curves)
        # the command line reads its --method choices from METHODS
        path = tmp_path / "c.npz"
        budgetopt.save_curves(path, curves)
        assert cli.main(["solve", str(path), "--tokens", str(total), "--method", name]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["method"] == name and out["utility"] == pytest.approx(best)
    # removed again: the method is unknown, and the error lists the real ones
    assert name not in budgetopt.METHODS and name not in result.STATS_KEYS
    with pytest.raises(budgetopt.InvalidInputError, match=r"`method` must be one of 'greedy'"):
        budgetopt.allocate(curves, total, method=name)


def test_new_scorer_recipe(monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("kvpress")
    import budgetopt.torch as bt
    from budgetopt.torch.profiling import scorers

    namespace = {}
    (scorer_code,) = code("A new scorer", "python")
    exec(compile(scorer_code, "docs/extending.md", "exec"), namespace)
    ((_, name, value),) = registrations("A new scorer")
    assert name == "low_key_norm"
    press_class = namespace[value]

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config).eval()
    context = torch.randint(0, 64, (24,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model(context[None], use_cache=True).past_key_values
    expected = np.stack([-layer.keys[0].float().norm(dim=-1).numpy() for layer in cache.layers])

    # from Python, an instance needs no registration
    direct = bt.profile_context(model, context, [], scorer=press_class())
    np.testing.assert_allclose(direct.scores, expected, rtol=1e-6)
    with monkeypatch.context() as m:
        m.setitem(scorers.SCORER_NAMES, name, press_class)  # the page's "+" line
        by_name = bt.profile_context(model, context, [], scorer="Low-Key-Norm")
        np.testing.assert_array_equal(by_name.scores, direct.scores)
    with pytest.raises(budgetopt.InvalidInputError, match="'low_key_norm' is not a known scorer name"):
        bt.profile_context(model, context, [], scorer="low_key_norm")
