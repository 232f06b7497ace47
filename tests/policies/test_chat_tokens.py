"""Continuing a chat from sampled token ids (no re-tokenization of the model's own text)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from _policy_helpers import FEW_SHOT_TOOL_CHAT, TOOLS

from agentgym.errors import TokenizationDriftError
from agentgym.policies.chat_tokens import continue_prompt, render_prompt
from agentgym.policies.drift import check_extends

TOOL_RESULT = {"role": "tool", "tool_call_id": "x", "content": "12"}


def sampled_reply(tokenizer: Any, eos: bool) -> tuple[str, list[int]]:
    """A tool call whose word "add" was sampled as "a" + "dd" (one token when re-tokenized)."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    text = '<tool_call>\n{"name": "add", "arguments": {"a": 12, "b": 5}}\n</tool_call>'
    head, tail = text.split("add", 1)
    pieces = encode(head) + encode("a") + encode("dd") + encode(tail)
    assert pieces != encode(text)
    return text, pieces + ([tokenizer.convert_tokens_to_ids("<|im_end|>")] if eos else [])


def test_the_next_prompt_continues_the_sampled_tokens(tokenizer: Any) -> None:
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text, reply = sampled_reply(tokenizer, eos=True)
    prompt = render_prompt(tokenizer, FEW_SHOT_TOOL_CHAT, TOOLS)
    chat = [*FEW_SHOT_TOOL_CHAT, {"role": "assistant", "content": text}, TOOL_RESULT]
    with pytest.raises(TokenizationDriftError):  # what re-rendering the chat would do
        check_extends(prompt + reply, render_prompt(tokenizer, chat, TOOLS))
    ids = continue_prompt(tokenizer, chat, TOOLS, prompt + reply, {eos})
    assert ids is not None and ids[: len(prompt) + len(reply)] == prompt + reply
    assert tokenizer.decode(ids[len(prompt) + len(reply):]) == (
        "\n<|im_start|>user\n<tool_response>\n12\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")
    # Text-wise it is the very prompt a fresh render gives: only the token split differs.
    assert tokenizer.decode(ids) == tokenizer.decode(render_prompt(tokenizer, chat, TOOLS))


def test_a_reply_cut_before_its_end_token_gets_the_turn_end_from_the_template(
        tokenizer: Any) -> None:
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text, reply = sampled_reply(tokenizer, eos=False)  # finish_reason "length"
    prompt = render_prompt(tokenizer, FEW_SHOT_TOOL_CHAT, TOOLS)
    chat = [*FEW_SHOT_TOOL_CHAT, {"role": "assistant", "content": text}, TOOL_RESULT]
    ids = continue_prompt(tokenizer, chat, TOOLS, prompt + reply, {eos})
    assert ids is not None and ids[len(prompt) + len(reply)] == eos


def test_no_continuation_without_an_assistant_turn_or_with_a_history_rewriting_template(
        tokenizer: Any) -> None:
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert continue_prompt(tokenizer, FEW_SHOT_TOOL_CHAT[:1], TOOLS, [1, 2], {eos}) is None
    rewriting = copy.deepcopy(tokenizer)  # drops the content of all but the last assistant turn
    rewriting.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    chat = [*FEW_SHOT_TOOL_CHAT, {"role": "assistant", "content": "hi"}, TOOL_RESULT]
    assert continue_prompt(rewriting, chat, TOOLS, [1, 2, eos], {eos}) is None
