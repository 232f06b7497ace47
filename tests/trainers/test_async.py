"""The async rollout pipeline (max_staleness > 0): the staleness filter, the producer's gate,
and a k = 1 GRPO run on the smoke setting."""

import asyncio
import json
from types import SimpleNamespace

import pytest
from gates import TRAIN_INSTALL, require_module

require_module("torch", TRAIN_INSTALL)

from agentgym.rollout import Group  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.grpo import GRPOConfig, one_step, step_function, train  # noqa: E402
from agentgym.trainers.pipeline import RolloutPipeline, staleness_filter  # noqa: E402
from agentgym.trainers.ppo import PPOConfig  # noqa: E402
from agentgym.trainers.runs import RunDir  # noqa: E402
from agentgym.types import Trajectory, Turn  # noqa: E402

SMOKE = "trainers/configs/smoke.yaml"


def group(task_id, *versions, dropped=False):
    """A group with one single-turn trajectory per version."""
    return Group(task_id, tuple(
        Trajectory(env_id="toy", task_id=task_id, messages=(), reward=0.0,
                   turns=(Turn(index=0, assistant={}, weight_version=v),)) for v in versions),
        dropped=dropped)


def test_staleness_filter_drops_groups_older_than_k_and_counts_the_rest():
    groups = [group("fresh", 5, 5), group("lagging", 4, 5), group("stale", 3, 5),
              group("unversioned", None, 5), group("failed", 4, 4, dropped=True)]
    report = staleness_filter(groups, current=5, max_staleness=1)
    assert [g.task_id for g in report.kept] == ["fresh", "lagging", "unversioned", "failed"]
    assert report.dropped == 1
    assert report.metrics(1) == {"async/dropped_stale": 1, "async/staleness_max": 1,
                                 "async/staleness_0": 5, "async/staleness_1": 1}
    assert staleness_filter(groups, current=5, max_staleness=2).dropped == 0
    assert staleness_filter(groups, current=5, max_staleness=0).metrics(0)[
        "async/dropped_stale"] == 3


def test_pipeline_runs_ahead_by_at_most_k_steps():
    async def scenario(k):
        started = []

        async def produce(step):
            started.append(step)
            return [group(f"s{step}", 0)]

        pipeline = RolloutPipeline(produce, first=1, last=6, max_staleness=k, published=0)
        pipeline.start()
        ahead = []
        for step in range(1, 7):
            assert (await pipeline.take(step))[0].task_id == f"s{step}"
            await asyncio.sleep(0.01)  # "training": the producer may run on
            ahead.append(max(started) - step)
            await pipeline.publish(step)
        await pipeline.aclose()
        return ahead

    assert asyncio.run(scenario(1)) == [1, 1, 1, 1, 1, 0]
    assert asyncio.run(scenario(2)) == [2, 2, 2, 2, 1, 0]


def test_k0_is_the_on_policy_loop_and_bad_settings_are_refused():
    session = SimpleNamespace(config=GRPOConfig(max_staleness=0))
    assert asyncio.run(step_function(session)) is one_step  # no pipeline, today's step
    with pytest.raises(ValueError, match="max_staleness"):
        GRPOConfig(max_staleness=-1)
    with pytest.raises(ValueError, match="half-written"):
        GRPOConfig(max_staleness=1, engine="vllm", lora=False)
    with pytest.raises(ValueError, match="vllm_colocated"):
        GRPOConfig(max_staleness=1, engine="vllm_colocated")
    with pytest.raises(ValueError, match="PPO trains on-policy"):
        PPOConfig(max_staleness=1)


def test_k1_smoke_run_trains_only_turns_at_most_one_version_old(tmp_path):
    small = {"max_steps": 4, "save_steps": 2, "tasks_per_step": 4, "max_staleness": 1,
             "output_dir": str(tmp_path), "run_name": "async", "report_to": []}
    run = train(load_config(GRPOConfig, SMOKE, small))
    metrics = RunDir(run).metrics()
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    for row in metrics:
        assert row["async/dropped_stale"] == 0
        assert row["async/staleness_max"] <= 1
        assert row["async/staleness_0"] + row["async/staleness_1"] == row["episodes"]
    for line in (run / "samples.jsonl").read_text().splitlines():
        sample = json.loads(line)
        for turn in sample["turns"]:  # the weights of step s - 1 train step s
            assert 0 <= sample["step"] - 1 - turn["weight_version"] <= 1

    # resumed with k = 1: the in-flight batch is discarded and played again; it completes
    resumed = train(load_config(GRPOConfig, run / "config.yaml", {"max_steps": 6}), resume=run)
    assert [r["step"] for r in RunDir(resumed).metrics()] == [1, 2, 3, 4, 5, 6]
    assert all(r["async/staleness_max"] <= 1 for r in RunDir(resumed).metrics())


def test_lora_sync_keeps_the_adapters_that_requests_in_flight_may_use(tmp_path):
    from agentgym.policies.vllm_server import VLLMServer, VLLMServerConfig
    from agentgym.trainers import common

    server = VLLMServer(VLLMServerConfig(model=tmp_path, port=8123))
    assert common.server_sync(GRPOConfig(engine="vllm"), server, None, tmp_path).keep == 1
    assert common.server_sync(GRPOConfig(engine="vllm", max_staleness=2), server, None,
                              tmp_path).keep == 3


def test_a_generation_queued_behind_the_update_is_tagged_with_the_new_version():
    import time

    from agentgym.policies.hf_engine import HFEngine
    from agentgym.policy import SamplingParams
    from agentgym.trainers.smoke import char_tokenizer, tiny_model

    tokenizer = char_tokenizer()
    engine = HFEngine(tiny_model(tokenizer), tokenizer, max_wait_s=0.0)

    async def scenario():
        update = asyncio.create_task(engine.run_exclusive(time.sleep, 0.3, version=7))
        await asyncio.sleep(0.05)  # the update holds the compute thread
        completions = await engine.generate([{"role": "user", "content": "Say 7."}], None,
                                            SamplingParams(max_tokens=3, seed=0))
        await update
        await engine.aclose()
        return completions[0].weight_version

    assert asyncio.run(scenario()) == 7
