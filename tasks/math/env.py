"""agentgym/Math-v0: RLVR on reasoning-gym generators, with an optional calculator tool.

The generators, their configuration (difficulty) and the number of tasks per generator are
constructor arguments; grading uses each generator's own verifier and math-verify. See
README.md for the reward spec and version log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agentgym.conformance import constant_reply
from agentgym.env import AgentEnv
from agentgym.rewards import Reward, Rubric
from agentgym.tasks.calculator.safe_math import calculate
from agentgym.tasks.math.generators import DEFAULT_DATASETS, build_tasks, verifier_score
from agentgym.tools import Tool
from agentgym.types import Split, Task, Trajectory

SYSTEM_PROMPT = ("Solve the problem. You may use the calculate tool for arithmetic. "
                 "End with the final answer only, like <answer>42</answer>.")
PER_DATASET = {"train": 200, "eval": 50}


def used_tool(trajectory: Trajectory, task: Task) -> float:
    """1.0 if the policy called a tool (a logged metric)."""
    return float(any(turn.tool_calls for turn in trajectory.turns))


class MathEnv(AgentEnv):
    """reasoning-gym problems; reward = the generator's verifier (or math-verify) on the answer.

    Args:
        datasets: generator name -> its configuration (e.g. ``{"products": {"max_digits": 2}}``;
            see reasoning-gym for each generator's options). Default: six arithmetic ones.
        per_dataset: tasks per generator and split (default 200 train, 50 eval).
        calculator: offer the ``calculate`` tool.
        **kwargs: :class:`~agentgym.env.AgentEnv` budgets (default ``max_turns=4``).
    """

    family = "math"
    reward_kind = "verifiable"

    def __init__(self, *, datasets: Mapping[str, Mapping[str, Any]] | None = None,
                 per_dataset: int | None = None, calculator: bool = True,
                 max_turns: int = 4, **kwargs: Any):
        self.datasets = {k: dict(v) for k, v in (datasets or DEFAULT_DATASETS).items()}
        self.per_dataset = per_dataset
        self.calculator = calculator
        super().__init__(max_turns=max_turns, **kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        return {s: n * len(DEFAULT_DATASETS) for s, n in PER_DATASET.items()}

    def load_tasks(self, split: Split) -> list[Task]:
        return build_tasks(split, self.datasets, self.per_dataset or PER_DATASET[split],
                           SYSTEM_PROMPT, self.per_dataset or PER_DATASET["train"])

    def _all_tools(self) -> list[Tool]:
        return [self.calculate] if self.calculator else []

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("correct", verifier_score, 1.0), Reward("used_tool", used_tool, 0.0)])

    calculate = calculate  # the shared tool (tasks/calculator/safe_math.py)

    def adversarial_replies(self, task: Task) -> dict[str, Callable[..., str]]:
        """Math-specific hacks for the conformance suite: hedged and padded answer spans that
        contain the reference answer (reasoning-gym's partial credit for containment)."""
        gold = str(task.answer)
        decoy = "0" if gold != "0" else "1"
        replies = {
            "hedge (gold first)": f"<answer>{gold} or {decoy}</answer>",
            "list (gold first)": f"<answer>{gold}, {decoy}, {decoy}{decoy}</answer>",
            "padded": f"<answer>{gold}{decoy}</answer>",
            "gold inside prose": f"<answer>not {gold}, but {decoy}</answer>",
        }
        return {name: constant_reply(text) for name, text in replies.items()}

