"""The loop that offline trainers share: a fixed list of examples, a seeded order, micro-batches
and one optimiser step per batch, on the run machinery of :mod:`agentgym.trainers.common`.

An offline trainer (sft.py, rcsft.py, reward_model.py, dpo.py) reads top to bottom as::

    seed_everything(config.seed)
    model, tokenizer = load_trainee(config)
    examples = ...                      # any list: TokenSequences (SFT), pairs (DPO, RM)
    session = await open_session(config, resume, model, tokenizer, group_size=1, kl_coef=...)
    return await run_steps(session, offline_step(examples, micro_loss))

so it has the run folder, ``config.yaml``, ``metrics.jsonl``, trackers, checkpoints, exact
resume, device/dtype handling and a policy (``session.policy``, for trainers that also roll
out, like RFT) exactly as GRPO and PPO have them.

The algorithm only writes ``micro_loss(model, micro, batch) -> (loss, stats)``: the loss of
the micro-batch ``micro`` (a slice of the step's ``batch``) as its *share* of the batch loss,
so that the shares sum to the batch loss (divide by the batch's token or example count, not
the micro-batch's); ``stats`` are shares likewise and are summed into the metrics row. The loop
does the rest (:func:`optimizer_step`): zero the gradients, forward/backward each micro-batch
under autocast, clip the gradient norm over every trained parameter (heads included), step the
optimiser and the scheduler.

Order: step ``k`` trains on examples ``[(k-1)B, kB)`` of an endless stream of epochs, each a
permutation drawn from ``numpy.random.default_rng([seed, epoch])`` (:func:`batch_indices`).
The order is a function of (seed, step) alone, so a resumed run sees the same batches as one
that never stopped, with no sampler state to checkpoint.

:func:`replay` and :func:`chat_sequence` turn chats without token ids (an env's
demonstrations, trajectories from an API model, relabelled trajectories) into the masked token
sequences of :mod:`agentgym.tokens`: the chat is replayed through the env by a teacher-forced
policy that tokenizes each assistant message as the embedded engine would have sampled it, so
the prompt, the env tokens (tool results, user turns) and the loss mask (1 on assistant tokens
only) are the ones a rollout would produce, and the env re-scores the chat on the way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from agentgym.env import AgentEnv
from agentgym.policies.chat_tokens import prompt_ids_for
from agentgym.policies.devices import module_device
from agentgym.tokens import TokenSequence, build_token_sequence
from agentgym.trainers.batch import Batch, pack, policy_logprobs
from agentgym.trainers.common import TrainerConfig, TrainingSession, autocast_for, timed
from agentgym.types import Trajectory

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["MicroLoss", "OfflineConfig", "batch_indices", "chat_sequence", "eos_ids_of",
           "log_offline_step", "offline_step", "optimizer_step", "replay",
           "sequence_nll", "share_prefix", "token_count"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MicroLoss = Callable[[torch.nn.Module, Sequence[T], Sequence[T]],
                     tuple[torch.Tensor, dict[str, float]]]
"""``(model, micro, batch) -> (loss share, stats shares)``; see the module docstring."""

Transform = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
"""Rewrites the chat a policy sees (e.g. RCSFT's return label in the system message)."""


@dataclass
class OfflineConfig(TrainerConfig):
    """Settings of every offline trainer on top of :class:`TrainerConfig` (``max_steps``
    optimiser steps of ``batch_size`` examples, ``micro_batch_size`` at a time)."""

    batch_size: int = 16
    """Examples per optimiser step; gradients accumulate over micro-batches."""
    shuffle: bool = True
    """Visit the examples in a seeded random order per epoch (False: file order)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("batch_size and micro_batch_size must be >= 1")


# --- order ----------------------------------------------------------------------------------

def batch_indices(num_examples: int, batch_size: int, step: int, seed: int,
                  shuffle: bool = True) -> list[int]:
    """The example indices of optimiser step ``step`` (1-based).

    The stream is epoch 0's order, then epoch 1's, ...; each epoch is
    ``default_rng([seed, epoch]).permutation(num_examples)`` (or ``range`` without
    ``shuffle``). A batch may straddle two epochs.
    """
    if num_examples < 1:
        raise ValueError("no examples to train on")
    start = (step - 1) * batch_size
    out: list[int] = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, num_examples)
        order = np.random.default_rng([seed, epoch]).permutation(num_examples) if shuffle \
            else np.arange(num_examples)
        out.append(int(order[offset]))
    return out


# --- one optimiser step ---------------------------------------------------------------------

def _trained_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   batch: Sequence[T], micro_loss: MicroLoss, config: TrainerConfig,
                   ) -> dict[str, float]:
    """One optimiser step on ``batch``, ``config.micro_batch_size`` examples at a time;
    returns the summed stats shares plus ``loss`` and ``grad_norm``."""
    optimizer.zero_grad(set_to_none=True)
    stats: dict[str, float] = {"loss": 0.0}
    size = config.micro_batch_size
    for start in range(0, len(batch), size):
        micro = batch[start:start + size]
        with autocast_for(model, config):
            loss, parts = micro_loss(model, micro, batch)
        loss.backward()
        stats["loss"] += float(loss.detach())
        for name, value in parts.items():
            stats[name] = stats.get(name, 0.0) + float(value)
    params = _trained_parameters(optimizer)
    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    scheduler.step()
    return stats


def log_offline_step(s: TrainingSession[Any], step: int, stats: dict[str, float],
                     timings: dict[str, float], counts: dict[str, Any]) -> dict[str, Any]:
    """Write one metrics row of an offline step (no rollouts: ``reward_mean`` is NaN unless
    ``counts`` brings one) and return it."""
    row = {"step": step, "reward_mean": float("nan"), **stats, **counts,
           **{f"time/{k}": round(v, 3) for k, v in timings.items()},
           "learning_rate": s.scheduler.get_last_lr()[0]}
    if s.world.is_main:
        s.run.log_metrics(row)
    return row


def offline_step(examples: Sequence[T], micro_loss: MicroLoss,
                 counts: Callable[[Sequence[T]], dict[str, Any]] | None = None,
                 ) -> Callable[[int, TrainingSession[Any]], Any]:
    """The ``one_step`` for :func:`~agentgym.trainers.common.run_steps`: draw step ``k``'s
    batch (:func:`batch_indices`), take one :func:`optimizer_step` in the session's compute
    thread, push the weights to the policy, log a row (``counts(batch)`` adds to it, e.g.
    the number of trained tokens)."""
    async def one_step(step: int, s: TrainingSession[Any]) -> dict[str, Any]:
        config, timings = s.config, {}
        indices = batch_indices(len(examples), config.batch_size, step, config.seed,
                                getattr(config, "shuffle", True))
        batch = [examples[i] for i in indices]
        with timed(timings, "train"):
            s.model.train()
            for head in s.heads.values():
                head.train()
            stats = await s.compute(optimizer_step, s.model, s.optimizer, s.scheduler, batch,
                                    micro_loss, config)
            s.model.eval()
        with timed(timings, "sync"):
            await s.sync.push(s.model, step)
        extra = {"epoch": (step * config.batch_size) / len(examples),
                 **(counts(batch) if counts is not None else {})}
        return log_offline_step(s, step, stats, timings, extra)

    return one_step


# --- the token-level NLL (SFT and its variants) -----------------------------------------------

def token_count(sequences: Sequence[TokenSequence]) -> int:
    """Loss tokens (assistant tokens) of ``sequences``."""
    return sum(s.num_policy_tokens for s in sequences)


def sequence_nll(model: torch.nn.Module, micro: Sequence[TokenSequence],
                 batch: Sequence[TokenSequence], pad_id: int,
                 chunk_tokens: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``-sum log p(y_t | x, y_<t)`` over the masked tokens of ``micro``, divided by the
    masked tokens of the whole ``batch`` (a token mean over the batch, as a share).

    Logits are not divided by a temperature (the model's own distribution).
    """
    tokens = max(token_count(batch), 1)
    packed: Batch = pack(micro, [0.0] * len(micro), pad_id, device=module_device(model))
    logp, _ = policy_logprobs(model, packed, 1.0, chunk_tokens=chunk_tokens)  # [B, R]
    loss = -(logp * packed.mask).sum() / tokens
    return loss, {}


def share_prefix(sequences: Sequence[TokenSequence]) -> list[TokenSequence]:
    """The same sequences with one common prompt: the longest prefix all prompts share
    (a system prompt, tool schemas, in-prompt demonstrations); the rest of each prompt moves
    to the front of its response with loss mask 0.

    The model conditions on exactly the same tokens and the loss sees exactly the same ones,
    but :func:`~agentgym.trainers.batch.pack` then stores the prompt once and the forward
    pass runs it once per micro-batch (its key/value cache feeds every row), which on
    distinct questions behind a long shared preamble is most of the compute.
    """
    if not sequences:
        return []
    first = sequences[0].prompt_ids
    common = len(first)
    for sequence in sequences[1:]:
        prompt = sequence.prompt_ids
        limit = min(common, len(prompt))
        common = next((i for i in range(limit) if prompt[i] != first[i]), limit)
    if common == 0:  # nothing shared: a prompt must keep at least one token
        return list(sequences)
    out = []
    for s in sequences:
        moved = s.prompt_ids[common:]
        out.append(TokenSequence(prompt_ids=s.prompt_ids[:common],
                                 response_ids=moved + s.response_ids,
                                 loss_mask=(0,) * len(moved) + s.loss_mask,
                                 logprobs=(0.0,) * len(moved) + s.logprobs,
                                 weight_versions=s.weight_versions))
    return out


# --- chats -> token sequences ---------------------------------------------------------------

def eos_ids_of(model: torch.nn.Module | None, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Token ids that end an assistant turn (the model's generation config and the
    tokenizer's), as the embedded engine collects them."""
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the tokenizer defines no end-of-sequence token")
    return frozenset(ids)


def completion_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, Any]],
                   message: Mapping[str, Any], tools: Sequence[Mapping[str, Any]] | None,
                   eos_ids: Collection[int]) -> list[int]:
    """Tokens of ``message`` as the model would write it after ``messages``' generation
    prompt: the template's rendering of the message, up to and including its end token.

    Raises:
        ValueError: the template renders the assistant turn other than as the generation
            prompt followed by its content (the completion cannot be cut out).
    """
    def render(chat: Sequence[Mapping[str, Any]], generation: bool) -> str:
        return tokenizer.apply_chat_template(list(chat), tools=list(tools) if tools else None,
                                             add_generation_prompt=generation, tokenize=False)

    head = render(messages, True)
    full = render([*messages, dict(message)], False)
    if not full.startswith(head):
        raise ValueError("the chat template does not render an assistant turn as the "
                         "generation prompt followed by its content")
    ids = list(tokenizer(full[len(head):], add_special_tokens=False)["input_ids"])
    ends = [i for i, token in enumerate(ids) if token in eos_ids]
    if not ends:
        raise ValueError("the chat template ends an assistant turn without an end token")
    return ids[: ends[-1] + 1]


class _TeacherForced:
    """A policy that 'samples' given assistant messages, with the token ids the embedded
    engine would have had (prompt continued from the previous turn's ids)."""

    accepts_prefix_ids = True

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, eos_ids: Collection[int],
                 transform: Transform | None):
        self.tokenizer, self.eos_ids, self.transform = tokenizer, eos_ids, transform

    def action(self, messages: list[dict[str, Any]], tools: Sequence[Mapping[str, Any]] | None,
               message: Mapping[str, Any], prefix: Sequence[int] | None) -> dict[str, Any]:
        action = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            action["tool_calls"] = list(message["tool_calls"])
        if self.tokenizer is None:
            return action
        seen = self.transform(messages) if self.transform else messages
        prompt = prompt_ids_for(self.tokenizer, seen, tools, prefix, self.eos_ids)
        completion = completion_ids(self.tokenizer, seen, action, tools, self.eos_ids)
        return {**action, "prompt_token_ids": prompt, "completion_token_ids": completion,
                "logprobs": [0.0] * len(completion)}


async def replay(env: AgentEnv, task_id: str, chat: Sequence[Mapping[str, Any]],
                 tokenizer: PreTrainedTokenizerBase | None = None,
                 eos_ids: Collection[int] = (), transform: Transform | None = None,
                 ) -> Trajectory:
    """Play ``chat``'s assistant messages after the task's prompt (which the chat must start
    with), in order, as the policy's turns of an episode of ``task_id`` in ``env``; returns
    the env's scored trajectory.

    The env runs the tools and adds its own messages (the chat's tool/user messages are not
    used), so the reward verifies the chat. With a ``tokenizer`` every turn carries the
    prompt and completion token ids of the embedded engine (``transform`` rewrites the chat
    the model conditions on, e.g. a return label), so :func:`build_token_sequence` works on
    the result. An episode that ends before the chat does, or a chat that ends before the
    episode, is truncated there (scored on what happened).
    """
    teacher = _TeacherForced(tokenizer, eos_ids, transform)
    obs, info = await env.areset(options={"task_id": task_id})
    prompt = [(m.get("role"), m.get("content")) for m in obs]
    if [(m.get("role"), m.get("content")) for m in chat[: len(obs)]] != prompt:
        await env.aabort(ValueError("chat does not start with the task's prompt"))
        raise ValueError(f"the chat does not start with the prompt of {task_id!r} in "
                         f"{env.env_id} (other env settings, e.g. demos?)")
    replies = [m for m in chat[len(obs):] if m.get("role") == "assistant"]
    prefix: Sequence[int] | None = None
    for message in replies:
        action = teacher.action(obs, info["tools"], message, prefix)
        if tokenizer is not None:
            prefix = [*action["prompt_token_ids"], *action["completion_token_ids"]]
        obs, _, terminated, truncated, info = await env.astep(action)
        if terminated or truncated:
            break
    else:
        return await env.atruncate()
    trajectory = env.trajectory()
    assert trajectory is not None
    return trajectory


async def chat_sequence(env: AgentEnv, task_id: str, chat: Sequence[Mapping[str, Any]],
                        tokenizer: PreTrainedTokenizerBase, eos_ids: Collection[int],
                        transform: Transform | None = None,
                        ) -> tuple[TokenSequence, Trajectory]:
    """(the masked token sequence, the replayed trajectory) of ``chat`` (see :func:`replay`).

    Raises:
        TokenizationDriftError: the template is not append-only for this chat.
    """
    trajectory = await replay(env, task_id, chat, tokenizer, eos_ids, transform)
    return build_token_sequence(trajectory), trajectory
