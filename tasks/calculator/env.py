"""agentgym/Calculator-v0: arithmetic word problems with a ``calculate`` tool.

The model reads a word problem, may call ``calculate(expression)`` any number of times, and ends
the episode with a reply that contains no tool call; the last number in that reply (or in its
``<answer>`` span) is its answer. Learnable on CPU by a 135M model: the skill is to call the tool
and copy its result. See README.md in this folder for the reward spec and version log.
"""

from __future__ import annotations

import json
from typing import Any

from agentgym.env import AgentEnv
from agentgym.rewards import Reward, Rubric, numeric_match
from agentgym.tasks.calculator.problems import make_problem, split_problems
from agentgym.tasks.calculator.safe_math import calculate, format_number
from agentgym.types import Split, Task, Trajectory, as_messages

SYSTEM_PROMPT = (
    "You solve arithmetic word problems. Use the calculate tool to compute exact results, "
    "then reply with the final number only, like <answer>42</answer>."
)

SPLIT_SIZES: dict[str, int] = {"train": 2000, "eval": 200}


def used_tool(trajectory: Trajectory, task: Task) -> float:
    """1.0 if the policy called ``calculate`` at least once (a logged metric)."""
    return float(any(c.name == "calculate" for t in trajectory.turns for c in t.tool_calls))


def valid_tool_call(trajectory: Trajectory, task: Task) -> float:
    """1.0 if some ``calculate`` call parsed, validated and returned a number (shaping)."""
    return float(any(call.name == "calculate" and result.error_type is None
                     and not result.content.startswith("Error")
                     for turn in trajectory.turns
                     for call, result in zip(turn.tool_calls, turn.tool_results, strict=True)))


def demonstration(index: int) -> list[dict[str, Any]]:
    """A solved example as chat turns: question, tool call, tool result, answer.

    Demonstrations come from their own seed stream (``calculator:demo:<i>``), so they never
    repeat a train or eval question.
    """
    question, expression, answer = make_problem("demo", index)
    return [{"role": "user", "content": question},
            *solved_turns(expression, format_number(answer))]


def solved_turns(expression: str, answer: str) -> list[dict[str, Any]]:
    """The reference solution's messages: one ``calculate`` call, its result (``answer``,
    formatted), the answer."""
    call = json.dumps({"name": "calculate", "arguments": {"expression": expression}})
    return [{"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"},
            {"role": "tool", "name": "calculate", "content": answer},
            {"role": "assistant", "content": f"<answer>{answer}</answer>"}]


def num_turns(trajectory: Trajectory, task: Task) -> float:
    """Number of assistant turns (a logged metric)."""
    return float(len(trajectory.turns))


class CalculatorEnv(AgentEnv):
    """Arithmetic word problems; reward 1 for the exact answer, 0 otherwise.

    Args:
        num_tasks: cap on tasks per split (default: all of ``SPLIT_SIZES``).
        demos: solved examples shown before the question (few-shot); small models need them
            to produce tool calls at all.
        tool_bonus: weight of the ``valid_tool_call`` shaping component (0: logged only, the
            v0 reward). For training; evaluate with 0.
        **kwargs: :class:`~agentgym.env.AgentEnv` budgets (default ``max_turns=4``).
    """

    family = "math"
    reward_kind = "verifiable"

    def __init__(self, *, num_tasks: int | None = None, demos: int = 0, tool_bonus: float = 0.0,
                 max_turns: int = 4, **kwargs: Any):
        self.num_tasks, self.demos, self.tool_bonus = num_tasks, demos, tool_bonus
        super().__init__(max_turns=max_turns, **kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        """Tasks per split, without building them."""
        return dict(SPLIT_SIZES)

    def load_tasks(self, split: Split) -> list[Task]:
        count = min(SPLIT_SIZES[split], self.num_tasks or SPLIT_SIZES[split])
        tasks = []
        problems = split_problems(split, count, train_size=SPLIT_SIZES["train"])
        shots = [m for i in range(self.demos) for m in demonstration(i)]
        for i, (question, expression, answer) in enumerate(problems):
            tasks.append(Task(
                id=f"calc-{split}-{i}", split=split, answer=float(answer),
                prompt=({"role": "system", "content": SYSTEM_PROMPT}, *shots,
                        {"role": "user", "content": question}),
                metadata={"expression": expression, "answer_exact": format_number(answer)}))
        return tasks

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("correct", numeric_match, 1.0),
                       Reward("used_tool", used_tool, 0.0),
                       Reward("valid_tool_call", valid_tool_call, self.tool_bonus),
                       Reward("turns", num_turns, 0.0)])

    def demonstrate(self, task: Task) -> list[dict[str, Any]]:
        """The task's prompt, then the reference solution (:func:`solved_turns`)."""
        return [*as_messages(task.prompt),
                *solved_turns(task.metadata["expression"], task.metadata["answer_exact"])]

    calculate = calculate  # the shared tool (tasks/calculator/safe_math.py)
