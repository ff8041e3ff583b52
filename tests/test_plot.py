"""budgetopt.plot and ``budgetopt plot``: the drawn data are the library's, files are valid, bad
input is a clean exit 2 with no file written."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import budgetopt  # noqa: E402
from budgetopt import cli, plot  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def upper_hull_reference(x, y):
    """Indices of the upper concave hull of points (x, y), x non-decreasing: a plain monotone
    chain, collinear points dropped, the best point of a repeated x kept."""
    keep = []
    for i in range(len(x)):
        if keep and x[keep[-1]] == x[i]:
            if y[i] <= y[keep[-1]]:
                continue
            keep.pop()
        while len(keep) >= 2:
            a, b = keep[-2], keep[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) <= (y[i] - y[a]) * (x[b] - x[a]):
                keep.pop()
            else:
                break
        keep.append(i)
    return keep


@pytest.fixture
def curves():
    rng = np.random.default_rng(0)
    u = np.cumsum(rng.random((3, 2, 40)) ** 4, axis=-1)
    return budgetopt.Curves(np.concatenate([np.zeros((3, 2, 1)), u], axis=-1))


@pytest.fixture
def curves_file(tmp_path, curves):
    path = tmp_path / "curves.npz"
    budgetopt.save_curves(path, curves)
    return path


def lines_by_label(fig):
    return {line.get_label(): line.get_xydata() for line in fig.axes[0].lines}


def test_curves_figure_draws_the_curves_hulls_and_budgets(curves):
    heads = [(0, 1), (2, 0)]
    total = 60
    fig = plot.curves_figure(curves, heads, total_budget=total)
    lines = lines_by_label(fig)
    budgets = budgetopt.allocate(curves, total).budgets
    grid = np.arange(curves.n_points)
    for head in heads:
        u = curves.utility[head]
        np.testing.assert_array_equal(lines[f"curve {head}"], np.column_stack([grid, u]))
        hull = upper_hull_reference(grid, u)
        np.testing.assert_allclose(lines[f"hull {head}"], np.column_stack([grid[hull], u[hull]]))
        assert set(lines[f"budget {head}"][:, 0]) == {budgets[head]}


def test_curves_figure_per_head_grid():
    utility = [[0.0, 0.1, 0.9, 1.0], [0.0, 0.5, 0.7, 0.8]]
    grid = [[0, 2, 4, 8], [0, 1, 2, 3]]
    fig = plot.curves_figure(budgetopt.Curves(utility, grid), [(0,), (1,)])
    lines = lines_by_label(fig)
    np.testing.assert_array_equal(lines["curve (0,)"][:, 0], [0, 2, 4, 8])
    np.testing.assert_allclose(lines["hull (0,)"], [[0, 0], [4, 0.9], [8, 1.0]])
    np.testing.assert_allclose(lines["hull (1,)"], [[0, 0], [1, 0.5], [2, 0.7], [3, 0.8]])
    assert "budget (0,)" not in lines


@pytest.mark.parametrize("heads, words", [
    ([(0, 5)], "`heads[0]` must index a head of shape (3, 2)"),
    ([(0,)], "`heads[0]` must index"),
    ([], "at least one head"),
    ([("a", 1)], "`heads[0]` must be a tuple of integers"),
    (3, "`heads` must be a sequence"),
])
def test_curves_figure_bad_heads(curves, heads, words):
    with pytest.raises((budgetopt.InvalidInputError, budgetopt.InvalidTypeError), match=None) as info:
        plot.curves_figure(curves, heads)
    assert words in str(info.value)


def test_heatmap_holds_the_values_and_checks_them():
    values = np.arange(6).reshape(2, 3)
    fig = plot.allocation_heatmap(values)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), values)
    np.testing.assert_array_equal(plot.allocation_heatmap([1, 2]).axes[0].images[0].get_array(), [[1, 2]])
    with pytest.raises(budgetopt.InvalidInputError, match="`budgets` must be finite"):
        plot.allocation_heatmap([[1.0, np.nan]])
    with pytest.raises(budgetopt.InvalidInputError, match="at least one head"):
        plot.allocation_heatmap([])
    with pytest.raises(budgetopt.InvalidTypeError, match="real numbers"):
        plot.allocation_heatmap(["a"])


def test_save_figure_checks_the_suffix(tmp_path):
    with pytest.raises(budgetopt.InvalidInputError, match="must end in .png"):
        plot.save_figure(plot.allocation_heatmap([[1]]), tmp_path / "x.jpg")
    assert not list(tmp_path.iterdir())


@pytest.fixture
def captured(monkeypatch):
    """Figures the CLI saves, captured on their way to the file."""
    figs = []
    original = plot.save_figure

    def save(fig, path):
        figs.append(fig)
        original(fig, path)

    monkeypatch.setattr(plot, "save_figure", save)
    return figs


def test_cli_curves_figure_is_a_png_of_the_library_data(capfd, curves, curves_file, tmp_path, captured):
    out = tmp_path / "c.png"
    assert cli.main(["plot", str(curves_file), "--heads", "0,1", "2,0", "--budget", "0.3", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG and "wrote" in capfd.readouterr().err
    lines = lines_by_label(captured[0])
    budgets = budgetopt.allocate(curves, budgetopt.tokens_from_fraction(0.3, curves.capacity)).budgets
    assert set(lines["budget (2, 0)"][:, 0]) == {budgets[2, 0]}
    np.testing.assert_array_equal(lines["curve (0, 1)"][:, 1], curves.utility[0, 1])


def test_cli_heatmap_of_curves(curves, curves_file, tmp_path, captured):
    out = tmp_path / "h.svg"
    assert cli.main(["plot", str(curves_file), "--budget", "0.2", "--heatmap", "--min-budget", "3", "-o", str(out)]) == 0
    assert out.read_bytes().lstrip().startswith(b"<?xml")
    expected = budgetopt.allocate(curves, budgetopt.tokens_from_fraction(0.2, curves.capacity), min_budget=3).budgets
    np.testing.assert_array_equal(captured[0].axes[0].images[0].get_array(), expected)


def test_cli_heatmap_of_a_table_row(tmp_path, captured):
    rng = np.random.default_rng(1)
    table = budgetopt.lukv_table([rng.random((3, 2, 30)) for _ in range(2)], rng.random((3, 2, 30)), sink=1, window=2)
    path = tmp_path / "table.npy"
    budgetopt.save_lukv_table(path, table)
    out = tmp_path / "t.png"
    assert cli.main(["plot", "--table", str(path), "--compression", "0.8", "--heatmap", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    np.testing.assert_allclose(captured[0].axes[0].images[0].get_array(), 1.0 - table[79])


def test_cli_plot_example_heads(tmp_path):
    out = tmp_path / "e.pdf"
    assert cli.main(["plot", "--example", "--heads", "0,3", "7,1", "--budget", "0.2", "-o", str(out)]) == 0
    assert out.read_bytes()[:5] == b"%PDF-"


def run_cli(args):
    """Exit code of the CLI, whether it returns it or argparse exits."""
    try:
        return cli.main(args)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("args, words", [
    (["CURVES", "--heads", "0,5", "-o", "OUT.png"], "--heads 0,5: not a head of curves.npz (head shape 3x2)"),
    (["CURVES", "--heads", "0", "-o", "OUT.png"], "--heads 0: not a head"),
    (["CURVES", "--heads", "a,b", "-o", "OUT.png"], "a head is comma-separated integers"),
    (["CURVES", "--heads", "0,-1", "-o", "OUT.png"], "head indices must be >= 0"),
    (["CURVES", "--heatmap", "-o", "OUT.png"], "--heatmap of curves needs --budget"),
    (["CURVES", "-o", "OUT.png"], "give either --heads"),
    (["CURVES", "--heatmap", "--heads", "0,0", "--budget", "0.2", "-o", "OUT.png"], "give either --heads"),
    (["CURVES", "--heatmap", "--budget", "0.2", "-o", "OUT.jpg"], "-o/--output must end in .png"),
    (["CURVES", "--heatmap", "--budget", "0.2", "--compression", "0.8", "-o", "OUT.png"], "--compression selects"),
    (["CURVES", "--heatmap", "--budget", "1.5", "-o", "OUT.png"], "argument --budget"),
    (["--table", "CURVES", "--compression", "0.8", "--heatmap", "-o", "OUT.png"], "LU-KV table"),
    (["--table", "MISSING.npy", "--compression", "0.8", "--heatmap", "-o", "OUT.png"], "no such file"),
    (["--table", "MISSING.npy", "--heatmap", "-o", "OUT.png"], "--table needs --compression"),
    (["--table", "MISSING.npy", "--compression", "0.805", "--heatmap", "-o", "OUT.png"], "whole-percent"),
    (["CURVES", "--table", "MISSING.npy", "--compression", "0.8", "--heatmap", "-o", "OUT.png"], "not both"),
    (["--table", "MISSING.npy", "--compression", "0.8", "--budget", "0.2", "--heatmap", "-o", "OUT.png"],
     "apply to curves, not to --table"),
    (["--example", "--heatmap", "--budget", "0.2", "--min-budget", "900", "-o", "OUT.png"], "`total_budget`"),
    (["--example", "--heatmap", "--budget", "0.2", "-o", "NODIR/OUT.png"], "does not exist"),
])
def test_cli_plot_bad_input_exits_2_and_writes_nothing(capfd, curves_file, tmp_path, args, words):
    args = [str(curves_file) if a == "CURVES" else str(tmp_path / a) if a.startswith(("OUT", "MISSING", "NODIR")) else a
            for a in args]
    code = run_cli(["plot", *args])
    err = capfd.readouterr().err
    assert code == 2, err
    assert words in err, err
    assert err.count("\n") == 1 or err.startswith("usage:")
    assert "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.name != "curves.npz"]


def test_cli_plot_needs_no_display(tmp_path):
    """In a fresh process with no display and an interactive backend requested, plot still works."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    out = tmp_path / "nodisplay.png"
    proc = subprocess.run([sys.executable, "-m", "budgetopt", "plot", "--example", "--budget", "0.2", "--heatmap",
                           "-o", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == PNG


@pytest.mark.parametrize("heads", [1, 3, 8])
def test_heatmap_title_stays_inside_the_figure_for_narrow_models(heads):
    """A long title (the CLI's method, totals and gap) over a model with few KV heads, as
    SmolLM2's 3: drawn, its box lies within the figure's."""
    pytest.importorskip("matplotlib")
    from budgetopt.plot import allocation_heatmap

    title = ("method=greedy used=52416/52428 tokens (20.0% of 262144) utility=88.3487 "
             "upper_bound=88.3651 gap=0.0164 status=feasible")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = allocation_heatmap(np.arange(30 * heads).reshape(30, heads), title=title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig.axes[0].title.get_window_extent(renderer=canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, (box, fig.bbox)
