"""Run each distinct prompt once and share its key/value cache with every row that continues it.

GRPO samples G completions of one prompt and trains on them together, so a batch holds few
distinct prompts and many rows. Both the embedded engine (before ``generate``) and the trainer
(before the responses' forward) prefill the distinct prompts once and gather the cache to the
rows (``Cache.batch_select_indices``, differentiable: its backward sums each prompt's gradient
over its rows). Imports torch: import it only from engine or trainer code.

The trainer uses :func:`prefill_prefix` instead: its caches can be replayed, which gradient
checkpointing does (each checkpointed layer runs its forward again during the backward pass).
The prompt's cache *replaces* its states on every update (the prefill starts from empty, so
replacing is what appending would give), and the rows' cache holds the gathered prompt states
read-only (an update returns prefix + new states and stores nothing). A replayed layer
therefore sees exactly the states its first run saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["distinct_rows", "prefill_prefix", "prefill_shared"]


def distinct_rows(prompts: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """``(prompt_of, first_rows)``: each row's index among the distinct prompts (first-seen
    order), and the first row holding each distinct prompt."""
    index: dict[tuple[int, ...], int] = {}
    prompt_of = [index.setdefault(tuple(p), len(index)) for p in prompts]
    first_rows = [prompt_of.index(k) for k in range(len(index))]
    return prompt_of, first_rows


def prefill_shared(model: Any, prompt_ids: torch.Tensor, attention: torch.Tensor,
                   prompt_of: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Run the ``[U, P]`` left-padded prompts once; return their cache gathered to the ``[B]``
    rows ``prompt_of`` and the logits of each prompt's last position, ``[U, V]``."""
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)  # [U, P]
    out = model(input_ids=prompt_ids, attention_mask=attention, position_ids=positions,
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_select_indices(prompt_of)  # [U, ...] -> [B, ...]
    return cache, out.logits[:, -1]


class _ReplacingLayer(DynamicLayer):
    """A prompt's cache layer: every update replaces the states (a replay stores the same)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _ReadOnlyLayer(DynamicLayer):
    """A prefix that continuations attend to: an update returns prefix + new, stores nothing."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([self.keys, key_states], dim=-2),
                torch.cat([self.values, value_states], dim=-2))


def prefill_prefix(decoder: Any, prompt_ids: torch.Tensor, attention: torch.Tensor,
                   prompt_of: torch.Tensor) -> tuple[Cache, torch.Tensor]:
    """Run the ``[U, P]`` left-padded prompts once through ``decoder`` (the model's trunk,
    without the LM head); return a read-only cache of their states gathered to the ``[B]`` rows
    ``prompt_of`` and the final hidden state of each prompt's last position, ``[U, H]``.
    Both caches are safe under gradient checkpointing (see the module docstring)."""
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)  # [U, P]
    cache = Cache(layer_class_to_replicate=_ReplacingLayer)
    # use_cache=False: the layers fill ``cache`` all the same (it is passed in), and gradient
    # checkpointing has no cache request to override (and warn about)
    out = decoder(input_ids=prompt_ids, attention_mask=attention, position_ids=positions,
                  past_key_values=cache, use_cache=False)
    rows = Cache(layers=[_ReadOnlyLayer(layer.keys[prompt_of], layer.values[prompt_of])
                         for layer in cache.layers])  # [B, heads, P, head_dim] each
    return rows, out.last_hidden_state[:, -1]
