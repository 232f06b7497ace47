"""The trainer's ``ray:`` switch: the run's rollout engine plays on Ray env workers.

A whole training run needs a vLLM server (the policy must be reachable over HTTP); here the
engine that :func:`make_rollout_engine` builds is run against a real StubServer on the session's
local Ray cluster, which is the part the switch changes.
"""

from __future__ import annotations

import pytest
from gates import TRAIN_INSTALL, require_module

require_module("torch", TRAIN_INSTALL)
require_module("ray", "pip install 'agentgym[ray]'")

from agentgym.policies.openai_client import OpenAIPolicy  # noqa: E402
from agentgym.ray_rollout import RayEpisodes  # noqa: E402
from agentgym.testing import FakePolicy  # noqa: E402
from agentgym.testing.stub_server import StubServer  # noqa: E402
from agentgym.trainers.common import TrainerConfig, make_rollout_engine  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402


async def test_the_ray_switch_plays_the_runs_groups_on_workers(ray_cluster: None) -> None:
    config = load_config(TrainerConfig, overrides=[
        "--env_id", "agentgym/Calculator-v0", "--max_concurrent", "4",
        "--ray", "{num_workers: 2, num_cpus_per_worker: 0.25}"])
    with StubServer(lambda request: "<answer>7</answer>") as server:
        policy = OpenAIPolicy(server.base_url, "policy", vllm_extras=False)
        engine = make_rollout_engine(config, policy, group_size=2)
        assert isinstance(engine.remote, RayEpisodes) and len(engine.remote.workers) == 2
        groups = await engine.run_groups([t.id for t in engine.tasks[:3]])
        pids = await engine.remote.pids()
        await engine.aclose()
        await policy.aclose()
    assert len(groups) == 3 and not any(g.dropped for g in groups)
    assert all(r is not None for g in groups for r in g.rewards)
    assert len(set(pids)) == 2 and engine.resampled == 0


def test_the_embedded_engine_cannot_go_to_ray_workers(ray_cluster: None) -> None:
    config = TrainerConfig(ray={"num_workers": 1})
    with pytest.raises(ValueError, match="serve the model over HTTP"):
        make_rollout_engine(config, FakePolicy(["hi"]), group_size=1)


def test_unknown_ray_settings_are_named() -> None:
    with pytest.raises(ValueError, match="unknown ray settings"):
        make_rollout_engine(TrainerConfig(ray={"workers": 2}), FakePolicy(["hi"]), group_size=1)
