"""The package stays readable: no function in cifar_dist/ runs past 80 lines, train() reads as a short
story, and no module reaches into another's private names.

    python -m pytest tests/test_codebase.py
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_dist"


def _functions():
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.name}:{node.name}", node.end_lineno - node.lineno + 1


def test_no_function_over_80_lines():
    long = {name: n for name, n in _functions() if n > 80}
    assert not long, f"split these functions: {long}"


def test_train_reads_as_a_short_story():
    lengths = dict(_functions())
    assert lengths["trainer.py:train"] <= 70, lengths["trainer.py:train"]


def test_no_module_imports_another_modules_private_names():
    private = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not private, private
