"""SFT: supervised fine-tuning on solved chats, loss on the assistant's tokens only.

The objective, over chats (x, y) of a dataset D, with m_t = 1 on assistant tokens and 0 on
the prompt, tool results and user turns::

    L_SFT(theta) = - sum_{(x,y) in B} sum_t m_t log pi_theta(y_t | x, y_<t)
                   / sum_{(x,y) in B} sum_t m_t

(the token mean of -log p(y|x) over a batch B of ``batch_size`` chats; the tool and user
tokens are in the sequence, so the model conditions on them, but never in the loss).

Where the chats come from (``data``, a list of sources):

* ``"demonstrations"``: the env's reference solutions (:meth:`AgentEnv.demonstrate`) of the
  first ``num_examples`` train tasks, replayed through the env (so each is verified: only
  those whose reward is at least ``min_reward`` are kept) and tokenized as the embedded engine
  would have sampled them (:func:`~agentgym.trainers.offline.chat_sequence`);
* a path to a trajectory JSONL file (:mod:`agentgym.trajectory_io`, e.g. an eval run's
  ``results`` or a training run's ``samples.jsonl``): trajectories with token ids are used as
  sampled (token-in/token-out), others are replayed like demonstrations; failed ones and those
  whose reward is below ``min_reward`` are skipped.

RFT (``trainers/rft.py``) and return-conditioned SFT (``trainers/rcsft.py``) train with the
same loss on data they make themselves.

Deviations and choices:

* the loss is a token mean over the whole batch (every assistant token weighs the same), not a
  mean of per-chat means;
* logits are not divided by a sampling temperature;
* the prompt prefix all examples share (system prompt, tool schemas, in-prompt demos) runs
  once per micro-batch (:func:`~agentgym.trainers.offline.share_prefix`); the loss is
  unchanged;
* nothing is trained on the prompt, on tool results or on user turns (no "train on inputs").
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentgym.env import AgentEnv
from agentgym.errors import TokenizationDriftError
from agentgym.tokens import TokenSequence, build_token_sequence
from agentgym.trainers.common import (
    load_trainee,
    make_env_factory,
    open_session,
    run_steps,
    seed_everything,
)
from agentgym.trainers.distributed import join_world
from agentgym.trainers.offline import (
    OfflineConfig,
    Transform,
    chat_sequence,
    eos_ids_of,
    offline_step,
    sequence_nll,
    share_prefix,
    token_count,
)
from agentgym.trajectory_io import read_trajectories
from agentgym.types import Trajectory

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["SFTConfig", "demonstration_trajectories", "nll_loss", "sequences_of", "train",
           "train_async", "train_on"]

logger = logging.getLogger(__name__)

DEMONSTRATIONS = "demonstrations"


@dataclass
class SFTConfig(OfflineConfig):
    """SFT's settings on top of :class:`OfflineConfig`."""

    data: list[str] = field(default_factory=lambda: [DEMONSTRATIONS])
    """Sources: ``"demonstrations"`` (the env's reference solutions) and/or trajectory JSONL
    paths."""
    num_examples: int | None = None
    """Demonstrations of the first N train tasks (None: every task)."""
    min_reward: float | None = 1.0
    """Keep only chats whose (replayed or recorded) reward is at least this (None: all)."""
    learning_rate: float = 2e-4
    """AdamW learning rate (LoRA adapters take a larger one than full fine-tuning)."""


# --- the loss -------------------------------------------------------------------------------

def nll_loss(pad_id: int, chunk_tokens: int | None, model: torch.nn.Module,
             micro: Sequence[TokenSequence], batch: Sequence[TokenSequence],
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """L_SFT's share of ``micro`` (see the module docstring);
    :func:`~agentgym.trainers.offline.sequence_nll` with the pad id bound."""
    return sequence_nll(model, micro, batch, pad_id, chunk_tokens)


# --- data -----------------------------------------------------------------------------------

def _passes(reward: float | None, min_reward: float | None) -> bool:
    return min_reward is None or (reward is not None and reward >= min_reward)


async def sequences_of(trajectories: Sequence[Trajectory], env: AgentEnv,
                       tokenizer: PreTrainedTokenizerBase, eos_ids: Collection[int],
                       min_reward: float | None = None, transform: Transform | None = None,
                       replay_all: bool = False) -> list[TokenSequence]:
    """Token sequences of the trajectories that succeeded and pass ``min_reward``: as sampled
    when they carry token ids (and no ``transform``), else replayed through ``env`` (whose
    reward then decides). ``replay_all``: unscored chats (demonstrations), judged by their
    replay alone. Drift and unknown tasks skip a trajectory, with a warning."""
    out: list[TokenSequence] = []
    for trajectory in trajectories:
        if trajectory.error is not None or not (
                replay_all or _passes(trajectory.reward, min_reward)):
            continue
        try:
            if transform is None and trajectory.turns and all(
                    t.completion_token_ids for t in trajectory.turns):
                out.append(build_token_sequence(trajectory))
                continue
            sequence, replayed = await chat_sequence(env, trajectory.task_id,
                                                     trajectory.messages, tokenizer, eos_ids,
                                                     transform)
        except (TokenizationDriftError, KeyError, ValueError) as exc:
            logger.warning("skipping %s: %s", trajectory.task_id, exc)
            continue
        if _passes(replayed.reward, min_reward):
            out.append(sequence)
    return out


async def demonstration_trajectories(env: AgentEnv, num_examples: int | None,
                                     ) -> list[Trajectory]:
    """The env's demonstrations of its first ``num_examples`` tasks, as (unscored)
    trajectories holding their chats.

    Raises:
        ValueError: the env has no demonstrations.
    """
    out = []
    for task in env.tasks[:num_examples]:
        chat = env.demonstrate(task)
        if chat is not None:
            out.append(Trajectory(env_id=env.env_id, task_id=task.id, messages=tuple(chat)))
    if not out:
        raise ValueError(f"{env.env_id} has no demonstrations (AgentEnv.demonstrate returns "
                         "None): train on trajectory JSONL files instead")
    return out


async def load_examples(config: SFTConfig, env: AgentEnv, tokenizer: PreTrainedTokenizerBase,
                        eos_ids: Collection[int]) -> list[TokenSequence]:
    """Every source of ``config.data`` as token sequences, in source order."""
    out: list[TokenSequence] = []
    for source in config.data:
        if source == DEMONSTRATIONS:
            demos = await demonstration_trajectories(env, config.num_examples)
            scored = await sequences_of(demos, env, tokenizer, eos_ids, config.min_reward,
                                        replay_all=True)
            if len(scored) < len(demos):
                logger.warning("%d of %d demonstrations were dropped (replay below min_reward "
                               "%s, or drift)", len(demos) - len(scored), len(demos),
                               config.min_reward)
            out.extend(scored)
        else:
            path = Path(source)
            if not path.exists():
                raise FileNotFoundError(f"no trajectory file {source!r} (data sources are "
                                        f"{DEMONSTRATIONS!r} or JSONL paths)")
            out.extend(await sequences_of(list(read_trajectories(path)), env, tokenizer,
                                          eos_ids, config.min_reward))
    if not out:
        raise ValueError(f"no training examples in {config.data} (min_reward "
                         f"{config.min_reward})")
    logger.info("SFT on %d chats, %d assistant tokens", len(out), token_count(out))
    return out


# --- the run --------------------------------------------------------------------------------

async def train_on(config: OfflineConfig, resume: str | Path | None, model: torch.nn.Module,
                   tokenizer: PreTrainedTokenizerBase, examples: Sequence[TokenSequence],
                   world: Any = None) -> Path:
    """SFT of ``model`` on ``examples`` for ``config.max_steps`` steps in a run folder
    (what RCSFT calls with its relabelled data)."""
    shared = share_prefix(examples)
    loss = functools.partial(nll_loss, tokenizer.pad_token_id or 0,
                             config.logprob_chunk_tokens)
    session = await open_session(config, resume, model, tokenizer, world=world, group_size=1,
                                 kl_coef=0.0)
    return await run_steps(session, offline_step(
        shared, loss, lambda batch: {"tokens": token_count(batch), "examples": len(shared)}))


async def train_async(config: SFTConfig, resume: str | Path | None = None) -> Path:
    """Run SFT; returns the run folder. ``resume`` continues a run folder exactly."""
    seed_everything(config.seed)
    world = join_world(config.distributed_timeout_s)
    model, tokenizer = load_trainee(config)
    env = make_env_factory(config.env_id, config.env_kwargs, config.rewards)()
    try:
        examples = await load_examples(config, env, tokenizer, eos_ids_of(model, tokenizer))
    finally:
        await env.aclose()
    return await train_on(config, resume, model, tokenizer, examples, world)


def train(config: SFTConfig, resume: str | Path | None = None) -> Path:
    """Sync entry point of :func:`train_async` (what ``agentgym train --algorithm sft``
    calls)."""
    return asyncio.run(train_async(config, resume))
