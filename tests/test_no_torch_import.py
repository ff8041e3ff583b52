"""The core package never imports torch (or kvpress): a fresh interpreter checks."""

import subprocess
import sys
from pathlib import Path


def test_import_budgetopt_does_not_import_torch():
    code = (
        "import sys, budgetopt, budgetopt.cli\n"
        "print(sorted(m for m in ('torch', 'kvpress', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
