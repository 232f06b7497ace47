"""A trained reward model (``agentgym train --algorithm reward_model``) as a rubric term.

``RewardModelReward(run_dir)`` is a reward function ``fn(trajectory, task) -> r(x, y)``: the
score head's value on the whole episode (prompt, turns, tool results), from the newest
checkpoint of the reward model's run folder. Use it in any env's rubric::

    from agentgym.rewards import Reward, Rubric
    Reward("reward_model", RewardModelReward("runs/rm/Calculator-..."), 1.0)

or in a ``rewards:`` list (``agentgym.rewards.config``)::

    rewards:
      - {kind: reward_model, path: runs/rm/Calculator-..., weight: 1.0}
      - {kind: env, name: "*", weight: 0}     # the env's verifiable terms: logged, not optimised

The episode is scored on the token ids the policy sampled (token-in/token-out) when the
trajectory has them, so the reward model must share the policy's tokenizer (true when both
start from the same base model); a trajectory without ids (an API policy) is rendered with the
reward model's chat template instead.

torch, transformers and the trainer code load on the first score, not at import: agentgym's
core stays light. Scores run in a worker thread, one at a time (the model is shared).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from agentgym.tokens import build_token_sequence
from agentgym.types import Task, Trajectory

__all__ = ["RewardModelReward"]


class RewardModelReward:
    """``r(x, y)`` of a trained Bradley-Terry reward model, as a reward function.

    Args:
        path: the reward model's run folder (its ``config.yaml`` and checkpoints).
        device: where the model runs (``"auto"``: CUDA when available, else the CPU).

    Raises:
        FileNotFoundError: (on the first score) the folder has no config or checkpoint.
    """

    def __init__(self, path: str | Path, device: str = "auto"):
        self.path = Path(path)
        self.device = device
        self._lock = threading.Lock()
        self._parts: tuple[Any, Any, Any, Any] | None = None

    def __repr__(self) -> str:
        return f"RewardModelReward({str(self.path)!r})"

    async def __call__(self, trajectory: Trajectory, task: Task) -> float:
        return await asyncio.to_thread(self.score, trajectory)

    def score(self, trajectory: Trajectory) -> float:
        """The reward model's score of one finished trajectory (blocking)."""
        with self._lock:
            model, head, tokenizer, config = self._load()
            import torch

            from agentgym.trainers.batch import pack
            from agentgym.trainers.common import autocast_for
            from agentgym.trainers.reward_model import sequence_scores

            sequence = self._sequence(trajectory, tokenizer)
            batch = pack([sequence], [0.0], tokenizer.pad_token_id or 0,
                         device=next(model.parameters()).device)
            with torch.no_grad(), autocast_for(model, config):
                return float(sequence_scores(model, head, batch)[0])

    def _sequence(self, trajectory: Trajectory, tokenizer: Any) -> Any:
        from agentgym.trainers.preferences import chat_sequence

        if trajectory.turns and all(t.completion_token_ids for t in trajectory.turns):
            return build_token_sequence(trajectory)
        messages = list(trajectory.messages)
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
        if first is None:
            raise ValueError(f"trajectory {trajectory.task_id!r} has no assistant message to "
                             "score")
        return chat_sequence(tokenizer, messages[:first], messages[first:])

    def _load(self) -> tuple[Any, Any, Any, Any]:
        if self._parts is None:
            self._parts = load_reward_model(self.path, self.device)
        return self._parts


def load_reward_model(path: Path, device: str = "auto") -> tuple[Any, Any, Any, Any]:
    """(model, score head, tokenizer, config) of the newest checkpoint of a reward-model run."""
    import torch

    from agentgym.policies.devices import resolve_device
    from agentgym.trainers.common import precision
    from agentgym.trainers.config import load_config
    from agentgym.trainers.models import load_model, load_weights
    from agentgym.trainers.reward_model import HEAD, RewardModelConfig, score_head_for
    from agentgym.trainers.runs import RunDir

    if not (path / "config.yaml").exists():
        raise FileNotFoundError(f"{path} is not a reward-model run folder (no config.yaml)")
    checkpoints = RunDir(path).checkpoints()
    if not checkpoints:
        raise FileNotFoundError(f"{path} has no checkpoint yet")
    config = load_config(RewardModelConfig, path / "config.yaml", {"device": device})
    target, dtype = resolve_device(config.device), precision(config)[1]
    model, tokenizer = load_model(config.model, lora=config.lora, lora_r=config.lora_r,
                                  lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                  lora_target_modules=config.lora_target_modules,
                                  seed=config.seed, device=target, dtype=dtype)
    load_weights(model, checkpoints[-1] / "model", config.lora)
    head = score_head_for(model)
    head.load_state_dict(torch.load(checkpoints[-1] / f"{HEAD}.pt", map_location=target))
    return model.eval(), head.eval(), tokenizer, config
