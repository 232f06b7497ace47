"""Rollouts on a Ray cluster: episodes run in env workers (Ray actors) on any node.

The rollout engine (:class:`~agentgym.rollout.RolloutEngine`, on the driver) keeps grouping,
seeds, resampling, group scoring and the order of results; :class:`RayEpisodes` is its
``remote``: each episode is sent to the least-loaded live :class:`EnvWorker`, an actor that holds
its own pool of env instances (and so their sandboxes, search indexes and API servers, on its
node) and its own policy client. For a deterministic policy the trajectories, rewards and order
are the same as local rollouts: the driver picks every episode's sampling settings (seed + sample
index), and a worker plays exactly what it is given.

Policies reach workers as a :class:`PolicySpec` (base URLs, model, client settings), from which
each worker builds its own :class:`~agentgym.policies.openai_client.OpenAIPolicy` (one URL) or
:class:`~agentgym.policies.router.ReplicaRouter` (several). The embedded engine lives in the
driver's memory and cannot go to workers: serve it (``agentgym serve``) and pass its URL.
A weight sync switches the driver's client to a new model name (LoRA ``policy-v3``); every
episode carries the driver client's model name and weight version, and a worker switches its
own client before playing, so workers follow syncs without a broadcast that could be lost.

Faults are data. A worker that dies (node lost, OOM, ``ray.kill``) fails the episodes it was
playing with :class:`~agentgym.errors.WorkerLostError`; the engine records them as infra errors
and, with ``on_infra_error="resample"``, plays them again on the workers that are left. A worker
that stops answering gets the same treatment once the episode deadline (plus a grace period)
passes, so nothing waits forever. When no worker is left, every episode fails at once.
The Docker sandboxes a dead worker held (its containers carry its pid, see
:func:`~agentgym.sandbox.docker_backend.owner_labels`) are removed by a task on its node
(:func:`reap_sandboxes`) once the process is gone; :meth:`RayEpisodes.aclose` waits for those.

Ray is imported only here, inside functions: without this switch nothing imports it.

    settings = RaySettings(address="auto", num_workers=8)
    engine = ray_rollout_engine(make_env, OpenAIPolicy(url, "qwen"), config, settings)
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from agentgym.env import AgentEnv
from agentgym.errors import WorkerLostError
from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.policies.router import ReplicaRouter
from agentgym.policy import Policy, SamplingParams
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.trajectory_io import TrajectoryWriter
from agentgym.types import Trajectory

__all__ = ["EnvWorker", "PolicySpec", "RayEpisodes", "RaySettings", "ray_rollout_engine",
           "reap_sandboxes"]

logger = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'agentgym[ray]'"


@dataclass(frozen=True)
class RaySettings:
    """Where and how many env workers run.

    Attributes:
        address: the cluster: ``"auto"`` (the one ``ray start`` made on this node),
            ``"ray://host:10001"`` (Ray Client), ``"host:6379"``, or None for a private local
            cluster (``ray.init(address="local")``, even where ``ray start`` made one).
            Ignored when Ray is already initialised in this process.
        num_workers: env worker actors.
        num_cpus_per_worker: CPUs Ray reserves per worker (I/O-bound envs need little).
        episodes_per_worker: episodes one worker plays at once (its env instances: e.g. the
            sandboxes its node can hold); None: up to the config's ``max_concurrent``. The
            driver still bounds the total by ``max_concurrent``.
        grace_s: how long past the episode deadline the driver waits for a worker's answer
            before it counts the worker as lost.
    """

    address: str | None = None
    num_workers: int = 2
    num_cpus_per_worker: float = 1.0
    episodes_per_worker: int | None = None
    grace_s: float = 30.0

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.num_cpus_per_worker < 0 or self.grace_s < 0 \
                or (self.episodes_per_worker is not None and self.episodes_per_worker < 1):
            raise ValueError("num_workers >= 1, num_cpus_per_worker >= 0, grace_s >= 0 and "
                             "episodes_per_worker >= 1 (or None) required")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RaySettings:
        """From a config's ``ray:`` mapping (``address``, ``num_workers``, ...)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ray settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class PolicySpec:
    """How a worker builds its own policy client: one OpenAI-compatible server, or several
    replicas of the same model (then routed least-loaded and sticky per episode).

    Attributes:
        base_urls: one URL per replica.
        model: the model name to request.
        api_key: sent to every replica.
        vllm_extras: ask for token ids and logprobs (vLLM).
        raw_tool_text: see :class:`~agentgym.policies.openai_client.OpenAIPolicy`.
        timeout: read timeout of one request.
        max_retries: retries per request on one replica (failover to another replica does not
            spend them).
        max_concurrency: requests in flight per client.
        weight_version: recorded on completions.
    """

    base_urls: tuple[str, ...]
    model: str
    api_key: str | None = None
    vllm_extras: bool = True
    raw_tool_text: bool | None = None
    timeout: float = 120.0
    max_retries: int = 3
    max_concurrency: int = 64
    weight_version: str | int | None = None

    def __post_init__(self) -> None:
        if not self.base_urls:
            raise ValueError("PolicySpec needs at least one base URL")

    @classmethod
    def of(cls, policy: Policy) -> PolicySpec:
        """The spec of an HTTP policy (:class:`OpenAIPolicy` or :class:`ReplicaRouter`).

        The client's tokenizer stays here: workers send chats (``/chat/completions``), not
        token continuations (``prefix_ids``).

        Raises:
            ValueError: ``policy`` lives in this process (the embedded engine, a fake): it cannot
                be rebuilt in a worker.
        """
        if isinstance(policy, ReplicaRouter):
            specs = [cls.of(replica) for replica in policy.replicas]
            return dataclasses.replace(specs[0], base_urls=tuple(s.base_urls[0] for s in specs))
        if not isinstance(policy, OpenAIPolicy):
            raise ValueError(
                f"{type(policy).__name__} runs inside this process and cannot be sent to Ray env "
                "workers; serve the model over HTTP (`agentgym serve`, vLLM or any "
                "OpenAI-compatible endpoint) and pass its base URL")
        return cls(base_urls=(policy.base_url,), model=policy.model, api_key=policy.api_key,
                   vllm_extras=policy.vllm_extras, raw_tool_text=policy.raw_tool_text,
                   timeout=policy.timeout, max_retries=policy.max_retries,
                   max_concurrency=policy.max_concurrency, weight_version=policy.weight_version)

    def build(self) -> OpenAIPolicy | ReplicaRouter:
        """A fresh client (call it in the process that uses it)."""
        kwargs: dict[str, Any] = dict(
            api_key=self.api_key, vllm_extras=self.vllm_extras, raw_tool_text=self.raw_tool_text,
            timeout=self.timeout, max_retries=self.max_retries,
            max_concurrency=self.max_concurrency, weight_version=self.weight_version)
        if len(self.base_urls) == 1:
            return OpenAIPolicy(self.base_urls[0], self.model, **kwargs)
        return ReplicaRouter.from_urls(self.base_urls, self.model, **kwargs)


class EnvWorker:
    """One env worker: a local rollout engine (its env pool) and a policy client, in a Ray actor.

    Args:
        make_env: builds an env on the worker's node (Ray pickles it with cloudpickle).
        policy: the spec the worker builds its client from.
        config: the rollout config (deadlines); sampling comes with every episode.
    """

    def __init__(self, make_env: Callable[[], AgentEnv], policy: PolicySpec,
                 config: RolloutConfig):
        self._make_env, self._spec, self._config = make_env, policy, config
        self._policy: OpenAIPolicy | ReplicaRouter | None = None
        self._engine: RolloutEngine | None = None

    async def play(self, options: dict[str, Any], sampling: SamplingParams,
                   model: tuple[str, str | int | None] | None = None) -> Trajectory:
        """Play one episode with exactly ``sampling`` (and ``model``: name and weight version,
        when the driver's client has switched to another)."""
        if model is not None and model != (self._spec.model, self._spec.weight_version):
            await self.set_model(*model)
        if self._engine is None:  # built in the actor's event loop
            self._policy = self._spec.build()
            self._engine = RolloutEngine(self._make_env, self._policy, self._config)
        return await self._engine.play_here(options, sampling)

    async def set_model(self, model: str, weight_version: str | int | None = None) -> None:
        """Request ``model`` from now on (after a weight sync)."""
        self._spec = dataclasses.replace(self._spec, model=model, weight_version=weight_version)
        if self._policy is not None:
            self._policy.set_model(model, weight_version)

    async def aclose(self) -> None:
        """Close the env pool and the policy client."""
        if self._engine is not None and self._policy is not None:
            await self._engine.aclose()
            await self._policy.aclose()
            self._engine = self._policy = None

    def pid(self) -> int:
        """The worker's process id (tests)."""
        return os.getpid()

    async def where(self) -> tuple[str, dict[str, str] | None]:
        """(Ray node id, the owner labels of the sandbox containers this process starts, or
        None when the Docker SDK is not installed here)."""
        node = _ray().get_runtime_context().get_node_id()
        if importlib.util.find_spec("docker") is None:
            return node, None
        from agentgym.sandbox.docker_backend import owner_labels  # docker: optional

        return node, owner_labels()


def reap_sandboxes(owner: Mapping[str, str], wait_s: float = 30.0) -> int:
    """Remove the sandbox containers of a dead process (run it on that process's node).

    Waits up to ``wait_s`` for the process to be gone first (``ray.kill`` is asynchronous), so
    it cannot start another container afterwards.

    Returns:
        How many containers were removed.
    """
    from agentgym.sandbox.docker_backend import DockerBackend, owner_alive  # docker: optional

    deadline = time.monotonic() + wait_s
    while owner_alive(owner) and time.monotonic() < deadline:
        time.sleep(0.1)
    backend = DockerBackend()
    try:
        return backend.remove_labeled(owner)
    finally:
        backend.client.close()


def _ray() -> Any:
    """The ray module, or an error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"Ray rollouts need Ray: {RAY_INSTALL}") from exc
    return ray


def connect(settings: RaySettings) -> None:
    """Join the cluster of ``settings.address`` (or start a local one) unless already joined."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=settings.address or "local", logging_level=logging.WARNING,
                 log_to_driver=False)


class RayEpisodes:
    """The engine's ``remote``: env workers on a Ray cluster, least-loaded dispatch.

    Args:
        make_env: as for :class:`~agentgym.rollout.RolloutEngine` (must pickle: a
            ``functools.partial`` of an importable class or function, not a local closure over
            unpicklable state).
        policy: the spec workers build their policy clients from.
        config: the rollout config (deadlines, and ``max_concurrent``: episodes in flight on
            all workers together, enforced by the driver's engine).
        settings: the cluster and worker count.
        follow: the driver's client that weight syncs switch (``set_model``); workers play
            each episode with its current model name and weight version.

    Attributes:
        workers: the actor handles (dead ones included).
        dead: indices of the workers found dead.
        lost_episodes: episodes that failed because their worker died.
        reaped_sandboxes: containers of dead workers removed (final after :meth:`aclose`).
    """

    def __init__(self, make_env: Callable[[], AgentEnv], policy: PolicySpec,
                 config: RolloutConfig, settings: RaySettings,
                 follow: OpenAIPolicy | ReplicaRouter | None = None):
        ray = _ray()
        connect(settings)
        self.settings, self.follow = settings, follow
        actor = ray.remote(EnvWorker).options(
            num_cpus=settings.num_cpus_per_worker,
            max_concurrency=settings.episodes_per_worker or config.max_concurrent,
            max_restarts=0)
        self.workers = [actor.remote(make_env, policy, config)
                        for _ in range(settings.num_workers)]
        self.in_flight = [0] * settings.num_workers
        self.dead: set[int] = set()
        self.lost_episodes = 0
        self.reaped_sandboxes = 0
        self._where = [worker.where.remote() for worker in self.workers]
        self._reaping: list[asyncio.Task[int]] = []
        episode = config.episode_timeout_s
        self._answer_timeout_s = None if episode is None else episode + settings.grace_s
        self._lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                      ray.exceptions.ObjectLostError)

    async def play(self, options: dict[str, Any], sampling: SamplingParams) -> Trajectory:
        """Play one episode on the least-loaded live worker.

        Raises:
            WorkerLostError: the worker died or did not answer in time, or none is left.
        """
        index = self._pick()
        self.in_flight[index] += 1
        model = None if self.follow is None else (self.follow.model, self.follow.weight_version)
        ref = self.workers[index].play.remote(options, sampling, model)
        try:
            async with asyncio.timeout(self._answer_timeout_s):
                return await ref
        except self._lost as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            raise self._lose(index, f"died: {type(exc).__name__}: {first_line}") from None
        except TimeoutError:  # a silent worker is ended, so its sandboxes can be reaped
            _ray().kill(self.workers[index], no_restart=True)
            raise self._lose(index, f"no answer within {self._answer_timeout_s}s") from None
        finally:
            self.in_flight[index] -= 1

    async def set_model(self, model: str, weight_version: str | int | None = None) -> None:
        """Switch every live worker's policy to ``model``."""
        await asyncio.gather(*(self.workers[i].set_model.remote(model, weight_version)
                               for i in self.live()), return_exceptions=True)

    def live(self) -> list[int]:
        """Indices of the workers not known dead."""
        return [i for i in range(len(self.workers)) if i not in self.dead]

    async def pids(self) -> list[int]:
        """The live workers' process ids, in index order."""
        return list(await asyncio.gather(*(self.workers[i].pid.remote() for i in self.live())))

    async def aclose(self) -> None:
        """Close the live workers' envs and clients, end every worker actor, and wait for the
        sandboxes of dead workers to be reaped."""
        ray = _ray()
        live = self.live()
        await asyncio.gather(*(self.workers[i].aclose.remote() for i in live),
                             return_exceptions=True)
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.dead = set(range(len(self.workers)))
        for reaped in await asyncio.gather(*self._reaping, return_exceptions=True):
            if isinstance(reaped, BaseException):
                logger.warning("could not reap a dead worker's sandboxes: %r (the next sandbox "
                               "pool on its node sweeps them)", reaped)
            else:
                self.reaped_sandboxes += reaped
        self._reaping.clear()

    def _pick(self) -> int:
        live = self.live()
        if not live:
            raise WorkerLostError(f"all {len(self.workers)} Ray env workers are dead")
        return min(live, key=lambda i: (self.in_flight[i], i))

    def _lose(self, index: int, why: str) -> WorkerLostError:
        if index not in self.dead:
            logger.warning("Ray env worker %d %s; taken out (%d left)", index, why,
                           len(self.workers) - len(self.dead) - 1)
            self.dead.add(index)
            self._reaping.append(asyncio.get_running_loop().create_task(self._reap(index)))
        self.lost_episodes += 1
        return WorkerLostError(f"Ray env worker {index} {why}")

    async def _reap(self, index: int) -> int:
        return await _reap_on_node(self._where[index], self._lost)


async def _reap_on_node(where: Any, lost: tuple[type[BaseException], ...]) -> int:
    """Reap the sandboxes of the dead worker whose ``where()`` answer is ``where``."""
    ray = _ray()
    try:
        node, owner = await where
    except lost:  # it died before saying where it was: it never started a sandbox
        return 0
    if owner is None:
        return 0
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(reap_sandboxes).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    async with asyncio.timeout(120):
        return await task.remote(owner)


def ray_rollout_engine(make_env: Callable[[], AgentEnv], policy: Policy | PolicySpec,
                       config: RolloutConfig, settings: RaySettings,
                       writer: TrajectoryWriter | None = None) -> RolloutEngine:
    """A rollout engine whose episodes run on Ray env workers.

    Args:
        make_env: builds one env (called on the workers, and once here for tasks and scoring).
        policy: an HTTP policy (or its spec); the embedded engine raises ValueError.
        config, writer: as for :class:`~agentgym.rollout.RolloutEngine`.
        settings: the cluster and worker count.
    """
    if isinstance(policy, PolicySpec):
        spec, driver_policy = policy, policy.build()
    else:
        spec = PolicySpec.of(policy)  # raises for in-process policies
        driver_policy = cast(OpenAIPolicy | ReplicaRouter, policy)
    remote = RayEpisodes(make_env, spec, config, settings, follow=driver_policy)
    return RolloutEngine(make_env, driver_policy, config, writer, remote=remote)

