"""Several environments in one run: ``agentgym/Mixture-v0``, a weighted mixture of registered envs.

    env = agentgym.make("agentgym/Mixture-v0",
                        envs={"agentgym/Calculator-v0": 3, "agentgym/Math-v0": 1},
                        env_kwargs={"agentgym/Math-v0": {"max_turns": 4}})

The mixture is an env like any other, so ``agentgym train`` and ``agentgym eval`` take it through
``env_id``/``env_kwargs`` unchanged. Its tasks are every member's tasks of the split, each with
the id ``"<member env id>::<member task id>"`` and ``metadata["mixture"]`` saying where it came
from and how likely it is to be drawn. Each episode is delegated whole to one member env (one
instance per member, built on first use): the member's prompt, its tools, its budgets, its
rubric. So a task of one env never sees another env's tools, and the reward components are the
member's own. The trajectory keeps the member's ``env_id`` (that is what per-env metrics group
by) and carries the mixture's task id (that is what groups and eval rows are keyed by).

Weights: env ``e`` with weight ``w_e`` and ``n_e`` tasks is drawn with probability
``w_e / sum(w)``, each of its tasks with ``w_e / (sum(w) * n_e)`` (:func:`task_probabilities`;
the trainers draw each step's tasks with them). The task order is a seeded weighted shuffle
(without replacement, Efraimidis-Spirakis keys ``u ** (1 / p)``, compared as logs), so the
first N tasks of the split, which ``agentgym eval --num-examples N`` plays, follow the weights
too, and the same ``seed`` always gives the same order. A bare ``reset()`` draws by the
weights with the env's seeded RNG.

Metrics: :func:`env_breakdown` turns a batch of trajectories into ``env/<id>/...`` metrics
(mean reward, reward components, episodes, errors) for the trainers' metrics rows and the eval
summary's ``by_env``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np

from agentgym.env import AgentEnv
from agentgym.errors import ResetNeededError
from agentgym.registry import make, spec
from agentgym.rewards.rubric import Score
from agentgym.tools import Tool
from agentgym.types import Split, Task, Trajectory

__all__ = ["MixtureEnv", "MixtureRubric", "env_breakdown", "task_probabilities"]

SEPARATOR = "::"
"""Between the member env id and the member task id in a mixture task id."""


def _check_weights(envs: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(envs, Mapping) or not envs:
        raise ValueError("a mixture needs envs: a non-empty mapping {env_id: weight}")
    weights: dict[str, float] = {}
    for env_id, weight in envs.items():
        spec(env_id)  # an unknown id fails here, with suggestions
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"the weight of {env_id!r} must be a finite number > 0, "
                             f"got {weight!r}")
        weights[env_id] = float(weight)
    return weights


class MixtureEnv(AgentEnv):
    """A weighted mixture of registered environments (see the module docstring).

    Args:
        envs: ``{env_id: weight}``; weights are relative (need not sum to 1).
        env_kwargs: ``{env_id: {argument: value}}``, constructor arguments of each member.
        seed: seeds the task order (the eval split's first N follow the weights).
        split: the split of every member.
        env_id: the mixture's registered id (set by :func:`agentgym.make`).
        **common: arguments given to every member (e.g. ``max_turns``); ``env_kwargs`` win.
    """

    family = "mixture"

    def __init__(self, *, envs: Mapping[str, float], env_kwargs: Mapping[str, Mapping[str, Any]]
                 | None = None, seed: int = 0, split: Split = "train",
                 env_id: str | None = None, **common: Any):
        self.weights = _check_weights(envs)
        extra = set(env_kwargs or {}) - set(self.weights)
        if extra:
            raise ValueError(f"env_kwargs names envs that are not in the mixture: {sorted(extra)}")
        self.member_kwargs = {e: {**common, **dict((env_kwargs or {}).get(e, {}))}
                              for e in self.weights}
        self.seed = seed
        self._members: dict[str, AgentEnv] = {}
        self._sources: dict[str, tuple[str, Task]] = {}
        self._current: AgentEnv | None = None
        super().__init__(split=split, env_id=env_id)

    # --- members and tasks ----------------------------------------------------------------

    def member(self, env_id: str) -> AgentEnv:
        """The member env ``env_id`` (built on first use, on this mixture's split)."""
        if env_id not in self.weights:
            raise KeyError(f"{env_id!r} is not in this mixture ({sorted(self.weights)})")
        if env_id not in self._members:
            self._members[env_id] = make(env_id, split=self.split, **self.member_kwargs[env_id])
        return self._members[env_id]

    def load_tasks(self, split: Split) -> list[Task]:
        """Every member's tasks of ``split``, renamed, in a seeded weighted order."""
        total = sum(self.weights.values())
        tasks: list[Task] = []
        for env_id, weight in self.weights.items():
            member_tasks = self.member(env_id).tasks
            probability = weight / (total * len(member_tasks))
            for task in member_tasks:
                mixture_id = f"{env_id}{SEPARATOR}{task.id}"
                self._sources[mixture_id] = (env_id, task)
                tasks.append(dataclasses.replace(task, id=mixture_id, metadata={
                    **task.metadata, "mixture": {"env_id": env_id, "task_id": task.id,
                                                 "probability": probability}}))
        rng = np.random.default_rng(self.seed)
        keys = [math.log(float(u)) / t.metadata["mixture"]["probability"]  # log(u ** (1 / p))
                for u, t in zip(1.0 - rng.random(len(tasks)), tasks, strict=True)]
        order = sorted(range(len(tasks)), key=lambda i: (-keys[i], i))
        return [tasks[i] for i in order]

    def source(self, task_id: str) -> tuple[AgentEnv, Task]:
        """(member env, member task) behind the mixture task ``task_id``."""
        self.tasks  # noqa: B018 -- loading the tasks fills the id map
        try:
            env_id, member_task = self._sources[task_id]
        except KeyError:
            raise KeyError(f"{self.env_id} ({self.split}) has no task {task_id!r}") from None
        return self.member(env_id), member_task

    def _all_tools(self) -> list[Tool]:
        return []  # every episode offers its member's tools, and only those

    @property
    def rubric(self) -> MixtureRubric:
        """Scores a trajectory with its member's rubric."""
        return MixtureRubric(self)

    def corpus_digest(self) -> str | None:
        """The members' corpus digests, one line each (None when no member has a corpus)."""
        lines = [f"{e} {d}" for e in self.weights
                 if (d := self.member(e).corpus_digest()) is not None]
        return "\n".join(lines) or None

    # --- episodes -------------------------------------------------------------------------

    def _choose_task(self, options: Mapping[str, Any]) -> Task:
        if "task_id" in options or "task_index" in options:
            return super()._choose_task(options)
        probabilities = task_probabilities(self.tasks)
        assert probabilities is not None
        return self.tasks[int(self.np_random.choice(len(self.tasks), p=probabilities))]

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None,
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Start an episode of the chosen task's member env."""
        gymnasium.Env.reset(self, seed=seed)  # seeds np_random (AgentEnv.reset is the sync twin)
        task = self._choose_task(options or {})
        member, member_task = self.source(task.id)
        if self._current is not None and self._current is not member:
            await self._current.aclose()  # the previous episode's resources, in its own env
        self._current, self._task, self._done = member, task, True
        obs, info = await member.areset(options={"task_id": member_task.id})
        self._done = False
        return obs, self._relabel(info)

    async def astep(self, action: Any,
                    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        """One step of the member's episode."""
        if self._current is None or self._done:
            raise ResetNeededError("call reset() before step(), and again after an episode ends")
        try:
            obs, reward, terminated, truncated, info = await self._current.astep(action)
        except BaseException:
            self._done = self._current.trajectory() is not None
            raise
        self._done = terminated or truncated
        return obs, reward, terminated, truncated, self._relabel(info)

    def trajectory(self) -> Trajectory | None:
        """The last finished episode, with the mixture's task id and the member's env id."""
        if self._current is None or self._task is None:
            return None
        return self._retag(self._current.trajectory())

    async def aabort(self, exc: BaseException) -> Trajectory:
        """End the running episode (in its member) because of an outside failure."""
        if self._current is None:
            raise ResetNeededError("no episode to abort: call reset() first")
        self._done = True
        trajectory = self._retag(await self._current.aabort(exc))
        assert trajectory is not None
        return trajectory

    async def atruncate(self) -> Trajectory:
        """End the running episode as truncated, scored by its member."""
        if self._current is None or self._done:
            raise ResetNeededError("no running episode to truncate: call reset() first")
        self._done = True
        trajectory = self._retag(await self._current.atruncate())
        assert trajectory is not None
        return trajectory

    async def aclose(self) -> None:
        """Close every member built so far."""
        for member in self._members.values():
            await member.aclose()

    def close(self) -> None:
        """Close the members (on this env's loop, where they ran) and the loop."""
        self._runner.run(self.aclose())
        for member in self._members.values():
            member.close()
        self._runner.close()

    def _relabel(self, info: dict[str, Any]) -> dict[str, Any]:
        assert self._task is not None and self._current is not None
        return {**info, "task_id": self._task.id, "env_id": self._current.env_id}

    def _retag(self, trajectory: Trajectory | None) -> Trajectory | None:
        if trajectory is None or self._task is None:
            return trajectory
        return dataclasses.replace(trajectory, task_id=self._task.id)


class MixtureRubric:
    """The rubric of a mixture: each trajectory scored by its member's rubric and task.

    Duck-types :class:`~agentgym.rewards.Rubric` (``score``, ``score_group``,
    ``group_rewards``) for the rollout engine's group scoring."""

    def __init__(self, mixture: MixtureEnv):
        self.mixture = mixture

    @property
    def group_rewards(self) -> tuple[Any, ...]:
        """Every member's group rewards (empty: no group scoring in any member)."""
        return tuple(g for e in self.mixture.weights
                     for g in self.mixture.member(e).rubric.group_rewards)

    async def score(self, trajectory: Trajectory, task: Task) -> Score:
        """Score with the member's rubric against the member's task."""
        member, member_task = self.mixture.source(task.id)
        return await member.rubric.score(
            dataclasses.replace(trajectory, task_id=member_task.id), member_task)

    async def score_group(self, trajectories: Sequence[Trajectory],
                          task: Task) -> list[Trajectory]:
        """Group components from the member's rubric, task ids kept as the mixture's."""
        member, member_task = self.mixture.source(task.id)
        if not member.rubric.group_rewards:
            return list(trajectories)
        scored = await member.rubric.score_group(
            [dataclasses.replace(t, task_id=member_task.id) for t in trajectories], member_task)
        return [dataclasses.replace(t, task_id=task.id) for t in scored]


def task_probabilities(tasks: Sequence[Task]) -> list[float] | None:
    """Each task's draw probability when the tasks are a mixture's, else None (draw uniformly).

    Normalised to sum to 1 (float rounding)."""
    if not tasks or any("mixture" not in t.metadata for t in tasks):
        return None
    raw = [float(t.metadata["mixture"]["probability"]) for t in tasks]
    total = math.fsum(raw)
    return [p / total for p in raw]


def env_breakdown(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Per-env metrics of a batch that mixes envs (``{}`` for a single env):
    ``env/<id>/episodes``, ``env/<id>/errors``, ``env/<id>/reward_mean`` (over scored episodes)
    and ``env/<id>/reward/<component>``."""
    by_env: dict[str, list[Trajectory]] = {}
    for trajectory in trajectories:
        by_env.setdefault(trajectory.env_id, []).append(trajectory)
    if len(by_env) < 2:
        return {}
    metrics: dict[str, float] = {}
    for env_id, group in sorted(by_env.items()):
        scored = [t for t in group if t.error is None and t.reward is not None]
        prefix = f"env/{env_id}"
        metrics[f"{prefix}/episodes"] = len(group)
        metrics[f"{prefix}/errors"] = sum(t.error is not None for t in group)
        metrics[f"{prefix}/reward_mean"] = (math.fsum(t.reward for t in scored) / len(scored)
                                            if scored else math.nan)  # type: ignore[misc]
        components: dict[str, list[float]] = {}
        for t in scored:
            for name, value in t.reward_components.items():
                components.setdefault(name, []).append(value)
        for name, values in components.items():
            metrics[f"{prefix}/reward/{name}"] = math.fsum(values) / len(values)
    return metrics
