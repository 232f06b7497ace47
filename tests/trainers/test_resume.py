"""Resuming a run that was killed in the middle of writing a log line."""

import json

import pytest
from gates import TRAIN_INSTALL, require_module

require_module("torch", TRAIN_INSTALL)

from agentgym.trainers.cli import TRAINERS  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.runs import RunDir  # noqa: E402

SMOKE = {"grpo": "trainers/configs/smoke.yaml", "ppo": "trainers/configs/ppo_smoke.yaml"}


def strict_rows(path):
    """Every line of a JSONL file, decoded without tolerating a torn line."""
    text = path.read_text()
    assert text.endswith("\n"), text[-200:]
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("algorithm", sorted(SMOKE))
def test_resume_drops_a_torn_last_line_and_continues(tmp_path, algorithm):
    config_cls, train = TRAINERS[algorithm]()
    small = {"max_steps": 2, "save_steps": 2, "tasks_per_step": 4, "output_dir": str(tmp_path),
             "run_name": "torn", "report_to": []}
    run = train(load_config(config_cls, SMOKE[algorithm], small))

    # killed while writing step 3: its checkpoint never came, its log lines are cut off
    for name in ("metrics.jsonl", "samples.jsonl"):
        with (run / name).open("a") as file:
            file.write('{"step": 3, "reward_mean": 0.1')

    resumed = train(load_config(config_cls, run / "config.yaml", {"max_steps": 4}), resume=run)
    assert resumed == run
    metrics = strict_rows(run / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    assert metrics == RunDir(run).metrics()
    assert {r["step"] for r in strict_rows(run / "samples.jsonl")} == {1, 2, 3, 4}
    assert (run / "checkpoints" / "step_4" / "state.json").exists()
