"""The async rollout pipeline (``max_staleness: k > 0``): rollouts of the next steps are played
while the trainer updates on this one.

A producer task plays the step batches in order (one batch in the rollout engine at a time, so
each keeps its own sampling seed and task draw, the same ones as the on-policy loop). It may
start the rollouts of step ``s`` once the weights of step ``s - 1 - k`` are published; every
turn is tagged by the policy with the version that sampled it (``Turn.weight_version``), and
versions only grow, so when the trainer takes batch ``s`` (its weights are version ``s - 1``)
each turn's staleness ``(s - 1) - version`` is at most ``k``::

    k = 0:  gen(s)   train(s)  gen(s+1) train(s+1) ...         step = generate + train
    k = 1:  gen(s)   gen(s+1)  gen(s+2) ...                    step = max(generate, train)
                     train(s)  train(s+1) ...

:func:`staleness_filter` still checks every turn at consume time (a resumed run, a restarted
server or a policy that reports other versions can break the ordering): a group with a turn
staler than ``k`` is dropped whole (its advantages are relative within the group) and counted.
The kept turns were sampled by an older policy than the one being trained: their recorded
sampling logprobs are the behaviour policy of the importance ratio, corrected by the clipped
ratio and, with ``tis_cap``, by truncated importance sampling (see ``trainers/grpo.py``).

What "version" means per engine:

* ``hf`` (embedded, shared weights): the trainer's update runs in the engine's compute thread
  (:meth:`~agentgym.policies.hf_engine.HFEngine.run_exclusive`), so generation batches and
  the update take turns and never overlap; the version is bumped inside that same exclusive
  section, so a batch that runs right after the update is tagged with the new version. The
  pipeline overlaps env and tool time with training, not torch compute with torch compute.
* ``vllm`` with LoRA: each sync loads a new adapter name; requests in flight finish on the
  adapter (and version) they started with (the k + 1 newest adapters stay loaded), new ones go
  to the new adapter.
* ``vllm`` with full weights and ``vllm_colocated`` are refused for ``k > 0``: an in-place
  reload under concurrent generation could serve a half-written version, and the colocated
  engine sleeps while the trainer computes (nothing to overlap).

Resume: batches in flight at a checkpoint are discarded; the resumed run draws its tasks and
plays them again from the checkpoint's RNG, which had already advanced past the in-flight
draws, so a resumed ``k > 0`` run continues and completes but is not bit-identical to a
straight one (``k = 0`` resumes exactly).

Not exact with ``k > 0``: a row's ``resampled`` count (Ray resampling) may include episodes of
the batch already in flight for the next step. Several training processes each run their own
producer over their share of the groups (untested so far).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agentgym.rollout import Group

__all__ = ["RolloutPipeline", "StalenessReport", "staleness_filter"]


@dataclass
class StalenessReport:
    """What :func:`staleness_filter` kept and dropped."""

    kept: list[Group]
    """Groups whose every turn is at most ``k`` versions old."""
    dropped: int = 0
    """Groups dropped because a turn was staler than ``k``."""
    histogram: Counter[int] = field(default_factory=Counter)
    """Kept turns per staleness (0, 1, ..., k)."""

    def metrics(self, max_staleness: int) -> dict[str, int]:
        """``async/dropped_stale``, ``async/staleness_max`` and ``async/staleness_<d>`` for
        every ``d`` in ``0..k`` (zeros included, so every row has the same keys)."""
        return {"async/dropped_stale": self.dropped,
                "async/staleness_max": max(self.histogram, default=0),
                **{f"async/staleness_{d}": self.histogram[d] for d in range(max_staleness + 1)}}


def staleness_filter(groups: list[Group], current: int, max_staleness: int) -> StalenessReport:
    """Keep the groups whose turns are all at most ``max_staleness`` versions behind
    ``current`` (the version of the weights about to be trained).

    A turn's staleness is ``current - turn.weight_version``; a turn without a version (a policy
    that reports none) counts as current. Groups already ``dropped`` (infra failures) pass
    through untouched: the trainer drops and counts them itself.
    """
    report = StalenessReport(kept=[])
    for group in groups:
        ages = [current - int(turn.weight_version) if turn.weight_version is not None else 0
                for trajectory in group.trajectories for turn in trajectory.turns]
        if any(age > max_staleness for age in ages):
            report.dropped += 1
            continue
        report.kept.append(group)
        if not group.dropped:
            report.histogram.update(max(age, 0) for age in ages)
    return report


Produce = Callable[[int], Awaitable[list[Group]]]
"""Plays step ``s``'s rollouts (draws its tasks, sets its sampling seed)."""


class RolloutPipeline:
    """Plays the rollouts of steps ``first..last`` in a background task, at most
    ``max_staleness`` steps ahead of the published weights.

    Args:
        produce: plays one step's rollouts.
        first: the first step to play (the resumed step + 1).
        last: the last step.
        max_staleness: k >= 1.
        published: the version of the weights served now (the resumed step).
    """

    def __init__(self, produce: Produce, first: int, last: int, max_staleness: int,
                 published: int):
        if max_staleness < 1:
            raise ValueError("the pipeline is for max_staleness >= 1 (0 is the on-policy loop)")
        self.max_staleness = max_staleness
        self.published = published
        self._produce = produce
        self._steps = range(first, last + 1)
        self._ready: asyncio.Queue[tuple[int, list[Group] | BaseException]] = asyncio.Queue()
        self._gate = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the producer on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-producer")

    async def _run(self) -> None:
        for step in self._steps:
            async with self._gate:  # weights of step - 1 - k are served: turns will be <= k old
                await self._gate.wait_for(
                    lambda s=step: self.published >= s - 1 - self.max_staleness)
            try:
                self._ready.put_nowait((step, await self._produce(step)))
            except Exception as exc:  # handed to the trainer, which raises it
                self._ready.put_nowait((step, exc))
                return

    async def take(self, step: int) -> list[Group]:
        """Wait for step ``step``'s groups (steps come in order)."""
        if self._task is None:
            self.start()
        got, groups = await self._ready.get()
        if isinstance(groups, BaseException):
            raise groups
        if got != step:
            raise RuntimeError(f"the rollout pipeline produced step {got}, expected {step}")
        return groups

    async def publish(self, version: int) -> None:
        """The weights of ``version`` are served now: let the producer run further ahead."""
        async with self._gate:
            self.published = version
            self._gate.notify_all()

    async def aclose(self) -> None:
        """Cancel the producer (batches in flight are discarded)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
