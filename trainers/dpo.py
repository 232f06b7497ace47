"""DPO on agentgym environments: direct preference optimisation, online (pairs mined from each
step's rollout groups) or offline (pairs from a preference JSONL).

The objective (Rafailov et al., 2023, "Direct Preference Optimization"), per pair (x, y_w, y_l)::

    L_DPO = -log sigma( beta * log(pi(y_w|x) / pi_ref(y_w|x))
                      - beta * log(pi(y_l|x) / pi_ref(y_l|x)) )

where ``log pi(y|x)`` is the sum of the policy's token logprobs over y's *policy* tokens (tool
results and user turns between turns are conditioned on but masked out), and pi_ref is the
initial policy (with LoRA: the same model with its adapters disabled, no copy; full fine-tuning:
a frozen copy). ``beta * log(pi/pi_ref)`` is DPO's implicit reward; ``reward_accuracy`` (the
share of pairs whose chosen answer has the higher implicit reward) and the margin are logged.

Online / iterative DPO (``pairs: null``), one step:

1. draw ``tasks_per_step`` tasks and play ``num_generations`` episodes of each (rollout engine,
   multi-turn, tools, env rewards);
2. mine one pair per group: best vs worst episode by env reward (ties give no pair; see
   :func:`agentgym.trainers.preferences.mine_pairs`);
3. ``num_iterations`` optimiser steps on those pairs (the mean loss over pairs);
4. sync the weights to the policy and repeat.

Offline DPO (``pairs: file.jsonl``): the same loss over the file's pairs on the offline loop
(:mod:`agentgym.trainers.offline`: a seeded order per epoch, ``batch_size`` pairs per optimiser
step, ``max_steps`` steps, no rollouts).

Deviations: the reference is fixed to the initial policy (no periodic reference update); the
logprobs are taken at the sampling ``temperature`` (1.0 by default), as GRPO and PPO do, so that
online pairs are scored under the distribution that sampled them; online steps where no group
has a reward spread train on nothing (logged as ``pairs 0``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from agentgym.policies.devices import module_device
from agentgym.trainers.batch import Batch, pack, policy_logprobs
from agentgym.trainers.common import (
    ReferenceLogprobs,
    TrainingSession,
    autocast_for,
    load_trainee,
    open_session,
    run_steps,
    seed_everything,
    timed,
)
from agentgym.trainers.offline import OfflineConfig, offline_step, share_prefix
from agentgym.trainers.preferences import TokenPair, mine_pairs, read_pairs, to_token_pairs

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

__all__ = ["DPOConfig", "dpo_loss", "pair_batch", "sequence_logprobs", "train", "update"]


@dataclass
class DPOConfig(OfflineConfig):
    """DPO's settings on top of :class:`OfflineConfig`; names follow TRL's DPOConfig where the
    concept matches. ``micro_batch_size`` counts pairs (each is two sequences)."""

    beta: float = 0.1
    """beta: the inverse temperature of the implicit reward (how far pi may move from pi_ref)."""
    pairs: str | None = None
    """A preference JSONL (offline DPO; see trainers/preferences.py for the format), or None:
    online DPO on pairs mined from each step's rollout groups."""
    num_generations: int = 4
    """Online: episodes per task (a pair is the best and the worst of them)."""
    tasks_per_step: int = 8
    """Online: tasks (groups, hence at most this many pairs) per step."""
    num_iterations: int = 1
    """Online: optimiser steps on each step's pairs."""
    batch_size: int = 8
    """Offline: pairs per optimiser step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError("beta must be > 0 (it scales the implicit reward)")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: a pair needs two episodes")
        if min(self.tasks_per_step, self.num_iterations) < 1:
            raise ValueError("tasks_per_step and num_iterations must be >= 1")
        if self.max_staleness != 0:
            raise ValueError("DPO trains on-policy pairs: max_staleness must be 0")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and implicit rewards.

    Args:
        policy_chosen, policy_rejected: ``[P]`` sequence logprobs ``log pi(y|x)``.
        ref_chosen, ref_rejected: ``[P]`` the same under pi_ref.

    Returns:
        (loss ``[P]`` = ``-log sigma(r_w - r_l)``, r_w ``[P]``, r_l ``[P]``) with
        ``r = beta * (log pi - log pi_ref)`` (the rewards detached).
    """
    chosen = beta * (policy_chosen - ref_chosen)  # [P]
    rejected = beta * (policy_rejected - ref_rejected)  # [P]
    loss = -F.logsigmoid(chosen - rejected)  # [P]
    return loss, chosen.detach(), rejected.detach()


def pair_batch(pairs: list[TokenPair], pad_id: int, device: torch.device | str) -> Batch:
    """One :class:`Batch` of ``2P`` rows: the chosen sequences, then the rejected ones. The
    prefix every prompt shares (system prompt, tools, in-prompt demos) is stored and run once
    (:func:`~agentgym.trainers.offline.share_prefix`; the rest of each prompt is conditioned on
    but masked), so a pair costs its question and its two answers."""
    sequences = share_prefix([p.chosen for p in pairs] + [p.rejected for p in pairs])
    return pack(sequences, [0.0] * len(sequences), pad_id, device=device)


def sequence_logprobs(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, R]`` token logprobs -> ``[B]`` sums over the policy tokens."""
    return (logp * mask).sum(dim=1)  # [B]


def _pair_terms(model: torch.nn.Module, ref: ReferenceLogprobs, pairs: list[TokenPair],
                pad_id: int, config: DPOConfig) -> tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor, int]:
    """(loss ``[p]``, r_w, r_l, policy tokens) of one micro-batch of pairs."""
    batch = pair_batch(pairs, pad_id, module_device(model))
    with autocast_for(model, config):
        logp = policy_logprobs(model, batch, config.temperature,
                               chunk_tokens=config.logprob_chunk_tokens)[0]  # [2p, R]
    ref_logp = ref(batch)  # [2p, R]
    policy = sequence_logprobs(logp, batch.mask)  # [2p]
    reference = sequence_logprobs(ref_logp, batch.mask)  # [2p]
    p = len(pairs)
    loss, chosen, rejected = dpo_loss(policy[:p], policy[p:], reference[:p], reference[p:],
                                      config.beta)
    return loss, chosen, rejected, int(batch.mask.sum())


def update(model: torch.nn.Module, ref: ReferenceLogprobs, optimizer: torch.optim.Optimizer,
           scheduler: LRScheduler, pairs: list[TokenPair], pad_id: int, config: DPOConfig,
           iterations: int = 1) -> dict[str, float]:
    """``iterations`` optimiser steps on the mean DPO loss over ``pairs``; returns the stats
    of the last one (loss, reward accuracy, margin, implicit rewards, grad norm)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    size = config.micro_batch_size
    stats: dict[str, float] = {}
    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        totals = dict.fromkeys(("loss", "reward_accuracy", "reward_margin", "reward_chosen",
                                "reward_rejected"), 0.0)
        for start in range(0, len(pairs), size):
            part = pairs[start:start + size]
            loss, chosen, rejected, _ = _pair_terms(model, ref, part, pad_id, config)
            (loss.sum() / len(pairs)).backward()
            totals["loss"] += float(loss.detach().sum())
            totals["reward_accuracy"] += float((chosen > rejected).float().sum())
            totals["reward_margin"] += float((chosen - rejected).sum())
            totals["reward_chosen"] += float(chosen.sum())
            totals["reward_rejected"] += float(rejected.sum())
        stats = {k: v / len(pairs) for k, v in totals.items()}
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        optimizer.step()
    scheduler.step()
    return stats


def offline_loss(ref: ReferenceLogprobs, pad_id: int, config: DPOConfig):  # noqa: ANN201
    """The offline loop's ``micro_loss``: a micro-batch's share of the batch's mean DPO loss,
    with the shares of the implicit-reward statistics."""
    def micro_loss(model: torch.nn.Module, micro: list[TokenPair], batch: list[TokenPair],
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, chosen, rejected, _ = _pair_terms(model, ref, list(micro), pad_id, config)
        n = len(batch)
        return loss.sum() / n, {"reward_accuracy": float((chosen > rejected).float().sum()) / n,
                                "reward_margin": float((chosen - rejected).sum()) / n,
                                "reward_chosen": float(chosen.sum()) / n,
                                "reward_rejected": float(rejected.sum()) / n}
    return micro_loss


def draw_tasks(s: TrainingSession[DPOConfig]) -> list[str]:
    """The next online step's task ids (without replacement while the split has enough)."""
    n = len(s.task_ids)
    drawn = s.task_rng.choice(n, size=s.config.tasks_per_step,
                              replace=s.config.tasks_per_step > n, p=s.task_weights)
    return [s.task_ids[int(i)] for i in drawn]


async def online_step(step: int, s: TrainingSession[DPOConfig]) -> dict[str, Any]:
    """Rollouts -> mined pairs -> DPO update -> sync -> log, for one online step."""
    config, timings = s.config, {}
    with timed(timings, "generate"):
        groups = await s.rollouts(step, draw_tasks(s))
    with timed(timings, "score"):
        pairs, drift = to_token_pairs(mine_pairs(groups))
    stats: dict[str, float] = {}
    pad_id = s.tokenizer.pad_token_id or 0
    with timed(timings, "train"):
        if pairs:
            s.model.train()
            stats = await s.compute(update, s.model, s.ref, s.optimizer, s.scheduler, pairs,
                                    pad_id, config, config.num_iterations)
            s.model.eval()
        else:
            s.scheduler.step()
    with timed(timings, "sync"):
        await s.sync.push(s.model, step)
    batch = pair_batch(pairs, pad_id, "cpu") if pairs else None
    counts = {"pairs": len(pairs), "drift_dropped": drift,
              "dropped_groups": sum(g.dropped for g in groups),
              "episodes": sum(len(g.trajectories) for g in groups)}
    return s.log_step(step, groups, stats, timings, counts, batch)


async def train_async(config: DPOConfig, resume: str | Path | None = None) -> Path:
    """Run DPO (online, or offline when ``config.pairs`` is set); returns the run folder."""
    seed_everything(config.seed)
    model, tokenizer = load_trainee(config)
    pairs = read_pairs(config.pairs, tokenizer) if config.pairs is not None else None
    session = await open_session(config, resume, model, tokenizer,
                                 group_size=config.num_generations, kl_coef=config.beta)
    if session.world.world_size > 1:
        await session.aclose()
        raise ValueError("DPO runs in one process for now; GRPO runs under torchrun")
    if pairs is None:
        return await run_steps(session, online_step)
    assert session.ref is not None  # kl_coef = beta > 0
    step = offline_step(pairs, offline_loss(session.ref, tokenizer.pad_token_id or 0, config),
                        lambda batch: {"pairs": len(batch)})
    return await run_steps(session, step)


def train(config: DPOConfig, resume: str | Path | None = None) -> Path:
    """Sync entry point of :func:`train_async` (what ``agentgym train`` calls)."""
    return asyncio.run(train_async(config, resume))
