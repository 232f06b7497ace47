"""Run each distinct prompt once and share its key/value cache with every row that continues it.

GRPO samples G completions of one prompt and trains on them together, so a batch holds few
distinct prompts and many rows. Both the embedded engine (before ``generate``) and the trainer
(before the responses' forward) prefill the distinct prompts once and gather the cache to the
rows (``Cache.batch_select_indices``, differentiable: its backward sums each prompt's gradient
over its rows). Imports torch: import it only from engine or trainer code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["distinct_rows", "prefill_shared"]


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
