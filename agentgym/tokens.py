"""The token sequence a trainer sees for one trajectory, with its loss mask.

Token-in/token-out: the ids come from the policy exactly as it sampled them, never from
re-tokenising the text. A multi-turn episode becomes one sequence::

    prompt_0 | completion_0 | env tokens_1 | completion_1 | env tokens_2 | completion_2
             |<--------------------------- response ------------------------------>|
    mask:      1 1 1 1 1 1    0 0 0 0 0 0    1 1 1 1 1 1    0 0 0 0 0 0    1 1 1 1 1 1

where ``env tokens_k`` (tool results, the next user turn, the template's role markers) are the
part of turn k's prompt that follows turn k-1's prompt and completion. That only holds if the chat
template renders earlier turns identically as the chat grows (the prefix property); when it does
not, the sequence would silently train on tokens the model never produced, so
:func:`build_token_sequence` raises :class:`~agentgym.errors.TokenizationDriftError` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentgym.errors import TokenizationDriftError
from agentgym.types import GUIDE_VERSION, Trajectory

__all__ = ["TokenSequence", "build_token_sequence"]


@dataclass(frozen=True)
class TokenSequence:
    """One trajectory as trainer input.

    Attributes:
        prompt_ids: the first turn's prompt (never trained on).
        response_ids: everything after it: policy tokens and env tokens interleaved.
        loss_mask: per response token, 1 for policy tokens and 0 for env tokens.
        logprobs: per response token, the sampling logprob (0.0 where the mask is 0).
        weight_versions: the weight version of each turn, in order.
        guide_mask: per response token, 1 on the tokens of turns a guide wrote
            (``weight_version == GUIDE_VERSION``, :mod:`agentgym.guided`), whose logprobs are the
            guide's behaviour logprob, not the policy's; empty: no guide token.
    """

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    logprobs: tuple[float, ...]
    weight_versions: tuple[str | int | None, ...]
    guide_mask: tuple[int, ...] = ()

    @property
    def num_policy_tokens(self) -> int:
        """Tokens the policy generated (the ones the loss sees)."""
        return sum(self.loss_mask)


def build_token_sequence(trajectory: Trajectory) -> TokenSequence:
    """Assemble the masked token sequence of ``trajectory``.

    Raises:
        TokenizationDriftError: a turn lacks token ids or logprobs, or a later prompt does not
            start with the earlier prompt and completion (the template rewrote history).
    """
    turns = trajectory.turns
    if not turns:
        raise TokenizationDriftError(f"trajectory {trajectory.task_id!r} has no turns")
    for turn in turns:
        if not turn.prompt_token_ids or not turn.completion_token_ids:
            raise TokenizationDriftError(
                f"turn {turn.index} of {trajectory.task_id!r} has no token ids: the policy did "
                "not return them, so this trajectory cannot be trained on")
        if len(turn.logprobs) != len(turn.completion_token_ids):
            raise TokenizationDriftError(
                f"turn {turn.index}: {len(turn.logprobs)} logprobs for "
                f"{len(turn.completion_token_ids)} completion tokens")
    prompt = turns[0].prompt_token_ids
    ids: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    guide: list[int] = []
    history = list(prompt)
    for turn in turns:
        if turn.index > 0:
            env_tokens = _env_tokens(history, turn.prompt_token_ids, turn.index)
            ids += env_tokens
            mask += [0] * len(env_tokens)
            logprobs += [0.0] * len(env_tokens)
            guide += [0] * len(env_tokens)
            history += env_tokens
        ids += turn.completion_token_ids
        mask += [1] * len(turn.completion_token_ids)
        logprobs += turn.logprobs
        guide += [int(turn.weight_version == GUIDE_VERSION)] * len(turn.completion_token_ids)
        history += turn.completion_token_ids
    return TokenSequence(prompt_ids=tuple(prompt), response_ids=tuple(ids), loss_mask=tuple(mask),
                         logprobs=tuple(logprobs),
                         weight_versions=tuple(t.weight_version for t in turns),
                         guide_mask=tuple(guide) if any(guide) else ())


def _env_tokens(history: list[int], prompt: tuple[int, ...], index: int) -> list[int]:
    """The tokens of ``prompt`` after ``history``; raises if ``history`` is not its prefix."""
    n = len(history)
    if len(prompt) < n or list(prompt[:n]) != history:
        first_diff = next((i for i, (a, b) in enumerate(zip(history, prompt, strict=False))
                           if a != b), min(n, len(prompt)))
        raise TokenizationDriftError(
            f"turn {index}: the prompt does not extend the previous turns (first difference at "
            f"token {first_diff} of {n}); the chat template re-renders earlier turns")
    return list(prompt[n:])
