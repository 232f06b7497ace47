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

torch, transformers and the trainer code (:data:`SCORER`) load on the first score, not at
import: agentgym's core stays light. Scores run in a worker thread, one at a time (the model
is shared).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from pathlib import Path
from typing import Any

from agentgym.types import Task, Trajectory

__all__ = ["SCORER", "RewardModelReward"]

SCORER = "agentgym.trainers.reward_model:RewardModelScorer"
"""The scorer's entry point, imported on the first score (the core never imports trainers at
import time: the dependency points from the trainers to the core)."""


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
        self._scorer: Any = None

    def __repr__(self) -> str:
        return f"RewardModelReward({str(self.path)!r})"

    async def __call__(self, trajectory: Trajectory, task: Task) -> float:
        return await asyncio.to_thread(self.score, trajectory)

    def score(self, trajectory: Trajectory) -> float:
        """The reward model's score of one finished trajectory (blocking)."""
        with self._lock:
            if self._scorer is None:
                module, _, name = SCORER.partition(":")
                scorer_class = getattr(importlib.import_module(module), name)
                self._scorer = scorer_class(self.path, self.device)
            return float(self._scorer.score(trajectory))
