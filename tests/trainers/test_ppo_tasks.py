"""PPO's task draw: uniform without replacement for one env, by the tasks' weights for a
mixture of envs (as GRPO)."""

import asyncio
from types import SimpleNamespace

import numpy as np
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.trainers import ppo  # noqa: E402


def drawn(task_weights, tasks_per_step):
    seen = {}

    async def rollouts(step, task_ids):
        seen["ids"] = task_ids
        return []

    session = SimpleNamespace(config=ppo.PPOConfig(tasks_per_step=tasks_per_step),
                              task_ids=["a", "b", "c", "d"], task_weights=task_weights,
                              task_rng=np.random.default_rng(0), rollouts=rollouts)
    asyncio.run(ppo.play(1, session))
    return seen["ids"]


def test_one_env_draws_distinct_tasks_while_there_are_enough():
    assert sorted(drawn(None, 4)) == ["a", "b", "c", "d"]


def test_a_mixture_draws_by_the_task_weights():
    ids = drawn([0.7, 0.1, 0.1, 0.1], 4000)
    assert abs(ids.count("a") / len(ids) - 0.7) < 0.03  # binomial sd 0.007
