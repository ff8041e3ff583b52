"""Write docs/api.md, the Python API reference, from the package's docstrings.

Every name in ``__all__`` of ``budgetopt``, ``budgetopt.plot`` and ``budgetopt.torch`` gets its
signature and its docstring, verbatim. ``tests/test_docs.py`` regenerates the page and
compares, so the reference cannot drift from the code. Run after changing a public docstring::

    python docs/make_api.py
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("budgetopt", "budgetopt.plot", "budgetopt.torch")

INTRO = """# Python API

Generated from the docstrings by `python docs/make_api.py` (a test checks it is current): every
public name of {modules}. Concepts and guides: [index](index.md).
"""


def describe(name, obj):
    if inspect.isclass(obj) or inspect.isfunction(obj):
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = "(...)"
        kind = "class" if inspect.isclass(obj) else "function"
        head = f"### `{name}{sig}`\n\n*{kind}*"
        doc = inspect.getdoc(obj) or "(no docstring)"
    else:
        if isinstance(obj, dict):
            value = "{" + ", ".join(repr(k) + ": ..." for k in obj) + "}"
        else:
            value = repr(obj)
        head = f"### `{name}`\n\n*{type(obj).__name__}*: `{value}`"
        doc = None
    text = head + "\n"
    if doc:
        text += "\n```text\n" + doc + "\n```\n"
    return text


def render():
    parts = [INTRO.format(modules=", ".join(f"`{m}`" for m in MODULES))]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        summary = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
        parts.append(f"## `{module_name}`\n\n{summary}\n")
        for name in module.__all__:
            parts.append(describe(f"{module_name}.{name}", getattr(module, name)))
    return "\n".join(parts)


def main():
    sys.path.insert(0, str(ROOT))
    from budgetopt.curves import write_atomic

    text = render()
    write_atomic(ROOT / "docs" / "api.md", lambda f: f.write(text.encode("utf-8")))
    print(f"wrote docs/api.md ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
