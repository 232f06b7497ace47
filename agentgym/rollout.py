"""The rollout engine: many async episodes of an environment against a policy.

``RolloutEngine.run_groups`` plays G episodes of each task (a GRPO group) with at most
``max_concurrent`` episodes in flight. Every episode has a per-turn deadline (one policy call)
and an episode deadline; the env's own turn/token/time budgets truncate as usual.

Failures are data. An episode that fails for a reason outside the model (policy server down,
sandbox crash, judge failure, a deadline of ours) comes back as a trajectory with ``error`` set
and no reward; it is never scored 0. A group holding such a trajectory is either dropped from
training (``on_infra_error="drop"``) or its failed members are played again
(``"resample"``, up to ``max_resamples`` times). Model mistakes (bad tool calls, crashing code)
are observations inside the episode, not errors.

A prompt that outgrows the policy's context window (:class:`~agentgym.errors.ContextWindowError`)
is a budget running out, not a failure: the episode ends as truncated and is scored on what
happened.

A policy server that its supervisor restarts mid-turn is waited for by the client; that wait is
left out of the turn's deadline (:data:`~agentgym.policy.restart_wait_hook`), not
out of the episode's.

Group rewards (e.g. relative judging) run once a group is complete, through
:meth:`~agentgym.rewards.Rubric.score_group`.

Episodes can run elsewhere: given ``remote`` (:class:`RemoteEpisodes`, e.g.
:class:`~agentgym.ray_rollout.RayEpisodes`, env workers on a Ray cluster), each episode is
played there with the sampling settings this engine chose for it; grouping, resampling, group
scoring, the writer and the order of results stay here, so they are the same as local rollouts.
A worker that dies mid-episode raises :class:`~agentgym.errors.WorkerLostError`, recorded on the
trajectory as an infra error (and resampled like any other).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agentgym.env import AgentEnv
from agentgym.errors import (
    AgentGymError,
    ContextWindowError,
    EpisodeTimeoutError,
    ErrorRecord,
    RewardError,
    WorkerLostError,
)
from agentgym.policy import Policy, SamplingParams, restart_wait_hook
from agentgym.trajectory_io import TrajectoryWriter
from agentgym.types import Task, Trajectory

__all__ = ["Group", "RemoteEpisodes", "RolloutConfig", "RolloutEngine"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutConfig:
    """How to play episodes.

    Attributes:
        group_size: episodes per task (G); GRPO compares rewards within a group.
        max_concurrent: episodes in flight at once (each holds one env instance).
        turn_timeout_s: deadline of one policy call (None: no deadline).
        episode_timeout_s: deadline of a whole episode (None: no deadline).
        sampling: sampling settings for every turn; ``n`` is ignored (one sample per turn).
        on_infra_error: ``"drop"`` the group or ``"resample"`` its failed episodes.
        max_resamples: resampling rounds before a group is dropped anyway.
    """

    group_size: int = 1
    max_concurrent: int = 16
    turn_timeout_s: float | None = 120.0
    episode_timeout_s: float | None = 900.0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    on_infra_error: Literal["drop", "resample"] = "drop"
    max_resamples: int = 2

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.max_concurrent < 1:
            raise ValueError("group_size and max_concurrent must be >= 1")
        if self.on_infra_error not in ("drop", "resample"):
            raise ValueError("on_infra_error must be 'drop' or 'resample'")


@dataclass(frozen=True)
class Group:
    """The G trajectories of one task.

    Attributes:
        task_id: the task they all played.
        trajectories: in sample order.
        dropped: True when an infra failure survived resampling: exclude from training.
    """

    task_id: str
    trajectories: tuple[Trajectory, ...]
    dropped: bool = False

    @property
    def rewards(self) -> list[float | None]:
        """Per-trajectory reward (None for failed ones)."""
        return [t.reward for t in self.trajectories]

    @property
    def errors(self) -> list[ErrorRecord]:
        """The errors of the failed trajectories."""
        return [t.error for t in self.trajectories if t.error is not None]


class RemoteEpisodes(Protocol):
    """Where episodes run when not in this process (e.g. Ray env workers)."""

    async def play(self, options: dict[str, Any], sampling: SamplingParams) -> Trajectory:
        """Play one episode with exactly ``sampling``.

        Raises:
            WorkerLostError: the worker playing it died or stopped answering.
        """
        ...

    async def aclose(self) -> None:
        """Release the workers."""
        ...


class _Pausable:
    """A turn's deadline that stops while its request waits for a supervised policy server to
    restart, and resumes with the time it had left (the episode deadline keeps running)."""

    def __init__(self, deadline: asyncio.Timeout):
        self.deadline = deadline
        self.left: float | None = None

    def __call__(self, waiting: bool) -> None:
        now, when = asyncio.get_running_loop().time(), self.deadline.when()
        if waiting and self.left is None and when is not None and not self.deadline.expired():
            self.left = when - now
            self.deadline.reschedule(None)
        elif not waiting and self.left is not None:
            self.deadline.reschedule(now + self.left)
            self.left = None


class RolloutEngine:
    """Plays episodes of one environment against one policy.

    Args:
        make_env: a zero-argument function returning a fresh env (e.g.
            ``lambda: agentgym.make("agentgym/Calculator-v0", split="eval")``). Envs are
            pooled and reused across episodes.
        policy: anything implementing :class:`~agentgym.policy.Policy`.
        config: rollout settings.
        writer: if given, every finished trajectory is streamed to it.
        remote: play episodes there instead of in this process (see the module docs); this
            engine then only keeps one env, for tasks and group scoring.

    Attributes:
        resampled: episodes played again after an infra error (all groups so far).
        dropped_groups: groups dropped because an infra error survived resampling.
    """

    def __init__(self, make_env: Callable[[], AgentEnv], policy: Policy,
                 config: RolloutConfig | None = None, writer: TrajectoryWriter | None = None,
                 remote: RemoteEpisodes | None = None):
        self.make_env, self.policy = make_env, policy
        self.config = config or RolloutConfig()
        self.writer = writer
        self.remote = remote
        self.resampled = 0
        self.dropped_groups = 0
        self._free_envs: list[AgentEnv] = []
        self._all_envs: list[AgentEnv] = []
        self._slots = asyncio.Semaphore(self.config.max_concurrent)
        self._scorer: AgentEnv | None = None

    async def run_episode(self, options: dict[str, Any], sample_index: int = 0) -> Trajectory:
        """Play one episode on the task chosen by ``options`` (``task_id`` or ``task_index``)."""
        sampling = self._sampling(sample_index)
        async with self._slots:
            if self.remote is not None:
                try:
                    return await self.remote.play(options, sampling)
                except WorkerLostError as exc:
                    logger.warning("episode on %s lost: %s", options, exc)
                    return await self._abort(self._scoring_env(), exc, options, False)
            return await self.play_here(options, sampling)

    async def play_here(self, options: dict[str, Any], sampling: SamplingParams) -> Trajectory:
        """Play one episode in this process with exactly ``sampling`` (no slot taken: what a
        remote worker calls)."""
        env = self._take_env()
        try:
            return await self._play(env, options, sampling)
        finally:
            self._free_envs.append(env)

    async def run_group(self, task_id: str) -> Group:
        """Play ``group_size`` episodes of one task, resampling or dropping on infra errors."""
        size = self.config.group_size
        trajectories = list(await asyncio.gather(
            *(self.run_episode({"task_id": task_id}, i) for i in range(size))))
        rounds = self.config.max_resamples if self.config.on_infra_error == "resample" else 0
        for _ in range(rounds):
            failed = [i for i, t in enumerate(trajectories) if t.error is not None]
            if not failed:
                break
            self.resampled += len(failed)
            redo = await asyncio.gather(
                *(self.run_episode({"task_id": task_id}, i + size) for i in failed))
            for i, trajectory in zip(failed, redo, strict=True):
                trajectories[i] = trajectory
        group = Group(task_id, tuple(trajectories),
                      dropped=any(t.error is not None for t in trajectories))
        group = await self._score_group(group)
        self.dropped_groups += group.dropped
        if self.writer is not None:
            for trajectory in group.trajectories:
                self.writer.write(trajectory)
        return group

    async def run_groups(self, task_ids: Sequence[str],
                         on_group: Callable[[Group], None] | None = None) -> list[Group]:
        """Play a group for each task id, concurrently; ``on_group`` sees each as it finishes."""
        async def one(task_id: str) -> Group:
            group = await self.run_group(task_id)
            if on_group is not None:
                on_group(group)
            return group

        return list(await asyncio.gather(*(one(t) for t in task_ids)))

    def set_sampling(self, sampling: SamplingParams) -> None:
        """Use ``sampling`` for episodes started from now on (e.g. a new seed every training
        step), keeping the pooled envs."""
        self.config = dataclasses.replace(self.config, sampling=sampling)

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks of the engine's env split (read from the env kept for scoring)."""
        return self._scoring_env().tasks

    async def aclose(self) -> None:
        """Close every env the engine created (and the remote workers)."""
        if self.remote is not None:
            await self.remote.aclose()
        for env in self._all_envs + ([self._scorer] if self._scorer else []):
            await env.aclose()
        self._all_envs.clear()
        self._scorer = None
        self._free_envs.clear()

    # --- internals ------------------------------------------------------------------------

    def _take_env(self) -> AgentEnv:
        if self._free_envs:
            return self._free_envs.pop()
        env = self.make_env()
        self._all_envs.append(env)
        return env

    def _sampling(self, sample_index: int) -> SamplingParams:
        sampling = dataclasses.replace(self.config.sampling, n=1)
        if sampling.seed is not None:  # sample i of a task uses seed + i: distinct, reproducible
            sampling = dataclasses.replace(sampling, seed=sampling.seed + sample_index)
        return sampling

    async def _play(self, env: AgentEnv, options: dict[str, Any],
                    sampling: SamplingParams) -> Trajectory:
        started = [False]  # set once reset succeeded: before that there is no episode to abort
        try:
            async with asyncio.timeout(self.config.episode_timeout_s):
                return await self._turns(env, options, sampling, started)
        except TimeoutError as exc:
            if isinstance(exc, AgentGymError):
                failure: BaseException = exc
            else:
                failure = EpisodeTimeoutError(
                    f"episode exceeded {self.config.episode_timeout_s}s")
            return await self._abort(env, failure, options, started[0])
        except AgentGymError as exc:
            return await self._abort(env, exc, options, started[0])
        except Exception as exc:  # a bug in a tool or env: keep the data, log the traceback
            logger.exception("episode on %s crashed", options)
            return await self._abort(env, exc, options, started[0])

    async def _turns(self, env: AgentEnv, options: dict[str, Any],
                     sampling: SamplingParams, started: list[bool]) -> Trajectory:
        obs, info = await env.areset(options=options)
        started[0] = True
        continues = getattr(self.policy, "accepts_prefix_ids", False)
        prefix: dict[str, tuple[int, ...]] = {}
        while True:
            try:
                async with asyncio.timeout(self.config.turn_timeout_s) as turn:
                    waits = restart_wait_hook.set(_Pausable(turn))
                    try:
                        completions = await self.policy.generate(obs, info["tools"], sampling,
                                                                 **prefix)
                    finally:
                        restart_wait_hook.reset(waits)
            except TimeoutError as exc:
                if isinstance(exc, AgentGymError):
                    raise
                raise EpisodeTimeoutError(
                    f"policy turn exceeded {self.config.turn_timeout_s}s") from None
            except ContextWindowError as exc:  # out of context: a budget, not a failure
                logger.info("%s: truncated, the chat outgrew the model's %s-token window",
                            info.get("task_id"), exc.max_model_len or "?")
                return await env.atruncate()
            completion = completions[0]
            if continues and completion.prompt_token_ids and completion.completion_token_ids:
                prefix = {"prefix_ids": completion.prompt_token_ids
                          + completion.completion_token_ids}
            obs, _, terminated, truncated, info = await env.astep(completion.to_action())
            if terminated or truncated:
                trajectory = env.trajectory()
                assert trajectory is not None
                return trajectory

    async def _abort(self, env: AgentEnv, failure: BaseException, options: dict[str, Any],
                     started: bool) -> Trajectory:
        if started:
            return await env.aabort(failure)
        task_id = str(options.get("task_id", options.get("task_index", "?")))
        return Trajectory(env_id=env.env_id, task_id=task_id, messages=(),
                          error=ErrorRecord.from_exception(failure))

    def _scoring_env(self) -> AgentEnv:
        """One env kept for its rubric and tasks; never stepped."""
        if self._scorer is None:
            self._scorer = self.make_env()
        return self._scorer

    async def _score_group(self, group: Group) -> Group:
        """Add group-level reward components (relative judging) to a finished group."""
        rubric = self._scoring_env().rubric
        if not rubric.group_rewards or group.dropped:
            return group
        task = next(t for t in self.tasks if t.id == group.task_id)
        try:
            scored = await rubric.score_group(group.trajectories, task)
        except RewardError as exc:
            error = ErrorRecord.from_exception(exc)
            failed = tuple(dataclasses.replace(t, reward=None, error=error)
                           for t in group.trajectories)
            return Group(group.task_id, failed, dropped=True)
        return Group(group.task_id, tuple(scored))
