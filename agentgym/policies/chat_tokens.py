"""Chat -> prompt token ids, for a whole chat or for a chat that continues sampled tokens.

A model's reply is a list of token ids; its text, rendered back into the chat by the template
and tokenized again, is not always the same list (``"4" "2"`` sampled, ``"42"`` re-tokenized).
Training on the re-tokenized history would score tokens the model never produced, so a policy
that generates from token ids continues a chat *from the tokens*:

    prompt_k+1 = prompt_k + completion_k + tokens(the messages after the last assistant turn)

:func:`continue_prompt` renders just those new messages: the text the template puts after the
assistant's content (its turn end, e.g. ``<|im_end|>\\n``, minus an end token the model already
sampled) followed by the new messages and the generation prompt. That needs an append-only
template (earlier messages render the same whatever follows); for one that is not,
:func:`continue_prompt` returns None and the caller renders the whole chat.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agentgym.errors import PolicyError

__all__ = ["continue_prompt", "prompt_ids_for", "render_prompt"]

_PROBE = "\x00agentgym-probe\x00"


def _render(tokenizer: Any, messages: Sequence[Mapping[str, Any]],
            tools: Sequence[Mapping[str, Any]] | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None,
                                         add_generation_prompt=generation_prompt, tokenize=False)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]],
                  tools: Sequence[Mapping[str, Any]] | None) -> list[int]:
    """Token ids of the chat prompt, rendered by the tokenizer's chat template.

    Rendered to text first and tokenized without extra special tokens, the way vLLM's chat
    endpoint does it, so both engines condition on the same ids.
    """
    return _encode(tokenizer, _render(tokenizer, messages, tools, True))


def continue_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]],
                    tools: Sequence[Mapping[str, Any]] | None, prefix_ids: Sequence[int],
                    eos_ids: Collection[int]) -> list[int] | None:
    """``prefix_ids`` + the tokens of the messages after the chat's last assistant message.

    Args:
        messages: the chat; ``prefix_ids`` stands for everything up to and including its last
            assistant message.
        prefix_ids: the previous turn's prompt ids followed by its completion ids.
        eos_ids: end-of-turn token ids: when the completion ends with one, the template's own
            turn end starts without it (the model already wrote it).

    Returns:
        The new prompt ids, or None when the chat has no assistant message or the template
        rewrites earlier turns (not append-only): render the whole chat then.
    """
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        return None
    head = _render(tokenizer, messages[: last + 1], tools, False)
    full = _render(tokenizer, messages, tools, True)
    probe = _render(tokenizer, [*messages[:last], {"role": "assistant", "content": _PROBE}],
                    tools, False)
    if not full.startswith(head) or _PROBE not in probe:
        return None
    turn_end = probe[probe.rindex(_PROBE) + len(_PROBE):]
    if prefix_ids and prefix_ids[-1] in eos_ids:
        eos_text = tokenizer.convert_ids_to_tokens(int(prefix_ids[-1]))
        if turn_end.startswith(eos_text):
            turn_end = turn_end[len(eos_text):]
    return list(prefix_ids) + _encode(tokenizer, turn_end + full[len(head):])


def prompt_ids_for(tokenizer: Any, messages: Sequence[Mapping[str, Any]],
                   tools: Sequence[Mapping[str, Any]] | None, prefix_ids: Sequence[int] | None,
                   eos_ids: Collection[int]) -> list[int]:
    """The prompt an in-process engine samples from: continued from ``prefix_ids`` (the
    previous turn's prompt + completion ids) when given and the template allows it
    (:func:`continue_prompt`), else the whole chat rendered (:func:`render_prompt`).

    Raises:
        PolicyError: the chat template failed (a caller or set-up problem, typed here).
    """
    try:
        ids = continue_prompt(tokenizer, messages, tools, prefix_ids, eos_ids) \
            if prefix_ids else None
        return ids if ids is not None else render_prompt(tokenizer, messages, tools)
    except Exception as exc:  # any template error: the chat or template is at fault
        raise PolicyError(f"chat template failed: {exc}") from exc

