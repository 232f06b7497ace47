"""The shared loss and advantage functions against hand-computed values, for every mode."""

import math

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.trainers.losses import (  # noqa: E402
    AGGREGATIONS,
    KL_ESTIMATORS,
    clipped_policy_loss,
    entropy_from_logits,
    gae,
    group_advantages,
    masked_mean,
    token_logprobs,
    truncated_importance_weights,
    value_loss,
)


def test_group_advantages_std_scaled_and_dr_grpo():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    grpo = group_advantages(rewards, scale_by_std=True, eps=0.0)
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    assert torch.allclose(grpo[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.equal(group_advantages(rewards, eps=1e-4)[1], torch.zeros(4))  # no signal
    dr = group_advantages(rewards, scale_by_std=False)
    assert torch.equal(dr, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]))


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # [1, 2, 2]
    targets = torch.tensor([[1, 0]])
    assert torch.allclose(token_logprobs(logits, targets), torch.log(torch.tensor([[0.5, 0.75]])))
    hot = token_logprobs(logits, targets, temperature=0.5)  # logits doubled: 9:1
    assert torch.allclose(hot[0, 1], torch.log(torch.tensor(0.9)))
    entropy = entropy_from_logits(logits)
    assert torch.allclose(entropy[0, 0], torch.tensor(math.log(2)))


def test_clipped_loss_low_and_high_ranges():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([1.0]), eps_low=0.2,
                                        eps_high=0.28)
    # A > 0: ratio 1.5 clipped to 1.28; ratio 0.5 unclipped (min keeps 0.5); 1.1 inside
    assert torch.allclose(loss, -torch.tensor([[1.28, 0.5, 1.1]]))
    assert clipped.tolist() == [[1.0, 0.0, 0.0]]
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.28)
    # A < 0: ratio 0.5 clipped up to 0.8 (-0.8 < -0.5), 1.5 keeps -1.5
    assert torch.allclose(loss, torch.tensor([[1.5, 0.8, 1.1]]))
    assert clipped.tolist() == [[0.0, 1.0, 0.0]]


def test_aggregations():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert AGGREGATIONS["dapo"](loss, mask, 3).item() == pytest.approx(10 / 4)
    assert AGGREGATIONS["grpo"](loss, mask, 3).item() == pytest.approx((2 + 4) / 2)
    assert AGGREGATIONS["dr_grpo"](loss, mask, 8).item() == pytest.approx(10 / (2 * 8))
    assert set(AGGREGATIONS) == {"dapo", "grpo", "dr_grpo"}


def test_kl_estimators():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    assert torch.allclose(KL_ESTIMATORS["k1"](logp, ref), torch.tensor([math.log(2), -math.log(2)]))
    k3 = KL_ESTIMATORS["k3"](logp, ref)  # r = ref/p: 0.5 and 2
    assert torch.allclose(k3, torch.tensor([0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1]))
    assert (k3 >= 0).all()


def test_truncated_importance_weights():
    trainer = torch.log(torch.tensor([0.5, 0.9]))
    sampler = torch.log(torch.tensor([0.25, 0.1]))
    assert torch.allclose(truncated_importance_weights(trainer, sampler, cap=2.0),
                          torch.tensor([2.0, 2.0]))
    assert torch.allclose(truncated_importance_weights(sampler, trainer, cap=2.0),
                          torch.tensor([0.5, 0.1 / 0.9]))


def test_gae_skips_env_tokens():
    # policy tokens at 0, 1 and 3; token 2 is a tool result
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 9.0, 0.8]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    d3 = 1.0 - 0.8                    # last policy token: bootstrap 0
    d1 = 0.0 + 0.9 * 0.8 - 0.6        # next policy value is token 3's, not the tool token's
    d0 = 0.0 + 0.9 * 0.6 - 0.5
    a3, a1 = d3, d1 + 0.9 * 0.8 * d3
    a0 = d0 + 0.9 * 0.8 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, 0.0, a3]]))
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.6, 0.0, a3 + 0.8]]))


def test_value_loss_clipping():
    values, old = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    returns, mask = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    # token 0: unclipped (1-0)^2 = 1, clipped (0.2-0)^2 = 0.04 -> max 1; token 1: both 1
    assert value_loss(values, old, returns, mask, clip=0.2).item() == pytest.approx(0.5)
    assert value_loss(values, old, returns, mask, clip=None).item() == pytest.approx(0.5)
    values = torch.tensor([[0.5, 0.0]])
    # token 0: unclipped 0.25, clipped (0.2)^2 = 0.04 -> 0.25; token 1: 1
    assert value_loss(values, old, returns, mask, clip=0.2).item() == pytest.approx(0.5 * 1.25 / 2)
    assert masked_mean(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == 3.0
