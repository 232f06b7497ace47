"""Hierarchical agents: a planner writes sub-goals, an executor solves each with the env's tools.

One episode is one chat::

    system (+ PLAN_NOTE) | user task | planner: "1. ...\\n2. ..." | user: "Sub-goal 1 of 2: ..."
    | executor: tool call | tool result | executor: reply | user: "Sub-goal 2 of 2: ..." | ...

* :func:`with_subgoals` wraps an env: the first reply without tool calls is the plan; its
  numbered (or bulleted) lines become the sub-goals, handed to the executor one at a time as user
  messages; each executor reply without tool calls moves to the next sub-goal, and after the last
  one the env goes on as it would have (its own ``on_reply``, usually the end: the last reply is
  the answer the rubric scores). The turn budget grows by ``1 + max_subgoals``.
* :class:`HierarchicalPolicy` routes each turn: the planner until the plan is written, the
  executor after. Both see the same chat (the system prompt extended by :data:`PLAN_NOTE`), so
  every turn's prompt extends the previous turn's tokens, as training needs.
* One level is trained (``train_level``), the other is fixed (an endpoint). The fixed level's
  replies are re-encoded in the trained policy's tokens (:func:`~agentgym.guided.written_turn`)
  so the trajectory keeps both levels' tokens; :func:`level_sequence` gives the token sequence
  with loss mask 1 on the trained level's tokens only, and :func:`trained_view` the trajectory
  the trainer sees (the fixed level's turns folded into the context, where
  :func:`~agentgym.tokens.build_token_sequence` masks them like tool results). From the trained
  level's viewpoint the fixed level is part of the environment, so masking it is exact: its
  tokens were not sampled by the trained policy and carry no gradient. The episode's reward is
  the env's, and GRPO's advantage of it trains the trained level's tokens.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentgym.errors import PolicyError
from agentgym.guided import end_of_turn_id, settings_from_dict, written_turn
from agentgym.policy import Completion, Policy, SamplingParams
from agentgym.rollout import Group
from agentgym.tokens import TokenSequence, build_token_sequence
from agentgym.types import Trajectory

__all__ = ["LEVELS", "PLAN_NOTE", "SUBGOAL_PREFIX", "HierarchicalPolicy", "HierarchySettings",
           "hierarchical_parts", "level_sequence", "parse_subgoals", "trained_groups",
           "trained_view", "turn_levels", "with_subgoals"]

Level = Literal["planner", "executor"]
LEVELS: tuple[Level, ...] = ("planner", "executor")

PLAN_NOTE = ("Planner: write numbered sub goals, one per line. "
             "Executor: solve each sub goal with the tools.")
"""Added to the system prompt of every turn (both levels see the same chat)."""

SUBGOAL_PREFIX = "Sub-goal "
"""Start of the user message that hands the executor a sub-goal."""

_ITEM = re.compile(r"^\s*(?:\d+[.):]|[-*])\s+(.+?)\s*$")


@dataclass(frozen=True)
class HierarchySettings:
    """The ``hierarchy:`` block of a trainer config.

    Attributes:
        train_level: the level the trainee policy plays and GRPO trains.
        fixed: the other level's endpoint, ``{base_url: ..., model: ...}``.
        max_subgoals: sub-goals kept from a plan.
    """

    train_level: Level = "planner"
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_subgoals: int = 3

    def __post_init__(self) -> None:
        if self.train_level not in LEVELS:
            raise ValueError(f"train_level must be planner or executor, not {self.train_level!r}")
        if not self.fixed.get("base_url"):
            raise ValueError("hierarchy needs fixed: {base_url: ..., model: ...}, the endpoint "
                             "of the level that is not trained")
        if self.max_subgoals < 1:
            raise ValueError("max_subgoals must be >= 1")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HierarchySettings:
        """Settings from a config mapping; unknown keys are an error."""
        return settings_from_dict(cls, values, "hierarchy")


def parse_subgoals(plan: str, max_subgoals: int) -> list[str]:
    """The plan's numbered or bulleted lines (at most ``max_subgoals``); a plan without any is
    one sub-goal, its text (or "Solve the task." when empty)."""
    items = [m.group(1) for line in plan.splitlines() if (m := _ITEM.match(line))]
    if not items:
        items = [plan.strip() or "Solve the task."]
    return items[:max_subgoals]


def with_subgoals(env: Any, max_subgoals: int = 3) -> Any:
    """``env`` with the plan -> sub-goals protocol of the module docs (patched in place)."""
    original_on_reply, original_setup = env.on_reply, env.setup_episode
    state: dict[str, Any] = {"pending": None}

    async def setup_episode(task: Any) -> None:
        state["pending"] = None
        await original_setup(task)

    async def on_reply(reply: Any) -> list[dict[str, Any]] | None:
        if state["pending"] is None:  # the first reply without tool calls: the plan
            goals = parse_subgoals(reply.content, max_subgoals)
            state["pending"] = [f"{SUBGOAL_PREFIX}{i + 1} of {len(goals)}: {goal}"
                                for i, goal in enumerate(goals)]
        if state["pending"]:
            return [{"role": "user", "content": state["pending"].pop(0)}]
        return await original_on_reply(reply)

    env.setup_episode, env.on_reply = setup_episode, on_reply
    env.max_turns += 1 + max_subgoals
    return env


def level_of_next_turn(messages: Sequence[Mapping[str, Any]]) -> Level:
    """The planner until a sub-goal was handed out, the executor after."""
    handed = any(m.get("role") == "user" and str(m.get("content") or "").startswith(
        SUBGOAL_PREFIX) for m in messages)
    return "executor" if handed else "planner"


def turn_levels(trajectory: Trajectory) -> list[Level]:
    """The level of each turn: the planner's up to its first reply without tool calls (the
    plan), the executor's after."""
    levels: list[Level] = []
    planning = True
    for turn in trajectory.turns:
        levels.append("planner" if planning else "executor")
        if planning and not turn.tool_calls:
            planning = False
    return levels


def level_sequence(trajectory: Trajectory, train_level: Level) -> TokenSequence:
    """The whole trajectory's token sequence (both levels' tokens) with loss mask 1 on
    ``train_level``'s tokens only (logprobs 0.0 where the mask is 0)."""
    sequence = build_token_sequence(trajectory)
    mask, logprobs = list(sequence.loss_mask), list(sequence.logprobs)
    position = 0
    history = len(sequence.prompt_ids)
    for turn, level in zip(trajectory.turns, turn_levels(trajectory), strict=True):
        position += len(turn.prompt_token_ids) - history  # env tokens before the turn
        end = position + len(turn.completion_token_ids)
        if level != train_level:
            mask[position:end] = [0] * (end - position)
            logprobs[position:end] = [0.0] * (end - position)
        position, history = end, len(turn.prompt_token_ids) + len(turn.completion_token_ids)
    return dataclasses.replace(sequence, loss_mask=tuple(mask), logprobs=tuple(logprobs))


def trained_view(trajectory: Trajectory, train_level: Level) -> Trajectory:
    """``trajectory`` with only ``train_level``'s turns: what the trainer turns into a sequence
    (the fixed level's tokens are then context, like tool results). A trajectory with no
    turn of that level keeps none (and is dropped by the trainer as untrainable)."""
    kept = tuple(turn for turn, level in zip(trajectory.turns, turn_levels(trajectory),
                                             strict=True) if level == train_level)
    return dataclasses.replace(trajectory, turns=kept)


class HierarchicalPolicy:
    """Routes each turn to the planner or the executor (see the module docs).

    Args:
        planner, executor: the two levels' policies.
        train_level: the level whose tokens are sampled by the trained policy; the other
            level's replies are re-encoded in its tokens (``tokenizer``, default the trained
            policy's).
    """

    def __init__(self, planner: Policy, executor: Policy, train_level: Level = "planner",
                 tokenizer: Any = None):
        if train_level not in LEVELS:
            raise ValueError(f"train_level must be planner or executor, not {train_level!r}")
        self.levels: dict[Level, Policy] = {"planner": planner, "executor": executor}
        self.train_level = train_level
        trained = self.levels[train_level]
        self.tokenizer = tokenizer if tokenizer is not None else getattr(trained, "tokenizer",
                                                                         None)
        self.accepts_prefix_ids = bool(getattr(trained, "accepts_prefix_ids", False))
        self._eos = end_of_turn_id(trained, self.tokenizer)
        self.calls: dict[Level, int] = {"planner": 0, "executor": 0}

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None, sampling: SamplingParams,
                       *, prefix_ids: Sequence[int] | None = None) -> list[Completion]:
        """The turn of the level whose turn it is, in the trained policy's tokens.

        Raises:
            PolicyError: either level's policy failed, or a fixed reply could not be encoded.
        """
        level = level_of_next_turn(messages)
        self.calls[level] += 1
        chat = with_plan_note(messages)
        prefix = prefix_ids if prefix_ids and self.accepts_prefix_ids else None
        if level == self.train_level:
            extra = {"prefix_ids": prefix} if prefix else {}
            return await self.levels[level].generate(chat, tools, sampling, **extra)
        replies = await self.levels[level].generate(chat, tools,
                                                    dataclasses.replace(sampling, n=1))
        if not replies:
            raise PolicyError(f"the {level} returned no completion")
        try:
            turn = written_turn(replies[0], self.tokenizer, self._eos, chat, tools, prefix, level)
        except Exception as exc:
            raise PolicyError(f"could not encode the {level}'s turn: {exc}") from exc
        return [turn] * sampling.n

    async def aclose(self) -> None:
        """Close both levels' policies."""
        for policy in self.levels.values():
            await policy.aclose()


def with_plan_note(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The chat with :data:`PLAN_NOTE` at the end of its system prompt (added if none)."""
    chat = [dict(m) for m in messages]
    if chat and chat[0].get("role") == "system":
        chat[0]["content"] = f"{chat[0].get('content') or ''}\n\n{PLAN_NOTE}"
    else:
        chat.insert(0, {"role": "system", "content": PLAN_NOTE})
    return chat


def hierarchical_parts(settings: HierarchySettings | Mapping[str, Any], policy: Policy,
                       make_env: Callable[[], Any]) -> tuple[HierarchicalPolicy,
                                                             Callable[[], Any]]:
    """(policy, env factory) of a config's ``hierarchy:`` block: the trained ``policy`` plays
    ``train_level``, the ``fixed`` endpoint the other level, and every env hands out sub-goals."""
    if not isinstance(settings, HierarchySettings):
        settings = HierarchySettings.from_dict(settings)
    from agentgym.policies.openai_client import OpenAIPolicy  # httpx, only when asked

    fixed = OpenAIPolicy(str(settings.fixed["base_url"]), str(settings.fixed.get("model",
                                                                                 "fixed")))
    planner, executor = (policy, fixed) if settings.train_level == "planner" else (fixed, policy)
    hierarchical = HierarchicalPolicy(planner, executor, settings.train_level)
    max_subgoals = settings.max_subgoals
    return hierarchical, lambda: with_subgoals(make_env(), max_subgoals)


def trained_groups(groups: Sequence[Group], settings: HierarchySettings | Mapping[str, Any],
                   ) -> list[Group]:
    """``groups`` with each trajectory's :func:`trained_view` (rewards and errors unchanged)."""
    level = settings.train_level if isinstance(settings, HierarchySettings) \
        else HierarchySettings.from_dict(settings).train_level
    return [dataclasses.replace(g, trajectories=tuple(trained_view(t, level)
                                                      for t in g.trajectories))
            for g in groups]
