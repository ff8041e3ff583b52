"""The torch subpackage's catalogue: public names resolve, and kvpress loads only on demand."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")


def test_public_names_resolve_without_loading_kvpress():
    code = (
        "import sys, budgetopt.torch as bt\n"
        "names = [n for n in bt.__all__ if n not in ('BudgetPress', 'lukv_press')]\n"
        "assert all(getattr(bt, n) is not None for n in names), names\n"
        "print('kvpress' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_unknown_attribute_is_an_attribute_error():
    import budgetopt.torch as bt

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        bt.Nope  # noqa: B018
