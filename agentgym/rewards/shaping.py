"""Potential-based reward shaping: ``F(s, s') = gamma * Phi(s') - Phi(s)``.

Adding F to the reward of every transition leaves the optimal policy unchanged (Ng, Harada and
Russell, 1999) for any potential Phi over states, provided the potential of the terminal state is
taken as 0 in episodic tasks; the shaping only changes how quickly credit reaches earlier turns.
Here a state is the chat after a turn (``s_0`` is the prompt); Phi is either a task-defined
function of the chat or a judge's progress estimate (:class:`JudgeProgress`).

:func:`shaping_terms` gives the per-turn F_t; :func:`potential_shaping` wraps them as a reward
function whose value is their discounted sum, which telescopes to ``gamma^T * Phi(s_T) -
Phi(s_0)`` with ``Phi(s_T) = 0`` at the end of a terminated episode. That value is a
:class:`~agentgym.rewards.rubric.PerTurn`: the rubric records the weighted discounted terms
``gamma^k * F_k`` per turn in ``Trajectory.turn_rewards``, and PPO adds each at its turn's last
policy token (token-level rewards) instead of at the episode's end; episode-level learners
(GRPO) and evaluation see their sum in the reward. With the learner's gamma 1 (PPO's default)
``gamma^k * F_k`` is itself potential-based shaping, with the potential ``gamma^k * Phi(s_k)``
of the state at turn k.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from agentgym.policy import Policy
from agentgym.rewards.rubric import PerTurn
from agentgym.rewards.verbal import JudgeReward, load_prompt, parse_probability
from agentgym.types import Task, Trajectory

__all__ = ["JudgeProgress", "Potential", "potential_shaping", "shaping_terms", "turn_states"]

Potential = Callable[[Sequence[Mapping[str, Any]], Task], float | Awaitable[float]]


def turn_states(trajectory: Trajectory) -> list[tuple[Mapping[str, Any], ...]]:
    """The chat before the first turn and after each turn: ``[s_0, s_1, ..., s_T]``."""
    messages = trajectory.messages
    starts = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not starts:
        return [tuple(messages)]
    cuts = starts + [len(messages)]
    return [tuple(messages[:cut]) for cut in cuts]


async def _phi(potential: Potential, state: Sequence[Mapping[str, Any]], task: Task) -> float:
    value = potential(state, task)
    return float(await value) if inspect.isawaitable(value) else float(value)


async def shaping_terms(trajectory: Trajectory, task: Task, potential: Potential,
                        gamma: float = 1.0) -> list[float]:
    """``F_t = gamma * Phi(s_{t+1}) - Phi(s_t)`` for each turn; ``Phi(terminal) = 0``."""
    states = turn_states(trajectory)
    values = [await _phi(potential, s, task) for s in states]
    if trajectory.terminated:
        values[-1] = 0.0
    return [gamma * values[t + 1] - values[t] for t in range(len(values) - 1)]


def potential_shaping(potential: Potential, gamma: float = 1.0) -> Callable[..., Awaitable[float]]:
    """A reward function: the discounted sum of the episode's shaping terms, as a
    :class:`PerTurn` of the terms ``gamma^k * F_k`` (the rubric records them per turn)."""
    async def shaping(trajectory: Trajectory, task: Task) -> PerTurn:
        terms = await shaping_terms(trajectory, task, potential, gamma)
        return PerTurn([gamma ** t * f for t, f in enumerate(terms)])

    return shaping


class JudgeProgress:
    """A potential from a judge: its estimated probability that the episode will succeed."""

    def __init__(self, judge: Policy):
        self._judge = JudgeReward(judge, prompt=load_prompt("progress"), mapping=parse_probability)

    async def __call__(self, state: Sequence[Mapping[str, Any]], task: Task) -> float:
        partial = Trajectory(env_id="", task_id=task.id, messages=tuple(state))
        return await self._judge(partial, task)
