"""GRPO on agentgym environments: group-relative policy optimisation, multi-turn and tool-using.

The algorithm (Shao et al., 2024, "DeepSeekMath"), one step:

1. draw ``tasks_per_step`` tasks and play ``num_generations`` (G) episodes of each with the
   served policy, through the rollout engine (multi-turn, tools, env rewards);
2. advantages: within each group, ``A_i = (r_i - mean(r)) / (std(r) + eps)``, the same for
   every policy token of episode i;
3. ``num_iterations`` passes over the batch, each one optimiser step, minimising the clipped
   surrogate ``-min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A)`` per policy token
   (+ ``beta * KL(pi || pi_ref)`` per token when ``beta > 0``), aggregated by ``loss_type``;
4. sync the new weights to the policy server and repeat.

Deviations from the paper, each a known improvement and each a config switch:

* clip-higher (DAPO): ``epsilon_high`` may exceed ``epsilon`` (default 0.28 vs 0.2);
* ``loss_type``: ``"dapo"`` (default) averages over all policy tokens of the batch, ``"grpo"``
  is the paper's mean of per-sequence means, ``"dr_grpo"`` divides by a constant
  (Dr. GRPO, which also sets ``scale_rewards: false``);
* ``beta`` defaults to 0 (no KL term, no reference model), as DAPO and Dr. GRPO recommend;
* the importance ratio ``rho`` is taken against the *sampler's* logprobs (token-in/token-out:
  the ids and logprobs the server returned); with ``tis_cap`` set, the trainer first recomputes
  its own old logprobs, uses those in ``rho``, and weights each token's loss by
  ``min(pi_trainer_old / pi_sampler, tis_cap)`` (truncated importance sampling) to correct for
  a sampler (vLLM) whose numbers differ from the trainer's;
* multi-turn: tool and user tokens between turns are in the sequence (the model conditions on
  them) but masked out of the loss;
* LLM-guided exploration (``guide:``, :mod:`agentgym.guided`): tokens a guide wrote are
  trained like the policy's; their pi_old is the policy's own logprob at the update's start
  (``correction: as_policy``, ratio 1, gradient A * grad log pi) or the recorded log mu = 0
  (``importance``, ratio pi_theta, gradient A * grad pi);
* groups whose G rewards are all equal have zero advantage and are skipped (logged as
  ``zero_variance_groups``); groups with an infra failure are dropped (``dropped_groups``).
* ``max_staleness: k > 0`` (async pipeline, ``trainers/pipeline.py``): the rollouts of the
  next k steps are played while this step trains, so a step takes about max(generate, train)
  instead of their sum. Turns are then up to k weight versions old: rho is taken against their
  recorded sampling logprobs (the behaviour policy), so the clipped ratio and ``tis_cap``
  correct for the lag; groups with an older turn are dropped (``async/dropped_stale``), and
  each row has the kept turns' staleness histogram (``async/staleness_<d>``, ``_max``).

Several processes (``torchrun`` / ``accelerate launch``; see ``trainers/distributed.py``): every
rank draws the same tasks and plays its share of the groups; :func:`update` normalises each
rank's loss by the whole batch's rows and policy tokens and sums the gradients across ranks
before clipping, so a step is the single-process step on the same batch. ``fsdp: true`` (or
``accelerate launch --use_fsdp``) shards the weights over the ranks for full fine-tuning
(``trainers/fsdp.py``).

Implementation, not a deviation: the G sequences of a group share their prompt, which the
forward pass runs once per micro-batch (its key/value cache feeds the G responses; the
gradient is unchanged, see ``trainers/batch.py``), so keep ``micro_batch_size`` a multiple
of ``num_generations``.
Precision and memory (``device``, ``dtype``, ``gradient_checkpointing``, ``micro_batch_tokens``,
``logprob_chunk_tokens``; none of them changes the numbers beyond float rounding): forward
passes autocast to the compute dtype on the model's device while trained weights stay float32;
micro-batches are cut by rows and a token budget; logprobs come from the LM head in chunks of
positions, so the ``[B, T, V]`` float32 logits never exist at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agentgym.guided import guide_correction
from agentgym.policies.devices import module_device
from agentgym.rollout import Group
from agentgym.trainers.batch import Batch, micro_batches, pack, policy_logprobs
from agentgym.trainers.common import (
    ReferenceLogprobs,
    TrainerConfig,
    TrainingSession,
    autocast_for,
    load_trainee,
    open_session,
    run_steps,
    seed_everything,
    timed,
    to_sequences,
)
from agentgym.trainers.distributed import SINGLE, World, join_world
from agentgym.trainers.fsdp import (
    check_supported,
    equal_passes,
    full_value,
    shard_model,
    unsharded,
)
from agentgym.trainers.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    as_policy_logp,
    clipped_policy_loss,
    group_advantages,
    masked_mean,
    truncated_importance_weights,
)
from agentgym.trainers.pipeline import RolloutPipeline, staleness_filter
from agentgym.types import Trajectory

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

__all__ = ["GRPOConfig", "train"]


@dataclass
class GRPOConfig(TrainerConfig):
    """GRPO's settings on top of :class:`TrainerConfig`; names follow TRL's GRPOConfig where the
    concept matches."""

    num_generations: int = 8
    """G: episodes per task; advantages are relative within these."""
    tasks_per_step: int = 4
    """Tasks per optimiser step (the batch is tasks_per_step x num_generations episodes)."""
    beta: float = 0.0
    """KL coefficient to the reference policy (0: no reference model is kept)."""
    kl_estimator: str = "k3"
    """``"k1"`` or ``"k3"`` (see losses.KL_ESTIMATORS)."""
    epsilon: float = 0.2
    """Lower clip range of the importance ratio."""
    epsilon_high: float = 0.28
    """Upper clip range (DAPO's clip-higher; set equal to epsilon for the paper's GRPO)."""
    loss_type: str = "dapo"
    """Loss aggregation: ``"dapo"``, ``"grpo"`` or ``"dr_grpo"`` (see losses.AGGREGATIONS)."""
    scale_rewards: bool = True
    """Divide advantages by the group's reward std (False for Dr. GRPO)."""
    num_iterations: int = 1
    """Optimiser passes over each batch (mu in the paper)."""
    tis_cap: float | None = None
    """Truncated importance sampling cap; None uses the sampler's logprobs as the old policy."""

    def __post_init__(self) -> None:
        if self.loss_type not in AGGREGATIONS:
            raise ValueError(f"loss_type must be one of {sorted(AGGREGATIONS)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: advantages are relative in a group")
        if self.max_staleness < 0:
            raise ValueError("max_staleness must be >= 0 (0: the on-policy loop)")
        guide_correction(self.guide)  # a bad guide: block fails here, before the model loads
        if self.max_staleness > 0 and (self.engine == "vllm_colocated"
                                       or (self.engine == "vllm" and not self.lora)):
            raise ValueError(
                f"max_staleness > 0 needs engine 'hf' or 'vllm' with lora: true, not engine "
                f"{self.engine!r} with lora: {self.lora}: a full-weight reload in place could "
                "serve a half-written version to requests in flight, and the colocated engine "
                "sleeps while the trainer computes (nothing to overlap)")


# Share of the batch-level normaliser that one micro-batch carries, per loss_type: summing
# micro-batch losses weighted by it gives exactly the full-batch aggregation.
_MICRO_SHARE: dict[str, Callable[[Batch, int, int], float]] = {
    "dapo": lambda mb, tokens, rows: float(mb.mask.sum()) / max(tokens, 1),
    "grpo": lambda mb, tokens, rows: len(mb) / rows,
    "dr_grpo": lambda mb, tokens, rows: len(mb) / rows,
}


def advantages_for(groups: list[Group], scale: bool) -> tuple[list[Trajectory], list[float], int]:
    """(trajectories with signal, their advantages, number of zero-variance groups)."""
    chosen: list[Trajectory] = []
    advantages: list[float] = []
    zero_variance = 0
    for group in groups:
        rewards = torch.tensor([[float(r) for r in group.rewards]])  # [1, G], host-side
        if float(rewards.std()) == 0.0:
            zero_variance += 1
            continue
        group_adv = group_advantages(rewards, scale_by_std=scale)[0]  # [G]
        chosen.extend(group.trajectories)
        advantages.extend(group_adv.tolist())
    return chosen, advantages, zero_variance


def update(model: torch.nn.Module, ref: ReferenceLogprobs | None,
           optimizer: torch.optim.Optimizer, scheduler: LRScheduler, batch: Batch | None,
           config: GRPOConfig, world: World = SINGLE) -> dict[str, float]:
    """``num_iterations`` optimiser steps on one batch; returns loss statistics.

    With several ranks, ``batch`` is this rank's share (None if it has no sequences; the rank
    still joins the reductions): the loss is normalised by the global rows and tokens, the
    gradients are summed over ranks before clipping, and the statistics are summed likewise.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    local = {"rows": len(batch), "tokens": int(batch.mask.sum())} if batch is not None \
        else {"rows": 0, "tokens": 0}
    totals = world.sum(local)  # the whole batch's, over every rank
    rows, tokens = totals["rows"], totals["tokens"]
    max_len = config.max_completion_length
    aggregate, share = AGGREGATIONS[config.loss_type], _MICRO_SHARE[config.loss_type]
    chunk = config.logprob_chunk_tokens
    micro = [] if batch is None else micro_batches(batch, config.micro_batch_size,
                                                   config.micro_batch_tokens)
    pads = 0
    if world.sharded:  # FSDP: as many passes as the busiest rank (zero-weight padding)
        micro, pads = equal_passes(micro, world, module_device(model))
    old, weights = old_logprobs(model, micro, config)
    # correction as_policy (agentgym.guided): guide tokens' pi_old is the policy's own logprob,
    # taken from the first pass's forward (with tis_cap, old_logprobs already recomputed it)
    guide_as_policy = guide_correction(config.guide) == "as_policy" and config.tis_cap is None
    refs = [ref(mb) for mb in micro] if ref is not None else [None] * len(micro)
    stats: dict[str, float] = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0}
    for iteration in range(config.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        for index, (mb, old_logp, weight, ref_logp) in enumerate(
                zip(micro, old, weights, refs, strict=True)):
            with autocast_for(model, config):
                logp, entropy = policy_logprobs(model, mb, config.temperature, True, chunk)
            if index >= len(micro) - pads:  # padding: FSDP's collectives, a zero gradient
                (logp.sum() * 0.0).backward()
                continue
            if guide_as_policy and iteration == 0:  # ratio 1 on guide tokens at the first pass
                old_logp = old[index] = as_policy_logp(old_logp, logp, mb.guide)
            loss_tok, clipped = clipped_policy_loss(logp, old_logp, mb.advantages,
                                                    config.epsilon, config.epsilon_high)
            if weight is not None:
                loss_tok = loss_tok * weight  # [B, R]
            if ref_logp is not None:
                kl = KL_ESTIMATORS[config.kl_estimator](logp, ref_logp)  # [B, R]
                loss_tok = loss_tok + config.beta * kl
                stats["kl"] += float(masked_mean(kl.detach(), mb.mask)) * len(mb) / rows
            part = share(mb, tokens, rows)
            loss = aggregate(loss_tok, mb.mask, max_len) * part
            loss.backward()
            stats["loss"] += float(loss.detach())
            stats["entropy"] += float(masked_mean(entropy, mb.mask)) * part
            stats["clip_fraction"] += float(masked_mean(clipped, mb.mask)) * part
        world.reduce_gradients(params)
        norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        stats["grad_norm"] = float(full_value(norm))
        optimizer.step()
    scheduler.step()
    n = config.num_iterations
    summed = world.sum({k: v for k, v in stats.items() if k != "grad_norm"})
    return {**{k: v / n for k, v in summed.items()}, "grad_norm": stats["grad_norm"]}


def old_logprobs(model: torch.nn.Module, micro: list[Batch], config: GRPOConfig,
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Per micro-batch, pi_old's logprobs ``[b, R]`` and the truncated-IS weights (None each
    without ``tis_cap``): the sampler's recorded logprobs, or with ``tis_cap`` the trainer's
    own recomputation, weighted by ``min(pi_trainer_old / behaviour, tis_cap)``, where a guide
    token's behaviour logprob is the recomputed one under ``correction: as_policy`` (weight 1)
    and the recorded log mu = 0 under ``importance``."""
    if config.tis_cap is None:
        return [mb.sampler_logp for mb in micro], [None] * len(micro)
    with torch.no_grad(), autocast_for(model, config):
        old = [policy_logprobs(model, mb, config.temperature,
                               chunk_tokens=config.logprob_chunk_tokens)[0] for mb in micro]
    as_policy = guide_correction(config.guide) == "as_policy"
    behaviour = [as_policy_logp(mb.sampler_logp, o, mb.guide) if as_policy else mb.sampler_logp
                 for o, mb in zip(old, micro, strict=True)]
    weights: list[torch.Tensor | None] = [
        truncated_importance_weights(o, b, config.tis_cap)
        for o, b in zip(old, behaviour, strict=True)]
    return old, weights


def draw_tasks(s: TrainingSession[GRPOConfig]) -> list[str]:
    """The next step's ``tasks_per_step`` task ids, from the session's task RNG (by the tasks'
    weights for a mixture of envs)."""
    if s.task_weights is not None:
        drawn = s.task_rng.choice(len(s.task_ids), size=s.config.tasks_per_step,
                                  p=s.task_weights)
    else:
        drawn = s.task_rng.integers(len(s.task_ids), size=s.config.tasks_per_step)
    return [s.task_ids[int(i)] for i in drawn]


async def one_step(step: int, s: TrainingSession[GRPOConfig],
                   pipeline: RolloutPipeline | None = None) -> dict[str, Any]:
    """Rollouts -> advantages -> update -> sync -> log, for one step; with a ``pipeline``
    (``max_staleness > 0``) the rollouts were played ahead, and stale groups are dropped."""
    config, timings = s.config, {}
    trainable, async_counts = None, {}
    with timed(timings, "generate"):  # with a pipeline: the wait for this step's rollouts
        if pipeline is None:
            with unsharded(s.model):  # FSDP: the engine generates from the full weights
                groups = await s.rollouts(step, draw_tasks(s))
        else:
            groups = await pipeline.take(step)
            report = staleness_filter(groups, pipeline.published, config.max_staleness)
            trainable, async_counts = report.kept, report.metrics(config.max_staleness)
    with timed(timings, "score"):
        usable = [g for g in (groups if trainable is None else trainable) if not g.dropped]
        trajectories, advantages, zero_variance = advantages_for(usable, config.scale_rewards)
        sequences, advantages, drift = to_sequences(trajectories, advantages)
    stats: dict[str, float] = {}
    batch = pack(sequences, advantages, s.tokenizer.pad_token_id or 0,
                 device=module_device(s.model)) if sequences else None
    with timed(timings, "train"):
        if s.world.sum({"rows": len(sequences)})["rows"]:  # every rank updates, or none
            s.model.train()
            stats = await s.compute(update, s.model, s.ref, s.optimizer, s.scheduler, batch,
                                    config, s.world, version=None if pipeline is None else step)
            s.model.eval()
    with timed(timings, "sync"):
        await s.sync.push(s.model, step)
        if pipeline is not None:
            await pipeline.publish(step)
    dropped = len(groups) - len(usable) - async_counts.get("async/dropped_stale", 0)
    counts = {"zero_variance_groups": zero_variance, "dropped_groups": dropped,
              "drift_dropped": drift, "episodes": sum(len(g.trajectories) for g in groups),
              **async_counts}
    if config.guide is not None:  # of policy_tokens, how many a guide wrote
        counts["guide_tokens"] = int(batch.guide.sum()) if batch is not None \
            and batch.guide is not None else 0
    return s.log_step(step, groups, stats, timings, counts, batch)


StepFunction = Callable[[int, TrainingSession[GRPOConfig]], Awaitable[dict[str, Any]]]


async def step_function(s: TrainingSession[GRPOConfig]) -> StepFunction:
    """:func:`one_step`, or with ``max_staleness > 0`` :func:`one_step` fed by a started
    :class:`~agentgym.trainers.pipeline.RolloutPipeline` (closed with the session)."""
    if s.config.max_staleness == 0:
        return one_step
    if getattr(s.policy, "weight_version", None) != s.start:  # resumed: tag turns correctly
        await s.sync.push(s.model, s.start)
    pipeline = RolloutPipeline(lambda step: s.rollouts(step, draw_tasks(s)), s.start + 1,
                               s.config.max_steps, s.config.max_staleness, published=s.start)
    s.on_close.append(pipeline.aclose)
    pipeline.start()
    return functools.partial(one_step, pipeline=pipeline)


async def train_async(config: GRPOConfig, resume: str | Path | None = None) -> Path:
    """Run GRPO; returns the run folder. ``resume`` continues a run folder exactly."""
    seed_everything(config.seed)
    world = join_world(config.distributed_timeout_s, fsdp=config.fsdp)  # first: sets the GPU
    if world.sharded:  # fsdp: true, or accelerate's FSDP launch (recorded in config.yaml)
        check_supported(config)
        config = dataclasses.replace(config, fsdp=True)
    model, tokenizer = load_trainee(config)
    if world.sharded:
        shard_model(model)
    session = await open_session(config, resume, model, tokenizer, world=world,
                                 group_size=config.num_generations, kl_coef=config.beta)
    return await run_steps(session, await step_function(session))


def train(config: GRPOConfig, resume: str | Path | None = None) -> Path:
    """Sync entry point of :func:`train_async` (what ``agentgym train`` calls)."""
    return asyncio.run(train_async(config, resume))
