"""A Ray env worker killed mid-episode leaks no Docker sandbox.

The worker plays the code env (a real SandboxPool in the worker process) against a StubServer
"model" that runs a long ``run_python`` call; the worker is killed with ``ray.kill`` while the
call runs. Its episodes come back as infra errors and none of its containers is left (the
engine auto-removes a container whose runner lost its host, and the reaper task on the node
removes what remains): counted by the worker's owner labels before and after.
"""

from __future__ import annotations

import asyncio
import functools
import json

import pytest
from gates import require_module

ray = require_module("ray", "pip install 'agentgym[ray]'")

import agentgym  # noqa: E402
from agentgym.errors import WorkerLostError  # noqa: E402
from agentgym.ray_rollout import PolicySpec, RayEpisodes, RaySettings, ray_rollout_engine  # noqa: E402
from agentgym.rollout import RolloutConfig  # noqa: E402
from agentgym.sandbox.docker_backend import docker_client  # noqa: E402
from agentgym.testing.stub_server import StubServer  # noqa: E402

pytestmark = pytest.mark.docker

LONG_CALL = "<tool_call>" + json.dumps(
    {"name": "run_python", "arguments": {"code": "import time\ntime.sleep(8)"}}) + "</tool_call>"


def _containers(owner: dict[str, str]) -> int:
    client = docker_client()
    try:
        flt = {"label": [f"{k}={v}" for k, v in owner.items()]}
        return len(client.api.containers(all=True, filters=flt))
    finally:
        client.close()


async def test_a_killed_workers_sandboxes_are_reaped(ray_cluster: None) -> None:
    make_env = functools.partial(agentgym.make, "agentgym/CodeHumanEval-v0", split="eval",
                                 pool_size=2)
    with StubServer(lambda request: LONG_CALL) as server:
        engine = ray_rollout_engine(
            make_env, PolicySpec((server.base_url,), "stub", vllm_extras=False),
            RolloutConfig(group_size=2, max_concurrent=2),
            RaySettings(num_workers=1, num_cpus_per_worker=0.25))
        remote = engine.remote
        assert isinstance(remote, RayEpisodes)
        _, owner = await remote._where[0]  # noqa: SLF001 - the labels its containers carry
        step = asyncio.ensure_future(engine.run_groups([engine.tasks[0].id]))
        for _ in range(600):  # the episodes hold their sandboxes and run the long call
            if server.requests >= 2 and _containers(owner) >= 2:
                break
            await asyncio.sleep(0.1)
        before = _containers(owner)
        ray.kill(remote.workers[0])
        groups = await asyncio.wait_for(step, 60)
        await engine.aclose()
    assert before >= 2
    assert groups[0].dropped
    assert {e.type for e in groups[0].errors} == {WorkerLostError.__name__}
    # None is left. Each went one of two ways, whichever came first on this machine: its runner
    # read EOF when the worker died and the engine auto-removed it, or the reaper took it.
    assert _containers(owner) == 0
    assert 0 <= remote.reaped_sandboxes <= before
