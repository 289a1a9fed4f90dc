"""The codebase's own rules (issue: a codebase a newcomer reads in an afternoon): small
modules, tests that share code through tests/helpers/, never by importing each other, and a
layer's private state used by the layers and the engine only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 300


def test_no_module_in_the_package_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "cnnexp").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_test_module_imports_another():
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    found = []
    for p in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{p.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in tests]
    assert tests and not found, f"test modules imported by other modules: {found}"


def _private_attrs(node) -> list[tuple[str, int, object]]:
    """(name, line, owner expression) of every ``x._name`` and ``getattr(x, "_name")`` in ``node``."""
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
            out.append((n.attr, n.lineno, n.value))
        elif isinstance(n, ast.Call) and getattr(n.func, "id", None) in ("getattr", "setattr", "hasattr") \
                and len(n.args) > 1 and isinstance(n.args[1], ast.Constant) and str(n.args[1].value).startswith("_"):
            out.append((n.args[1].value, n.lineno, n.args[0]))
    return out


def test_only_the_engine_touches_a_layers_private_fields():
    # the layers (cnnexp/layers/) are the readable truth; the fast engine (cnnexp/engine/) may
    # reuse their state, no other module reads or writes it
    layers = ROOT / "cnnexp" / "layers"
    private = {name for p in layers.glob("*.py") for name, _, owner in _private_attrs(ast.parse(p.read_text()))
               if isinstance(owner, ast.Name) and owner.id == "self"}
    assert {"_x", "_cols", "_mask"} <= private  # what the layers keep for their backward
    found = [f"{p.relative_to(ROOT)}:{line}: {ast.unparse(owner)}.{name}"
             for p in sorted((ROOT / "cnnexp").rglob("*.py")) if not p.is_relative_to(layers)
             and not p.is_relative_to(ROOT / "cnnexp" / "engine")
             for name, line, owner in _private_attrs(ast.parse(p.read_text()))
             if name in private and not (isinstance(owner, ast.Name) and owner.id in ("self", "cls"))]
    assert not found, f"a layer's private fields used outside cnnexp/engine/: {found}"
