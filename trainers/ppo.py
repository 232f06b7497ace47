"""PPO on agentgym environments: actor-critic with a value head, multi-turn and tool-using.

The algorithm (Schulman et al., 2017, "Proximal Policy Optimization"; GAE from Schulman et al.,
2016; the RLHF recipe of Ziegler et al., 2019, Stiennon et al., 2020 and Ouyang et al., 2022),
one step:

1. draw ``tasks_per_step`` tasks and play ``num_generations`` episodes of each (1 is enough: PPO
   needs no groups) with the served policy, through the rollout engine (multi-turn, tools, env
   rewards);
2. one no-grad pass of the trainer over the batch gives, per response token, pi_old's logprob and
   the value ``V(s_t)`` (a linear value head on the final hidden state that predicts token t);
   with ``kl_coef > 0`` a pass of the reference policy pi_ref gives its logprobs;
3. per-token rewards (the RLHF objective ``r - beta * log(pi / pi_ref)``):
   ``r_t = -kl_coef * KL_t`` on every policy token, plus the episode reward on the episode's last
   policy token (``KL_t = log pi_old - log pi_ref`` with the default ``k1`` estimator), plus
   each turn's own reward terms on that turn's last policy token: the potential-based shaping
   ``F_k = gamma_s * Phi(s_{k+1}) - Phi(s_k)`` of turn k (weighted, as the trajectory's
   ``turn_rewards`` records them; see ``agentgym.rewards.shaping``), which the episode reward
   then excludes, so shaping gives credit where the turn ends instead of at the episode's end;
4. GAE(gamma, lam) over the policy tokens only, returns ``R_t = A_t + V_t``; advantages whitened
   over the batch's policy tokens;
5. ``num_ppo_epochs`` passes over the batch, each in ``num_mini_batches`` shuffled minibatches of
   episodes, one optimiser step each, on the token mean over the minibatch's policy tokens of
   ``-min(rho * A, clip(rho, 1 - cliprange, 1 + cliprange) * A)``
   ``+ vf_coef * 0.5 * max((V - R)^2, (V_clip - R)^2) - ent_coef * H``,
   gradient norm clipped over the policy and the value head together;
6. sync the new weights to the policy server and repeat.

Deviations from the paper and the RLHF recipe:

* actions are tokens of a multi-turn episode: tool and user tokens between turns are in the
  sequence (the model conditions on them) but are not actions: GAE skips them (the next policy
  token's value bootstraps the current one) and the loss masks them out;
* the reward is the environment's (verifiable or judged), given once per episode, not a learned
  reward model; there is no missing-EOS penalty and no reward normalisation (``whiten_rewards``
  optionally whitens the per-token rewards, as in TRL);
* the critic is a ``Linear(hidden, 1)`` head on the policy's own trunk (cleanrl's shared
  network; TRL's former ``AutoModelForCausalLMWithValueHead``), not a separate value model
  initialised from a reward model; the value loss reaches the trunk (LoRA adapters or all
  weights) scaled by ``vf_coef``. The head starts at zero, so ``V = 0`` at first;
* the reference is the base model with the LoRA adapters disabled (no copy), or a frozen copy of
  the initial weights for full fine-tuning; ``kl_coef`` is fixed (no adaptive KL controller);
* pi_old is the trainer's recomputation on the sampled tokens (the ratio starts at exactly 1),
  not the sampler's logprobs; with vLLM the samples stay off-policy by the sampler/trainer
  mismatch, uncorrected;
* with a ``guide:`` (:mod:`agentgym.guided`), the guide's tokens are trained like the
  policy's own: that recomputed pi_old makes their ratio 1 (``correction: as_policy``, the only
  one PPO accepts);
* advantages are whitened once per step over the whole batch (TRL), not per minibatch;
* the sampling temperature divides the trainer's logits (as in GRPO and TRL).

Several processes (``torchrun`` / ``accelerate launch``; see ``trainers/distributed.py``): every
rank draws the same tasks and plays its contiguous share of them; whitening (rewards,
advantages) uses the whole batch's moments, the minibatches are the single process's (one
shuffle of the global rows, each rank training the rows it holds), each minibatch's loss is
normalised by its global policy tokens and the gradients of the policy and the value head are
summed over ranks before clipping, so a step is the single-process step on the same batch.
Precision and memory (``device``, ``dtype``, ``gradient_checkpointing``, ``micro_batch_tokens``,
``logprob_chunk_tokens``; none of them changes the numbers beyond float rounding): forward
passes autocast to the compute dtype on the model's device while trained weights stay float32;
micro-batches are cut by rows and a token budget; logprobs come from the LM head in chunks of
positions, so the ``[B, T, V]`` float32 logits never exist at once.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentgym.guided import guide_correction
from agentgym.policies.devices import module_device
from agentgym.rollout import Group
from agentgym.tokens import TokenSequence
from agentgym.trainers.batch import Batch, head_logprobs, micro_slices, pack, response_hidden
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
from agentgym.trainers.losses import (
    KL_ESTIMATORS,
    clipped_policy_loss,
    gae,
    masked_mean,
    value_loss,
)
from agentgym.types import Trajectory

__all__ = ["PPOConfig", "Targets", "forward", "prepare", "token_rewards", "train",
           "turn_ends", "turn_reward_tokens", "update"]


@dataclass
class PPOConfig(TrainerConfig):
    """Everything a PPO run needs; names follow TRL's PPOConfig where the concept matches.

    The shared fields (model, env, engine, sampling, optimiser, LoRA, run folder) come from
    :class:`~agentgym.trainers.common.TrainerConfig`; ``learning_rate`` and ``max_grad_norm``
    cover the policy and the value head together, and ``micro_batch_size`` bounds the rows of
    one forward/backward inside a minibatch. ``max_completion_length`` is TRL's response_length.
    """

    tasks_per_step: int = 16
    """Tasks per step, drawn without replacement while the train split has enough of them."""
    num_generations: int = 1
    """Episodes per task (PPO needs no groups; more samples each task with distinct seeds)."""
    gamma: float = 1.0
    """Discount per policy token."""
    lam: float = 0.95
    """GAE lambda."""
    cliprange: float = 0.2
    """Clip range of the policy's importance ratio."""
    cliprange_value: float | None = 0.2
    """Clip range of the value update around the old values (None: unclipped value loss)."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus (0: entropy is only logged)."""
    kl_coef: float = 0.05
    """beta of the per-token KL penalty in the reward (0: no reference model is kept)."""
    kl_estimator: str = "k1"
    """``"k1"`` (log pi_old / pi_ref, the RLHF recipe) or ``"k3"`` (see losses.KL_ESTIMATORS)."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards over the batch (scale only) before GAE."""
    num_ppo_epochs: int = 4
    """Passes over each batch."""
    num_mini_batches: int = 1
    """Minibatches (one optimiser step each) per pass."""

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}")
        if min(self.tasks_per_step, self.num_generations, self.num_ppo_epochs,
               self.num_mini_batches, self.micro_batch_size) < 1:
            raise ValueError("batch sizes, epochs and minibatches must be >= 1")
        if self.max_staleness != 0:
            raise ValueError("PPO trains on-policy only: max_staleness must be 0 (the async "
                             "rollout pipeline, max_staleness > 0, is GRPO's)")
        if guide_correction(self.guide) == "importance":
            raise ValueError("PPO trains guide tokens with correction as_policy (its pi_old is "
                             "the trainer's recomputation on every token); guide correction "
                             "'importance' is GRPO's")


@dataclass
class Targets:
    """What PPO fixes before its epochs, per response token (``[B, R]``, 0 off the mask).

    Attributes:
        old_logp: pi_old's logprobs (the trainer's recomputation).
        old_values: ``V_old``, the value head's estimates.
        advantages: whitened GAE advantages.
        returns: GAE returns ``A + V_old`` (before whitening), the value targets.
        kl: per-token KL(pi_old || pi_ref) estimate (zeros when ``kl_coef == 0``).
    """

    old_logp: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor

    def select(self, index: torch.Tensor | slice) -> Targets:
        """Rows ``index`` of every tensor."""
        return Targets(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})


def value_head_for(model: torch.nn.Module) -> torch.nn.Linear:
    """A zero-initialised float32 ``Linear(hidden, 1)`` sized by the model's output embedding,
    on the model's device."""
    head = torch.nn.Linear(model.get_output_embeddings().in_features, 1,
                           device=module_device(model))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def forward(model: torch.nn.Module, value_head: torch.nn.Module, batch: Batch, temperature: float,
            entropy_grad: bool = False, chunk_tokens: int | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, values, entropies), each ``[B, R]``, from one forward pass.

    The hidden state that predicts response token t also gives ``V(s_t)``. ``entropy_grad``
    keeps the entropy differentiable (for an entropy bonus); ``chunk_tokens`` bounds the
    logits that exist at once (``batch.head_logprobs``).
    """
    hidden = response_hidden(model, batch)  # [B, R, H]
    logp, entropy = head_logprobs(hidden, model.get_output_embeddings(), batch.targets,
                                  temperature, chunk_tokens, True, entropy_grad)  # [B, R] each
    values = value_head(hidden).squeeze(-1).float()  # [B, R]
    return logp, values, entropy


def masked_whiten(values: torch.Tensor | None, mask: torch.Tensor | None, shift_mean: bool = True,
                  eps: float = 1e-8, world: World = SINGLE) -> torch.Tensor | None:
    """``(x - mean) / std`` over the masked entries (the mean is kept if not ``shift_mean``).

    With several ranks the moments are those of every rank's entries together; a rank without
    rows passes None (and gets None) but joins the reductions."""
    zero = torch.zeros(2, device=world.device)
    moments = world.all_sum(zero if values is None else torch.stack(
        [(values * mask).sum(), mask.sum()]))  # [2]: sum, count
    count = moments[1].clamp(min=1)
    mean = moments[0] / count
    squares = world.all_sum(zero[:1] if values is None
                            else ((values - mean) ** 2 * mask).sum().reshape(1))  # [1]
    if values is None:
        return None
    whitened = (values - mean) * torch.rsqrt(squares[0] / count + eps)  # [B, R]
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask  # [B, R]


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor,
                  kl_coef: float, turn_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """``-kl_coef * KL`` on every policy token, plus each episode's score on its last one, plus
    the per-turn terms (already placed on each turn's last policy token).

    Args:
        scores: ``[B]`` episode rewards (without the per-turn terms).
        mask: ``[B, R]`` 1 on policy tokens.
        kl: ``[B, R]`` per-token KL estimates.
        turn_rewards: ``[B, R]`` from :func:`turn_reward_tokens`, or None.
    """
    positions = torch.arange(mask.shape[1], dtype=mask.dtype, device=mask.device)  # [R]
    last = (mask * positions).argmax(dim=1)  # [B]: each row's last policy token
    rewards = -kl_coef * kl * mask  # [B, R]
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores
    if turn_rewards is not None:
        rewards = rewards + turn_rewards * mask  # [B, R]
    return rewards


def turn_ends(sequence: TokenSequence, completion_lengths: list[int]) -> list[int]:
    """Response positions of each turn's last policy token: turn k ends at the
    ``(l_0 + ... + l_k)``-th policy token of ``sequence`` (``l_k``: its completion length)."""
    policy_positions = [i for i, m in enumerate(sequence.loss_mask) if m]
    ends, seen = [], 0
    for length in completion_lengths:
        seen += length
        if length < 1 or seen > len(policy_positions):
            raise ValueError(f"turn completion lengths {completion_lengths} do not fit the "
                             f"sequence's {len(policy_positions)} policy tokens")
        ends.append(policy_positions[seen - 1])
    return ends


def turn_reward_tokens(sequences: list[TokenSequence], trajectories: list[Trajectory],
                       width: int, device: torch.device) -> torch.Tensor | None:
    """``[B, R]``: each trajectory's ``turn_rewards[k]`` on the last policy token of turn k,
    zeros elsewhere; None when no trajectory has per-turn terms.

    A trajectory may hold only some of its episode's turns (``turn.index`` numbers them in
    the episode; hierarchical training keeps one level's): the term of a turn that is not
    trained goes to the last trained turn before it, as the env's own transitions do (with
    gamma 1 the shaping terms between two trained turns telescope to one potential-based
    term), or to the first trained turn if none is before it.
    """
    if not any(t.turn_rewards for t in trajectories):
        return None
    rows = [[0.0] * width for _ in sequences]
    for row, sequence, trajectory in zip(rows, sequences, trajectories, strict=True):
        ends = turn_ends(sequence, [len(turn.completion_token_ids) for turn in trajectory.turns])
        indices = [turn.index for turn in trajectory.turns]
        for k, term in enumerate(trajectory.turn_rewards):
            slot = max(bisect.bisect_right(indices, k) - 1, 0)
            row[ends[slot]] += term
    return torch.tensor(rows, dtype=torch.float32, device=device)  # [B, R]


@torch.no_grad()
def prepare(model: torch.nn.Module, value_head: torch.nn.Module, ref: ReferenceLogprobs | None,
            batch: Batch | None, scores: torch.Tensor | None, config: PPOConfig,
            world: World = SINGLE, turn_rewards: torch.Tensor | None = None) -> Targets | None:
    """pi_old, V_old, the KL-penalised token rewards, GAE advantages and returns of a batch.

    Args:
        ref: pi_ref's logprobs per micro-batch (``common.reference_logprobs``), or None.
        scores: ``[B]`` episode rewards (without the per-turn terms).
        world: the training processes; ``batch`` is this rank's share (None: it has no rows,
            and only joins the batch-wide whitening).
        turn_rewards: ``[B, R]`` per-turn terms on the turns' last tokens, or None.
    """
    if batch is None:
        if config.whiten_rewards:
            masked_whiten(None, None, shift_mean=False, world=world)
        masked_whiten(None, None, world=world)
        return None
    logps, values, refs = [], [], []
    for index in micro_slices(batch, config.micro_batch_size, config.micro_batch_tokens):
        mb = batch.select(index)
        with autocast_for(model, config):
            logp, value, _ = forward(model, value_head, mb, config.temperature,
                                     chunk_tokens=config.logprob_chunk_tokens)
            refs.append(ref(mb) if ref is not None else logp)
        logps.append(logp)
        values.append(value)
    mask = batch.mask  # [B, R]
    old_logp, old_values = torch.cat(logps) * mask, torch.cat(values) * mask  # [B, R]
    kl = KL_ESTIMATORS[config.kl_estimator](old_logp, torch.cat(refs) * mask) * mask  # [B, R]
    rewards = token_rewards(scores, mask, kl, config.kl_coef, turn_rewards)  # [B, R]
    if config.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False, world=world)  # [B, R]
    advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)  # [B, R]
    return Targets(old_logp=old_logp, old_values=old_values, returns=returns, kl=kl,
                   advantages=masked_whiten(advantages, mask, world=world))


def minibatch_backward(model: torch.nn.Module, value_head: torch.nn.Module, batch: Batch | None,
                       targets: Targets | None, config: PPOConfig,
                       world: World = SINGLE) -> dict[str, float]:
    """Accumulate the gradient of one minibatch's loss (token mean over its policy tokens).

    With several ranks ``batch`` is this rank's rows of the minibatch (None: none), the mean is
    over the whole minibatch's policy tokens, and the statistics are summed over ranks."""
    local = int(batch.mask.sum()) if batch is not None else 0
    tokens = float(max(world.sum({"tokens": local})["tokens"], 1))
    stats = dict.fromkeys(("loss", "policy_loss", "value_loss", "entropy", "clip_fraction",
                           "approx_kl"), 0.0)
    slices = [] if batch is None else micro_slices(batch, config.micro_batch_size,
                                                   config.micro_batch_tokens)
    for index in slices:
        mb, tg = batch.select(index), targets.select(index)
        with autocast_for(model, config):
            logp, values, entropy = forward(model, value_head, mb, config.temperature,
                                            config.ent_coef > 0, config.logprob_chunk_tokens)
        pg_tok, clipped = clipped_policy_loss(logp, tg.old_logp, tg.advantages,
                                              config.cliprange, config.cliprange)  # [B, R]
        log_ratio = logp.detach() - tg.old_logp  # [B, R]
        parts = {
            "policy_loss": masked_mean(pg_tok, mb.mask),
            "value_loss": value_loss(values, tg.old_values, tg.returns, mb.mask,
                                     config.cliprange_value),
            "entropy": masked_mean(entropy, mb.mask),
            "clip_fraction": masked_mean(clipped, mb.mask),
            "approx_kl": masked_mean(log_ratio.exp() - 1 - log_ratio, mb.mask),  # k3
        }
        loss = (parts["policy_loss"] + config.vf_coef * parts["value_loss"]
                - config.ent_coef * parts["entropy"])
        share = float(mb.mask.sum()) / tokens
        (loss * share).backward()
        for name, value in {"loss": loss, **parts}.items():
            stats[name] += float(value.detach()) * share
    return world.sum(stats)


def update(model: torch.nn.Module, value_head: torch.nn.Module, optimizer: torch.optim.Optimizer,
           batch: Batch | None, targets: Targets | None, config: PPOConfig,
           generator: torch.Generator, world: World = SINGLE) -> dict[str, float]:
    """``num_ppo_epochs`` x ``num_mini_batches`` optimiser steps; returns their mean stats.

    The minibatches shuffle the rows of the whole batch (every rank draws the same order); with
    several ranks each trains the rows of a minibatch that it holds (``batch`` is its share,
    None if empty) and the gradients are summed over ranks before clipping."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start, total = world.offset(len(batch) if batch is not None else 0)
    mine = start + (len(batch) if batch is not None else 0)
    totals: dict[str, float] = {}
    updates = 0
    for _ in range(config.num_ppo_epochs):
        order = torch.randperm(total, generator=generator)  # [B], host-side shuffle
        for index in order.chunk(config.num_mini_batches):
            rows = index[(index >= start) & (index < mine)] - start  # this rank's, in order
            optimizer.zero_grad(set_to_none=True)
            if batch is not None and len(rows):
                rows = rows.to(batch.device)
                stats = minibatch_backward(model, value_head, batch.select(rows),
                                           targets.select(rows), config, world)
            else:
                stats = minibatch_backward(model, value_head, None, None, config, world)
            world.reduce_gradients(params)
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params,
                                                                      config.max_grad_norm))
            optimizer.step()
            updates += 1
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + value
    return {name: value / updates for name, value in totals.items()}


async def play(step: int, s: TrainingSession[PPOConfig]) -> list[Group]:
    """This step's episodes: ``tasks_per_step`` tasks x ``num_generations`` each (a mixture
    of envs: drawn by the tasks' weights, with replacement)."""
    config, n = s.config, len(s.task_ids)
    if s.task_weights is not None:
        drawn = s.task_rng.choice(n, size=config.tasks_per_step, p=s.task_weights)
    else:
        drawn = s.task_rng.choice(n, size=config.tasks_per_step,
                                  replace=config.tasks_per_step > n)
    return await s.rollouts(step, [s.task_ids[int(i)] for i in drawn])


def episode_batch(episodes: list[Trajectory], s: TrainingSession[PPOConfig],
                  ) -> tuple[Batch | None, torch.Tensor | None, int]:
    """(batch, per-turn rewards ``[B, R]`` or None, template-drift drops) of this rank's
    scored episodes; a batch row's score is the episode reward less its per-turn terms, which
    go to the turns' last tokens instead."""
    kept, scores, drift = to_sequences(
        episodes, [(t, float(t.reward) - sum(t.turn_rewards)) for t in episodes])
    if not kept:
        return None, None, drift
    device = module_device(s.model)
    batch = pack(kept, [score for _, score in scores], s.tokenizer.pad_token_id or 0,
                 device=device)
    shaping = turn_reward_tokens(kept, [t for t, _ in scores], batch.targets.shape[1], device)
    return batch, shaping, drift


def batch_means(targets: Targets | None, batch: Batch | None, world: World) -> dict[str, float]:
    """Means over every rank's policy tokens of the KL, old values and returns."""
    sums = {"kl": 0.0, "value_mean": 0.0, "return_mean": 0.0, "tokens": 0.0}
    if targets is not None and batch is not None:
        sums = {"kl": float((targets.kl * batch.mask).sum()),
                "value_mean": float((targets.old_values * batch.mask).sum()),
                "return_mean": float((targets.returns * batch.mask).sum()),
                "tokens": float(batch.mask.sum())}
    sums = world.sum(sums)
    tokens = max(sums.pop("tokens"), 1.0)
    return {name: value / tokens for name, value in sums.items()}


async def one_step(step: int, s: TrainingSession[PPOConfig]) -> dict[str, Any]:
    """Rollouts -> rewards, values, GAE -> PPO epochs -> sync -> log, for one step."""
    config, value_head, world, timings = s.config, s.heads["value_head"], s.world, {}
    with timed(timings, "generate"):
        groups = await play(step, s)
    stats: dict[str, float] = {}
    with timed(timings, "score"):
        episodes = [t for g in groups if not g.dropped for t in g.trajectories
                    if t.reward is not None]
        batch, shaping, drift = episode_batch(episodes, s)
        trains = world.sum({"rows": len(batch) if batch is not None else 0})["rows"] > 0
        if trains:  # every rank, or none (the whole batch's whitening is a reduction)
            s.model.eval()
            targets = await s.compute(prepare, s.model, value_head, s.ref, batch,
                                      batch.advantages if batch is not None else None,
                                      config, world, shaping)
            stats = batch_means(targets, batch, world)
    with timed(timings, "train"):
        if trains:
            s.model.train()
            # host: minibatch order is drawn on the CPU, the same on every device and rank
            generator = torch.Generator(device="cpu").manual_seed(config.seed * 7_919 + step)
            stats |= await s.compute(update, s.model, value_head, s.optimizer, batch, targets,
                                     config, generator, world)
            s.model.eval()
        s.scheduler.step()
    with timed(timings, "sync"):
        await s.sync.push(s.model, step)
    counts = {"dropped_episodes": sum(len(g.trajectories) for g in groups) - len(episodes),
              "drift_dropped": drift, "episodes": sum(len(g.trajectories) for g in groups)}
    return s.log_step(step, groups, stats, timings, counts, batch)


async def train_async(config: PPOConfig, resume: str | Path | None = None) -> Path:
    """Run PPO; returns the run folder. ``resume`` continues a run folder exactly."""
    seed_everything(config.seed)
    world = join_world(config.distributed_timeout_s)  # first: sets each rank's CUDA device
    model, tokenizer = load_trainee(config)
    heads = {"value_head": value_head_for(model)}  # one optimiser over policy + value head
    session = await open_session(config, resume, model, tokenizer, heads=heads, world=world,
                                 group_size=config.num_generations, kl_coef=config.kl_coef)
    return await run_steps(session, one_step)


def train(config: PPOConfig, resume: str | Path | None = None) -> Path:
    """Sync entry point of :func:`train_async` (what ``agentgym train`` calls)."""
    return asyncio.run(train_async(config, resume))
