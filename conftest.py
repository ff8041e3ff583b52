"""Collection rules for the whole repository (doctests run over budgetopt/ too).

The torch subpackage and the kvpress press are optional extras: where they are not installed,
their modules are not collected for doctests (their test files skip on their own).
"""

import importlib.util

collect_ignore_glob = []
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob.append("budgetopt/torch/*.py")
elif importlib.util.find_spec("kvpress") is None:
    collect_ignore_glob.append("budgetopt/torch/press.py")

# Doctests of core functions whose default needs torch (rule="kvpress" runs LUKVPress's torch code).
_NEED_TORCH = {"budgetopt.rounding.keep_counts_from_prune_ratios"}


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("torch") is not None:
        return
    import pytest

    for item in items:
        if item.name in _NEED_TORCH:
            item.add_marker(pytest.mark.skip(reason="its examples use rule='kvpress', which needs torch"))
