"""Per-row sampling for batched ``model.generate``: each row keeps its own settings.

The embedded engine merges requests with different temperatures, top-p, seeds, token budgets and
stop strings into one left-padded ``generate`` call. transformers' built-in warpers apply one
setting to the whole batch, so sampling happens here instead:

* :class:`RowSampler` is a logits processor that, for every row, scales by the row's temperature,
  applies the row's nucleus (top-p) filter, draws the next token by inverse-CDF sampling with a
  uniform from the row's own ``torch.Generator`` (so a seeded request samples the same tokens
  whatever it is batched with),
  records the token's logprob, and hands ``generate`` a one-hot score so its greedy step picks
  exactly that token. Greedy rows (temperature 0) take the argmax and record the untempered
  model logprob (the sampling logprob of a greedy choice, 0, is useless for training).
* :class:`RowStop` ends each row at its own ``max_tokens`` or stop string.
* :func:`cut_completion` turns a generated row back into a completion: tokens up to and including
  the end-of-turn token (or the token that completed a stop string), text without them, and the
  finish reason.

Every tensor, the per-row generators included, lives on the model's device (``device``): a
seeded row draws from its own generator on that device, so a seed reproduces its samples on the
same device.

Logprobs are "processed" logprobs (after temperature and top-p), which is what vLLM returns with
``--logprobs-mode processed_logprobs``; both engines therefore report the same quantity.
Imports torch at module import: import this module only from inside engine code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, StoppingCriteria

__all__ = ["RowSampler", "RowSpec", "RowStop", "cut_completion"]


@dataclass(frozen=True)
class RowSpec:
    """Sampling settings of one batch row (one of the ``n`` samples of one request)."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None


def _top_p_filter(logp: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask tokens outside each row's nucleus and renormalise. ``logp``: [B, V] log-probs."""
    if bool((top_p >= 1.0).all()):
        return logp
    sorted_logp, order = logp.sort(dim=-1, descending=True)  # [B, V]
    cum = sorted_logp.exp().cumsum(dim=-1)  # [B, V]
    # Drop a token when the mass before it already reaches top_p (the top token always stays).
    drop_sorted = (cum - sorted_logp.exp()) >= top_p[:, None]  # [B, V]
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # [B, V]
    return torch.log_softmax(logp.masked_fill(drop, -math.inf), dim=-1)


class RowSampler(LogitsProcessor):
    """Samples each row with its own temperature, top-p and generator; records logprobs.

    Args:
        rows: each row's settings.
        device: the device of the scores ``generate`` hands over (the model's).
    """

    def __init__(self, rows: Sequence[RowSpec], device: torch.device | str):
        self.device = torch.device(device)
        self.temps = torch.tensor([r.temperature for r in rows], dtype=torch.float32,
                                  device=self.device)  # [B]
        self.greedy = self.temps == 0  # [B]
        top_p = [1.0 if r.temperature == 0 else r.top_p for r in rows]
        self.top_p = torch.tensor(top_p, dtype=torch.float32, device=self.device)  # [B]
        self.generators: list[torch.Generator | None] = []
        for r in rows:
            gen = None
            if r.seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(r.seed)
            self.generators.append(gen)
        self.steps: list[torch.Tensor] = []  # one [B] tensor of logprobs per generated token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Pick every row's next token; return scores that make greedy decoding choose it."""
        scores = scores.float()  # [B, V]
        temps = torch.where(self.greedy, torch.ones_like(self.temps), self.temps)  # [B]
        logp = torch.log_softmax(scores / temps[:, None], dim=-1)  # [B, V]
        logp = _top_p_filter(logp, self.top_p)  # [B, V]
        tokens = self._sample(logp)  # [B]
        self.steps.append(logp.gather(1, tokens[:, None]).squeeze(1))  # [B]
        forced = torch.full_like(scores, -math.inf)  # [B, V]
        return forced.scatter_(1, tokens[:, None], 0.0)

    def _sample(self, logp: torch.Tensor) -> torch.Tensor:
        """One token per row: inverse-CDF sampling with the row's own uniform draw.

        ``torch.multinomial`` costs ~40 ms per step on a [32, 49k] batch on CPU; a cumulative sum
        and a binary search cost ~2 ms and let every seeded row draw from its own generator.
        """
        cdf = logp.exp().cumsum(dim=-1)  # [B, V]
        u = torch.rand(cdf.shape[0], device=self.device)  # [B]
        for i, gen in enumerate(self.generators):
            if gen is not None:
                u[i] = torch.rand((), generator=gen, device=self.device)
        u = (u * cdf[:, -1])[:, None]  # [B, 1] scaled to each row's total mass
        # right=True: the first index whose cdf exceeds u, so zero-probability tokens never win.
        tokens = torch.searchsorted(cdf, u, right=True).squeeze(1)  # [B]
        tokens = tokens.clamp_(max=cdf.shape[1] - 1)
        if bool(self.greedy.any()):
            tokens = torch.where(self.greedy, logp.argmax(dim=-1), tokens)
        return tokens

    def logprobs(self) -> torch.Tensor:
        """All recorded logprobs, ``[B, steps]``."""
        if not self.steps:
            return torch.zeros((len(self.generators), 0), device=self.device)
        return torch.stack(self.steps, dim=1)


class RowStop(StoppingCriteria):
    """Ends a row when it reaches its own ``max_tokens`` or writes one of its stop strings."""

    def __init__(self, rows: Sequence[RowSpec], prompt_len: int, tokenizer: object,
                 device: torch.device | str):
        self.max_tokens = torch.tensor([r.max_tokens for r in rows], device=device)  # [B]
        self.stops = [r.stop for r in rows]
        self.prompt_len = prompt_len
        self.tokenizer = tokenizer
        longest = max((len(s) for stops in self.stops for s in stops), default=0)
        self.tail = longest + 4  # tokens to decode: every token is at least one character

    def __call__(self, input_ids: torch.LongTensor, scores: object = None,
                 **kwargs: object) -> torch.BoolTensor:
        """A [B] bool tensor: which rows are done after the latest token."""
        generated = input_ids.shape[1] - self.prompt_len
        done = generated >= self.max_tokens  # [B]
        if self.tail > 4:
            start = max(self.prompt_len, input_ids.shape[1] - self.tail)
            for i, stops in enumerate(self.stops):
                if stops and not bool(done[i]):
                    text = self.tokenizer.decode(input_ids[i, start:])
                    done[i] = any(s in text for s in stops)
        return done


def cut_completion(ids: Sequence[int], logprobs: Sequence[float], spec: RowSpec,
                   eos_ids: frozenset[int], tokenizer: object) -> tuple[list[int], list[float],
                                                                        str, str]:
    """Trim one generated row to what the model actually produced for this request.

    Returns:
        ``(token_ids, logprobs, text, finish_reason)``: tokens up to and including the first
        end-of-turn token (finish ``"stop"``), or the token that completed a stop string (text
        cut before the stop string, finish ``"stop"``), or ``max_tokens`` tokens (``"length"``).
        The text never contains the end-of-turn token.
    """
    ids = list(ids[: spec.max_tokens])
    finish = "length"
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            ids, finish = ids[: i + 1], "stop"
            break
    body = ids[:-1] if finish == "stop" else ids
    text = tokenizer.decode(body, skip_special_tokens=True)
    if spec.stop:
        hits = [(text.find(s), s) for s in spec.stop if s in text]
        if hits:
            pos, _ = min(hits)
            # Keep tokens up to the shortest prefix whose text contains a stop string.
            for j in range(1, len(body) + 1):
                prefix = tokenizer.decode(body[:j], skip_special_tokens=True)
                if any(s in prefix for s in spec.stop):
                    ids = body[:j]
                    break
            text, finish = text[:pos], "stop"
    return ids, list(logprobs[: len(ids)]), text, finish
