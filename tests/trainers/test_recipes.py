"""The one-shot RLVR and RLSF recipes (trainers/configs/one_shot_rlvr.yaml, rlsf.yaml)."""

import json
import math

import pytest
from gates import require_train_stack

import agentgym
from agentgym.rewards.config import load_rewards_file
from agentgym.tasks.math.one_shot import DEFAULT_HISTORY, load_history, select_example
from agentgym.trainers.config import load_config
from agentgym.trainers.grpo import GRPOConfig

ONE_SHOT = "trainers/configs/one_shot_rlvr.yaml"
RLSF = "trainers/configs/rlsf.yaml"


def test_one_shot_config_trains_on_the_highest_variance_example_deterministically():
    config = load_config(GRPOConfig, ONE_SHOT)
    assert config.env_id == "agentgym/OneShotRLVR-v0" and config.model == "smollm2"
    assert config.lora and config.engine == "hf" and config.max_steps >= 8
    expected, variance = select_example(load_history(DEFAULT_HISTORY))
    assert variance > 0  # a problem the model sometimes solves, sometimes not
    chosen = []
    for _ in range(2):  # the same example every time the env is built
        env = agentgym.make(config.env_id, split="train", **config.env_kwargs)
        chosen.append([task.id for task in env.tasks])
        env.close()
    assert chosen == [[expected], [expected]]
    # the held-out split is Math-v0's eval split, under the same turn and tool settings
    one_shot = agentgym.make(config.env_id, split="eval", **config.env_kwargs)
    math_env = agentgym.make("agentgym/Math-v0", split="eval", **config.env_kwargs)
    assert [t.id for t in one_shot.tasks] == [t.id for t in math_env.tasks]
    assert len(one_shot.tasks) == 300
    one_shot.close()
    math_env.close()


def test_variance_ties_go_to_the_lowest_task_id(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps({"task_id": t, "rewards": r}) + "\n" for t, r in [
        ("lcm-train-7", [0.0, 1.0]), ("gcd-train-2", [1.0, 0.0]), ("gcd-train-1", [0.0, 0.0]),
        ("chain_sum-train-9", [0.0, 0.5])]))
    assert select_example(load_history(history)) == ("gcd-train-2", 0.25)


def test_rlsf_config_rewards_the_policy_confidence():
    config = load_config(GRPOConfig, RLSF)
    kinds = {term["kind"]: term for term in config.rewards}
    assert kinds["confidence"]["weight"] == 1.0
    assert kinds["env"] == {"kind": "env", "name": "correct", "weight": 0.0}
    assert load_rewards_file("trainers/configs/rlsf_eval_rewards.yaml") == [
        {"kind": "confidence", "weight": 0.0}]


def test_rlsf_one_step_trains_on_the_self_feedback_reward(tmp_path):
    """One tiny GRPO step with rlsf.yaml: every episode's reward is its own confidence."""
    require_train_stack()
    from agentgym.policies.hf_engine import HFEngine
    from agentgym.trainers.grpo import train
    from agentgym.trainers.runs import RunDir

    config = load_config(GRPOConfig, RLSF, {
        "output_dir": str(tmp_path), "run_name": "rlsf", "max_steps": 1, "tasks_per_step": 1,
        "num_generations": 2, "max_completion_length": 8, "micro_batch_size": 2,
        "report_to": [], "log_samples": 2})
    run = train(config)
    (row,) = RunDir(run).metrics()
    assert 0.0 < row["reward/confidence"] <= 1.0
    assert row["reward_mean"] == pytest.approx(row["reward/confidence"])
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples
    for sample in samples:
        logprobs = sample["turns"][-1]["logprobs"]
        confidence = math.exp(sum(logprobs) / len(logprobs))
        assert sample["reward_components"]["confidence"] == pytest.approx(confidence)
        assert sample["reward"] == pytest.approx(confidence)
        assert sample["reward_components"]["correct"] in (0.0, 1.0)
    # the trained checkpoint is servable as is (adapter merged into its base)
    engine = HFEngine.from_pretrained(RunDir(run).checkpoints()[-1] / "model", device="cpu")
    assert not hasattr(engine.model, "peft_config")
