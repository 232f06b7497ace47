"""A Rubric: named reward components with explicit weights.

``reward = sum(weight_i * component_i)``. Every component is reported in ``Score.components``
whatever its weight, so a weight of 0 turns a function into a logged metric. A component that
raises is not scored 0: the whole score fails with :class:`~agentgym.errors.RewardError` (judge
and sandbox failures arrive as their own subclasses), and the caller records the trajectory as
an error.

Two kinds of component: :class:`Reward` scores one trajectory when its episode ends;
:class:`GroupReward` sees all G trajectories of a task at once (relative judging, diversity)
and runs when the group is complete (:meth:`Rubric.score_group`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentgym.errors import AgentGymError, RewardError
from agentgym.types import Task, Trajectory

__all__ = ["GroupReward", "GroupRewardFn", "PerTurn", "Reward", "RewardFn", "Rubric", "Score"]

RewardFn = Callable[[Trajectory, Task], float | Awaitable[float]]
GroupRewardFn = Callable[[Sequence[Trajectory], Task],
                         Sequence[float] | Awaitable[Sequence[float]]]


@dataclass(frozen=True)
class Reward:
    """One named component of a rubric.

    Attributes:
        name: the key under which the value is logged.
        fn: ``fn(trajectory, task) -> float``, sync or async.
        weight: its weight in the total; 0 makes it a logged metric.
    """

    name: str
    fn: RewardFn
    weight: float = 1.0


@dataclass(frozen=True)
class GroupReward:
    """A component computed over the whole group of trajectories of one task.

    Attributes:
        name: the key under which the value is logged.
        fn: ``fn(trajectories, task) -> one float per trajectory``, sync or async.
        weight: its weight in the total; 0 makes it a logged metric.
    """

    name: str
    fn: GroupRewardFn
    weight: float = 1.0


class PerTurn(float):
    """A reward value that is the sum of per-turn terms (potential-based shaping), returned by
    a :class:`Reward`'s function: it counts as the float, and the rubric also records
    ``weight * terms`` per turn in :attr:`Score.turn_rewards`, so a token-level learner can
    place each term at its turn."""

    terms: tuple[float, ...]

    def __new__(cls, terms: Sequence[float]) -> PerTurn:
        value = super().__new__(cls, math.fsum(terms))
        value.terms = tuple(float(t) for t in terms)
        return value


@dataclass(frozen=True)
class Score:
    """The outcome of scoring one trajectory (``turn_rewards``: the per-turn part of
    ``reward``, one value per turn, see :class:`PerTurn`)."""

    reward: float
    components: Mapping[str, float] = field(default_factory=dict)
    turn_rewards: tuple[float, ...] = ()


class Rubric:
    """Weighted sum of named reward components.

    Args:
        rewards: the components; names must be unique.
    """

    def __init__(self, rewards: Sequence[Reward | GroupReward]):
        names = [r.name for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate reward names: {names}")
        if not rewards:
            raise ValueError("a Rubric needs at least one Reward")
        self.rewards = tuple(r for r in rewards if isinstance(r, Reward))
        self.group_rewards = tuple(r for r in rewards if isinstance(r, GroupReward))

    async def score(self, trajectory: Trajectory, task: Task) -> Score:
        """Score one finished trajectory with the per-trajectory components.

        Raises:
            RewardError: a component failed or returned a non-finite value.
        """
        components: dict[str, float] = {}
        turns: list[float] = []
        for reward in self.rewards:
            value = await _call(reward.name, reward.fn, trajectory, task)
            components[reward.name] = _check(reward.name, value)
            if isinstance(value, PerTurn) and reward.weight:
                for k, term in enumerate(value.terms):
                    if k == len(turns):
                        turns.append(0.0)
                    turns[k] += reward.weight * _check(reward.name, term)
        total = sum(r.weight * components[r.name] for r in self.rewards if r.weight)
        return Score(reward=float(total), components=components, turn_rewards=tuple(turns))

    async def score_group(self, trajectories: Sequence[Trajectory],
                          task: Task) -> list[Trajectory]:
        """Add the group components to already-scored trajectories of one task.

        Raises:
            RewardError: a group component failed, or returned the wrong number of values.
        """
        values: dict[str, list[float]] = {}
        for reward in self.group_rewards:
            result = list(await _call(reward.name, reward.fn, trajectories, task))
            if len(result) != len(trajectories):
                raise RewardError(f"group reward {reward.name!r} returned {len(result)} values "
                                  f"for {len(trajectories)} trajectories")
            values[reward.name] = [_check(reward.name, v) for v in result]
        scored = []
        for i, trajectory in enumerate(trajectories):
            extra = {name: column[i] for name, column in values.items()}
            bonus = sum(r.weight * extra[r.name] for r in self.group_rewards)
            scored.append(dataclasses.replace(
                trajectory, reward=(trajectory.reward or 0.0) + bonus,
                reward_components={**trajectory.reward_components, **extra}))
        return scored

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.name}*{r.weight:g}" for r in self.rewards)
        return f"Rubric({parts})"


async def _call(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call a (sync or async) reward function; every failure becomes a RewardError."""
    try:
        value = fn(*args)
        if inspect.isawaitable(value):
            value = await value
    except RewardError:
        raise
    except AgentGymError as exc:
        raise RewardError(f"reward {name!r} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise RewardError(f"reward {name!r} raised {type(exc).__name__}: {exc}") from exc
    return value


def _check(name: str, value: Any) -> float:
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise RewardError(f"reward {name!r} returned {value!r}, not a finite number")
    return float(value)

