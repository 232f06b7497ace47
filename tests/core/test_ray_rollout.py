"""Rollouts on a real local Ray cluster (``ray_cluster``: one for the whole test session).

The policy is a real OpenAI-compatible server (StubServer, deterministic answers) that the Ray
workers reach over 127.0.0.1; the env is ToyEnv with an I/O-bound ``add`` tool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import subprocess
import sys
from collections.abc import Iterator

import pytest
from gates import require_module

ray = require_module("ray", "pip install 'agentgym[ray]'")

from agentgym.errors import WorkerLostError  # noqa: E402
from agentgym.policies.openai_client import OpenAIPolicy  # noqa: E402
from agentgym.ray_rollout import (  # noqa: E402
    PolicySpec,
    RayEpisodes,
    RaySettings,
    ray_rollout_engine,
)
from agentgym.rollout import Group, RolloutConfig, RolloutEngine  # noqa: E402
from agentgym.testing import FakePolicy, ToyEnv, ToySolver, waiting_add  # noqa: E402
from agentgym.testing.stub_server import StubServer  # noqa: E402

WORKERS = RaySettings(num_workers=2, num_cpus_per_worker=0.5)


@pytest.fixture(scope="module")
def server() -> Iterator[StubServer]:
    with StubServer(ToySolver(calls=2)) as stub:
        yield stub


def make_env(tool_delay_s: float = 0.01) -> functools.partial[ToyEnv]:
    return functools.partial(ToyEnv, tools=[waiting_add(tool_delay_s)])


def _summary(groups: list[Group]) -> list[tuple[str, list[list[dict[str, object]]], list]]:
    return [(g.task_id, [[{k: m.get(k) for k in ("role", "content", "tool_calls")}
                          for m in t.messages] for t in g.trajectories], g.rewards)
            for g in groups]


async def test_ray_rollouts_equal_local_rollouts(ray_cluster: None, server: StubServer):
    config = RolloutConfig(group_size=2, max_concurrent=8)
    policy = OpenAIPolicy(server.base_url, "stub", vllm_extras=False)
    local = RolloutEngine(make_env(), policy, config)
    tasks = [t.id for t in local.tasks[:6]]
    expected = await local.run_groups(tasks)
    await local.aclose()
    remote = ray_rollout_engine(make_env(), policy, config, WORKERS)
    got = await remote.run_groups(tasks)
    pids = await remote.remote.pids()  # type: ignore[union-attr]
    await remote.aclose()
    await policy.aclose()
    assert _summary(got) == _summary(expected)
    assert [g.rewards for g in got] == [[1.0, 1.0]] * 6
    assert len(set(pids)) == 2 and not remote.resampled and not remote.dropped_groups


async def test_a_worker_killed_mid_step_turns_its_episodes_into_resampled_infra_errors(
        ray_cluster: None, server: StubServer):
    config = RolloutConfig(group_size=2, max_concurrent=12, on_infra_error="resample")
    spec = PolicySpec((server.base_url,), "stub", vllm_extras=False)
    engine = ray_rollout_engine(make_env(tool_delay_s=0.3), spec, config, WORKERS)
    remote = engine.remote
    assert isinstance(remote, RayEpisodes)
    await remote.pids()  # both workers are up
    tasks = [t.id for t in engine.tasks[:6]]
    step = asyncio.ensure_future(engine.run_groups(tasks))
    while remote.in_flight[0] < 3:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # its episodes are mid-tool-call
    playing = remote.in_flight[0]
    ray.kill(remote.workers[0])
    groups = await asyncio.wait_for(step, 60)
    lost = remote.lost_episodes
    await engine.aclose()
    assert [g.task_id for g in groups] == tasks  # every group accounted for, in order
    assert [g.rewards for g in groups] == [[1.0, 1.0]] * 6
    assert lost == playing >= 3  # exactly the episodes the dead worker was playing
    assert engine.resampled == lost and engine.dropped_groups == 0


async def test_with_every_worker_dead_episodes_fail_at_once_and_groups_drop(
        ray_cluster: None, server: StubServer):
    config = RolloutConfig(group_size=2, max_concurrent=4, on_infra_error="resample",
                           max_resamples=1)
    spec = PolicySpec((server.base_url,), "stub", vllm_extras=False)
    engine = ray_rollout_engine(make_env(), spec, config,
                                RaySettings(num_workers=1, num_cpus_per_worker=0.5))
    remote = engine.remote
    assert isinstance(remote, RayEpisodes)
    await remote.pids()
    ray.kill(remote.workers[0])
    groups = await asyncio.wait_for(engine.run_groups([t.id for t in engine.tasks[:2]]), 60)
    await engine.aclose()
    assert all(g.dropped for g in groups) and engine.dropped_groups == 2
    errors = [e for g in groups for e in g.errors]
    assert len(errors) == 4 and {e.type for e in errors} == {WorkerLostError.__name__}
    assert all(e.blame == "infra" for e in errors)
    assert all(t.reward is None for g in groups for t in g.trajectories)  # never scored 0


async def test_workers_follow_the_driver_clients_weight_syncs(ray_cluster: None,
                                                             server: StubServer):
    policy = OpenAIPolicy(server.base_url, "stub", vllm_extras=False, weight_version=1)
    engine = ray_rollout_engine(make_env(), policy, RolloutConfig(group_size=2), WORKERS)
    task = engine.tasks[0].id
    before = await engine.run_groups([task])
    policy.set_model("stub-lora-2", 2)  # what LoRASync does after loading an adapter
    after = await engine.run_groups([task])
    await engine.aclose()
    await policy.aclose()

    def versions(groups: list[Group]) -> set[object]:
        return {turn.weight_version for g in groups for t in g.trajectories for turn in t.turns}
    assert versions(before) == {1} and versions(after) == {2}


async def test_in_process_policies_cannot_go_to_workers(ray_cluster: None):
    with pytest.raises(ValueError, match="cannot be sent to Ray env workers"):
        ray_rollout_engine(make_env(), FakePolicy(["hi"]), RolloutConfig(), WORKERS)


def test_specs_rebuild_the_same_clients():
    spec = PolicySpec(("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"), "m", api_key="k",
                      raw_tool_text=True, timeout=7.0, max_retries=1, max_concurrency=3,
                      weight_version=4)
    router = spec.build()
    assert PolicySpec.of(router) == spec
    single = dataclasses.replace(spec, base_urls=spec.base_urls[:1])
    assert PolicySpec.of(single.build()) == single


def test_without_the_switch_nothing_imports_ray():
    code = ("import sys, agentgym, agentgym.ray_rollout, agentgym.eval.evaluation, "
            "agentgym.policies.router, agentgym.eval.cli; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
