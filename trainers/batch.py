"""Token sequences -> tensors that share prompts, and the policy's logprobs on them.

GRPO plays G episodes of every task, so G sequences start with the very same prompt, and the
prompt is most of the tokens (a system prompt, tool schemas, the question). A :class:`Batch`
therefore stores each distinct prompt once and each sequence's response separately:

1. the distinct prompts run through the model once (``[U, P]``, left-padded), which yields
   their key/value cache and the logits of their last position;
2. the cache is gathered to the ``B`` rows (:mod:`agentgym.policies.shared_prompts`, which the
   embedded engine uses too) and the responses (``[B, R]``, right-padded) run on top of it.

The gradient is the full-sequence gradient: the gather's backward sums each prompt's
cache gradient over its rows, exactly what the G separate prompt forwards would have
contributed. What it saves: the prompt's forward and backward run U times instead of B times.

Memory: the model's trunk gives the final hidden states of the responses (``[B, R, H]``); the
LM head turns them into logprobs a chunk of positions at a time (:func:`head_logprobs`), so the
``[B, R, V]`` float32 logits never exist at once; :func:`micro_batches` cuts a batch by a row
count and a token budget. Every tensor is made on the device of the model that consumes it
(:func:`pack`'s ``device``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from agentgym.policies.shared_prompts import distinct_rows, prefill_prefix
from agentgym.tokens import TokenSequence
from agentgym.trainers.losses import entropy_from_logits, token_logprobs

__all__ = ["Batch", "head_logprobs", "micro_batches", "micro_slices", "pack", "policy_logprobs",
           "response_hidden"]


@dataclass
class Batch:
    """Distinct prompts, and per-row responses that continue them.

    Attributes:
        prompt_ids: ``[U, P]`` the distinct prompts, left-padded.
        prompt_attention: ``[U, P]`` 1 on real prompt tokens.
        prompt_of: ``[B]`` the prompt (row of ``prompt_ids``) each sequence continues.
        targets: ``[B, R]`` each sequence's response tokens, right-padded.
        response_attention: ``[B, R]`` 1 on real response tokens (policy and env alike).
        mask: ``[B, R]`` 1 on policy tokens (the loss mask), 0 on env tokens and padding.
        sampler_logp: ``[B, R]`` logprobs the sampling policy reported (0 where mask is 0).
        advantages: ``[B]`` one advantage (or episode score) per sequence.
        guide: ``[B, R]`` 1 on tokens an exploration guide wrote (``TokenSequence.guide_mask``;
            their ``sampler_logp`` is the guide's behaviour logprob), or None if none did.
    """

    prompt_ids: torch.Tensor
    prompt_attention: torch.Tensor
    prompt_of: torch.Tensor
    targets: torch.Tensor
    response_attention: torch.Tensor
    mask: torch.Tensor
    sampler_logp: torch.Tensor
    advantages: torch.Tensor
    guide: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.targets.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the batch's tensors live."""
        return self.targets.device

    def select(self, index: torch.Tensor | slice) -> Batch:
        """Rows ``index`` (a micro-batch), keeping only the prompts those rows continue."""
        prompt_of = self.prompt_of[index]  # [b]
        used, prompt_of = torch.unique(prompt_of, return_inverse=True)  # [u], [b]
        width = int(self.prompt_attention[used].sum(dim=1).max())
        return Batch(prompt_ids=self.prompt_ids[used][:, -width:],
                     prompt_attention=self.prompt_attention[used][:, -width:],
                     prompt_of=prompt_of, targets=self.targets[index],
                     response_attention=self.response_attention[index], mask=self.mask[index],
                     sampler_logp=self.sampler_logp[index], advantages=self.advantages[index],
                     guide=None if self.guide is None else self.guide[index])


def _padded(rows: Sequence[Sequence[float]], width: int, fill: float,
            left: bool = False) -> list[list[float]]:
    """Rows padded to ``width`` with ``fill`` (on the left if ``left``), as nested lists."""
    return [[fill] * (width - len(r)) + list(r) if left else list(r) + [fill] * (width - len(r))
            for r in rows]


def pack(sequences: Sequence[TokenSequence], advantages: Sequence[float], pad_id: int,
         device: torch.device | str = "cpu") -> Batch:
    """Stack sequences into a :class:`Batch` on ``device``; equal prompts are stored once.

    The padding is done on Python lists, and each tensor is made once, directly on ``device``.
    """
    prompt_of, first_rows = distinct_rows([s.prompt_ids for s in sequences])
    distinct = [sequences[i].prompt_ids for i in first_rows]
    width = max(map(len, distinct))
    resp = max(len(s.response_ids) for s in sequences)
    ones = [[1] * len(p) for p in distinct]
    long = {"dtype": torch.long, "device": device}
    real = {"dtype": torch.float32, "device": device}
    guide = None
    if any(s.guide_mask for s in sequences):  # [B, R]
        guide = torch.tensor(_padded([s.guide_mask or (0,) * len(s.response_ids)
                                      for s in sequences], resp, 0.0), **real)
    return Batch(
        prompt_ids=torch.tensor(_padded(distinct, width, pad_id, left=True), **long),  # [U, P]
        prompt_attention=torch.tensor(_padded(ones, width, 0, left=True), **long),  # [U, P]
        prompt_of=torch.tensor(prompt_of, **long),  # [B]
        targets=torch.tensor(_padded([s.response_ids for s in sequences], resp, pad_id),
                             **long),  # [B, R]
        response_attention=torch.tensor(
            _padded([[1] * len(s.response_ids) for s in sequences], resp, 0), **long),  # [B, R]
        mask=torch.tensor(_padded([s.loss_mask for s in sequences], resp, 0.0), **real),
        sampler_logp=torch.tensor(_padded([s.logprobs for s in sequences], resp, 0.0), **real),
        advantages=torch.tensor(list(advantages), **real),  # [B]
        guide=guide)


def micro_slices(batch: Batch, max_rows: int, max_tokens: int | None = None) -> list[slice]:
    """Consecutive row ranges of at most ``max_rows`` rows and, if ``max_tokens`` is set, at
    most ``max_tokens`` padded tokens (rows x (widest prompt + response width)); a row that
    alone exceeds the budget is a range of its own."""
    prompt_len = batch.prompt_attention.sum(dim=1)[batch.prompt_of].tolist()  # [B]
    resp = batch.targets.shape[1]
    out, start, widest = [], 0, 0
    for row, length in enumerate(prompt_len):
        rows, wider = row - start + 1, max(widest, int(length))
        if row > start and (rows > max_rows or (max_tokens is not None
                                                and rows * (wider + resp) > max_tokens)):
            out.append(slice(start, row))
            start, wider = row, int(length)
        widest = wider
    out.append(slice(start, len(batch)))
    return out


def micro_batches(batch: Batch, max_rows: int, max_tokens: int | None = None) -> list[Batch]:
    """The micro-batches of :func:`micro_slices`."""
    return [batch.select(index) for index in micro_slices(batch, max_rows, max_tokens)]


def response_hidden(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Final hidden states ``[B, R, H]`` that predict every response token (the LM head's
    inputs): the model's trunk runs the distinct prompts once, then the rows on top."""
    decoder = model.get_decoder()
    cache, prompt_last = prefill_prefix(decoder, batch.prompt_ids, batch.prompt_attention,
                                        batch.prompt_of)  # prompt_last: [U, H]
    attention = torch.cat([batch.prompt_attention[batch.prompt_of],
                           batch.response_attention], dim=1)  # [B, P + R]
    lengths = batch.prompt_attention.sum(dim=1)[batch.prompt_of]  # [B]
    resp = batch.targets.shape[1]
    positions = lengths[:, None] + torch.arange(resp, device=batch.device)  # [B, R]
    out = decoder(input_ids=batch.targets, attention_mask=attention, position_ids=positions,
                  past_key_values=cache, use_cache=False)
    first = prompt_last[batch.prompt_of, None]  # [B, 1, H]: predicts response token 0
    return torch.cat([first, out.last_hidden_state[:, :-1]], dim=1)  # [B, R, H]


def _head_stats(hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                targets: torch.Tensor, temperature: float, with_entropy: bool,
                entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs (and entropies) ``[B, c]`` of ``c`` positions from their hidden states."""
    logits = head(hidden)  # [B, c, V]
    logp = token_logprobs(logits, targets, temperature)  # [B, c]
    entropy = None
    if with_entropy:
        with contextlib.nullcontext() if entropy_grad else torch.no_grad():
            entropy = entropy_from_logits(logits, temperature)  # [B, c]
    return logp, entropy


def head_logprobs(hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                  targets: torch.Tensor, temperature: float, chunk_tokens: int | None = None,
                  with_entropy: bool = False, entropy_grad: bool = False,
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log softmax(head(hidden) / temperature)`` at ``targets``, ``[B, R]`` (and entropies).

    With ``chunk_tokens``, positions go through the head in chunks of about ``chunk_tokens``
    tokens (``chunk_tokens // B`` positions), each under activation checkpointing: only one
    chunk's ``[B, c, V]`` float32 logits exist at a time, forward or backward, and the backward
    recomputes them (one more LM-head matmul). The numbers equal the unchunked computation.
    When one chunk covers every position, nothing is recomputed.
    """
    rows, length = targets.shape
    step = length if chunk_tokens is None else max(1, chunk_tokens // max(rows, 1))
    if step >= length:
        return _head_stats(hidden, head, targets, temperature, with_entropy, entropy_grad)
    parts = [checkpoint(_head_stats, hidden[:, s:s + step], head, targets[:, s:s + step],
                        temperature, with_entropy, entropy_grad, use_reentrant=False)
             for s in range(0, length, step)]
    logp = torch.cat([p[0] for p in parts], dim=1)  # [B, R]
    entropy = torch.cat([p[1] for p in parts], dim=1) if with_entropy else None  # [B, R]
    return logp, entropy


def policy_logprobs(model: torch.nn.Module, batch: Batch, temperature: float,
                    with_entropy: bool = False, chunk_tokens: int | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs ``[B, R]`` of the response tokens under ``model`` (and entropies if asked,
    without gradient); ``chunk_tokens`` as in :func:`head_logprobs`.

    Logits are divided by the sampling temperature so the numbers are comparable with the
    sampler's "processed" logprobs.
    """
    hidden = response_hidden(model, batch)  # [B, R, H]
    return head_logprobs(hidden, model.get_output_embeddings(), batch.targets, temperature,
                         chunk_tokens, with_entropy)
