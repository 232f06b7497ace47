"""Return-conditioned SFT (Decision-Transformer style) on an agentgym environment.

Decision Transformer (Chen et al., 2021) models a_t = f(R_hat_1, s_1, a_1, ..., R_hat_t, s_t)
where R_hat_t = sum_{t' >= t} r_t' is the return-to-go; trained by supervised learning on
trajectories of any quality, it is then asked for a high return at test time. Here:

1. play ``rollout_tasks`` train tasks x ``num_generations`` episodes with the initial policy
   (or read trajectory JSONL files: ``data``);
2. label each trajectory with its return-to-go, written into the prompt
   (:func:`return_label`: ``[return-to-go: 1.0]`` before the task's question);
3. SFT on the labelled chats (``trainers/sft.py``'s loss, assistant tokens only)::

       L_RCSFT(theta) = - sum_{tau in B} sum_t m_t log pi_theta(a_t | R_hat(tau), s_<t)
                        / sum_{tau in B} sum_t m_t

4. evaluate with the prompt labelled with the highest return seen in the data
   (:class:`ReturnConditionedPolicy`, ``target_return`` in ``RUN_DIR/rcsft/labels.json``).

Deviations and choices:

* agentgym rewards are terminal (0 until the last step), so R_hat_t equals the episode return
  at every turn: one label in the prompt stands for all turns (and keeps the chat
  append-only), instead of one before every state;
* returns are rounded to ``return_decimals`` places, so a label is a short string;
* the chats are replayed through the env with the label inserted and tokenized as the
  embedded engine would see them (the sampled ids had no label);
* the rollouts are saved to ``RUN_DIR/rcsft/trajectories.jsonl`` before training, and a
  resumed run reads them back (not played again with the trained weights).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentgym.env import AgentEnv
from agentgym.policy import Completion, Policy, SamplingParams
from agentgym.tokens import TokenSequence
from agentgym.trainers.common import (
    TrainingSession,
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
    eos_ids_of,
    offline_step,
    share_prefix,
    token_count,
)
from agentgym.trainers.rft import round_tasks
from agentgym.trainers.sft import nll_loss, sequences_of
from agentgym.trajectory_io import TrajectoryWriter, read_trajectories
from agentgym.types import Trajectory

__all__ = ["RCSFTConfig", "ReturnConditionedPolicy", "label_transform", "labelled_sequences",
           "return_label", "target_return", "train", "train_async"]

logger = logging.getLogger(__name__)

ROLLOUTS = "rollouts"


@dataclass
class RCSFTConfig(OfflineConfig):
    """Return-conditioned SFT's settings on top of :class:`OfflineConfig`."""

    data: list[str] = field(default_factory=lambda: [ROLLOUTS])
    """Sources: ``"rollouts"`` (played with the initial policy) and/or trajectory JSONL
    paths."""
    rollout_tasks: int = 32
    """Train tasks played for ``"rollouts"``."""
    num_generations: int = 4
    """Episodes per task for ``"rollouts"``."""
    return_decimals: int = 1
    """Returns are rounded to this many decimals in the label."""
    learning_rate: float = 2e-4
    """AdamW learning rate (LoRA adapters take a larger one than full fine-tuning)."""


def return_label(value: float, decimals: int = 1) -> str:
    """The text the prompt carries: ``[return-to-go: 1.0]``."""
    return f"[return-to-go: {round(float(value), decimals):.{decimals}f}]"


def label_transform(label: str, prompt_length: int) -> Transform:
    """A chat rewrite that puts ``label`` in front of message ``prompt_length - 1`` (the task
    prompt's last message: the question), leaving every other message as it is."""
    if prompt_length < 1:
        raise ValueError("a task prompt has at least one message")
    index = prompt_length - 1

    def transform(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(messages) <= index:
            return messages
        out = list(messages)
        target = dict(out[index])
        target["content"] = f"{label}\n{target.get('content') or ''}"
        out[index] = target
        return out

    return transform


async def labelled_sequences(trajectories: Sequence[Trajectory], env: AgentEnv, tokenizer: Any,
                             eos_ids: Any, decimals: int) -> tuple[list[TokenSequence],
                                                                   dict[str, int]]:
    """Each scored trajectory, labelled with its return and tokenized; and the count of each
    label."""
    prompts = {t.id: len(t.prompt) for t in env.tasks}
    out: list[TokenSequence] = []
    labels: dict[str, int] = {}
    for trajectory in trajectories:
        if trajectory.error is not None or trajectory.reward is None \
                or trajectory.task_id not in prompts:
            continue
        label = return_label(trajectory.reward, decimals)
        transform = label_transform(label, prompts[trajectory.task_id])
        sequences = await sequences_of([trajectory], env, tokenizer, eos_ids, None, transform)
        out.extend(sequences)
        if sequences:
            labels[label] = labels.get(label, 0) + 1
    return out, labels


def target_return(labels: Mapping[str, int]) -> float:
    """The highest return among the labels (what evaluation conditions on)."""
    return max(float(label.split(":")[1].rstrip("]")) for label in labels)


class ReturnConditionedPolicy:
    """Wraps a policy so that every chat it sees carries ``[return-to-go: target]`` before the
    task's question (message ``prompt_length - 1``), as in training.

    Args:
        policy: the trained policy (e.g. an embedded engine with the RCSFT adapter).
        target: the return to condition on (:func:`target_return`).
        prompt_length: messages in the env's task prompts (every task must have this many).
    """

    def __init__(self, policy: Policy, target: float, prompt_length: int, decimals: int = 1):
        self.policy = policy
        self.transform = label_transform(return_label(target, decimals), prompt_length)
        self.accepts_prefix_ids = getattr(policy, "accepts_prefix_ids", False)

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None, sampling: SamplingParams,
                       **kwargs: Any) -> list[Completion]:
        """The wrapped policy's completions for the labelled chat."""
        return await self.policy.generate(self.transform([dict(m) for m in messages]), tools,
                                          sampling, **kwargs)

    async def aclose(self) -> None:
        """Close the wrapped policy."""
        await self.policy.aclose()


# --- the run --------------------------------------------------------------------------------

async def _trajectories(s: TrainingSession[RCSFTConfig]) -> list[Trajectory]:
    """The data's trajectories: the rollouts (played now, or read back on resume) and files."""
    config, out = s.config, []
    saved = s.run.path / "rcsft" / "trajectories.jsonl"
    for source in config.data:
        if source != ROLLOUTS:
            out.extend(read_trajectories(source))
        elif saved.exists():
            out.extend(read_trajectories(saved))
        else:
            tasks = round_tasks(s.task_ids, config.rollout_tasks, config.seed, 0)
            groups = await s.rollouts(0, tasks)
            played = [t for g in groups for t in g.trajectories]
            saved.parent.mkdir(parents=True, exist_ok=True)
            tmp = saved.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            with TrajectoryWriter(tmp) as writer:
                for trajectory in played:
                    writer.write(trajectory)
            tmp.replace(saved)
            out.extend(played)
    return out


async def train_async(config: RCSFTConfig, resume: str | Path | None = None) -> Path:
    """Run RCSFT; returns the run folder. ``resume`` continues a run folder exactly."""
    seed_everything(config.seed)
    world = join_world(config.distributed_timeout_s)
    model, tokenizer = load_trainee(config)
    session = await open_session(config, resume, model, tokenizer, world=world,
                                 group_size=config.num_generations, kl_coef=0.0)
    env = make_env_factory(config.env_id, config.env_kwargs, config.rewards)()
    try:
        trajectories = await _trajectories(session)
        examples, labels = await labelled_sequences(trajectories, env, tokenizer,
                                                    eos_ids_of(model, tokenizer),
                                                    config.return_decimals)
        if not examples:
            raise ValueError("no scored trajectories to label")
        (session.run.path / "rcsft" / "labels.json").parent.mkdir(exist_ok=True)
        (session.run.path / "rcsft" / "labels.json").write_text(json.dumps(
            {"labels": labels, "target_return": target_return(labels)}, indent=1))
        logger.info("RCSFT on %d chats, labels %s", len(examples), labels)
    except BaseException:
        await session.aclose()
        raise
    finally:
        await env.aclose()
    shared = share_prefix(examples)
    step = offline_step(shared, functools.partial(nll_loss, tokenizer.pad_token_id or 0,
                                                  config.logprob_chunk_tokens),
                        lambda batch: {"tokens": token_count(batch), "examples": len(shared)})
    return await run_steps(session, step)


def train(config: RCSFTConfig, resume: str | Path | None = None) -> Path:
    """Sync entry point of :func:`train_async` (``agentgym train --algorithm rcsft``)."""
    return asyncio.run(train_async(config, resume))
