"""The records that flow through agentgym: messages, tool calls, tasks, turns, trajectories.

All are frozen dataclasses. Sequences are tuples so a record can be shared between the env, the
rollout engine and the trainer without anybody mutating it under the others' feet. Chat messages
cross the env boundary as plain OpenAI message dicts (that is what chat templates and HTTP APIs
take); :class:`Message` is the typed view with ``to_dict``/``from_dict`` for code that wants one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentgym.errors import ErrorRecord

Role = Literal["system", "user", "assistant", "tool"]
Split = Literal["train", "eval"]

__all__ = ["GUIDE_VERSION", "Message", "Role", "Split", "Task", "ToolCall", "ToolResult",
           "Trajectory", "Turn"]

GUIDE_VERSION = "guide"
"""``Turn.weight_version`` of a turn an exploration guide wrote (:mod:`agentgym.guided`), not the
policy: its logprobs are not the policy's sampling logprobs."""


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for.

    Attributes:
        id: the call id (from the server, or generated for text-parsed calls).
        name: the tool name as the model wrote it ("" when it could not be parsed).
        arguments: the decoded arguments object.
        error: why the call could not be parsed, or None for a well-formed call. A call with an
            error is answered with a tool message that explains it; it is never executed.
    """

    id: str
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry for this call (arguments JSON-encoded)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(dict(self.arguments))},
        }


@dataclass(frozen=True)
class ToolResult:
    """What a tool call returned, as the model will see it.

    Attributes:
        call_id: id of the :class:`ToolCall` this answers.
        name: the tool name.
        content: the text of the tool message (already neutralised of special tokens).
        error_type: the error class name when the call failed (model-caused), else None.
        duration_s: wall time spent running the tool; excluded from equality.
    """

    call_id: str
    name: str
    content: str
    error_type: str | None = None
    duration_s: float = field(default=0.0, compare=False)

    def to_message(self) -> dict[str, Any]:
        """The OpenAI ``tool`` message for this result."""
        return {"role": "tool", "tool_call_id": self.call_id, "name": self.name,
                "content": self.content}


@dataclass(frozen=True)
class Message:
    """A typed chat message; converts to and from the OpenAI message dict."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI message dict, omitting empty optional fields."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class Task:
    """One problem of an environment's dataset.

    Attributes:
        id: stable id, unique within the environment (e.g. ``"HumanEval/12"``).
        prompt: the opening messages (system and user) as OpenAI message dicts.
        answer: the ground truth the reward checks against (any JSON-able value).
        split: ``"train"`` or ``"eval"``; the two never overlap.
        tools: names of the tools offered for this task (empty = every tool of the env).
        metadata: anything else the env or reward needs (difficulty, source, hidden tests...).
    """

    id: str
    prompt: tuple[Mapping[str, Any], ...]
    answer: Any = None
    split: Split = "train"
    tools: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One assistant step of an episode and what the env did with it.

    Token fields are filled when the policy returned them (token-in/token-out); they stay empty
    for policies that only return text.

    Attributes:
        index: 0-based turn number.
        assistant: the assistant message dict as the env received it.
        tool_calls: the parsed calls (including malformed ones, with their error).
        tool_results: one result per call, in call order.
        prompt_token_ids: the prompt the policy saw for this turn.
        completion_token_ids: the tokens it generated.
        logprobs: one sampling logprob per completion token.
        weight_version: the policy weights that produced the turn (:data:`GUIDE_VERSION`: a
            guide wrote it).
    """

    index: int
    assistant: Mapping[str, Any]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    prompt_token_ids: tuple[int, ...] = ()
    completion_token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    weight_version: str | int | None = None


@dataclass(frozen=True)
class Trajectory:
    """A finished (or failed) episode: everything needed to score, train on, or audit it.

    Attributes:
        env_id: the registered id of the environment that produced it.
        task_id: the task's id.
        messages: the whole chat, prompt included, as OpenAI message dicts.
        turns: the assistant steps in order.
        terminated: the episode reached its natural end (answer given, task over).
        truncated: a budget (turns, tokens, wall time) ran out first.
        reward: the weighted total, or None when scoring failed or never ran.
        reward_components: every named component, weighted or logged (weight 0).
        turn_rewards: the part of ``reward`` that belongs to single turns, one value per turn
            (weighted potential-based shaping terms; see ``agentgym.rewards.shaping``): a
            token-level learner (PPO) gives ``turn_rewards[k]`` at turn k's end and the rest of
            ``reward`` at the episode's end; empty when no component has per-turn terms.
        final_state: a JSON-able snapshot of the env's world at the end (for state checks).
        error: what spoiled the episode (an infra failure, or a scoring failure), or None.
    """

    env_id: str
    task_id: str
    messages: tuple[Mapping[str, Any], ...]
    turns: tuple[Turn, ...] = ()
    terminated: bool = False
    truncated: bool = False
    reward: float | None = None
    reward_components: Mapping[str, float] = field(default_factory=dict)
    turn_rewards: tuple[float, ...] = ()
    final_state: Any = None
    error: ErrorRecord | None = None

    @property
    def final_message(self) -> Mapping[str, Any] | None:
        """The last assistant message, or None if the policy never replied."""
        for message in reversed(self.messages):
            if message.get("role") == "assistant":
                return message
        return None

    @property
    def final_text(self) -> str:
        """The content of the last assistant message ('' if none)."""
        message = self.final_message
        return (message or {}).get("content") or ""


_JSON_LEAVES = frozenset({str, int, float, bool, type(None)})


def clone_json(value: Any) -> Any:
    """Deep copy of JSON-like data (mappings, lists, tuples -> lists); leaves are shared.

    Several times faster than :func:`copy.deepcopy` on chat messages, which matters because an
    env hands out a fresh copy of the whole chat on every step.
    """
    kind = type(value)
    if kind in _JSON_LEAVES:
        return value
    if kind is dict:
        return {k: clone_json(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [clone_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: clone_json(v) for k, v in value.items()}
    return value


def as_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Deep-copy a chat into fresh dicts (envs must not hand out shared objects)."""
    return tuple(clone_json(m) for m in messages)
