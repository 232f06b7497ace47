"""RLHF end to end on tiny settings: SFT -> reward model -> PPO against it, with the reward
model's score logged next to the env's verifiable reward, and a finished chain that reruns
without training again.

The tiny random-init model and DigitEnv keep it to about a minute of CPU; it needs torch and
transformers only (not the prepared SmolLM2), hence the torch gate."""

import json

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.trainers.cli import run_training  # noqa: E402
from agentgym.trainers.models import load_model  # noqa: E402
from agentgym.trainers.rlhf import RLHFConfig, export_policy, train  # noqa: E402
from agentgym.trainers.runs import RunDir  # noqa: E402
from agentgym.trainers.smoke import DigitEnv  # noqa: E402
from agentgym.trajectory_io import to_json  # noqa: E402
from agentgym.types import Trajectory  # noqa: E402

TINY = {"model": "tiny", "env_id": "agentgym.trainers.smoke:DigitEnv", "engine": "hf",
        "lora": False, "max_completion_length": 8, "report_to": []}


def digit_chats(path):
    """A trajectory JSONL of solved DigitEnv chats (the digit, repeated) for SFT."""
    env = DigitEnv(split="train")
    with path.open("w") as file:
        for task in env.tasks:
            chat = (*task.prompt, {"role": "assistant", "content": str(task.answer) * 6})
            file.write(json.dumps(to_json(Trajectory(env_id="toy", task_id=task.id,
                                                     messages=chat, reward=1.0))) + "\n")


def test_rlhf_chain_sft_reward_model_ppo_logs_both_rewards(tmp_path):
    digit_chats(tmp_path / "chats.jsonl")
    config = RLHFConfig(
        output_dir=str(tmp_path / "rlhf"),
        sft={"config": None, **TINY, "data": [str(tmp_path / "chats.jsonl")],
             "min_reward": 0.5, "batch_size": 8, "learning_rate": 3e-3, "max_steps": 6,
             "save_steps": 6},
        reward_model={"config": "trainers/configs/reward_model_smoke.yaml", "report_to": [],
                      "collect_tasks": 16, "eval_tasks": 10, "max_steps": 6, "save_steps": 6},
        ppo={"config": "trainers/configs/ppo_smoke.yaml", "tasks_per_step": 8, "max_steps": 2,
             "save_steps": 2, "report_to": []})
    out = train(config)
    assert (out / "sft_policy" / "config.json").exists()
    assert json.loads((out / "reward_model" / "heldout.json").read_text())["train_pairs"] > 0
    rm_config = (out / "reward_model" / "config.yaml").read_text()
    ppo_config = (out / "ppo" / "config.yaml").read_text()
    assert str(out / "sft_policy") in rm_config and str(out / "sft_policy") in ppo_config
    rows = RunDir(out / "ppo").metrics()
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:  # the reward model's score is the reward; the env's is logged beside it
        assert row["reward_mean"] == pytest.approx(row["reward/reward_model"], abs=1e-6)
        assert "reward/digit_share" in row
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] != 0.0  # KL to the SFT policy, 0 at first

    # PPO's reference is the SFT policy: the exported folder holds SFT's final weights
    exported, _ = load_model(str(out / "sft_policy"), lora=False, lora_r=8, lora_alpha=16,
                             lora_dropout=0.0, lora_target_modules=[], seed=0)
    sft_final = RunDir(out / "sft").checkpoints()[-1]
    assert sft_final.name == "step_6"
    again = tmp_path / "again"
    export_policy(out / "sft", again)
    reloaded, _ = load_model(str(again), lora=False, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                             lora_target_modules=[], seed=0)
    for (name, a), b in zip(exported.state_dict().items(), reloaded.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name

    # a finished chain runs again without training anything (stages are skipped or done)
    before = {p: p.stat().st_mtime for p in out.rglob("metrics.jsonl")}
    assert run_training(None, algorithm="rlhf", resume=str(out)) == out  # its config.yaml
    assert {p: p.stat().st_mtime for p in out.rglob("metrics.jsonl")} == before
