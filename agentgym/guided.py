"""LLM-guided exploration: with probability ``p_explore`` a guide writes the turn, else the policy.

    a_t = a_guide(s_t)   with probability p_explore(step) = p_0 * decay^(step - 1)
    a_t ~ pi_theta(.|s_t) otherwise

:class:`GuidedPolicy` wraps any :class:`~agentgym.policy.Policy`; the guide is any Policy too:
an OpenAI-compatible endpoint (:class:`~agentgym.policies.openai_client.OpenAIPolicy`), the
embedded engine with a hint in its system prompt (:class:`HintedGuide`), or the environment's
reference solution (:class:`DemonstrationGuide`, from ``env.demonstrate(task)``). The choice is
drawn per turn from a seeded RNG keyed by (guided seed, the episode's sampling seed, the turn's
position in the chat), so a rerun picks the same turns whatever the episodes' interleaving.

Guide turns are written into the policy's own tokens (the guide's text, tool calls as Hermes
``<tool_call>`` markup, encoded with the policy's tokenizer and closed by its end-of-turn
token) and tagged ``weight_version == GUIDE_VERSION`` on the :class:`~agentgym.types.Turn`
(:func:`guide_turn_indices`), so they are told apart in trajectories and samples.

Off-policy correction (``correction`` in the ``guide:`` block). Guide tokens keep loss mask 1:
masking them would leave the policy no gradient towards the guide's actions, so in the
sparse-reward case this exists for (a policy that never writes a tool call) it could never learn
to write one. They are recorded with the behaviour logprob of a deterministic proposal,
log mu(a_t) = 0, and :func:`~agentgym.tokens.build_token_sequence` marks them
(``TokenSequence.guide_mask``, ``Batch.guide``); the trainer's ``correction`` decides what that
logprob becomes in GRPO's ratio rho_t = pi_theta(a_t | s_t) / pi_old(a_t | s_t):

* ``as_policy`` (the default): the guide's tokens are treated as if the policy had sampled them.
  When the update begins, their old logprob is the current policy's own, detached:
  log pi_old(a_t) := sg[log pi_theta(a_t)] (``trainers/losses.as_policy_logp``), so

      rho_t = 1 at the first pass,   grad min(rho_t A, clip(rho_t) A) = A * grad log pi_theta(a_t)

  for either sign of A: the plain policy-gradient term at full weight, i.e. for A > 0 SFT on the
  guide's tokens scaled by A (later passes, ``num_iterations > 1``, clip against that pi_old as
  on the policy's own tokens; with ``tis_cap`` the truncated-IS weight of a guide token is 1).
  Biased towards the guide: on-policy, E_{a ~ pi}[A grad log pi(a)] weights an action by
  pi(a), while a guide action here has weight 1 whatever pi(a), so the update pulls pi towards
  the guide. That is the point while p_explore decays: the bias is confined to the guide's turns,
  a share p_0 * decay^(step - 1) of them, and goes with it. For A < 0 the guide's tokens are
  pushed down like the policy's own; when every episode of a group shares a guide turn, its
  terms cancel (the group's advantages sum to 0; exactly so for ``loss_type`` dapo and
  dr_grpo, which weigh every token alike), so a guide turn is pushed up only by the reward it
  adds over the group's other episodes. PPO always trains guide tokens this way (its pi_old is the
  trainer's recomputation on every token) and refuses ``importance``.
* ``importance``: log mu = 0 stays the old logprob, so on a guide token

      rho_t = pi_theta(a_t | s_t) / mu(a_t | s_t) = pi_theta(a_t | s_t)   (<= 1)

  and the clipped objective gives, for A > 0, A * rho_t * grad log pi_theta = A * grad
  pi_theta(a_t); for A < 0 the clip (rho_t below 1 - epsilon) zeroes it, so a failed guided
  episode never pushes the policy away from the guide. The weight pi_theta(a_t) is the one the
  on-policy gradient gives that action, so this stays close to the policy's own gradient: the
  exact behaviour probability of a guide turn is b = p + (1 - p) * pi_old(a) <= 1, so mu = 1
  errs small (the weight pi/1 is b times the exact pi/b, b >= p), never large. Its cost is the
  same property: where the guide is needed, pi_theta(a_t) is tiny (SmolLM2-135M gives the first
  token of ``<tool_call>`` about 0.003 on Calculator-v0 without demos), and A * grad pi =
  pi * (A * grad log pi) is that factor smaller than ``as_policy``'s term: the weight scales
  the guide's action back to how often the policy itself would take it, so the guided turns
  barely move the policy (measured: README, "guided exploration").

The policy's own turns in a guided episode keep their sampled logprobs (on-policy) under either
correction, and the env reward credits the whole episode.

A guide that fails (server down, no demonstration, a bad reply) raises :class:`GuideError` (a
:class:`~agentgym.errors.PolicyError`): the rollout engine records the episode as an infra
error, never a 0; a guide that hangs runs into the engine's per-turn deadline like the policy.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentgym.errors import GuideError
from agentgym.policies.chat_tokens import prompt_ids_for
from agentgym.policy import Completion, Policy, SamplingParams
from agentgym.types import GUIDE_VERSION, Task, Trajectory

__all__ = ["CORRECTIONS", "GUIDE_VERSION", "DemonstrationGuide", "GuideError", "GuideSettings",
           "GuidedPolicy", "HintedGuide", "end_of_turn_id", "guide_correction",
           "guide_turn_indices", "guided_policy", "settings_from_dict", "written_turn"]

CORRECTIONS = ("as_policy", "importance")
"""The off-policy corrections of guide tokens (module docstring)."""


def settings_from_dict(cls: type[Any], values: Mapping[str, Any], what: str) -> Any:
    """``cls(**values)`` for a settings dataclass, refusing keys it does not have (a config typo
    is an error, not ignored); ``what`` names the settings in the message."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; known: {sorted(known)}")
    return cls(**values)


def guide_correction(guide: GuideSettings | Mapping[str, Any] | None) -> str | None:
    """The ``correction`` of a trainer config's ``guide:`` block (None: no guide)."""
    if guide is None:
        return None
    settings = guide if isinstance(guide, GuideSettings) else GuideSettings.from_dict(guide)
    return settings.correction


def guide_turn_indices(trajectory: Trajectory) -> list[int]:
    """Indices of the turns of ``trajectory`` that the guide wrote."""
    return [t.index for t in trajectory.turns if t.weight_version == GUIDE_VERSION]


@dataclass(frozen=True)
class GuideSettings:
    """The ``guide:`` block of a trainer config.

    Attributes:
        kind: ``"demonstration"`` (the env's ``demonstrate(task)``), ``"endpoint"`` (an
            OpenAI-compatible server: ``base_url``, ``model``) or ``"hint"`` (the trained policy
            itself with ``hint`` appended to its system prompt).
        p_explore: probability that the guide writes a turn at step 1.
        decay: p_explore is multiplied by this every step (1: constant).
        seed: seeds the per-turn choice.
        correction: how the trainer weighs guide tokens: ``"as_policy"`` (as if the policy
            had sampled them: ratio 1, gradient A * grad log pi) or ``"importance"`` (ratio
            pi_theta / mu with mu = 1: gradient A * grad pi); see the module docstring.
        base_url, model, hint: per kind, see above.
    """

    kind: str = "demonstration"
    p_explore: float = 0.5
    decay: float = 1.0
    seed: int = 0
    correction: str = "as_policy"
    base_url: str | None = None
    model: str = "guide"
    hint: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("demonstration", "endpoint", "hint"):
            raise ValueError(f"guide kind must be demonstration, endpoint or hint, not "
                             f"{self.kind!r}")
        if not 0.0 <= self.p_explore <= 1.0 or not 0.0 < self.decay <= 1.0:
            raise ValueError("guide p_explore must be in [0, 1] and decay in (0, 1]")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"guide correction must be one of {list(CORRECTIONS)} (as_policy: "
                             f"ratio 1 on guide tokens; importance: ratio pi_theta / mu, mu = 1), "
                             f"not {self.correction!r}")
        if self.kind == "endpoint" and not self.base_url:
            raise ValueError("guide kind 'endpoint' needs base_url")
        if self.kind == "hint" and not self.hint:
            raise ValueError("guide kind 'hint' needs hint (the text added to the system prompt)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GuideSettings:
        """Settings from a config mapping; unknown keys are an error (a typo is not ignored)."""
        return settings_from_dict(cls, values, "guide")

    def p_at(self, step: int) -> float:
        """p_explore of training step ``step`` (1-based): p_0 * decay^(step - 1)."""
        return self.p_explore * self.decay ** max(step - 1, 0)


class DemonstrationGuide:
    """A guide that replays the env's reference solution (``env.demonstrate(task)``).

    The task is recognised by its prompt (the chat starts with it); the reply is the
    demonstration's next assistant message after as many assistant turns as the chat already
    has past the prompt.
    """

    def __init__(self, env: Any):
        self.env = env
        self._by_prompt: dict[str, Task] | None = None

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None,
                       sampling: SamplingParams) -> list[Completion]:
        task = self._task_of(messages)
        try:
            demo = self.env.demonstrate(task)
        except NotImplementedError as exc:
            raise GuideError(f"{self.env.env_id} has no demonstrations") from exc
        done = sum(m.get("role") == "assistant" for m in messages[len(task.prompt):])
        replies = [m for m in demo[len(task.prompt):] if m.get("role") == "assistant"]
        if done >= len(replies):
            raise GuideError(f"the demonstration of {task.id} has {len(replies)} assistant "
                             f"turns; the chat already has {done}")
        return [Completion(text=_as_text(replies[done]))] * sampling.n

    async def aclose(self) -> None:
        """Nothing to release (the env belongs to the caller)."""

    def _task_of(self, messages: Sequence[Mapping[str, Any]]) -> Task:
        if self._by_prompt is None:
            self._by_prompt = {_key(t.prompt): t for t in self.env.tasks}
        for length in range(len(messages), 0, -1):
            task = self._by_prompt.get(_key(messages[:length]))
            if task is not None:
                return task
        raise GuideError("no task of the demonstration env starts this chat")


class HintedGuide:
    """A policy asked with ``hint`` appended to the system prompt (e.g. the embedded engine
    told how to use the tools); its reply is the guide's proposal."""

    def __init__(self, policy: Policy, hint: str):
        self.policy, self.hint = policy, hint

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None,
                       sampling: SamplingParams) -> list[Completion]:
        chat = [dict(m) for m in messages]
        if chat and chat[0].get("role") == "system":
            chat[0]["content"] = f"{chat[0].get('content') or ''}\n\n{self.hint}"
        else:
            chat.insert(0, {"role": "system", "content": self.hint})
        return await self.policy.generate(chat, tools, sampling)

    async def aclose(self) -> None:
        """The wrapped policy is the caller's to close."""


class GuidedPolicy:
    """``policy`` with a ``guide`` that writes each turn with probability ``p_explore``.

    Args:
        policy: the policy being trained (its tokenizer encodes guide turns).
        guide: any Policy (endpoint, :class:`HintedGuide`, :class:`DemonstrationGuide`).
        p_explore: probability that the guide writes a turn (change it with :meth:`set_p`).
        seed: seeds the per-turn choice.
        tokenizer: the policy's tokenizer (default: ``policy.tokenizer``); without one, guide
            turns carry text only (fine for eval, dropped by the trainer).

    Attributes:
        guide_turns, policy_turns: turns written by each since the last :meth:`reset_counts`.
    """

    def __init__(self, policy: Policy, guide: Policy, p_explore: float, seed: int = 0,
                 tokenizer: Any = None):
        self.policy, self.guide, self.seed = policy, guide, seed
        self.set_p(p_explore)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(policy, "tokenizer", None)
        self.accepts_prefix_ids = bool(getattr(policy, "accepts_prefix_ids", False))
        self._eos = end_of_turn_id(policy, self.tokenizer)
        self._fallback = random.Random(seed)
        self._lock = threading.Lock()
        self.guide_turns = self.policy_turns = 0

    def set_p(self, p_explore: float) -> None:
        """Use ``p_explore`` for turns from now on (the trainer's per-step decay)."""
        if not 0.0 <= p_explore <= 1.0:
            raise ValueError(f"p_explore must be in [0, 1], got {p_explore}")
        self.p_explore = p_explore

    def reset_counts(self) -> None:
        """Zero :attr:`guide_turns` and :attr:`policy_turns`."""
        self.guide_turns = self.policy_turns = 0

    def guide_writes(self, messages: Sequence[Mapping[str, Any]],
                     sampling: SamplingParams) -> bool:
        """Whether the guide writes the turn that answers ``messages`` (seeded draw)."""
        if sampling.seed is None:
            with self._lock:
                draw = self._fallback.random()
        else:
            draw = random.Random(f"{self.seed}:{sampling.seed}:{len(messages)}").random()
        return draw < self.p_explore

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None, sampling: SamplingParams,
                       *, prefix_ids: Sequence[int] | None = None) -> list[Completion]:
        """The guide's turn (tagged :data:`GUIDE_VERSION`) or the policy's.

        Raises:
            GuideError: the guide failed or its reply could not be encoded.
            PolicyError: the policy failed.
        """
        if not self.guide_writes(messages, sampling):
            self.policy_turns += 1
            extra = {"prefix_ids": prefix_ids} if prefix_ids and self.accepts_prefix_ids else {}
            return await self.policy.generate(messages, tools, sampling, **extra)
        try:
            proposals = await self.guide.generate(messages, tools,
                                                  dataclasses.replace(sampling, n=1))
        except GuideError:
            raise
        except Exception as exc:  # any guide failure is the episode's infra error
            raise GuideError(f"guide failed: {type(exc).__name__}: {exc}") from exc
        if not proposals:
            raise GuideError("guide returned no completion")
        self.guide_turns += 1
        return [self._in_policy_tokens(proposals[0], messages, tools, prefix_ids)] * sampling.n

    async def aclose(self) -> None:
        """Close the guide and the policy."""
        await self.guide.aclose()
        await self.policy.aclose()

    def _in_policy_tokens(self, proposal: Completion, messages: Sequence[Mapping[str, Any]],
                          tools: Sequence[Mapping[str, Any]] | None,
                          prefix_ids: Sequence[int] | None) -> Completion:
        try:
            return written_turn(proposal, self.tokenizer, self._eos, messages, tools,
                                prefix_ids if self.accepts_prefix_ids else None, GUIDE_VERSION)
        except Exception as exc:
            raise GuideError(f"could not encode the guide's turn: {exc}") from exc


def written_turn(proposal: Completion, tokenizer: Any, eos_id: int | None,
                 messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None,
                 prefix_ids: Sequence[int] | None, version: str) -> Completion:
    """Another model's reply as a turn in the trained policy's tokens: its text (tool calls as
    ``<tool_call>`` markup) encoded with ``tokenizer`` and closed by ``eos_id``, the prompt
    rendered (or continued from ``prefix_ids``) as the policy would, logprobs 0.0 (log mu of a
    deterministic proposal), ``weight_version=version``. Without a tokenizer: text only."""
    text = _as_text({"content": proposal.text,
                     "tool_calls": [c.to_openai() for c in proposal.tool_calls
                                    if c.error is None]})
    if tokenizer is None:
        return Completion(text=text, weight_version=version)
    prompt = prompt_ids_for(tokenizer, messages, tools, prefix_ids,
                            {eos_id} if eos_id is not None else set())
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if eos_id is not None:
        ids.append(eos_id)
    return Completion(text=text, prompt_token_ids=tuple(prompt), completion_token_ids=tuple(ids),
                      logprobs=(0.0,) * len(ids), weight_version=version)


def guided_policy(settings: GuideSettings | Mapping[str, Any], policy: Policy,
                  make_env: Callable[[], Any] | None = None) -> GuidedPolicy:
    """A :class:`GuidedPolicy` around ``policy`` from a config's ``guide:`` block
    (``make_env`` builds the env a demonstration guide replays)."""
    if not isinstance(settings, GuideSettings):
        settings = GuideSettings.from_dict({k: v for k, v in settings.items()})
    if settings.kind == "demonstration":
        if make_env is None:
            raise ValueError("a demonstration guide needs the env factory")
        guide: Policy = DemonstrationGuide(make_env())
    elif settings.kind == "hint":
        guide = HintedGuide(policy, settings.hint or "")
    else:
        from agentgym.policies.openai_client import OpenAIPolicy  # httpx, only when asked

        guide = OpenAIPolicy(settings.base_url or "", settings.model)
    return GuidedPolicy(policy, guide, settings.p_explore, settings.seed)


# --- helpers --------------------------------------------------------------------------------

def _key(messages: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([[m.get("role"), m.get("content") or ""] for m in messages])


def _as_text(message: Mapping[str, Any]) -> str:
    """An assistant message as text, native tool calls written as Hermes ``<tool_call>``
    blocks (the markup agentgym parses and the default model's template uses)."""
    text = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise GuideError(f"guide tool call arguments are not JSON: {arguments!r}") \
                    from exc
        body = json.dumps({"name": function.get("name", ""), "arguments": arguments})
        text = f"{text}\n<tool_call>\n{body}\n</tool_call>".lstrip("\n")
    return text


def end_of_turn_id(policy: Any, tokenizer: Any) -> int | None:
    """The token that ends an assistant turn for ``policy`` (``<|im_end|>`` for ChatML)."""
    if tokenizer is None:
        return None
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token) if hasattr(
            tokenizer, "convert_tokens_to_ids") else None
        if isinstance(token_id, int) and token_id != getattr(tokenizer, "unk_token_id", None):
            return token_id
    return getattr(tokenizer, "eos_token_id", None)
