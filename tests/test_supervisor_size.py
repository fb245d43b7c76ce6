"""Issue 15's size rules for the supervisor, kept: a newcomer can read any module of
``dpd/supervisor`` at once (at most 400 lines) and any class there has at most 20 methods.
A change that breaks them splits the module or the class first."""

from __future__ import annotations

import ast
from pathlib import Path

SUPERVISOR = Path(__file__).resolve().parents[1] / "dpd" / "supervisor"
MAX_LINES = 400
MAX_METHODS = 20


def test_no_supervisor_module_is_over_400_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in SUPERVISOR.glob("*.py")}
    assert len(sizes) > 10  # the package is where the test thinks it is
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_no_supervisor_class_has_over_20_methods() -> None:
    big = {}
    for path in SUPERVISOR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = [
                    b for b in node.body if isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
                if len(methods) > MAX_METHODS:
                    big[f"{path.name}:{node.name}"] = len(methods)
    assert "JobRun" in (SUPERVISOR / "run.py").read_text()
    assert big == {}
