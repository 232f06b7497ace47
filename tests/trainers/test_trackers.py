"""Metrics mirrored to TensorBoard and W&B (offline), and clear errors for missing trackers."""

import json

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.trainers import trackers  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.grpo import GRPOConfig, train  # noqa: E402
from agentgym.trainers.runs import RunDir  # noqa: E402

SMOKE = "trainers/configs/smoke.yaml"


def test_a_run_reports_to_tensorboard_and_wandb(tmp_path, monkeypatch):
    require_module("wandb", "pip install 'agentgym[wandb]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = load_config(GRPOConfig, SMOKE, {
        "output_dir": str(tmp_path), "run_name": "tracked", "max_steps": 2, "save_steps": 2,
        "report_to": ["tensorboard", "wandb"], "wandb_project": "agentgym-test"})
    run = train(config)
    metrics = RunDir(run).metrics()

    events = EventAccumulator(str(run))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("reward_mean")]
    assert logged == [(r["step"], pytest.approx(r["reward_mean"])) for r in metrics]

    [offline] = (run / "wandb").glob("offline-run-*")
    assert (run / "wandb_id").read_text() in offline.name
    # The run file is protobuf records; each history value is stored as its JSON text.
    [records] = offline.glob("run-*.wandb")
    raw = records.read_bytes()
    assert raw.count(b"reward_mean") >= len(metrics)  # history rows (+ the summary)
    for row in metrics:
        assert json.dumps(row["reward_mean"]).encode() in raw


def test_unknown_or_missing_trackers_fail_at_start(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown tracker 'mlflow'"):
        trackers.open_trackers(["mlflow"], tmp_path, {})
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install wandb"):
        trackers.open_trackers(["wandb"], tmp_path, {})
