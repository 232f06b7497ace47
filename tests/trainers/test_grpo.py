"""GRPO end to end on the smoke setting: it learns, and a killed run resumes exactly."""

import os
import signal
import subprocess
import sys
import time

from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.grpo import GRPOConfig, train  # noqa: E402
from agentgym.trainers.models import load_weights  # noqa: E402
from agentgym.trainers.runs import PAUSE_AFTER_CHECKPOINT, RunDir  # noqa: E402
from agentgym.trainers.smoke import char_tokenizer, tiny_model  # noqa: E402

SMOKE = "trainers/configs/smoke.yaml"


def rows(run):
    return RunDir(run).metrics()


def test_smoke_config_learns_and_changes_parameters(tmp_path):
    config = load_config(GRPOConfig, SMOKE, {"output_dir": str(tmp_path), "run_name": "learn"})
    run = train(config)
    metrics = rows(run)
    assert [r["step"] for r in metrics] == list(range(1, config.max_steps + 1))
    first = sum(r["reward_mean"] for r in metrics[:5]) / 5
    last = sum(r["reward_mean"] for r in metrics[-5:]) / 5
    assert last > 2 * first and last - first > 0.04, (first, last)
    trained = tiny_model(char_tokenizer(), seed=config.seed)
    initial = {k: v.clone() for k, v in trained.state_dict().items()}
    load_weights(trained, run / "checkpoints" / f"step_{config.max_steps}" / "model", lora=False)
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, initial[k])]
    assert len(changed) >= len(initial) // 2
    row = metrics[-1]
    for key in ("loss", "entropy", "clip_fraction", "grad_norm", "reward/digit_share",
                "time/generate", "time/train", "time/sync", "zero_variance_groups",
                "policy_tokens", "learning_rate", "memory/peak_gib", "memory/kind"):
        assert key in row, key
    assert row["memory/kind"] in ("cuda_max_allocated", "process_max_rss")
    assert row["memory/peak_gib"] > 0
    assert (run / "config.yaml").exists() and (run / "samples.jsonl").exists()


def final_state(run, step):
    model = tiny_model(char_tokenizer())
    load_weights(model, run / "checkpoints" / f"step_{step}" / "model", lora=False)
    return model.state_dict()


def test_killed_run_resumes_to_the_same_state(tmp_path):
    overrides = {"max_steps": 6, "save_steps": 2, "output_dir": str(tmp_path)}
    straight = train(load_config(GRPOConfig, SMOKE, {**overrides, "run_name": "straight"}))

    # the same run in a subprocess, killed (SIGKILL) once its step-4 checkpoint exists
    args = [sys.executable, "-m", "agentgym.trainers.cli", "--config", SMOKE, "--run_name",
            "killed", *[x for k, v in overrides.items() for x in (f"--{k}", str(v))]]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1",  # same numerics
                                    PAUSE_AFTER_CHECKPOINT: str(4)})
    killed = tmp_path / "killed"
    deadline = time.time() + 900  # a failure detector: a busy machine trains slowly
    while not (killed / "checkpoints" / "step_4" / "state.json").exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no step-4 checkpoint in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "step_6").exists()

    resumed = train(load_config(GRPOConfig, killed / "config.yaml"), resume=killed)
    assert resumed == killed
    assert [r["step"] for r in rows(killed)] == list(range(1, 7))
    assert [r["reward_mean"] for r in rows(killed)] == [r["reward_mean"] for r in rows(straight)]
    a, b = final_state(straight, 6), final_state(killed, 6)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
