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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agentgym.policies.shared_prompts import distinct_rows, prefill_shared
from agentgym.tokens import TokenSequence
from agentgym.trainers.losses import entropy_from_logits, token_logprobs

__all__ = ["Batch", "ResponseOutputs", "pack", "policy_logprobs", "response_outputs"]


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
    """

    prompt_ids: torch.Tensor
    prompt_attention: torch.Tensor
    prompt_of: torch.Tensor
    targets: torch.Tensor
    response_attention: torch.Tensor
    mask: torch.Tensor
    sampler_logp: torch.Tensor
    advantages: torch.Tensor

    def __len__(self) -> int:
        return self.targets.shape[0]

    def select(self, index: torch.Tensor | slice) -> Batch:
        """Rows ``index`` (a micro-batch), keeping only the prompts those rows continue."""
        prompt_of = self.prompt_of[index]  # [b]
        used, prompt_of = torch.unique(prompt_of, return_inverse=True)  # [u], [b]
        width = int(self.prompt_attention[used].sum(dim=1).max())
        return Batch(prompt_ids=self.prompt_ids[used][:, -width:],
                     prompt_attention=self.prompt_attention[used][:, -width:],
                     prompt_of=prompt_of, targets=self.targets[index],
                     response_attention=self.response_attention[index], mask=self.mask[index],
                     sampler_logp=self.sampler_logp[index], advantages=self.advantages[index])


def pack(sequences: Sequence[TokenSequence], advantages: Sequence[float], pad_id: int) -> Batch:
    """Stack sequences into a :class:`Batch`; equal prompts are stored once."""
    prompt_of, first_rows = distinct_rows([s.prompt_ids for s in sequences])
    distinct = [sequences[i].prompt_ids for i in first_rows]
    width = max(map(len, distinct))
    prompt_ids = torch.full((len(distinct), width), pad_id, dtype=torch.long)  # [U, P]
    prompt_attention = torch.zeros((len(distinct), width), dtype=torch.long)  # [U, P]
    for row, prompt in enumerate(distinct):
        prompt_ids[row, width - len(prompt):] = torch.tensor(prompt)
        prompt_attention[row, width - len(prompt):] = 1
    resp, rows = max(len(s.response_ids) for s in sequences), len(sequences)
    targets = torch.full((rows, resp), pad_id, dtype=torch.long)  # [B, R]
    response_attention = torch.zeros((rows, resp), dtype=torch.long)  # [B, R]
    mask = torch.zeros((rows, resp))  # [B, R]
    sampler = torch.zeros((rows, resp))  # [B, R]
    for row, seq in enumerate(sequences):
        n = len(seq.response_ids)
        targets[row, :n] = torch.tensor(seq.response_ids)
        response_attention[row, :n] = 1
        mask[row, :n] = torch.tensor(seq.loss_mask, dtype=torch.float)
        sampler[row, :n] = torch.tensor(seq.logprobs, dtype=torch.float)
    return Batch(prompt_ids=prompt_ids, prompt_attention=prompt_attention,
                 prompt_of=torch.tensor(prompt_of), targets=targets,
                 response_attention=response_attention, mask=mask, sampler_logp=sampler,
                 advantages=torch.tensor(list(advantages), dtype=torch.float))


@dataclass
class ResponseOutputs:
    """What the model says about every response position.

    Attributes:
        logits: ``[B, R, V]`` the logits that predict each response token.
        hidden: ``[B, R, H]`` the final hidden states those logits come from (for a value
            head), or None when not asked for.
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None


class _CatchHidden:
    """Forward hook on the output embedding that keeps the hidden states it receives."""

    def __init__(self, model: torch.nn.Module):
        self.states: list[torch.Tensor] = []
        self.handle = model.get_output_embeddings().register_forward_hook(self)

    def __call__(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
                 output: torch.Tensor) -> None:
        self.states.append(inputs[0])


def response_outputs(model: torch.nn.Module, batch: Batch,
                     with_hidden: bool = False) -> ResponseOutputs:
    """Logits (and hidden states) predicting every response token: prompts once, then rows."""
    catcher = _CatchHidden(model) if with_hidden else None
    try:
        cache, prompt_last = prefill_shared(model, batch.prompt_ids, batch.prompt_attention,
                                            batch.prompt_of)  # prompt_last: [U, V]
        attention = torch.cat([batch.prompt_attention[batch.prompt_of],
                               batch.response_attention], dim=1)  # [B, P + R]
        lengths = batch.prompt_attention.sum(dim=1)[batch.prompt_of]  # [B]
        resp = batch.targets.shape[1]
        positions = lengths[:, None] + torch.arange(resp)  # [B, R]
        out = model(input_ids=batch.targets, attention_mask=attention, position_ids=positions,
                    past_key_values=cache, use_cache=False)
    finally:
        if catcher is not None:
            catcher.handle.remove()
    first = prompt_last[batch.prompt_of, None]  # [B, 1, V]: predicts response token 0
    logits = torch.cat([first, out.logits[:, :-1]], dim=1)  # [B, R, V]
    hidden = None
    if catcher is not None:
        prompt_hidden, response_hidden = catcher.states
        hidden = torch.cat([prompt_hidden[batch.prompt_of, -1:], response_hidden[:, :-1]],
                           dim=1)  # [B, R, H]
    return ResponseOutputs(logits=logits, hidden=hidden)


def policy_logprobs(model: torch.nn.Module, batch: Batch, temperature: float,
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs ``[B, R]`` of the response tokens under ``model`` (and entropies if asked).

    Logits are divided by the sampling temperature so the numbers are comparable with the
    sampler's "processed" logprobs.
    """
    logits = response_outputs(model, batch).logits  # [B, R, V]
    logp = token_logprobs(logits, batch.targets, temperature)  # [B, R]
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits, temperature)  # [B, R]
    return logp, entropy
