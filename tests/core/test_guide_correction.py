"""The off-policy correction of guide tokens (agentgym/guided.py, ``guide: {correction: ...}``):
``as_policy`` takes the policy's own logprob as pi_old on guide tokens (ratio 1, gradient
A * grad log pi), ``importance`` keeps the recorded log mu = 0 (ratio pi, gradient A * grad pi).

Checked by hand on tiny tensors, then through GRPO's ``update`` on the smoke model (its loss and
gradient norm against the same quantities computed directly), plus the config validation.
"""

import math

import pytest

from agentgym.guided import GUIDE_VERSION, GuideSettings, guide_correction
from agentgym.tokens import TokenSequence, build_token_sequence
from agentgym.types import Trajectory, Turn
from tests.gates import require_train_stack


def test_correction_is_validated_with_a_clear_error():
    assert GuideSettings().correction == "as_policy"
    assert guide_correction({"correction": "importance"}) == "importance"
    assert guide_correction(None) is None
    for bad in ("masked", "as-policy", ""):
        with pytest.raises(ValueError, match=r"guide correction must be one of "
                                             r"\['as_policy', 'importance'\].*" + repr(bad)):
            GuideSettings.from_dict({"kind": "demonstration", "correction": bad})
    with pytest.raises(ValueError, match="unknown guide settings"):
        GuideSettings.from_dict({"corection": "as_policy"})  # a typo is still refused


def test_trainer_configs_check_the_correction_when_built():
    require_train_stack()
    from agentgym.trainers.grpo import GRPOConfig
    from agentgym.trainers.ppo import PPOConfig

    with pytest.raises(ValueError, match="guide correction must be one of"):
        GRPOConfig(guide={"kind": "demonstration", "correction": "mask"})
    assert GRPOConfig(guide={"correction": "importance"}).guide == {"correction": "importance"}
    with pytest.raises(ValueError, match="PPO trains guide tokens with correction as_policy"):
        PPOConfig(guide={"correction": "importance"})
    PPOConfig(guide={"correction": "as_policy"})


def test_the_shipped_guided_config_uses_as_policy_and_its_baseline_drops_the_guide():
    require_train_stack()
    from pathlib import Path

    from agentgym.trainers.config import load_config
    from agentgym.trainers.grpo import GRPOConfig

    path = Path(__file__).resolve().parents[2] / "trainers/configs/guided_calculator.yaml"
    assert guide_correction(load_config(GRPOConfig, path).guide) == "as_policy"
    assert load_config(GRPOConfig, path, ["--guide", "null"]).guide is None
    with pytest.raises(ValueError, match="guide correction must be one of"):
        load_config(GRPOConfig, path, ["--guide", "{kind: demonstration, correction: mu}"])


def test_guide_tokens_are_marked_in_the_sequence_and_the_batch():
    turns = (Turn(index=0, assistant={}, prompt_token_ids=(1, 2), completion_token_ids=(3, 4),
                  logprobs=(0.0, 0.0), weight_version=GUIDE_VERSION),
             Turn(index=1, assistant={}, prompt_token_ids=(1, 2, 3, 4, 5),
                  completion_token_ids=(6,), logprobs=(-0.7,), weight_version=0))
    sequence = build_token_sequence(Trajectory("e", "t", (), turns))
    assert sequence.response_ids == (3, 4, 5, 6)
    assert sequence.guide_mask == (1, 1, 0, 0)  # guide turn, env token, the policy's turn
    alone = build_token_sequence(Trajectory("e", "t", (), turns[1:2]))
    assert alone.guide_mask == ()  # no guide turn: nothing marked

    require_train_stack()
    import torch

    from agentgym.trainers.batch import pack

    plain = TokenSequence((1, 2), (7, 8, 9), (1, 1, 1), (-0.1,) * 3, (0,))
    batch = pack([plain, sequence], [1.0, -1.0], 0)
    assert batch.guide.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0]]  # padded, per row
    assert batch.select(slice(1, 2)).guide.tolist() == [[1, 1, 0, 0]]
    assert pack([plain], [1.0], 0).guide is None  # unguided batches are unchanged
    assert torch.equal(batch.sampler_logp[1], torch.tensor([0.0, 0.0, 0.0, -0.7]))


def test_ratio_and_gradient_weight_on_guide_tokens_by_hand():
    """Two guide tokens (pi = 0.02, 0.5; recorded log mu = 0) and one policy token (pi = 0.7,
    sampled by the same weights). d loss / d log pi = -A * rho under either correction, with
    rho = 1 (as_policy) or pi (importance); importance's clip zeroes A < 0 on guide tokens."""
    require_train_stack()
    import torch

    from agentgym.trainers.losses import as_policy_logp, clipped_policy_loss

    probs = torch.tensor([[0.02, 0.5, 0.7]])
    guide = torch.tensor([[1.0, 1.0, 0.0]])
    recorded = torch.tensor([[0.0, 0.0, math.log(0.7)]])  # log mu = 0 on the guide's tokens
    expected = {  # (correction, A): (ratio, d loss / d log pi), written out by hand
        ("as_policy", 1.5): ([1.0, 1.0, 1.0], [-1.5, -1.5, -1.5]),
        ("as_policy", -1.5): ([1.0, 1.0, 1.0], [1.5, 1.5, 1.5]),
        ("importance", 1.5): ([0.02, 0.5, 1.0], [-0.03, -0.75, -1.5]),
        ("importance", -1.5): ([0.02, 0.5, 1.0], [0.0, 0.0, 1.5]),
    }
    for (correction, advantage), (ratio, grad) in expected.items():
        logp = probs.log().clone().requires_grad_(True)
        old = as_policy_logp(recorded, logp, guide) if correction == "as_policy" else recorded
        assert not old.requires_grad  # pi_old is a constant of the loss
        loss, _ = clipped_policy_loss(logp, old, torch.tensor([advantage]), 0.2, 0.28)
        loss.sum().backward()
        assert torch.allclose(torch.exp(logp - old), torch.tensor([ratio])), correction
        assert torch.allclose(logp.grad, torch.tensor([grad])), (correction, advantage)
    assert as_policy_logp(recorded, probs.log(), None) is recorded  # no guide tokens


def guided_update(correction: str, tis_cap: float | None = None):
    """GRPO's ``update`` (lr 0, two passes) on two all-guide rows with A = +1 and -1, and the
    model's own logprobs of them (a fresh tiny model each time, the same weights)."""
    import torch

    from agentgym.trainers.batch import pack, policy_logprobs
    from agentgym.trainers.grpo import GRPOConfig, update
    from agentgym.trainers.smoke import char_tokenizer, tiny_model

    tokenizer = char_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    prompt = tuple(ids(list("<|im_start|>user\nSay 4.")))
    rows = [TokenSequence(prompt, tuple(ids(list(r))), (1,) * len(r), (0.0,) * len(r),
                          (GUIDE_VERSION,), (1,) * len(r)) for r in ("4444", "x4")]
    batch = pack(rows, [1.0, -1.0], 0)
    config = GRPOConfig(lora=False, micro_batch_size=8, max_completion_length=8,
                        num_iterations=2, tis_cap=tis_cap,
                        guide={"kind": "demonstration", "correction": correction})
    model = tiny_model(tokenizer, seed=0).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # both passes see the same weights
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    stats = update(model, None, optimizer, scheduler, batch, config)
    logp = policy_logprobs(model, batch, config.temperature)[0]  # [2, 4], with grad
    return model, batch, logp, stats


def by_hand_norm(model, token_loss, mask) -> float:
    """Gradient norm of the batch's token-mean (dapo) of ``token_loss``."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((token_loss * mask).sum() / mask.sum(), params,
                                allow_unused=True)
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)))


def test_grpo_update_applies_the_configured_correction():
    """Through ``update``: as_policy's loss is the token mean of -A (ratio 1, both passes: its
    pi_old is kept after the first) and its gradient that of -A * log pi; importance's loss
    is -pi on the A > 0 row and the clipped 0.8 on the A < 0 row, its gradient that of -pi on
    the A > 0 row only."""
    require_train_stack()
    import torch

    model, batch, logp, stats = guided_update("as_policy")
    advantages, mask = batch.advantages[:, None], batch.mask  # [2, 1], [2, 4]
    expected = float((-advantages * mask).sum() / mask.sum())
    assert stats["loss"] == pytest.approx(expected, abs=1e-6)
    assert stats["clip_fraction"] == 0.0
    assert stats["grad_norm"] == pytest.approx(
        by_hand_norm(model, -advantages * logp, mask), rel=1e-4)
    assert guided_update("as_policy", tis_cap=2.0)[3]["loss"] == pytest.approx(expected, abs=1e-6)

    model, batch, logp, stats = guided_update("importance")
    pi = logp.detach().exp()
    assert float(pi.max()) < 0.8  # a random-init model: every guide token inside the clip
    positive = (batch.advantages > 0).float()[:, None]  # [2, 1]
    by_hand = -pi * positive + 0.8 * (1 - positive)  # [2, 4]
    assert stats["loss"] == pytest.approx(float((by_hand * mask).sum() / mask.sum()), abs=1e-6)
    assert stats["grad_norm"] == pytest.approx(
        by_hand_norm(model, -logp.exp() * positive, mask), rel=1e-4)
    assert stats["grad_norm"] < 0.1 * guided_update("as_policy")[3]["grad_norm"]  # ~ pi x
    assert torch.equal(batch.guide, mask)
