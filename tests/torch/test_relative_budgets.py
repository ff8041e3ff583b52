"""From a run of contexts of different lengths to compressed answers: the relative grid end to end.

``budgetopt curves RUN`` → ``budgetopt solve`` → ``budgetopt plot --heads`` (fresh
interpreters, as a user runs them), then the budgets in ``BudgetPress`` on a tiny random Llama
whose context length is none of the run's. The per-head token counts are checked against the
fractions the budgets stand for, read from the cache in every mode.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("kvpress")

from kvpress import KnormPress  # noqa: E402
from transformers import DynamicCache  # noqa: E402

import budgetopt  # noqa: E402
from budgetopt.errors import InvalidInputError  # noqa: E402
from budgetopt.torch import layer_budgets  # noqa: E402
from budgetopt.torch.press import BudgetPress  # noqa: E402
from helpers import run_process, write_fake_run  # noqa: E402

LENGTHS = [37, 52, 44, 61]       # calibration contexts: none of them is the length applied below
SINK, WINDOW = 2, 1
APPLIED = 83                     # tokens of the context the budgets are applied to


def test_curves_solve_plot_and_press_on_contexts_of_different_lengths(tmp_path, lm_kit):
    run = tmp_path / "run"
    write_fake_run(run, LENGTHS, layers=3, kv_heads=2, sink=SINK, window=WINDOW)

    made = run_process("curves", run, "-o", tmp_path / "c.npz")
    assert made.returncode == 0, made.stderr
    assert "relative grid 82..1000 of 1000" in made.stderr and "head_capacity=1000" in made.stderr
    curves = budgetopt.load_curves(tmp_path / "c.npz")
    # The first point is the shortest context's sink + window: ceil(1000 * 3 / 37) = 82.
    assert curves.meta["grid"] == "relative" and curves.grid[0] == 82 and curves.capacity == 6 * 1000

    solved = run_process("solve", tmp_path / "c.npz", "--budget", 0.2)
    assert solved.returncode == 0, solved.stderr
    result = json.loads(solved.stdout)
    want = budgetopt.allocate(curves, budgetopt.tokens_from_fraction(0.2, curves.capacity))
    assert result["budgets"] == want.budgets.tolist() and result["total_budget"] == 1200
    assert run_process("solve", tmp_path / "c.npz", "--budget", 0.2, "-o", tmp_path / "a.npz").returncode == 0

    drawn = run_process("plot", tmp_path / "c.npz", "--heads", "0,0", "2,1", "--budget", 0.2, "-o", tmp_path / "p.png")
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "p.png").stat().st_size > 1000

    with np.load(tmp_path / "a.npz") as saved:
        budgets = saved["budgets"]
    np.testing.assert_array_equal(budgets, want.budgets)
    assert budgets.min() >= curves.grid[0]        # every head at or above the floor of the grid

    # The budgets are fractions of the context: at APPLIED tokens head h keeps about budgets[h] / 1000 of it.
    model = lm_kit.model("Llama")
    ids = torch.randint(4, 128, (1, APPLIED), generator=torch.Generator().manual_seed(7))
    expected = np.stack([layer_budgets(budgets, layer, APPLIED, head_capacity=1000) for layer in range(3)])
    assert np.all(np.abs(expected - budgets * APPLIED / 1000) < 1)
    assert expected.min() >= SINK + WINDOW        # the grid's floor covers the protected tokens here
    answers = {}
    for mode in ("mask", "gather", "varlen"):
        press = BudgetPress(KnormPress(), budgets, head_capacity=curves.meta["resolution"], sink=SINK,
                            window=WINDOW, mode=mode)
        assert press.compression_ratio == pytest.approx(0.8)
        cache = DynamicCache()
        with torch.no_grad(), press(model):
            model.model(input_ids=ids, past_key_values=cache)
            kept = lm_kit.held(model, cache, mode)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=0, suppress_tokens=[0])
        np.testing.assert_array_equal(kept, expected)
        answers[mode] = out[0, APPLIED:].tolist()
    assert answers["mask"] == answers["gather"] == answers["varlen"]


def test_press_names_head_capacity_for_relative_budgets():
    with pytest.raises(InvalidInputError, match=r"for curves on a relative grid, their meta\['resolution'\]"):
        BudgetPress(KnormPress(), np.array([[100, 300]]))

