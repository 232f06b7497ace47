"""The policy protocol: what every model backend (vLLM, a hosted API, the embedded engine,
``agentgym.testing.FakePolicy``) offers to the rollout engine, the trainer and eval.

A policy takes a chat, the tool schemas and sampling settings, and returns ``n`` completions.
Each completion carries what training needs without re-tokenising: the prompt's token ids, the
completion's token ids, one sampling logprob per completion token, and the weight version that
produced it. Backends that cannot return tokens (some hosted APIs) leave those fields empty; such
completions are fine for eval and cannot be trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from agentgym.types import ToolCall

__all__ = ["Completion", "Policy", "SamplingParams", "restart_wait_hook"]

restart_wait_hook: ContextVar[Callable[[bool], None] | None] = ContextVar(
    "restart_wait_hook", default=None)
"""Set by a caller that runs a deadline around policy requests (the rollout engine's per-turn
deadline). A policy that waits for its server to come back (a supervised vLLM restarting, see
:func:`agentgym.policies.vllm_server.wait_until_serving`) calls it with True when the wait starts
and with False when it ends, so that deadline can pause meanwhile."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    Attributes:
        n: completions per request (GRPO draws a group of G).
        temperature: softmax temperature; 0 is greedy.
        top_p: nucleus sampling mass.
        max_tokens: completion length cap.
        stop: strings that end a completion (not included in it).
        seed: per-request seed, for reproducible sampling where the backend supports it.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError("n and max_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


@dataclass(frozen=True)
class Completion:
    """One sampled assistant reply.

    Attributes:
        text: the generated text (tool-call markup included when calls were written as text).
        tool_calls: calls parsed from the reply (natively or from text), malformed ones included.
        finish_reason: ``"stop"``, ``"length"`` or ``"tool_calls"``.
        prompt_token_ids: the exact tokens the model was conditioned on.
        completion_token_ids: the tokens it generated.
        logprobs: one logprob per completion token under the sampling policy.
        weight_version: which weights produced it (bumped by every weight sync).
    """

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    prompt_token_ids: tuple[int, ...] = ()
    completion_token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    weight_version: str | int | None = None

    def to_action(self) -> dict[str, Any]:
        """The env action for this completion: the message plus its token-level data."""
        action: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls and all(c.error is None for c in self.tool_calls) and "<tool_call>" \
                not in self.text:
            action["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        for key in ("prompt_token_ids", "completion_token_ids", "logprobs"):
            if getattr(self, key):
                action[key] = list(getattr(self, key))
        if self.weight_version is not None:
            action["weight_version"] = self.weight_version
        return action


@runtime_checkable
class Policy(Protocol):
    """Anything that turns a chat into completions.

    Token-level continuation is optional: a policy whose class sets ``accepts_prefix_ids =
    True`` takes ``generate(..., prefix_ids=ids)``, where ``ids`` are the previous turn's prompt
    and completion token ids and stand for the chat up to its last assistant message. The
    rollout engine passes them on every later turn of an episode, so the policy continues from
    the tokens it sampled instead of re-tokenizing its own text (see
    :mod:`agentgym.policies.chat_tokens`).
    """

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None,
                       sampling: SamplingParams) -> list[Completion]:
        """Sample ``sampling.n`` completions for ``messages`` with ``tools`` offered.

        Raises:
            PolicyError: the backend failed (connection, HTTP status, template drift).
        """
        ...

    async def aclose(self) -> None:
        """Release connections, servers or memory held by the policy (idempotent)."""
        ...
