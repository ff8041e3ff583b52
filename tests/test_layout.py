"""The package's import structure, read from its source: imports go one way, and the command
line's modules need only the standard library at module level."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "budgetopt"
#: budgetopt modules the CLI may import at module level: standard library only themselves.
LIGHT = {"budgetopt._cli_common", "budgetopt._limits", "budgetopt._progress", "budgetopt.errors",
         "budgetopt.cli_profile", "budgetopt.cli_convert",
         "budgetopt.cli_evaluate"}


def modules():
    """``{dotted name: path}`` of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name, path, known, *, top_level_only=False):
    """The modules ``name`` imports (budgetopt's resolved to module names), anywhere in its
    code or only in statements at module level (``try`` blocks included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if top_level_only:
        nodes = []
        for node in tree.body:
            nodes.extend(ast.walk(node) if isinstance(node, ast.Try) else [node])
    else:
        nodes = list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            submodules = {f"{target}.{alias.name}" for alias in node.names} & set(known)
            out.update(submodules or {target})
    return out


def test_budgetopt_modules_import_one_way():
    known = modules()
    graph = {name: {m for m in imports(name, path, known) if m in known and m != name}
             for name, path in known.items()}
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(trail + [nxt])
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert "budgetopt.cli" not in graph["budgetopt.cli_profile"]  # the old cycle, named
    assert graph["budgetopt"] == set()  # the catalogue imports on first use only


def test_cli_modules_import_only_the_standard_library_at_module_level():
    known = modules()
    for name in ("budgetopt.cli", "budgetopt.cli_profile", "budgetopt.cli_convert", "budgetopt.cli_evaluate",
                 "budgetopt._cli_common",
                 "budgetopt._limits", "budgetopt._progress",
                 "budgetopt.errors", "budgetopt"):
        found = imports(name, known[name], known, top_level_only=True)
        heavy = {m for m in found if m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"
                 and m not in LIGHT}
        assert heavy == set(), f"{name} imports {sorted(heavy)} at module level"


def test_numba_is_imported_by_the_kernel_modules_only():
    """numba lives behind ``budgetopt._kernels*`` (compile settings and cache in
    ``_kernels_jit``): every other module reaches compiled code through them."""
    known = modules()
    for name, path in known.items():
        found = {m.split(".")[0] for m in imports(name, path, known)}
        if "numba" in found:
            assert name.rpartition(".")[2].startswith("_kernels"), f"{name} imports numba"
