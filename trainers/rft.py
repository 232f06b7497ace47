"""RFT: rejection-sampling fine-tuning (expert iteration) on an agentgym environment.

Round r (every ``steps_per_round`` optimiser steps):

1. draw ``tasks_per_round`` train tasks and play ``num_generations`` episodes of each with the
   current policy (multi-turn, tools, the env's verifiable reward);
2. keep the episodes whose reward is at least ``reward_threshold`` (rejection sampling);
3. ``steps_per_round`` SFT steps on the kept episodes (with ``accumulate``, those of every
   round so far), minimising, with m_t = 1 on policy tokens::

       L_RFT(theta) = - sum_{tau in B} sum_t m_t log pi_theta(a_t | s_<t)
                      / sum_{tau in B} sum_t m_t,      B drawn from {tau : R(tau) >= threshold}

   i.e. SFT (``trainers/sft.py``) on the policy's own successes; the sequences are the
   sampled token ids (token-in/token-out), tool and user tokens masked.

Deviations and choices:

* the kept episodes of each round are written to ``RUN_DIR/rft/round_<r>.jsonl``; a resumed
  run reads them back instead of playing the round again (so it continues exactly);
* a round with no kept episode (and nothing accumulated) takes no optimiser step; its rows log
  the rollouts only;
* as in GRPO, episodes spoiled by an infra error are never kept, and drift drops a sequence.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentgym.rollout import Group
from agentgym.tokens import TokenSequence
from agentgym.trainers.common import (
    TrainingSession,
    load_trainee,
    open_session,
    run_steps,
    seed_everything,
    timed,
    to_sequences,
)
from agentgym.trainers.distributed import join_world
from agentgym.trainers.offline import (
    OfflineConfig,
    batch_indices,
    log_offline_step,
    optimizer_step,
    share_prefix,
    token_count,
)
from agentgym.trainers.sft import nll_loss
from agentgym.trajectory_io import TrajectoryWriter, read_trajectories
from agentgym.types import Trajectory

__all__ = ["RFTConfig", "keep_successes", "round_tasks", "train", "train_async"]

logger = logging.getLogger(__name__)


@dataclass
class RFTConfig(OfflineConfig):
    """RFT's settings on top of :class:`OfflineConfig` (``batch_size`` sequences per step)."""

    tasks_per_round: int = 16
    """Tasks played at the start of each round."""
    num_generations: int = 4
    """Episodes per task in a round."""
    steps_per_round: int = 4
    """Optimiser steps after each round's rollouts."""
    reward_threshold: float = 1.0
    """Keep episodes whose reward is at least this."""
    accumulate: bool = True
    """Train on the kept episodes of every round so far (False: this round's only)."""
    learning_rate: float = 2e-4
    """AdamW learning rate (LoRA adapters take a larger one than full fine-tuning)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.tasks_per_round, self.num_generations, self.steps_per_round) < 1:
            raise ValueError("tasks_per_round, num_generations and steps_per_round must be >= 1")


def keep_successes(groups: list[Group], threshold: float) -> list[Trajectory]:
    """The episodes of ``groups`` (dropped groups and failed episodes excluded) whose reward
    is at least ``threshold``, in order."""
    return [t for g in groups if not g.dropped for t in g.trajectories
            if t.error is None and t.reward is not None and t.reward >= threshold]


def round_tasks(task_ids: list[str], count: int, seed: int, round_index: int) -> list[str]:
    """Round ``round_index``'s tasks: ``count`` distinct ids (all if fewer), a function of
    (seed, round) alone."""
    rng = np.random.default_rng([seed, round_index])
    picked = rng.choice(len(task_ids), size=min(count, len(task_ids)), replace=False)
    return [task_ids[int(i)] for i in picked]


class _Rounds:
    """The kept episodes of each round: played once, saved, read back on resume."""

    def __init__(self, s: TrainingSession[RFTConfig]):
        self.s = s
        self.folder = s.run.path / "rft"
        self.kept: dict[int, list[Trajectory]] = {}

    def _path(self, r: int) -> Path:
        return self.folder / f"round_{r}.jsonl"

    async def play(self, r: int, step: int) -> dict[str, Any]:
        """Play round ``r`` (at step ``step``) unless it is on disk; returns rollout metrics."""
        if self._path(r).exists():
            self.kept[r] = list(read_trajectories(self._path(r)))
            return {}
        config = self.s.config
        groups = await self.s.rollouts(step, round_tasks(self.s.task_ids, config.tasks_per_round,
                                                         config.seed, r))
        kept = keep_successes(groups, config.reward_threshold)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self._path(r).with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        with TrajectoryWriter(tmp) as writer:
            for trajectory in kept:
                writer.write(trajectory)
        os.replace(tmp, self._path(r))
        self.kept[r] = kept
        rewards = [x for g in groups if not g.dropped for x in g.rewards if x is not None]
        return {"reward_mean": float(np.mean(rewards)) if rewards else math.nan,
                "episodes": sum(len(g.trajectories) for g in groups), "kept": len(kept),
                "dropped_groups": sum(g.dropped for g in groups)}

    def data(self, r: int) -> list[TokenSequence]:
        """The sequences round ``r`` trains on."""
        for earlier in range(r + 1):
            if earlier not in self.kept and self._path(earlier).exists():
                self.kept[earlier] = list(read_trajectories(self._path(earlier)))
        rounds = range(r + 1) if self.s.config.accumulate else [r]
        chosen = [t for i in rounds for t in self.kept.get(i, [])]
        sequences, _, _ = to_sequences(chosen, [0.0] * len(chosen))
        return share_prefix(sequences)


async def one_step(step: int, s: TrainingSession[RFTConfig], rounds: _Rounds) -> dict[str, Any]:
    """Round start: rollouts and filter; then one SFT step on the kept episodes."""
    config, timings = s.config, {}
    r, offset = divmod(step - 1, config.steps_per_round)
    counts: dict[str, Any] = {"round": r}
    if offset == 0:
        with timed(timings, "generate"):
            counts.update(await rounds.play(r, step))
    data = rounds.data(r)
    stats: dict[str, float] = {}
    if data:
        indices = batch_indices(len(data), config.batch_size, offset + 1, config.seed + r,
                                config.shuffle)
        batch = [data[i] for i in indices]
        loss = functools.partial(nll_loss, s.tokenizer.pad_token_id or 0,
                                 config.logprob_chunk_tokens)
        with timed(timings, "train"):
            s.model.train()
            stats = await s.compute(optimizer_step, s.model, s.optimizer, s.scheduler, batch,
                                    loss, config)
            s.model.eval()
        counts["tokens"] = token_count(batch)
    with timed(timings, "sync"):
        await s.sync.push(s.model, step)
    counts["examples"] = len(data)
    return log_offline_step(s, step, stats, timings, counts)


async def train_async(config: RFTConfig, resume: str | Path | None = None) -> Path:
    """Run RFT; returns the run folder. ``resume`` continues a run folder exactly."""
    seed_everything(config.seed)
    world = join_world(config.distributed_timeout_s)
    model, tokenizer = load_trainee(config)
    session = await open_session(config, resume, model, tokenizer, world=world,
                                 group_size=config.num_generations, kl_coef=0.0)
    return await run_steps(session, functools.partial(one_step, rounds=_Rounds(session)))


def train(config: RFTConfig, resume: str | Path | None = None) -> Path:
    """Sync entry point of :func:`train_async` (``agentgym train --algorithm rft``)."""
    return asyncio.run(train_async(config, resume))
