"""A Bradley-Terry reward model: a scalar head on a causal LM, trained from preference pairs.

The model (Bradley & Terry, 1952; as in Ouyang et al., 2022, "InstructGPT")::

    P(y_1 > y_2 | x) = sigma( r(x, y_1) - r(x, y_2) )
    L_RM = -E_(x, y_w, y_l) log sigma( r(x, y_w) - r(x, y_l) )

``r(x, y)`` is a linear head (``Linear(hidden, 1)``) on the LM's final hidden state at the
last token of the episode (prompt, every turn, tool results), so one forward pass scores a whole
multi-turn trajectory. The trunk is trained with LoRA adapters (``lora: true``) or in full,
together with the head.

Data, one of:

* ``pairs: file.jsonl``: a preference JSONL (trajectory or chat form; see
  :mod:`agentgym.trainers.preferences`);
* ``pairs: null``: pairs mined from rollout groups ranked by the env's verifiable reward: the
  policy (``config.model``, the trainee before training, e.g. an SFT model) plays
  ``collect_tasks`` train-split tasks x ``num_generations`` episodes; each group with a reward
  spread gives its best vs worst episode (:func:`~agentgym.trainers.preferences.mine_pairs`).
  The pairs are written to the run folder (``pairs.jsonl``) so a resumed run reuses them.

Held-out: ``eval_pairs: file.jsonl``, or pairs mined the same way on ``eval_tasks`` tasks of the
env's *eval* split (``heldout_pairs.jsonl``). After training, the held-out pairwise accuracy
(the share of pairs with ``r(y_w) > r(y_l)``, ties counted as half) and its 95 % Wilson score
interval are written to ``heldout.json``.

The trained model is used as a reward through :mod:`agentgym.rewards.reward_model` (a rubric
term on any env, ``kind: reward_model`` in a ``rewards:`` list) from the run folder.

Deviations: no reward centring term or margin in the loss; ties in the verifiable reward give
no pair (mining) rather than a 0.5 label.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import agentgym
from agentgym.env import AgentEnv
from agentgym.policies.devices import module_device
from agentgym.policies.shared_prompts import prefill_prefix
from agentgym.registry import _load
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.tokens import TokenSequence, build_token_sequence
from agentgym.trainers.batch import Batch, pack
from agentgym.trainers.common import (
    TrainingSession,
    autocast_for,
    group_progress,
    load_trainee,
    open_session,
    precision,
    run_steps,
    seed_everything,
    step_sampling,
)
from agentgym.trainers.config import load_config
from agentgym.trainers.dpo import pair_batch
from agentgym.trainers.models import load_model, load_weights
from agentgym.trainers.offline import OfflineConfig, offline_step
from agentgym.trainers.preferences import (
    TokenPair,
    chat_sequence,
    mine_pairs,
    read_pairs,
    to_token_pairs,
    write_pairs,
)
from agentgym.trainers.runs import RunDir
from agentgym.types import Trajectory

__all__ = ["RewardModelConfig", "RewardModelScorer", "bradley_terry_loss", "pairwise_accuracy",
           "score_head_for", "sequence_scores", "train", "wilson_interval"]

logger = logging.getLogger(__name__)

HEAD = "score_head"
"""The head's name in checkpoints (``checkpoints/step_N/score_head.pt``)."""


@dataclass
class RewardModelConfig(OfflineConfig):
    """The reward model's settings on top of :class:`OfflineConfig` (``batch_size`` pairs per
    optimiser step, ``micro_batch_size`` pairs per forward/backward, ``max_steps`` steps)."""

    pairs: str | None = None
    """A preference JSONL, or None: mine pairs from rollouts of ``env_id`` (train split)."""
    eval_pairs: str | None = None
    """A held-out preference JSONL, or None: mine them from the env's eval split."""
    collect_tasks: int = 64
    """Mining: train-split tasks played (one group each; at most one pair per group)."""
    eval_tasks: int = 50
    """Mining: eval-split tasks played for the held-out pairs."""
    num_generations: int = 4
    """Mining: episodes per task."""
    turn_timeout_s: float | None = 1800.0
    """Mining: deadline of one policy turn (generous: mining plays many episodes at once, and
    a turn waits for the whole batch); None: none."""
    episode_timeout_s: float | None = 3600.0
    """Mining: deadline of one episode; None: none."""
    max_steps: int = 40
    """Optimiser steps."""
    learning_rate: float = 1e-4
    """AdamW learning rate of the adapters (or trunk) and the head."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: a pair needs two episodes")
        if min(self.collect_tasks, self.eval_tasks) < 1:
            raise ValueError("collect_tasks and eval_tasks must be >= 1")


def score_head_for(model: torch.nn.Module) -> torch.nn.Linear:
    """A zero-initialised float32 ``Linear(hidden, 1)`` on the model's device."""
    head = torch.nn.Linear(model.get_output_embeddings().in_features, 1,
                           device=module_device(model))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def final_hidden(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """``[B, H]`` the trunk's final hidden state at each row's last token (prompt and
    response, env tokens included)."""
    decoder = model.get_decoder()
    cache, _ = prefill_prefix(decoder, batch.prompt_ids, batch.prompt_attention,
                              batch.prompt_of)
    attention = torch.cat([batch.prompt_attention[batch.prompt_of],
                           batch.response_attention], dim=1)  # [B, P + R]
    lengths = batch.prompt_attention.sum(dim=1)[batch.prompt_of]  # [B]
    positions = lengths[:, None] + torch.arange(batch.targets.shape[1],
                                                device=batch.device)  # [B, R]
    out = decoder(input_ids=batch.targets, attention_mask=attention, position_ids=positions,
                  past_key_values=cache, use_cache=False)
    last = (batch.response_attention.sum(dim=1) - 1).clamp(min=0)  # [B]
    return out.last_hidden_state[torch.arange(len(batch), device=batch.device), last]  # [B, H]


def sequence_scores(model: torch.nn.Module, head: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """``r(x, y)`` of every row, ``[B]`` float32."""
    hidden = final_hidden(model, batch)  # [B, H]
    return head(hidden.to(head.weight.dtype)).squeeze(-1).float()  # [B]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``-log sigma(r_w - r_l)`` per pair, ``[P]``."""
    return -F.logsigmoid(chosen - rejected)  # [P]


def pair_scores(model: torch.nn.Module, head: torch.nn.Module, pairs: Sequence[TokenPair],
                pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_w ``[P]``, r_l ``[P]``) of ``pairs`` in one forward pass."""
    scores = sequence_scores(model, head, pair_batch(list(pairs), pad_id, module_device(model)))
    return scores[:len(pairs)], scores[len(pairs):]


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of a binomial proportion ``successes / n``."""
    if n < 1:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, float]:
    """Share of pairs ranked right (``r_w > r_l``; a tie counts half), with its 95 % Wilson
    interval: ``{pairs, accuracy, ci95_low, ci95_high}``."""
    if len(chosen) != len(rejected):
        raise ValueError("chosen and rejected scores must pair up")
    right = sum(1.0 if w > r else 0.5 if w == r else 0.0
                for w, r in zip(chosen, rejected, strict=True))
    low, high = wilson_interval(right, len(chosen))
    return {"pairs": len(chosen), "accuracy": right / len(chosen) if chosen else math.nan,
            "ci95_low": low, "ci95_high": high}


@torch.no_grad()
def evaluate_pairs(model: torch.nn.Module, head: torch.nn.Module, pairs: Sequence[TokenPair],
                   pad_id: int, config: RewardModelConfig) -> dict[str, float]:
    """:func:`pairwise_accuracy` of the reward model on ``pairs``."""
    chosen: list[float] = []
    rejected: list[float] = []
    model.eval()
    for start in range(0, len(pairs), config.micro_batch_size):
        with autocast_for(model, config):
            w, r = pair_scores(model, head, pairs[start:start + config.micro_batch_size], pad_id)
        chosen += w.tolist()
        rejected += r.tolist()
    return pairwise_accuracy(chosen, rejected)


def env_factory(env_id: str, split: str, kwargs: dict[str, Any]) -> Callable[[], AgentEnv]:
    """A zero-argument factory of ``env_id``'s ``split`` (a registered id or
    ``module:Class``)."""
    if "/" not in env_id and ":" in env_id:
        cls = _load(env_id)
        return lambda: cls(split=split, **kwargs)
    agentgym.spec(env_id)  # fail early, with suggestions, on a typo
    return lambda: agentgym.make(env_id, split=split, **kwargs)


async def mine_split(s: TrainingSession[RewardModelConfig], split: str,
                     count: int) -> list[TokenPair]:
    """Pairs mined from ``count`` tasks of ``split`` played by the session's policy."""
    config = s.config
    engine = RolloutEngine(env_factory(config.env_id, split, config.env_kwargs), s.policy,
                           RolloutConfig(group_size=config.num_generations,
                                         max_concurrent=config.max_concurrent,
                                         turn_timeout_s=config.turn_timeout_s,
                                         episode_timeout_s=config.episode_timeout_s))
    try:
        engine.set_sampling(step_sampling(config, 0 if split == "train" else 1))
        ids = [t.id for t in engine.tasks][:count]
        with group_progress(f"mining {split} pairs", len(ids), s.world.is_main) as advance:
            groups = await engine.run_groups(ids, on_group=advance)
    finally:
        await engine.aclose()
    mined = mine_pairs(groups)
    failed = sum(t.error is not None for g in groups for t in g.trajectories)
    logger.info("mined %d pairs from %d %s groups (%d failed episodes)", len(mined), len(groups),
                split, failed)
    if failed and not mined:
        first = next(t.error for g in groups for t in g.trajectories if t.error is not None)
        raise RuntimeError(f"mining on {split}: {failed} episodes failed, no pair (first: "
                           f"{first.type}: {first.message})")
    write_pairs(mined, s.run.path / ("pairs.jsonl" if split == "train"
                                     else "heldout_pairs.jsonl"))
    return to_token_pairs(mined)[0]


async def load_data(s: TrainingSession[RewardModelConfig]) -> tuple[list[TokenPair],
                                                                     list[TokenPair]]:
    """(train pairs, held-out pairs): from files, from this run's earlier mining, or mined."""
    config, path = s.config, s.run.path
    train_file = config.pairs or (path / "pairs.jsonl" if (path / "pairs.jsonl").exists()
                                  else None)
    train_pairs = read_pairs(train_file, s.tokenizer) if train_file \
        else await mine_split(s, "train", config.collect_tasks)
    if not train_pairs:
        raise ValueError("no training pairs: no group had a reward spread (more collect_tasks, "
                         "num_generations, or a shaped reward)")
    eval_file = config.eval_pairs or (path / "heldout_pairs.jsonl"
                                      if (path / "heldout_pairs.jsonl").exists() else None)
    eval_pairs = read_pairs(eval_file, s.tokenizer) if eval_file \
        else await mine_split(s, "eval", config.eval_tasks)
    return train_pairs, eval_pairs


def micro_loss_for(head: torch.nn.Module, pad_id: int):  # noqa: ANN201 - MicroLoss
    """The offline loop's ``micro_loss``: the Bradley-Terry loss of a micro-batch of pairs as
    its share of the batch mean, with the batch accuracy share."""
    def micro_loss(model: torch.nn.Module, micro: Sequence[TokenPair],
                   batch: Sequence[TokenPair]) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = pair_scores(model, head, micro, pad_id)
        loss = bradley_terry_loss(chosen, rejected).sum() / len(batch)
        right = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
        return loss, {"accuracy": float(right.sum()) / len(batch),
                      "margin": float((chosen - rejected).detach().sum()) / len(batch)}
    return micro_loss


async def train_async(config: RewardModelConfig, resume: str | Path | None = None) -> Path:
    """Train the reward model; returns the run folder (``heldout.json`` inside)."""
    seed_everything(config.seed)
    model, tokenizer = load_trainee(config)
    head = score_head_for(model)
    session = await open_session(config, resume, model, tokenizer, heads={HEAD: head},
                                 group_size=config.num_generations, kl_coef=0.0)
    pad_id = tokenizer.pad_token_id or 0
    try:
        train_pairs, eval_pairs = await load_data(session)
    except BaseException:
        await session.aclose()
        raise
    run = await run_steps(session, offline_step(train_pairs, micro_loss_for(head, pad_id),
                                                lambda batch: {"pairs": len(batch)}))
    report: dict[str, Any] = {"train_pairs": len(train_pairs)}
    if eval_pairs:
        report |= evaluate_pairs(model, head, eval_pairs, pad_id, config)
    (run / "heldout.json").write_text(json.dumps(report, indent=2))
    return run


def train(config: RewardModelConfig, resume: str | Path | None = None) -> Path:
    """Sync entry point of :func:`train_async` (what ``agentgym train`` calls)."""
    return asyncio.run(train_async(config, resume))


class RewardModelScorer:
    """A trained reward model, loaded from the newest checkpoint of its run folder, that scores
    finished trajectories (what :class:`agentgym.rewards.reward_model.RewardModelReward` calls).

    Args:
        path: the reward model's run folder.
        device: where it runs (``"auto"``: CUDA when available).

    Raises:
        FileNotFoundError: the folder has no config.yaml or no checkpoint.
    """

    def __init__(self, path: str | Path, device: str = "auto"):
        path = Path(path)
        if not (path / "config.yaml").exists():
            raise FileNotFoundError(f"{path} is not a reward-model run folder (no config.yaml)")
        checkpoints = RunDir(path).checkpoints()
        if not checkpoints:
            raise FileNotFoundError(f"{path} has no checkpoint yet")
        self.config = load_config(RewardModelConfig, path / "config.yaml", {"device": device})
        target, dtype = precision(self.config)
        config = self.config
        self.model, self.tokenizer = load_model(
            config.model, lora=config.lora, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
            lora_dropout=0.0, lora_target_modules=config.lora_target_modules, seed=config.seed,
            device=target, dtype=dtype)
        load_weights(self.model, checkpoints[-1] / "model", config.lora)
        self.head = score_head_for(self.model)
        self.head.load_state_dict(torch.load(checkpoints[-1] / f"{HEAD}.pt", map_location=target))
        self.model.eval()
        self.head.eval()

    def sequence(self, trajectory: Trajectory) -> TokenSequence:
        """The episode's tokens: as sampled when it has token ids, else its chat rendered by
        the reward model's template (prompt = the messages before the first reply)."""
        if trajectory.turns and all(t.completion_token_ids for t in trajectory.turns):
            return build_token_sequence(trajectory)
        messages = list(trajectory.messages)
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
        if first is None:
            raise ValueError(f"trajectory {trajectory.task_id!r} has no assistant message")
        return chat_sequence(self.tokenizer, messages[:first], messages[first:])

    @torch.no_grad()
    def score(self, trajectory: Trajectory) -> float:
        """``r(x, y)`` of one finished trajectory."""
        batch = pack([self.sequence(trajectory)], [0.0], self.tokenizer.pad_token_id or 0,
                     device=module_device(self.model))
        with autocast_for(self.model, self.config):
            return float(sequence_scores(self.model, self.head, batch)[0])
