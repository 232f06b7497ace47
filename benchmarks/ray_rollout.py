"""Rollouts on Ray env workers, measured side by side in one run on a local Ray cluster.

1. Throughput with I/O-bound tools: ToyEnv episodes of 4 tool calls that each wait 50 ms (an
   API call, a sandbox), policy turns from a real OpenAI-compatible stub server on 127.0.0.1.
   Each worker plays at most ``--per-worker`` episodes at once (its env instances), so adding a
   worker adds capacity. Episodes/s with 1 worker vs 2. Target >= 1.8x.
2. Ray's per-episode overhead on a 1 s episode (4 tool calls of 250 ms): the same episodes one
   at a time through the local engine and through one Ray worker;
   ``(ray - local) / local`` per episode. Target <= 5 %.

Run: ``.venv/bin/python benchmarks/ray_rollout.py`` (``--address auto`` for a running cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time

import ray

from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.ray_rollout import RaySettings, ray_rollout_engine
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.testing import ToyEnv, ToySolver, waiting_add
from agentgym.testing.stub_server import StubServer

CALLS = 4  # tool calls per episode (5 policy turns)


def _make_env(tool_s: float) -> functools.partial[ToyEnv]:
    return functools.partial(ToyEnv, tools=[waiting_add(tool_s)])


async def _throughput(url: str, workers: int, per_worker: int, episodes: int) -> float:
    """Episodes per second with ``workers`` workers (warm: workers and envs started first)."""
    policy = OpenAIPolicy(url, "stub", vllm_extras=False)
    config = RolloutConfig(max_concurrent=workers * per_worker)
    settings = RaySettings(num_workers=workers, num_cpus_per_worker=0.25,
                           episodes_per_worker=per_worker)
    engine = ray_rollout_engine(_make_env(0.05), policy, config, settings)
    tasks = [t.id for t in engine.tasks]
    ids = [tasks[i % len(tasks)] for i in range(episodes)]
    await engine.run_groups(ids[: workers * per_worker])  # warm-up: every env instance made
    started = time.perf_counter()
    await engine.run_groups(ids)
    rate = episodes / (time.perf_counter() - started)
    await engine.aclose()
    await policy.aclose()
    return rate


async def _episode_times(engine: RolloutEngine, rounds: int) -> list[float]:
    task = engine.tasks[0].id
    await engine.run_groups([task])  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        group = (await engine.run_groups([task]))[0]
        times.append(time.perf_counter() - started)
        assert group.rewards == [1.0], group.errors
    return times


async def _overhead(url: str, rounds: int) -> tuple[float, float]:
    """Median seconds per 1 s episode: local engine, one Ray worker."""
    policy = OpenAIPolicy(url, "stub", vllm_extras=False)
    config = RolloutConfig(max_concurrent=1)
    local = RolloutEngine(_make_env(0.25), policy, config)
    remote = ray_rollout_engine(_make_env(0.25), policy, config,
                                RaySettings(num_workers=1, num_cpus_per_worker=0.25))
    local_times, ray_times = [], []
    for _ in range(2):  # interleaved, so drift in machine load hits both
        local_times += await _episode_times(local, rounds)
        ray_times += await _episode_times(remote, rounds)
    await local.aclose()
    await remote.aclose()
    await policy.aclose()
    return statistics.median(local_times), statistics.median(ray_times)


async def main(args: argparse.Namespace) -> None:
    with StubServer(ToySolver(calls=CALLS)) as server:
        one = await _throughput(server.base_url, 1, args.per_worker, args.episodes)
        two = await _throughput(server.base_url, 2, args.per_worker, args.episodes)
        print(f"1. throughput, {CALLS} tool calls x 50 ms, {args.per_worker} episodes/worker, "
              f"{args.episodes} episodes")
        print(f"   1 worker: {one:7.1f} episodes/s   2 workers: {two:7.1f} episodes/s   "
              f"ratio {two / one:.2f}x (target >= 1.8x)")
        local, remote = await _overhead(server.base_url, args.rounds)
        print(f"2. one 1 s episode at a time (median of {2 * args.rounds})")
        print(f"   local: {local * 1000:7.1f} ms   Ray worker: {remote * 1000:7.1f} ms   "
              f"overhead {(remote - local) / local:+.1%} (target <= 5 %)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="an existing cluster (default: local)")
    parser.add_argument("--per-worker", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=5)
    cli = parser.parse_args()
    local_only = {} if cli.address else {"include_dashboard": False}
    ray.init(address=cli.address or "local", logging_level="WARNING", log_to_driver=False,
             **local_only)
    try:
        asyncio.run(main(cli))
    finally:
        ray.shutdown()
