"""Fakes that ship with the library, for tests of logic that needs no real model or engine.

* :class:`FakePolicy` -- a scripted policy implementing :class:`~agentgym.policy.Policy`.
  Replies come from a list (consumed in order) or a function of the chat. Token ids are the
  UTF-8 bytes of a simple chat rendering (``<role>content<end>``, the prompt ending in
  ``<assistant>``, completions ending in ``<end>``), which has the prefix property real chat
  templates must have, so token-level code (loss masks, budgets) can be tested exactly.
* :class:`ToyEnv` -- a small configurable environment: tasks, tools and rubric are arguments.
  By default it asks for sums of two numbers and offers an ``add`` tool.
* :class:`ToySolver` -- a deterministic responder for
  :class:`~agentgym.testing.stub_server.StubServer` that solves ToyEnv's sums with tool calls.

Use these instead of mocks: they obey the same contracts as the real parts.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentgym.env import AgentEnv
from agentgym.parsing import parse_assistant_message
from agentgym.policy import Completion, SamplingParams
from agentgym.rewards import Reward, Rubric, numeric_match
from agentgym.tools import Tool, tool
from agentgym.types import Split, Task

__all__ = ["FakePolicy", "ToyEnv", "ToySolver", "byte_tokens", "waiting_add"]

Reply = str | Mapping[str, Any]
Responder = Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]] | None], Reply]


def byte_tokens(text: str) -> tuple[int, ...]:
    """The fake tokenizer: one token per UTF-8 byte."""
    return tuple(text.encode("utf-8"))


_END = "<end>"


def _render_body(message: Mapping[str, Any]) -> str:
    calls = message.get("tool_calls")
    return (message.get("content") or "") + (json.dumps(calls) if calls else "")


def _render_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The fake chat template: each message as ``<role>body<end>``, then ``<assistant>``."""
    return "".join(f"<{m['role']}>{_render_body(m)}{_END}" for m in messages) + "<assistant>"


class FakePolicy:
    """A policy that answers from a script.

    Args:
        script: replies, used in order, one per ``generate`` call (all ``n`` samples get the
            same reply); a str is assistant text (Hermes tool calls inside are parsed), a dict is
            an assistant message with ``content`` and/or ``tool_calls``.
        responder: instead of a script, a function ``(messages, tools) -> reply``.
        delay_s: simulated latency per call.
        weight_version: reported on every completion; bump it to fake a weight sync.

    Attributes:
        requests: every ``(messages, tools, sampling)`` received, in order.
    """

    def __init__(self, script: Sequence[Reply] = (), *, responder: Responder | None = None,
                 delay_s: float = 0.0, weight_version: int = 0):
        if bool(script) == (responder is not None):
            raise ValueError("give exactly one of script or responder")
        self._script = list(script)
        self._responder = responder
        self.delay_s = delay_s
        self.weight_version = weight_version
        self.requests: list[tuple[list[dict[str, Any]], Any, SamplingParams]] = []

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None,
                       sampling: SamplingParams) -> list[Completion]:
        """Return ``sampling.n`` copies of the next scripted reply."""
        self.requests.append(([dict(m) for m in messages], tools, sampling))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        reply = self._next_reply(messages, tools)
        message = {"role": "assistant", "content": reply} if isinstance(reply, str) else reply
        parsed = parse_assistant_message(message)
        text = message.get("content") or ""
        completion_ids = byte_tokens(_render_body(message) + _END)
        completion = Completion(
            text=text, tool_calls=parsed.tool_calls,
            finish_reason="tool_calls" if parsed.tool_calls else "stop",
            prompt_token_ids=byte_tokens(_render_prompt(messages)),
            completion_token_ids=completion_ids,
            logprobs=tuple(-0.5 for _ in completion_ids),
            weight_version=self.weight_version)
        return [completion] * sampling.n

    def _next_reply(self, messages: Sequence[Mapping[str, Any]],
                    tools: Sequence[Mapping[str, Any]] | None) -> Reply:
        if self._responder is not None:
            return self._responder(messages, tools)
        if not self._script:
            raise IndexError("FakePolicy script exhausted")
        return self._script.pop(0)

    async def aclose(self) -> None:
        """Nothing to release."""


class ToySolver:
    """A StubServer responder for ToyEnv's sums: ``calls`` ``add`` tool calls, then the answer.

    Args:
        calls: tool calls per episode before the answer (turns = calls + 1).
        delay_s: the server's time per request (it blocks that server's loop).

    Attributes:
        questions: the question of every request served, in order (which server played what).
    """

    def __init__(self, calls: int = 2, delay_s: float = 0.0):
        self.calls, self.delay_s = calls, delay_s
        self.questions: list[str] = []

    def __call__(self, request: Mapping[str, Any]) -> str:
        if self.delay_s:
            time.sleep(self.delay_s)
        messages = request["messages"]
        question = next(m["content"] for m in messages if m["role"] == "user")
        self.questions.append(question)
        a, b = (int(x) for x in re.findall(r"\d+", question)[:2])
        if sum(m["role"] == "tool" for m in messages) < self.calls:
            call = {"name": "add", "arguments": {"a": a, "b": b}}
            return f"<tool_call>{json.dumps(call)}</tool_call>"
        return f"The answer is {a + b}."


@tool(inline=True)
def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


def waiting_add(delay_s: float) -> Tool:
    """An ``add`` tool that waits ``delay_s`` before answering, as a remote API or a sandbox
    would: an I/O-bound tool for rollout tests and benchmarks (it pickles, for Ray workers)."""

    async def add(a: float, b: float) -> float:
        """Add two numbers.

        Args:
            a: the first number.
            b: the second number.
        """
        await asyncio.sleep(delay_s)
        return a + b

    return tool(add)


def _sum_tasks(split: Split, count: int = 20) -> list[Task]:
    offset = 0 if split == "train" else 1000
    return [Task(id=f"sum-{split}-{i}", split=split, answer=float(2 * (i + offset) + 1),
                 prompt=({"role": "user",
                          "content": f"What is {i + offset} + {i + offset + 1}?"},))
            for i in range(count)]


class ToyEnv(AgentEnv):
    """A configurable env for tests: pass tasks, tools and a rubric, or take the sums default.

    Args:
        tasks: the tasks of every split (filtered by ``Task.split``); default: sums.
        tools: tools to offer instead of ``add``.
        rubric: reward; default: ``numeric_match`` on the final answer.
        follow_ups: messages the env sends after each tool-free reply, in order, before the
            episode ends (for multi-user-turn tests).
        **kwargs: :class:`~agentgym.env.AgentEnv` budgets.
    """

    family = "toy"

    def __init__(self, *, tasks: Sequence[Task] | None = None, tools: Sequence[Tool] | None = None,
                 rubric: Rubric | None = None,
                 follow_ups: Sequence[Mapping[str, Any]] = (), **kwargs: Any):
        self._given_tasks = list(tasks) if tasks is not None else None
        self._given_tools = list(tools) if tools is not None else [add]
        self._rubric = rubric or Rubric([Reward("correct", numeric_match)])
        self._follow_ups_template = list(follow_ups)
        super().__init__(**kwargs)

    def _all_tools(self) -> list[Tool]:
        return list(self._given_tools)

    def load_tasks(self, split: Split) -> list[Task]:
        if self._given_tasks is None:
            return _sum_tasks(split)
        return [t for t in self._given_tasks if t.split == split]

    @property
    def rubric(self) -> Rubric:
        return self._rubric

    async def setup_episode(self, task: Task) -> None:
        self._pending_follow_ups = list(self._follow_ups_template)

    async def on_reply(self, reply: Any) -> list[dict[str, Any]] | None:
        if not self._pending_follow_ups:
            return None
        return [dict(self._pending_follow_ups.pop(0))]
