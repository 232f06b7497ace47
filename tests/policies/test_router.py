"""ReplicaRouter against two real StubServers: least-loaded, sticky per episode, failover."""

from __future__ import annotations

import asyncio

import pytest

from agentgym.errors import PolicyConnectionError
from agentgym.policies.router import ReplicaRouter
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.testing import ToyEnv, ToySolver
from agentgym.testing.stub_server import StubServer


def _engine(router: ReplicaRouter, max_concurrent: int = 8) -> RolloutEngine:
    return RolloutEngine(ToyEnv, router, RolloutConfig(max_concurrent=max_concurrent,
                                                       turn_timeout_s=20))


async def test_episodes_spread_least_loaded_and_each_sticks_to_one_replica():
    adders = [ToySolver(), ToySolver()]
    with StubServer(adders[0]) as one, StubServer(adders[1]) as two:
        router = ReplicaRouter.from_urls([one.base_url, two.base_url], "stub",
                                         vllm_extras=False)
        engine = _engine(router)
        tasks = [t.id for t in engine.tasks[:8]]
        groups = await engine.run_groups(tasks)
        await engine.aclose()
        await router.aclose()
    assert [g.rewards for g in groups] == [[1.0]] * 8
    assert all(count > 0 for count in router.served)  # both replicas got episodes
    first, second = set(adders[0].questions), set(adders[1].questions)
    assert not first & second  # no episode's turns were split between replicas
    assert len(adders[0].questions) + len(adders[1].questions) == 8 * 3


async def test_a_replica_that_dies_mid_run_is_taken_out_and_its_turns_go_elsewhere():
    adders = [ToySolver(), ToySolver(delay_s=0.05)]
    with StubServer(adders[0]) as one:
        two = StubServer(adders[1]).__enter__()
        router = ReplicaRouter.from_urls([one.base_url, two.base_url], "stub",
                                         vllm_extras=False, revive_after_s=600)
        engine = _engine(router)
        run = asyncio.ensure_future(engine.run_groups([t.id for t in engine.tasks[:8]]))
        while len(adders[1].questions) < 2:  # the second replica is mid-run
            await asyncio.sleep(0.01)
        await asyncio.to_thread(two.__exit__, None, None, None)
        groups = await asyncio.wait_for(run, 30)
        await engine.aclose()
        await router.aclose()
    assert [g.rewards for g in groups] == [[1.0]] * 8  # every episode finished, none lost
    assert list(router.dead_since) == [1]
    moved = set(adders[0].questions) & set(adders[1].questions)
    assert moved  # episodes that began on the dead replica finished on the live one


async def test_no_replica_left_is_a_connection_error_not_a_hang():
    with StubServer(ToySolver()) as one:
        url = one.base_url
    router = ReplicaRouter.from_urls([url], "stub", vllm_extras=False, max_retries=0)
    engine = _engine(router)
    groups = await asyncio.wait_for(engine.run_groups([engine.tasks[0].id]), 30)
    await engine.aclose()
    await router.aclose()
    error = groups[0].trajectories[0].error
    assert error is not None and error.type == PolicyConnectionError.__name__
    assert groups[0].dropped


def test_the_router_needs_a_replica():
    with pytest.raises(ValueError, match="at least one"):
        ReplicaRouter([])
