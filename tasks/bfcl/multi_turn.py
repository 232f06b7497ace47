"""agentgym/BFCLMultiTurn-v0: BFCL v4 multi-turn base, executed against BFCL's own API classes.

An episode is one BFCL entry. ``reset`` builds fresh instances of the entry's API classes
(``GorillaFileSystem``, ``TradingBot``, ...) from its initial config and sends user turn 1. The
model calls the classes' functions as OpenAI tools; each call runs on the instances and its
result comes back as a tool message. A reply without tool calls closes the user turn: the env
then runs that turn's ground-truth calls on a second, separate set of instances, snapshots both
sets' public state, and sends the next user turn (or ends the episode after the last one).

Those per-turn snapshots and execution results are the episode's :meth:`final_state`; the
rewards (:func:`all_turns_pass`, :func:`turn_pass_fraction`) are pure functions of it and the
trajectory, applying BFCL's checks (:func:`~.checker.multi_turn_verdicts`). See README.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agentgym.env import AgentEnv
from agentgym.parsing import ParsedReply
from agentgym.rewards import Reward, Rubric
from agentgym.tasks.bfcl import backend
from agentgym.tasks.bfcl.checker import Verdict, multi_turn_verdicts
from agentgym.tasks.bfcl.data import CLASS_DOC_FILES, class_docs, load_category, split_of
from agentgym.tasks.bfcl.schemas import SchemaTool, to_openai_schema
from agentgym.tools import Tool
from agentgym.types import Split, Task, Trajectory, clone_json

__all__ = ["BFCLMultiTurnEnv", "all_turns_pass", "calls_per_user_turn", "turn_pass_fraction"]

CATEGORY = "multi_turn_base"
SPLIT_SIZES: dict[str, int] = {"train": 152, "eval": 48}
"""Entries per split of multi_turn_base in bfcl-eval 2026.3.23 (a test keeps this in sync)."""

SYSTEM_PROMPT = (
    "You are an assistant that completes the user's requests by calling the provided functions. "
    "Call as many functions as a request needs; when it is done (or cannot be done), reply to "
    "the user in plain text without a function call. The user may then ask something else."
)


def calls_per_user_turn(trajectory: Trajectory) -> list[int]:
    """Well-formed tool calls the model made in each user turn.

    A user turn ends with an assistant message that has no tool calls (the env then sends the
    next user message), so the turns of the trajectory split on those messages.
    """
    counts = [0]
    for turn in trajectory.turns:
        if not turn.tool_calls:
            counts.append(0)
            continue
        counts[-1] += sum(1 for call in turn.tool_calls if call.error is None)
    return counts


def _verdicts(trajectory: Trajectory, task: Task) -> list[Verdict]:
    record = trajectory.final_state or {}
    return multi_turn_verdicts(record, task.answer, calls_per_user_turn(trajectory))


def all_turns_pass(trajectory: Trajectory, task: Task) -> float:
    """1.0 if every user turn passes BFCL's state and response checks (BFCL's accuracy)."""
    verdicts = _verdicts(trajectory, task)
    return float(bool(verdicts) and all(v.ok for v in verdicts))


def turn_pass_fraction(trajectory: Trajectory, task: Task) -> float:
    """Fraction of user turns that pass (a logged metric)."""
    verdicts = _verdicts(trajectory, task)
    return sum(v.ok for v in verdicts) / len(verdicts) if verdicts else 0.0


class BFCLMultiTurnEnv(AgentEnv):
    """BFCL v4 multi-turn base; reward 1 when every user turn passes BFCL's checks.

    Args:
        num_tasks: cap on tasks per split (default: all).
        max_turns: assistant messages per episode (default 100: entries have up to 7 user
            turns and a turn may take several calls).
        **kwargs: :class:`~agentgym.env.AgentEnv` budgets.
    """

    family = "api"
    reward_kind = "verifiable"

    def __init__(self, *, num_tasks: int | None = None, max_turns: int = 100, **kwargs: Any):
        self.num_tasks = num_tasks
        self._tools: dict[str, SchemaTool] = {}
        self._instances: dict[str, Any] = {}
        self._expected: dict[str, Any] = {}
        self._owners: dict[str, str] = {}
        self._record: list[dict[str, Any]] = []
        self._results: list[str] = []
        super().__init__(max_turns=max_turns, **kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        """Entries per split, without reading the data."""
        return dict(SPLIT_SIZES)

    def load_tasks(self, split: Split) -> list[Task]:
        tasks = [_make_task(entry, truth, split) for entry, truth in load_category(CATEGORY)
                 if split_of(entry["id"]) == split]
        return tasks[: self.num_tasks] if self.num_tasks else tasks

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("all_turns_pass", all_turns_pass, 1.0),
                       Reward("turn_pass_fraction", turn_pass_fraction, 0.0)])

    def _all_tools(self) -> list[Tool]:
        """Every function of every BFCL API class, each dispatching to the episode's instances."""
        if not self._tools:
            for class_name in CLASS_DOC_FILES:
                for doc in class_docs(class_name):
                    self._tools[doc["name"]] = SchemaTool(
                        to_openai_schema(doc, name=doc["name"]), self._dispatcher(doc["name"]),
                        inline=True)  # in-memory and bounded (see backend's guards)
        return list(self._tools.values())

    def episode_tools(self, task: Task) -> Sequence[Tool]:
        """The functions of the entry's involved classes, in BFCL's order."""
        self._all_tools()
        return [self._tools[name] for name in task.tools]

    def _dispatcher(self, name: str) -> Callable[..., str]:
        """The function behind tool ``name``: run it on this episode's instances, record it."""
        def call(**arguments: Any) -> str:
            result = backend.invoke(self._instances, self._owners, name, arguments)
            self._results.append(result)
            return result
        call.__name__ = name
        return call

    async def setup_episode(self, task: Task) -> None:
        classes = task.metadata["involved_classes"]
        config = task.metadata["initial_config"]
        self._instances = backend.make_instances(classes, config)
        self._expected = backend.make_instances(classes, config)
        self._owners = backend.method_owners(classes)
        self._record, self._results = [], []

    async def teardown_episode(self) -> None:
        self._instances, self._expected = {}, {}

    async def on_reply(self, reply: ParsedReply) -> list[dict[str, Any]] | None:
        """Close the user turn (run its ground truth, snapshot both states), send the next."""
        assert self.task is not None
        index = len(self._record)
        expected_results = [backend.run_ground_truth(self._expected, self._owners, call)
                            for call in self.task.answer[index]]
        self._record.append({
            "model_state": backend.snapshot(self._instances),
            "expected_state": backend.snapshot(self._expected),
            "model_results": self._results, "expected_results": expected_results})
        self._results = []
        remaining = self.task.metadata["turns"]
        if index < len(remaining):
            return clone_json(list(remaining[index]))
        return None

    async def final_state(self) -> dict[str, Any]:
        """Per finished user turn: both states and both execution-result lists (JSON-able)."""
        return {"turns": clone_json(self._record)}


def _make_task(entry: dict[str, Any], truth: list[list[str]], split: Split) -> Task:
    """A Task from one BFCL entry: user turn 1 in the prompt, later turns in the metadata."""
    classes = list(entry["involved_classes"])
    tools = tuple(dict.fromkeys(doc["name"] for c in classes for doc in class_docs(c)))
    return Task(
        id=entry["id"], split=split, answer=clone_json(truth), tools=tools,
        prompt=({"role": "system", "content": SYSTEM_PROMPT}, *clone_json(entry["question"][0])),
        metadata={"category": CATEGORY, "involved_classes": classes,
                  "initial_config": clone_json(entry["initial_config"]),
                  "turns": clone_json(entry["question"][1:]), "path": list(entry.get("path", []))})
