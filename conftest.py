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
