"""PPO end to end on the smoke setting: it learns, its critic fits, and a resumed run is exact."""

import os
import shutil
import subprocess
import sys

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.tokens import TokenSequence  # noqa: E402
from agentgym.trainers.batch import pack  # noqa: E402
from agentgym.trainers.common import make_optimizer  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.losses import masked_mean  # noqa: E402
from agentgym.trainers.models import load_weights  # noqa: E402
from agentgym.trainers.ppo import (  # noqa: E402
    PPOConfig,
    forward,
    prepare,
    token_rewards,
    train,
    update,
    value_head_for,
)
from agentgym.trainers.runs import RunDir  # noqa: E402
from agentgym.trainers.smoke import char_tokenizer, tiny_model  # noqa: E402

SMOKE = "trainers/configs/ppo_smoke.yaml"


def rows(run):
    return RunDir(run).metrics()


def checkpoint_state(run, step, seed=0):
    """(model state, value head state) saved at ``step``."""
    model = tiny_model(char_tokenizer(), seed=seed)
    folder = run / "checkpoints" / f"step_{step}"
    load_weights(model, folder / "model", lora=False)
    return model.state_dict(), torch.load(folder / "value_head.pt")


def test_smoke_config_learns_and_changes_policy_and_value_head(tmp_path):
    config = load_config(PPOConfig, SMOKE, {"output_dir": str(tmp_path), "run_name": "learn"})
    run = train(config)
    metrics = rows(run)
    assert [r["step"] for r in metrics] == list(range(1, config.max_steps + 1))
    first = sum(r["reward_mean"] for r in metrics[:5]) / 5
    last = sum(r["reward_mean"] for r in metrics[-5:]) / 5
    assert last > 2 * first and last - first > 0.03, (first, last)  # ~0.02 -> 0.06-0.2 seen
    initial = tiny_model(char_tokenizer(), seed=config.seed).state_dict()
    trained, head = checkpoint_state(run, config.max_steps, config.seed)
    changed = [k for k, v in trained.items() if not torch.equal(v, initial[k])]
    assert len(changed) >= len(initial) // 2
    assert head["weight"].abs().sum() > 0 and head["bias"].abs().sum() > 0  # it started at 0
    row = metrics[-1]
    for key in ("loss", "policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl",
                "kl", "value_mean", "return_mean", "grad_norm", "reward/digit_share",
                "time/generate", "time/score", "time/train", "time/sync", "policy_tokens",
                "learning_rate"):
        assert key in row, key
    assert row["kl"] != 0.0  # kl_coef > 0: the reference is a frozen copy of the start
    assert (run / "config.yaml").exists() and (run / "samples.jsonl").exists()


def test_token_rewards_put_the_score_on_the_last_policy_token():
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0]])
    kl = torch.full((2, 5), 2.0)
    rewards = token_rewards(torch.tensor([1.0, 0.5]), mask, kl, kl_coef=0.1)
    assert torch.allclose(rewards, torch.tensor([[0.0, -0.2, -0.2, 0.0, 0.8],
                                                 [0.0, 0.0, -0.2, -0.2, 0.3]]))


def fixed_batch(tokenizer):
    """Three two-turn sequences (env tokens in the middle) and their episode rewards."""
    ids = tokenizer.convert_tokens_to_ids
    prompt = tuple(ids(list("Say 7.")))
    sequences = [
        TokenSequence(prompt, tuple(ids(list(reply))), tuple(mask), (0.0,) * len(reply), (0, 0))
        for reply, mask in [("77:ok7", [1, 1, 0, 0, 0, 1]), ("ab:ok", [1, 1, 0, 0, 0]),
                            ("7a7:okb", [1, 1, 1, 0, 0, 0, 1])]]
    return pack(sequences, [1.0, 0.0, 0.5], tokenizer.pad_token_id)


def test_value_head_loss_decreases_on_a_fixed_batch():
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, seed=0)
    head = value_head_for(model)
    config = PPOConfig(model="tiny", lora=False, kl_coef=0.0, gamma=1.0, lam=1.0, vf_coef=1.0,
                       cliprange_value=None, num_ppo_epochs=1, micro_batch_size=2)
    optimizer, _ = make_optimizer(torch.nn.ModuleList([model, head]), 1e-2, 0.0, 0)
    batch = fixed_batch(tokenizer)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        targets = prepare(model, head, None, batch, batch.advantages, config)
        # lam = gamma = 1: the return of every policy token is its episode's reward
        expected = batch.advantages[:, None] * batch.mask  # [B, R]
        assert torch.allclose(targets.returns, expected, atol=1e-6)
        assert torch.equal(targets.advantages * (1 - batch.mask), torch.zeros_like(batch.mask))
        with torch.no_grad():
            values = forward(model, head, batch, config.temperature)[1]  # [B, R]
        losses.append(float(0.5 * masked_mean((values - targets.returns) ** 2, batch.mask)))
        update(model, head, optimizer, batch, targets, config, generator)
    assert losses[0] == pytest.approx(0.5 * (3 * 1.0 + 4 * 0.25) / 9)  # V starts at 0
    assert losses[-1] < 0.2 * losses[0], losses


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    overrides = {"max_steps": 4, "save_steps": 2, "output_dir": str(tmp_path)}
    # the uninterrupted run goes through the command line
    args = [sys.executable, "-m", "agentgym.trainers.cli", "--algorithm", "ppo", "--config",
            SMOKE, "--run_name", "straight",
            *[x for k, v in overrides.items() for x in (f"--{k}", str(v))]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same numerics as this process
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = tmp_path / "straight"
    assert [r["step"] for r in rows(straight)] == [1, 2, 3, 4]

    # another run folder holding only what the straight run had at step 2, then resumed
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_4")
    assert train(load_config(PPOConfig, resumed / "config.yaml"), resume=resumed) == resumed
    assert [r["step"] for r in rows(resumed)] == [1, 2, 3, 4]
    for key in ("reward_mean", "loss", "value_loss", "kl"):
        assert [r[key] for r in rows(resumed)] == pytest.approx(
            [r[key] for r in rows(straight)], rel=1e-5, abs=1e-7), key
    (model_a, head_a), (model_b, head_b) = (checkpoint_state(straight, 4),
                                            checkpoint_state(resumed, 4))
    for key in model_a:
        assert torch.allclose(model_a[key], model_b[key], atol=1e-6), key
    for key in head_a:
        assert torch.allclose(head_a[key], head_b[key], atol=1e-6), key
