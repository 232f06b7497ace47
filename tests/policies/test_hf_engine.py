"""The embedded engine on the real prepared SmolLM2: protocol, tokens, logprobs, batching."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from _policy_helpers import FEW_SHOT_TOOL_CHAT, TOOLS, teacher_forced_logprobs

from agentgym.errors import PolicyError
from agentgym.policies.chat_tokens import render_prompt
from agentgym.policies.hf_engine import HFEngine
from agentgym.policies.weight_sync import SharedWeightSync
from agentgym.policy import Completion, Policy, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24)


async def test_is_a_policy(engine: HFEngine) -> None:
    assert isinstance(engine, Policy)


async def test_chat_with_tools_returns_a_parsed_tool_call(engine: HFEngine, tokenizer: Any) -> None:
    [completion] = await engine.generate(FEW_SHOT_TOOL_CHAT, TOOLS,
                                         SamplingParams(temperature=0, max_tokens=48))
    assert completion.finish_reason == "tool_calls"
    assert [(c.name, dict(c.arguments), c.error) for c in completion.tool_calls] == [
        ("add", {"a": 7, "b": 5}, None)]
    prompt_text = tokenizer.decode(completion.prompt_token_ids)
    assert "<tools>" in prompt_text and '"name": "add"' in prompt_text
    assert list(completion.prompt_token_ids) == render_prompt(tokenizer, FEW_SHOT_TOOL_CHAT, TOOLS)


async def test_tokens_and_logprobs_match_the_tokenizer_and_the_model(
        engine: HFEngine, tokenizer: Any, hf_model: Any) -> None:
    chats = [[{"role": "user", "content": "Hi!"}],
             [{"role": "user", "content": "Write a long sentence about the sea and the sky."}]]
    results = await asyncio.gather(*(engine.generate(c, None, GREEDY) for c in chats))
    for [c] in results:
        ids = list(c.completion_token_ids)
        assert len(ids) == len(c.logprobs) > 0
        assert all(lp <= 0 for lp in c.logprobs)
        body = ids[:-1] if c.finish_reason == "stop" else ids
        if c.finish_reason == "stop":
            assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert tokenizer.decode(body, skip_special_tokens=True) == c.text
        # The short prompt was left-padded in the batch: logprobs must not notice.
        expected = teacher_forced_logprobs(hf_model, list(c.prompt_token_ids), ids)
        assert c.logprobs == pytest.approx(expected, abs=2e-3)


async def test_n_samples_with_seeds_are_distinct_and_reproducible(engine: HFEngine) -> None:
    chat = [{"role": "user", "content": "Tell me a one-line story."}]
    sampling = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=7)
    first = await engine.generate(chat, None, sampling)
    assert len(first) == 4 and len({c.completion_token_ids for c in first}) > 1
    # Same seed, batched next to another request this time: the same samples come back.
    again, _ = await asyncio.gather(engine.generate(chat, None, sampling),
                                    engine.generate([{"role": "user", "content": "x"}], None,
                                                    SamplingParams(max_tokens=5)))
    assert [c.completion_token_ids for c in again] == [c.completion_token_ids for c in first]


async def test_rows_sharing_a_prompt_prefill_it_once_and_sample_as_if_alone(
        engine: HFEngine, hf_model: Any) -> None:
    prefill_rows: list[int] = []

    def count_prefills(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs.get("past_key_values") is None:  # generate always passes its own cache
            prefill_rows.append(kwargs["input_ids"].shape[0])

    chat = [{"role": "user", "content": "Tell me a one-line story about a cat."}]
    sampling = SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=11)
    other = [{"role": "user", "content": "x"}]
    hook = hf_model.register_forward_pre_hook(count_prefills, with_kwargs=True)
    shared, [single] = await asyncio.gather(
        engine.generate(chat, None, sampling),
        engine.generate(other, None, SamplingParams(max_tokens=4, seed=1)))
    hook.remove()
    assert prefill_rows == [2]  # two distinct prompts, five rows
    for k, c in enumerate(shared):
        [alone] = await engine.generate(chat, None, SamplingParams(
            temperature=1.0, max_tokens=12, seed=11 + k))
        assert c.completion_token_ids == alone.completion_token_ids
        assert c.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
    expected = teacher_forced_logprobs(hf_model, list(single.prompt_token_ids),
                                       list(single.completion_token_ids))
    assert list(single.logprobs) == pytest.approx(expected, abs=2e-3)


async def test_top_p_logprobs_are_renormalised(engine: HFEngine) -> None:
    chat = [{"role": "user", "content": "Name a colour."}]
    [c] = await engine.generate(chat, None, SamplingParams(temperature=0.7, top_p=0.5,
                                                           max_tokens=8, seed=1))
    assert all(lp <= 1e-6 for lp in c.logprobs)


async def test_max_tokens_and_stop_strings(engine: HFEngine) -> None:
    chat = [{"role": "user", "content": "Count from one to twenty in words."}]
    [long] = await engine.generate(chat, None, SamplingParams(temperature=0, max_tokens=5))
    assert long.finish_reason == "length" and len(long.completion_token_ids) == 5
    [full] = await engine.generate(chat, None, SamplingParams(temperature=0, max_tokens=40))
    stop = full.text[10:14]
    [cut] = await engine.generate(chat, None, SamplingParams(temperature=0, max_tokens=40,
                                                             stop=(stop,)))
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text)
    assert len(cut.completion_token_ids) == len(cut.logprobs) < len(full.completion_token_ids)


async def test_concurrent_requests_are_merged_into_batches(engine: HFEngine) -> None:
    chats = [[{"role": "user", "content": f"Say the number {i}."}] for i in range(12)]
    sampling = SamplingParams(temperature=0.8, max_tokens=8, seed=3)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    started = time.monotonic()
    results = await asyncio.gather(*(engine.generate(c, None, sampling) for c in chats))
    elapsed = time.monotonic() - started
    tick_task.cancel()
    assert all(len(r) == 1 for r in results)
    assert sum(engine.batch_sizes) == 12
    assert max(engine.batch_sizes) >= 6, engine.batch_sizes  # merged, not one by one
    assert len(engine.batch_sizes) <= 3
    # Generation ran off the event loop: the ticker kept running meanwhile.
    # (a blocked loop ticks about once per batch; a busy machine still ticks far more often)
    assert ticks >= max(10, 0.05 * elapsed / 0.01)


async def test_shared_weights_sync_is_a_version_bump(engine: HFEngine, hf_model: Any) -> None:
    import torch

    sync = SharedWeightSync(engine)
    chat = [{"role": "user", "content": "Hi!"}]
    [before] = await engine.generate(chat, None, GREEDY)
    assert before.weight_version == 0
    layer = hf_model.model.layers[0].mlp.down_proj.weight
    saved = layer.detach().clone()
    try:
        def optimizer_step() -> None:  # what the trainer runs between generate batches
            with torch.no_grad():
                layer.mul_(-3.0)

        await engine.run_exclusive(optimizer_step)
        assert await sync.push(hf_model) == 1
        [after] = await engine.generate(chat, None, GREEDY)
        assert after.weight_version == 1
        assert after.completion_token_ids != before.completion_token_ids
    finally:
        with torch.no_grad():
            layer.copy_(saved)
    assert await sync.push(version=10) == 10 and engine.weight_version == 10
    with pytest.raises(PolicyError):
        await sync.push(object())


async def test_closed_engine_and_oversized_prompt_raise_policy_errors(
        engine: HFEngine) -> None:
    with pytest.raises(PolicyError, match="exceeds the context"):
        await engine.generate([{"role": "user", "content": "hi"}], None,
                              SamplingParams(max_tokens=10_000))
    await engine.aclose()
    with pytest.raises(PolicyError, match="closed"):
        await engine.generate([{"role": "user", "content": "hi"}], None, GREEDY)


def test_to_action_round_trips_into_the_next_prompt(tokenizer: Any) -> None:
    """A completion's action appended to the chat renders as prompt + completion (no drift)."""
    from agentgym.policies.drift import check_extends

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 7, "b": 5}}\n</tool_call>'
    prompt = render_prompt(tokenizer, FEW_SHOT_TOOL_CHAT, TOOLS)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    completion = Completion(text=text, prompt_token_ids=tuple(prompt),
                            completion_token_ids=tuple(ids))
    chat = [*FEW_SHOT_TOOL_CHAT, completion.to_action(),
            {"role": "tool", "tool_call_id": "x", "content": "12"}]
    check_extends(prompt + ids, render_prompt(tokenizer, chat, TOOLS))


async def test_a_later_turn_continues_from_the_sampled_tokens(engine: HFEngine,
                                                             tokenizer: Any) -> None:
    sampling = SamplingParams(temperature=0, max_tokens=48)
    [call] = await engine.generate(FEW_SHOT_TOOL_CHAT, TOOLS, sampling)
    assert call.finish_reason == "tool_calls"
    chat = [*FEW_SHOT_TOOL_CHAT, call.to_action(),
            {"role": "tool", "tool_call_id": "x", "content": "12"}]
    sampled = call.prompt_token_ids + call.completion_token_ids
    [answer] = await engine.generate(chat, TOOLS, sampling, prefix_ids=sampled)
    assert answer.prompt_token_ids[:len(sampled)] == sampled
    assert tokenizer.decode(answer.prompt_token_ids) == tokenizer.decode(
        render_prompt(tokenizer, chat, TOOLS))
    assert answer.completion_token_ids


async def test_generation_runs_in_eval_mode_and_restores_train_mode(
        engine: HFEngine, hf_model: Any) -> None:
    chat = [{"role": "user", "content": "Hi!"}]
    [eval_reply] = await engine.generate(chat, None, GREEDY)
    hf_model.train()
    try:
        [train_reply] = await engine.generate(chat, None, GREEDY)
        assert hf_model.training  # the trainer's mode is left as it was
    finally:
        hf_model.eval()
    assert train_reply.completion_token_ids == eval_reply.completion_token_ids
