"""``agentgym eval`` as a library: N tasks x K rollouts of one env against one policy, on disk.

    result = evaluate("agentgym/Calculator-v0", "my-model", base_url="http://127.0.0.1:8000/v1",
                      num_examples=50, rollouts_per_example=4)
    result.summary["mean_reward"], result.summary["pass_at_k"]["4"], result.run_dir

The policy is any OpenAI-compatible endpoint (``base_url``), the embedded engine
(``engine="hf"``), a vLLM server started for the run (``engine="vllm"``), or a ready
:class:`~agentgym.policy.Policy` object. Before the first rollout the endpoint is checked with
one cheap request (``GET /models``): a server that is down or refuses the credentials raises at
once instead of producing a run full of failed rollouts.

The tasks are the first ``num_examples`` of the split, in the env's order, so two models
evaluated with the same settings see the same tasks. Rollouts run through
:class:`~agentgym.rollout.RolloutEngine` (groups of K, bounded concurrency, deadlines, error
isolation); with ``ray=RaySettings(...)`` they run on env workers of a Ray cluster
(:mod:`agentgym.ray_rollout`; the policy must then be an HTTP endpoint the workers can reach).
A rollout that fails for a reason outside the model is written as a row with its
error class and no reward: counted, never scored 0, never fatal. Only failures that would spoil
every rollout stop the run: HTTP 401/403 (credentials) and 404 (no such model or route).

Files: see :mod:`agentgym.eval.runs`. ``resume=True`` continues the newest unfinished run of
the same (env, model) -- same settings required -- playing only the tasks whose group is not yet
complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentgym import __version__
from agentgym.errors import PolicyHTTPError
from agentgym.eval.endpoint import given_policy, open_policy
from agentgym.eval.runs import (
    ResultsWriter,
    find_unfinished_run,
    new_run_dir,
    read_metadata,
    read_results,
    reconcile,
    result_row,
    write_metadata,
)
from agentgym.eval.stats import summarize, summarize_by_env
from agentgym.policy import Policy, SamplingParams
from agentgym.registry import env_class, make, spec
from agentgym.rollout import Group, RolloutConfig, RolloutEngine
from agentgym.trajectory_io import TrajectoryWriter
from agentgym.types import Trajectory

if TYPE_CHECKING:
    from agentgym.ray_rollout import RaySettings

__all__ = ["COMPARABLE_SETTINGS", "EvalProgress", "EvalResult", "EvalSettings", "evaluate",
           "select_tasks"]

logger = logging.getLogger(__name__)

METADATA_SCHEMA_VERSION = 1
COMPARABLE_SETTINGS = ("split", "rollouts_per_example", "temperature", "top_p", "max_tokens",
                       "pass_threshold", "env_kwargs")
"""Settings that change what a score means: runs differing in one are never pooled (the number
of tasks is compared too). Seed, concurrency and deadlines are not among them."""

_FATAL_STATUS = {401: "refused the credentials", 403: "refused the credentials",
                 404: "does not know the model or route"}
"""Policy HTTP statuses that every other rollout would hit too: the run stops on the first."""


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate.

    Attributes:
        split: the task split to draw from (``"eval"`` normally).
        num_examples: the first N tasks of the split (None: all of them).
        rollouts_per_example: K samples per task (pass@k is reported for k <= K).
        temperature: sampling temperature; None means 0 (greedy) for K = 1 and 1.0 for K > 1.
        top_p: nucleus sampling mass.
        max_tokens: completion length cap per turn.
        seed: base sampling seed (sample i of a task uses seed + i); None sends none.
        pass_threshold: a rollout passes when its reward is >= this.
        env_kwargs: extra arguments for :func:`agentgym.make` (budgets, task options).
        max_concurrent: rollouts in flight at once.
        turn_timeout_s: deadline of one policy call (None: none).
        episode_timeout_s: deadline of one rollout (None: none).
        ray: play rollouts on env workers of a Ray cluster (None: in this process).
    """

    split: str = "eval"
    num_examples: int | None = None
    rollouts_per_example: int = 1
    temperature: float | None = None
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = 0
    pass_threshold: float = 1.0
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_concurrent: int = 8
    turn_timeout_s: float | None = 120.0
    episode_timeout_s: float | None = 900.0
    ray: RaySettings | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.split, str) or not self.split:  # make() checks the env has it
            raise ValueError(f"split must be a split name like 'eval', got {self.split!r}")
        if self.rollouts_per_example < 1 or self.max_concurrent < 1 or self.max_tokens < 1:
            raise ValueError("rollouts_per_example, max_concurrent and max_tokens must be >= 1")
        if self.num_examples is not None and self.num_examples < 1:
            raise ValueError("num_examples must be >= 1 (or None for all tasks)")

    def resolved(self) -> EvalSettings:
        """These settings with the temperature default filled in."""
        if self.temperature is not None:
            return self
        return dataclasses.replace(self, temperature=0.0 if self.rollouts_per_example == 1
                                   else 1.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record of every setting."""
        return {**dataclasses.asdict(self), "env_kwargs": dict(self.env_kwargs)}

    def sampling(self) -> SamplingParams:
        """The per-turn sampling parameters."""
        resolved = self.resolved()
        assert resolved.temperature is not None
        return SamplingParams(temperature=resolved.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=self.seed)


@dataclass(frozen=True)
class EvalProgress:
    """A progress report, sent after every finished group of K rollouts.

    Attributes:
        done: rollouts finished (earlier segments of a resumed run included).
        total: rollouts the run will have.
        mean_reward: running mean over scored rollouts (nan before the first).
        errors: failed rollouts so far.
        elapsed_s: wall time of this segment.
        eta_s: estimated seconds left (None until a rate is known).
    """

    done: int
    total: int
    mean_reward: float
    errors: int
    elapsed_s: float
    eta_s: float | None


@dataclass(frozen=True)
class EvalResult:
    """A finished run: where it is, its metadata and its summary (see :func:`stats.summarize`)."""

    run_dir: Path
    metadata: dict[str, Any]
    summary: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows of ``results.jsonl``."""
        return read_results(self.run_dir)


# --- the run ----------------------------------------------------------------------------------


def select_tasks(env_id: str, settings: EvalSettings) -> list[str]:
    """The ids of the tasks a run plays: the first ``num_examples`` of the split, in order."""
    env = make(env_id, split=settings.split, **dict(settings.env_kwargs))
    try:
        ids = [task.id for task in env.tasks]
    finally:
        env.close()
    return ids[: settings.num_examples] if settings.num_examples else ids


class _TimedEngine(RolloutEngine):
    """The rollout engine, timing each rollout from the moment it holds a slot."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.latency: dict[tuple[str, int], float] = {}
        self._gate = asyncio.Semaphore(self.config.max_concurrent)

    async def run_episode(self, options: dict[str, Any], sample_index: int = 0) -> Trajectory:
        """Play one rollout and remember how long it took (queueing excluded)."""
        async with self._gate:  # same size as the engine's own slots: those never block now
            started = time.monotonic()
            trajectory = await super().run_episode(options, sample_index)
            self.latency[(str(options.get("task_id")), sample_index)] = \
                time.monotonic() - started
            return trajectory


@dataclass
class _Tally:
    """Running counts for progress reports."""

    done: int
    total: int
    reward_sum: float = 0.0
    scored: int = 0
    errors: int = 0
    done_at_start: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self.done += 1
            if row.get("error") is not None:
                self.errors += 1
            elif row.get("reward") is not None:
                self.reward_sum += float(row["reward"])
                self.scored += 1

    def progress(self) -> EvalProgress:
        elapsed = time.monotonic() - self.started
        new = self.done - self.done_at_start
        eta = elapsed / new * (self.total - self.done) if new else None
        mean = self.reward_sum / self.scored if self.scored else float("nan")
        return EvalProgress(self.done, self.total, mean, self.errors, elapsed, eta)


def _check_fatal(trajectories: Sequence[Trajectory]) -> None:
    """Raise when a rollout failed in a way every other rollout will too (auth, no model)."""
    for trajectory in trajectories:
        error = trajectory.error
        if (error is not None and error.type == PolicyHTTPError.__name__
                and error.status_code in _FATAL_STATUS):
            raise PolicyHTTPError(f"the endpoint {_FATAL_STATUS[error.status_code]} "
                                  f"(HTTP {error.status_code}): {error.message[:200]}",
                                  error.status_code)


async def _play(env_id: str, settings: EvalSettings, policy: Policy, task_ids: Sequence[str],
                run_dir: Path, tally: _Tally,
                on_progress: Callable[[EvalProgress], None] | None) -> None:
    """Play every group of ``task_ids``, appending rows and trajectories as groups finish."""
    config = RolloutConfig(
        group_size=settings.rollouts_per_example, max_concurrent=settings.max_concurrent,
        turn_timeout_s=settings.turn_timeout_s, episode_timeout_s=settings.episode_timeout_s,
        sampling=settings.sampling(), on_infra_error="drop")
    make_env = functools.partial(make, env_id, split=settings.split, **dict(settings.env_kwargs))
    remote = None
    if settings.ray is not None:  # httpx and ray: imported only with the switch on
        from agentgym.ray_rollout import PolicySpec, RayEpisodes

        remote = RayEpisodes(make_env, PolicySpec.of(policy), config, settings.ray)
    engine = _TimedEngine(make_env, policy, config, remote=remote)
    trajectories = TrajectoryWriter(run_dir / "trajectories.jsonl")
    results = ResultsWriter(run_dir / "results.jsonl")
    failure: list[BaseException] = []
    stop = asyncio.Event()

    def record(group: Group) -> None:
        if failure:
            return
        try:
            rows = [result_row(t, i, engine.latency.get((group.task_id, i)),
                               settings.pass_threshold) for i, t in enumerate(group.trajectories)]
            for trajectory in group.trajectories:
                trajectories.write(trajectory)
            results.write_rows(rows)
            tally.add(rows)
            _check_fatal(group.trajectories)
            if on_progress is not None:
                on_progress(tally.progress())
        except BaseException as exc:  # stop the run; re-raised below, after clean-up
            failure.append(exc)
            stop.set()

    runner = asyncio.ensure_future(engine.run_groups(task_ids, on_group=record))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        runner.cancel()
        stopper.cancel()
        await asyncio.gather(runner, stopper, return_exceptions=True)
        await engine.aclose()
        trajectories.close()
        results.close()
    if failure:
        raise failure[0]
    runner.result()


# --- metadata ---------------------------------------------------------------------------------


def _git_commit() -> str | None:
    """The commit of the agentgym checkout, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _new_metadata(env_id: str, model: str, engine: str | None, endpoint: str,
                  settings: EvalSettings, task_ids: Sequence[str]) -> dict[str, Any]:
    env_spec = spec(env_id)
    return {
        "schema_version": METADATA_SCHEMA_VERSION, "status": "running",
        "env_id": env_id, "env_name": env_spec.name, "env_version": env_spec.version,
        "env_family": getattr(env_class(env_id), "family", "other"),
        "model": model, "engine": engine or "openai", "endpoint": endpoint,
        "settings": settings.to_dict(), "task_ids": list(task_ids),
        "agentgym_version": __version__, "git_commit": _git_commit(),
        "python": platform.python_version(), "started_at": _now(), "finished_at": None,
        "wall_time_s": 0.0, "segments": 0,
        "counts": {"tasks": len(task_ids),
                   "rollouts_expected": len(task_ids) * settings.rollouts_per_example,
                   "rollouts_done": 0, "errors": 0},
    }


def _resume_target(out: str | Path, env_id: str, model: str, settings: EvalSettings,
                   task_ids: Sequence[str]) -> tuple[Path, dict[str, Any]] | None:
    """The unfinished run to continue, after checking it was started the same way."""
    run_dir = find_unfinished_run(out, env_id, model)
    if run_dir is None:
        logger.info("no unfinished run of %s with %s under %s: starting a new one",
                    env_id, model, out)
        return None
    metadata = read_metadata(run_dir)
    stored = metadata.get("settings", {})
    wanted = settings.to_dict()
    differ = [k for k in (*COMPARABLE_SETTINGS, "num_examples", "seed")
              if stored.get(k) != wanted.get(k)]
    if differ or metadata.get("task_ids") != list(task_ids):
        what = ", ".join(f"{k}={stored.get(k)!r} (now {wanted.get(k)!r})" for k in differ) \
            or "the task list"
        raise ValueError(f"cannot resume {run_dir}: it was started with different settings "
                         f"({what}); pass the same settings, or drop --resume for a new run")
    return run_dir, metadata


def evaluate(env_id: str, model: str, *, base_url: str | None = None,
             api_key: str | None = None, engine: str | None = None,
             policy: Policy | None = None, settings: EvalSettings | None = None,
             out: str | Path = "runs/eval", resume: bool = False, token_ids: bool = False,
             on_progress: Callable[[EvalProgress], None] | None = None,
             **overrides: Any) -> EvalResult:
    """Evaluate ``model`` on ``env_id`` and write the run to ``out`` (see the module docs).

    Args:
        env_id: a registered id, e.g. ``agentgym/Calculator-v0``.
        model: the model's name (as served, or a local path with ``engine``); recorded as is.
        base_url, api_key, engine, token_ids: where the policy is (see :func:`open_policy`).
        policy: a ready Policy instead (``model`` is then only a label); not closed here.
        settings: an :class:`EvalSettings`; ``**overrides`` replace its fields
            (``num_examples=20, rollouts_per_example=4, ...``).
        out: the root folder of eval runs.
        resume: continue the newest unfinished run of (env, model) instead of starting anew.
        on_progress: called after every finished group (from the event loop: keep it quick).

    Raises:
        UnknownEnvError: no such env (the message suggests close ids).
        PolicyError: the endpoint is down or refuses the credentials, or the engine cannot start.
        ValueError: bad settings, or ``resume`` onto a run started with other settings.
    """
    settings = dataclasses.replace(settings or EvalSettings(), **overrides).resolved()
    task_ids = select_tasks(env_id, settings)  # unknown env ids fail here, before any I/O
    opener = given_policy(policy) if policy is not None else open_policy(
        model, base_url=base_url, api_key=api_key, engine=engine,
        max_concurrent=settings.max_concurrent, token_ids=token_ids)
    return asyncio.run(_evaluate(env_id, model, engine, opener, settings, task_ids, Path(out),
                                 resume, on_progress))


async def _evaluate(env_id: str, model: str, engine: str | None,
                    opener: contextlib.AbstractAsyncContextManager[tuple[Policy, str]],
                    settings: EvalSettings, task_ids: list[str], out: Path, resume: bool,
                    on_progress: Callable[[EvalProgress], None] | None) -> EvalResult:
    target = _resume_target(out, env_id, model, settings, task_ids) if resume else None
    async with opener as (policy, endpoint):
        if target is None:
            run_dir = new_run_dir(out, env_id, model)
            metadata = _new_metadata(env_id, model, engine, endpoint, settings, task_ids)
            done: set[str] = set()
        else:
            run_dir, metadata = target
            done = reconcile(run_dir, settings.rollouts_per_example)
            logger.info("resuming %s: %d of %d tasks already done", run_dir, len(done),
                        len(task_ids))
        metadata["segments"] = int(metadata.get("segments", 0)) + 1
        write_metadata(run_dir, metadata)
        k = settings.rollouts_per_example
        tally = _Tally(done=0, total=len(task_ids) * k)
        tally.add(read_results(run_dir))  # earlier segments count towards done / mean
        tally.done_at_start = tally.done
        if on_progress is not None:
            on_progress(tally.progress())
        remaining = [t for t in task_ids if t not in done]
        started = time.monotonic()
        try:
            if remaining:
                await _play(env_id, settings, policy, remaining, run_dir, tally, on_progress)
        finally:
            rows = read_results(run_dir)
            metadata["wall_time_s"] = float(metadata.get("wall_time_s", 0.0)) + \
                time.monotonic() - started
            metadata["counts"].update(rollouts_done=len(rows),
                                      errors=sum(r.get("error") is not None for r in rows))
            write_metadata(run_dir, metadata)
    summary = summarize(rows, k_max=k)
    if by_env := summarize_by_env(rows, k_max=k):  # a mixture of envs: each one's numbers
        summary["by_env"] = by_env
    summary["wall_time_s"] = metadata["wall_time_s"]
    metadata.update(status="finished", finished_at=_now(), summary=summary)
    write_metadata(run_dir, metadata)
    return EvalResult(run_dir, read_metadata(run_dir), summary)
