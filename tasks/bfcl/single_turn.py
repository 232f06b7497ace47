"""agentgym/BFCLSingle-v0: BFCL v4 single-turn categories, graded by BFCL's AST check.

An episode is one BFCL entry: one user message and the entry's function docs as tools. The
model's first assistant message is its answer and ends the episode; its tool calls are never
executed (a tool, if run at all, only acknowledges). The calls are matched against BFCL's possible
answers by :func:`~.checker.check_calls`. See README.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from agentgym.conformance import constant_reply
from agentgym.env import AgentEnv
from agentgym.rewards import Reward, Rubric
from agentgym.tasks.bfcl.checker import check_calls
from agentgym.tasks.bfcl.data import SINGLE_TURN_CATEGORIES, load_category, split_of
from agentgym.tasks.bfcl.schemas import SchemaTool, to_openai_schema, tool_name
from agentgym.tools import Tool
from agentgym.types import Split, Task, Trajectory, clone_json

__all__ = ["DEFAULT_CATEGORIES", "BFCLSingleEnv", "ast_match", "made_calls", "reference_calls"]

DEFAULT_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")
"""BFCL's non-live Python single-turn categories; the live ones are opt-in."""

SPLIT_SIZES: dict[str, int] = {"train": 820, "eval": 180}
"""Entries per split of DEFAULT_CATEGORIES in bfcl-eval 2026.3.23 (a test keeps this in sync)."""

SYSTEM_PROMPT = (
    "You are an expert in composing functions. Answer the user's request by calling the "
    "provided functions (several calls at once if the request needs them)."
)

ACKNOWLEDGEMENT = "Call recorded."


def _answer_calls(trajectory: Trajectory) -> list[Any] | None:
    """The first assistant message's calls as (name, arguments), None if any is malformed."""
    if not trajectory.turns:
        return []
    calls = trajectory.turns[0].tool_calls
    if any(call.error is not None for call in calls):
        return None  # BFCL: an answer that does not decode fails as a whole
    return [(call.name, dict(call.arguments)) for call in calls]


def ast_match(trajectory: Trajectory, task: Task) -> float:
    """1.0 if the answer's calls match BFCL's possible answers (BFCL's AST accuracy)."""
    calls = _answer_calls(trajectory)
    if calls is None:
        return 0.0
    verdict = check_calls(calls, task.metadata["functions"], task.answer,
                          task.metadata["category"])
    return float(verdict.ok)


def made_calls(trajectory: Trajectory, task: Task) -> float:
    """1.0 if the answer holds at least one well-formed call (a logged metric)."""
    calls = _answer_calls(trajectory)
    return float(bool(calls))


def question_key(entry: dict[str, Any]) -> str:
    """Split key: the question itself, so identical questions never straddle the splits."""
    return json.dumps(entry["question"], sort_keys=True, ensure_ascii=False)


class BFCLSingleEnv(AgentEnv):
    """BFCL single-turn function calling; reward 1 when the calls match a possible answer.

    Args:
        categories: BFCL categories to draw from (any of ``SINGLE_TURN_CATEGORIES``).
        num_tasks: cap on tasks per split (default: all).
        **kwargs: :class:`~agentgym.env.AgentEnv` budgets (the first reply ends the episode).
    """

    family = "api"
    reward_kind = "verifiable"

    def __init__(self, *, categories: Sequence[str] = DEFAULT_CATEGORIES,
                 num_tasks: int | None = None, max_turns: int = 1, **kwargs: Any):
        unknown = sorted(set(categories) - set(SINGLE_TURN_CATEGORIES))
        if unknown or not categories:
            raise ValueError(f"unknown BFCL categories {unknown}; choose from "
                             f"{list(SINGLE_TURN_CATEGORIES)}")
        self.categories = tuple(categories)
        self.num_tasks = num_tasks
        self._tool_cache: dict[str, list[Tool]] = {}
        super().__init__(max_turns=max_turns, **kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        """Entries per split with the default categories, without reading the data."""
        return dict(SPLIT_SIZES)

    def load_tasks(self, split: Split) -> list[Task]:
        tasks = [_make_task(entry, truth, category, split)
                 for category in self.categories for entry, truth in load_category(category)
                 if split_of(question_key(entry)) == split]
        return tasks[: self.num_tasks] if self.num_tasks else tasks

    @property
    def rubric(self) -> Rubric:
        return Rubric([Reward("ast_match", ast_match, 1.0),
                       Reward("made_calls", made_calls, 0.0)])

    def _all_tools(self) -> list[Tool]:
        """No env-wide tools: each entry brings its own functions."""
        return []

    def episode_tools(self, task: Task) -> Sequence[Tool]:
        """The entry's functions; running one only acknowledges it."""
        if task.id not in self._tool_cache:
            tools: dict[str, Tool] = {}
            for doc in task.metadata["functions"]:
                schema = to_openai_schema(doc)
                name = schema["function"]["name"]
                tools.setdefault(name, SchemaTool(schema, _acknowledge, inline=True))
            self._tool_cache[task.id] = list(tools.values())
        return self._tool_cache[task.id]

    async def astep(self, action: Any) -> tuple[list[dict[str, Any]], float, bool, bool,
                                                dict[str, Any]]:
        """The first assistant message is the answer: the episode ends with it."""
        if self.task is not None:
            self.end_episode()
        return await super().astep(action)


    def demonstrate(self, task: Task) -> list[dict[str, Any]]:
        """The prompt, then one reply with the reference calls (:func:`reference_calls`) as
        Hermes ``<tool_call>`` blocks, and their acknowledgements."""
        calls = reference_calls(task)
        text = "\n".join("<tool_call>\n" + json.dumps({"name": name, "arguments": args})
                         + "\n</tool_call>" for name, args in calls)
        return [*clone_json(list(task.prompt)), {"role": "assistant", "content": text},
                *({"role": "tool", "name": name, "content": ACKNOWLEDGEMENT}
                  for name, _ in calls)]

    def adversarial_replies(self, task: Task) -> dict[str, Callable[..., Any]]:
        """BFCL-specific hacks for the conformance suite: the reference calls sprayed among
        decoys, sent in forms a lenient parser would accept, or written as text."""
        gold = reference_calls(task)
        decoys = [(name, {k: _perturb(v) for k, v in args.items()}) for name, args in gold]
        hermes = "".join(f"<tool_call>{json.dumps({'name': n, 'arguments': a})}</tool_call>"
                         for n, a in gold)
        replies: dict[str, Any] = {
            "call spray": _message([*decoys, *gold, *gold]),
            "python-literal calls": hermes.replace('"', "'"),
            "trailing-comma calls": hermes.replace("}}</tool_call>", "},}</tool_call>"),
            "calls as text": "\n".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in a.items())})"
                                       for n, a in gold),
        }
        return {name: constant_reply(reply) for name, reply in replies.items()}


def _perturb(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 7
    return f"{value}x" if isinstance(value, str) else None


def _message(calls: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"s{i}", "type": "function",
         "function": {"name": name, "arguments": json.dumps(args)}}
        for i, (name, args) in enumerate(calls)]}


def _acknowledge(**arguments: Any) -> str:
    return ACKNOWLEDGEMENT


def _make_task(entry: dict[str, Any], truth: list[Any], category: str, split: Split) -> Task:
    """A Task from one BFCL entry (its own system message, if any, replaces ours)."""
    messages = clone_json(entry["question"][0])
    if not messages or messages[0].get("role") != "system":
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *messages]
    return Task(
        id=entry["id"], split=split, prompt=tuple(messages), answer=clone_json(truth),
        tools=tuple(dict.fromkeys(tool_name(f["name"]) for f in entry["function"])),
        metadata={"category": category, "functions": clone_json(entry["function"])})


def reference_calls(task: Task) -> list[tuple[str, dict[str, Any]]]:
    """A correct answer built from the possible answers, as ``(tool name, arguments)`` pairs:
    the first allowed value of each parameter (optional ones left out). For oracle policies."""
    def first(values: Sequence[Any]) -> Any:
        return next((v for v in values if v != ""), None)

    def pick(values: Sequence[Any]) -> Any:
        value = first(values)
        if isinstance(value, dict):
            return {k: first(v) for k, v in value.items() if first(v) is not None}
        if isinstance(value, list) and value and all(isinstance(d, dict) for d in value):
            return [{k: first(v) for k, v in d.items() if first(v) is not None} for d in value]
        return value

    calls = []
    for answer in task.answer:
        (name, params), = answer.items()
        doc = next((f for f in task.metadata["functions"] if f["name"] == name), {})
        required = (doc.get("parameters") or {}).get("required", [])
        args = {p: pick(v) for p, v in params.items()
                if ("" not in v or p in required) and any(x != "" for x in v)}
        calls.append((tool_name(name), args))
    return calls
