"""The codebase's own rules (issue: a codebase a newcomer reads in an afternoon): small
modules, and tests that share code through tests/helpers/, never by importing each other."""

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
