"""Pure tensor functions shared by the GRPO and PPO trainers.

Shapes: ``B`` sequences (trajectories), ``T`` response tokens (policy and env tokens interleaved),
``mask`` is 1 on policy tokens and 0 on env tokens and padding. Every variant is chosen by name
from a dict once (``AGGREGATIONS``, ``KL_ESTIMATORS``), never by ``if`` ladders.

References: GRPO (Shao et al., 2024, DeepSeekMath); DAPO (Yu et al., 2025: clip-higher,
token-level mean); Dr. GRPO (Liu et al., 2025: no std normalisation, constant normaliser);
PPO (Schulman et al., 2017) with GAE (Schulman et al., 2016); KL estimators k1 and k3
(Schulman, "Approximating KL divergence", 2020); truncated importance sampling for a sampler
whose logprobs differ from the trainer's (Yao et al., 2025).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["AGGREGATIONS", "KL_ESTIMATORS", "as_policy_logp", "clipped_policy_loss",
           "entropy_from_logits", "gae", "group_advantages", "masked_mean", "token_logprobs",
           "truncated_importance_weights", "value_loss"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 if the mask is empty)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages: ``(r - mean(group)) [/ std(group)]``.

    Args:
        rewards: ``[N, G]``, N groups of G samples of the same prompt.
        scale_by_std: divide by the group's std (GRPO); Dr. GRPO sets this False.
        eps: added to the std so a zero-variance group gives 0, not NaN.

    Returns:
        ``[N, G]`` advantages; a group whose rewards are all equal gets all zeros.
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [N, G]
    if not scale_by_std:
        return centred
    std = rewards.std(dim=1, keepdim=True, unbiased=True) if rewards.shape[1] > 1 \
        else torch.zeros_like(rewards[:, :1])  # [N, 1]
    return centred / (std + eps)  # [N, G]


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each target token under ``logits / temperature``.

    Args:
        logits: ``[B, T, V]``, the logits that predict ``targets`` (already shifted).
        targets: ``[B, T]`` token ids.
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, T, V]
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of each position's next-token distribution, ``[B, T, V] -> [B, T]``."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, T, V]
    return -(logp.exp() * logp).sum(dim=-1)  # [B, T]


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, with separate low/high clip ranges (DAPO).

    ``loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``.

    Args:
        logp: ``[B, T]`` current policy logprobs (with grad).
        old_logp: ``[B, T]`` logprobs of the policy that produced the samples.
        advantages: ``[B]`` per sequence or ``[B, T]`` per token.

    Returns:
        (per-token loss ``[B, T]``, per-token "was clipped" indicator ``[B, T]``).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # [B, 1]
    ratio = torch.exp(logp - old_logp)  # [B, T]
    unclipped = ratio * advantages  # [B, T]
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages  # [B, T]
    loss = -torch.minimum(unclipped, clipped)  # [B, T]
    return loss, (clipped < unclipped).float()


def as_policy_logp(behaviour_logp: torch.Tensor, own_logp: torch.Tensor,
                   guide: torch.Tensor | None) -> torch.Tensor:
    """Old logprobs ``[B, T]`` with guide tokens treated as the policy's own samples: where
    ``guide`` is 1 the recorded behaviour logprob is replaced by ``own_logp`` detached, so the
    ratio there is 1 at the first pass and the clipped loss's gradient is A * grad log pi
    (``agentgym.guided``, ``correction: as_policy``); elsewhere ``behaviour_logp`` is kept."""
    if guide is None:
        return behaviour_logp
    own = own_logp.detach().to(behaviour_logp.dtype)  # [B, T]
    return torch.where(guide > 0, own, behaviour_logp)  # [B, T]


def truncated_importance_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor,
                                 cap: float) -> torch.Tensor:
    """``min(pi_trainer / pi_sampler, cap)`` per token, no gradient: corrects for a sampler
    (e.g. vLLM) whose probabilities differ from the trainer's for the same weights."""
    return torch.exp(trainer_logp.detach() - sampler_logp).clamp(max=cap)  # [B, T]


def _token_mean(loss: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """DAPO: every policy token of the batch weighs the same."""
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def _sequence_mean(loss: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """GRPO: mean over sequences of each sequence's token mean."""
    per_seq = (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B]
    return per_seq.mean()


def _constant_normaliser(loss: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Dr. GRPO: token sum divided by a constant (batch size x max completion length)."""
    return (loss * mask).sum() / (loss.shape[0] * max_len)


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "dapo": _token_mean,
    "grpo": _sequence_mean,
    "dr_grpo": _constant_normaliser,
}
"""Loss aggregation by ``loss_type`` name: ``fn(loss [B, T], mask [B, T], max_len) -> scalar``."""


def _kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log(pi / pi_ref): unbiased, high variance, can be negative."""
    return logp - ref_logp


def _kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = pi_ref/pi - log(pi_ref/pi) - 1: unbiased, low variance, always >= 0."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": _kl_k1,
    "k3": _kl_k3,
}
"""Per-token KL(pi || pi_ref) estimators by name: ``fn(logp [B, T], ref_logp [B, T])``."""


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the policy tokens of each sequence.

    Env tokens (mask 0) are skipped: the next *policy* token's value bootstraps the current one,
    so tool output between turns is transparent to credit assignment. The value after the last
    policy token is 0 (the episode ended).

    Args:
        rewards: ``[B, T]`` per-token rewards (e.g. the episode reward on the last policy token,
            minus a KL penalty on every policy token).
        values: ``[B, T]`` value estimates.
        mask: ``[B, T]`` 1 on policy tokens.

    Returns:
        (advantages ``[B, T]``, returns ``[B, T]``), zero where the mask is 0.
    """
    advantages = torch.zeros_like(rewards)  # [B, T]
    next_value = rewards.new_zeros(rewards.shape[0])  # [B]
    running = rewards.new_zeros(rewards.shape[0])  # [B]
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]  # [B]
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # [B]
        new_running = delta + gamma * lam * running
        running = torch.where(m > 0, new_running, running)
        next_value = torch.where(m > 0, values[:, t], next_value)
        advantages[:, t] = running * m
    returns = (advantages + values) * mask  # [B, T]
    return advantages, returns


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip: float | None) -> torch.Tensor:
    """PPO's value loss, ``0.5 * max((V - R)^2, (V_clipped - R)^2)`` averaged over policy tokens.

    ``V_clipped = old_V + clamp(V - old_V, -clip, clip)``; ``clip=None`` disables clipping.
    """
    unclipped = (values - returns) ** 2  # [B, T]
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)  # [B, T]
    clipped = (clipped_values - returns) ** 2  # [B, T]
    return 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
