"""The async rollout pipeline (GRPO ``max_staleness``), measured side by side in one run.

The real GRPO loop (``open_session``, ``run_steps``, ``step_function``, ``one_step``: envs,
rollout engine, scoring, batching, logging) with two fixed costs injected so that the pipeline,
not torch, is measured:

* generation: a policy with a fixed latency per turn (:class:`agentgym.testing.FakePolicy`
  with ``delay_s``, answering DigitEnv with random digit strings so rewards vary in a group);
  all of a step's episodes are in flight at once, so a step's rollouts take about that latency;
* training: ``grpo.update`` replaced by a sleep of ``train_s`` (a GPU update releases the
  event loop the same way: with ``max_staleness > 0`` it runs in a worker thread).

A step's time is the median gap between consecutive steps' ends (step 1 excluded: nothing runs
ahead of it). Target: with ``max_staleness: 1`` a step takes <= 1.15 x max(generate, train);
with ``max_staleness: 0`` it takes generate + train.

Run: ``.venv/bin/python benchmarks/async_pipeline.py``
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import tempfile
import time
from typing import Any

from agentgym.testing import FakePolicy
from agentgym.trainers import common, grpo
from agentgym.trainers.config import load_config
from agentgym.trainers.runs import RunDir

SMOKE = "trainers/configs/smoke.yaml"
STEPS = 10


class VersionSync:
    """The weight sync of a fake policy: the new version is recorded on new completions."""

    def __init__(self, policy: FakePolicy):
        self.policy = policy

    async def push(self, model: Any, version: int | None = None) -> int:
        self.policy.weight_version = self.policy.weight_version + 1 if version is None \
            else version
        return self.policy.weight_version


def fake_builder(latency_s: float):
    """A POLICY_BUILDERS entry: a fixed-latency FakePolicy and its version sync."""
    rng = random.Random(0)

    def reply(messages: Any, tools: Any) -> str:
        return "".join(rng.choice("0123456789") for _ in range(8))

    async def build(config: Any, model: Any, tokenizer: Any, run_path: Any) -> tuple:
        policy = FakePolicy(responder=reply, delay_s=latency_s)
        return policy, VersionSync(policy), policy.aclose

    return build


def sleeping_update(train_s: float):
    """``grpo.update`` that only sleeps (and answers the statistics it would)."""
    def update(*args: Any) -> dict[str, float]:
        time.sleep(train_s)
        return {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0}
    return update


async def one_run(k: int, generate_s: float, train_s: float, out: str) -> dict[str, float]:
    """Per-step time (median) and the k = 1 staleness of one run of STEPS steps."""
    config = load_config(grpo.GRPOConfig, SMOKE, {
        "max_steps": STEPS, "save_steps": 10_000, "max_staleness": k, "output_dir": out,
        "run_name": f"k{k}-{generate_s}-{train_s}", "report_to": [], "log_samples": 0})
    common.POLICY_BUILDERS["hf"] = fake_builder(generate_s)
    grpo.update = sleeping_update(train_s)
    model, tokenizer = common.load_trainee(config)
    session = await common.open_session(config, None, model, tokenizer,
                                        group_size=config.num_generations, kl_coef=0.0)
    step_fn = await grpo.step_function(session)
    ends: list[float] = []

    async def timed_step(step: int, s: Any) -> dict[str, Any]:
        row = await step_fn(step, s)
        ends.append(time.perf_counter())
        return row

    run = await common.run_steps(session, timed_step)
    rows = RunDir(run).metrics()
    stale = sum(r.get("async/staleness_1", 0) for r in rows)
    turns = stale + sum(r.get("async/staleness_0", 0) for r in rows)
    return {"step": statistics.median(b - a for a, b in zip(ends[1:], ends[2:], strict=False)),
            "generate": statistics.median(r["time/generate"] for r in rows[1:]),
            "train": statistics.median(r["time/train"] for r in rows[1:]),
            "stale_share": stale / turns if turns else 0.0,
            "dropped": sum(r.get("async/dropped_stale", 0) for r in rows)}


def main() -> None:
    logging.disable(logging.WARNING)
    print(f"GRPO step time, k = max_staleness; {STEPS} steps of 8 tasks x 8 episodes each")
    print(f"{'generate s':>10} {'train s':>8} | {'k=0 step':>8} {'/ (g+t)':>8} | "
          f"{'k=1 step':>8} {'/ max(g,t)':>10} {'k1/k0':>6} {'stale turns':>11} {'dropped':>7}")
    with tempfile.TemporaryDirectory() as out:
        for generate_s, train_s in ((0.4, 0.4), (0.6, 0.3), (0.3, 0.6)):
            k0 = asyncio.run(one_run(0, generate_s, train_s, out))
            k1 = asyncio.run(one_run(1, generate_s, train_s, out))
            gen, train = k0["generate"], k0["train"]  # measured, on-policy
            print(f"{gen:10.3f} {train:8.3f} | {k0['step']:8.3f} {k0['step'] / (gen + train):8.2f}"
                  f" | {k1['step']:8.3f} {k1['step'] / max(gen, train):10.2f} "
                  f"{k1['step'] / k0['step']:6.2f} {k1['stale_share']:11.0%} "
                  f"{int(k1['dropped']):7d}")
    print("target: k=1 step / max(g,t) <= 1.15; k=0 step / (g+t) ~ 1.0 "
          "(g, t: the measured generate and train phases of the k=0 run)")


if __name__ == "__main__":
    main()
