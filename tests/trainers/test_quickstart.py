"""The main job end to end, shortened: eval -> (SFT ->) GRPO -> eval -> report files.

The end-to-end runs use the real default model (SmolLM2-135M-Instruct) on Calculator-v0, each
stage cut to one step on a few examples; the SFT -> GRPO chain's resume logic in detail is
tests/trainers/test_sft_grpo.py (smoke setting).
"""

import pytest
from gates import TRAIN_INSTALL, require_module

require_module("transformers", TRAIN_INSTALL)

from agentgym.jsonl import read_jsonl  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402

SMALL = {"sft": {"num_examples": 4, "batch_size": 2, "micro_batch_size": 2},
         "grpo": {"tasks_per_step": 1, "num_generations": 2, "micro_batch_size": 2}}
"""A few examples per step: the code paths of the real quickstart at a fraction of its time."""


def grpo_only_config(out, steps):
    """The GRPO config of the quickstart before it had an SFT stage."""
    from agentgym.trainers.grpo import GRPOConfig
    from agentgym.trainers.quickstart import CONFIG

    return load_config(GRPOConfig, CONFIG, {"output_dir": str(out / "train"),
                                            "run_name": "grpo", "engine": "hf",
                                            "max_steps": steps})


def test_the_step_defaults_live_in_the_two_yaml_files(tmp_path):
    import yaml

    from agentgym.trainers.quickstart import (
        CONFIG,
        EVAL_ENV_KWARGS,
        SFT_CONFIG,
        stage_configs,
        trained_label,
    )

    sft, grpo = stage_configs(out=tmp_path)
    assert sft is not None
    assert sft.max_steps == yaml.safe_load(SFT_CONFIG.read_text())["max_steps"]
    assert grpo.max_steps == yaml.safe_load(CONFIG.read_text())["max_steps"]
    assert sft.env_kwargs == EVAL_ENV_KWARGS  # SFT trains on the chats it is evaluated on
    assert sft.model == grpo.model == "smollm2"
    assert trained_label(sft, grpo) == (f"SFT ({sft.max_steps} steps) + "
                                        f"GRPO ({grpo.max_steps} steps)")
    sft, grpo = stage_configs(steps=3, sft_steps=1, out=tmp_path)
    assert (sft.max_steps, grpo.max_steps) == (1, 3)
    assert trained_label(sft, grpo) == "SFT (1 step) + GRPO (3 steps)"
    with pytest.raises(ValueError, match="sft_steps must be >= 0"):
        stage_configs(sft_steps=-1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        stage_configs(steps=0)


def test_sft_steps_0_is_the_grpo_only_quickstart(tmp_path):
    from agentgym.trainers.quickstart import stage_configs, trained_label

    sft, grpo = stage_configs(steps=5, sft_steps=0, out=tmp_path)
    assert sft is None and grpo == grpo_only_config(tmp_path, 5)
    assert trained_label(sft, grpo) == "GRPO (5 steps)"


def test_quickstart_grpo_only_runs_end_to_end(tmp_path):
    from rich.console import Console

    from agentgym.trainers.grpo import GRPOConfig
    from agentgym.trainers.quickstart import quickstart

    console = Console(record=True, width=120)
    result = quickstart(steps=1, sft_steps=0, eval_examples=2, out=tmp_path, console=console)
    for summary in (result.before, result.after):
        assert summary["rollouts"] == 2 and summary["errors"] == 0
        assert 0.0 <= summary["mean_reward"] <= 1.0
    assert (result.run_dir / "metrics.jsonl").read_text().count("\n") == 1
    assert (result.run_dir / "checkpoints" / "step_1" / "model").is_dir()
    assert result.curve is not None and result.curve.stat().st_size > 0
    assert result.leaderboard.name == "index.html" and result.leaderboard.exists()
    # the GRPO-only path: no SFT stage, GRPO trained from the untrained model as before
    assert result.sft_run is None and result.trained == "GRPO (1 step)"
    assert not (tmp_path / "train" / "sft").exists()
    assert not (tmp_path / "train" / "sft_policy").exists()
    assert load_config(GRPOConfig, result.run_dir / "config.yaml") == \
        grpo_only_config(tmp_path, 1)
    text = console.export_text()
    assert "before vs after GRPO (1 step)" in text and "success rate" in text
    assert "4/4  evaluate the trained model" in text and "SFT" not in text
    assert "smollm2-135m+grpo1-quickstart" in result.leaderboard.read_text()


def test_quickstart_sft_then_grpo_and_resume(tmp_path, monkeypatch):
    from rich.console import Console

    from agentgym.trainers import sft_grpo
    from agentgym.trainers.grpo import GRPOConfig
    from agentgym.trainers.quickstart import quickstart

    console = Console(record=True, width=120)
    result = quickstart(steps=1, sft_steps=1, eval_examples=2, out=tmp_path, console=console,
                        overrides=SMALL)
    policy = tmp_path / "train" / "sft_policy"
    assert result.sft_run == tmp_path / "train" / "sft"
    assert [r["step"] for r in read_jsonl(result.sft_run / "metrics.jsonl")] == [1]
    assert (policy / "config.json").exists()
    assert load_config(GRPOConfig, result.run_dir / "config.yaml").model == str(policy)
    assert result.after["rollouts"] == 2 and result.after["errors"] == 0
    assert result.trained == "SFT (1 step) + GRPO (1 step)"
    text = console.export_text()
    for line in ("3/5  SFT + LoRA on agentgym/Calculator-v0's demonstrations, 1 step of 2",
                 "4/5  GRPO + LoRA from the SFT policy, 1 step on",
                 "5/5  evaluate the trained model", "before vs after SFT (1 step) + GRPO (1 step)"):
        assert line in text, line
    assert "smollm2-135m+sft1+grpo1-quickstart" in result.leaderboard.read_text()

    # --resume with more GRPO steps: the finished SFT and its export are reused, GRPO continues
    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage was redone")

    monkeypatch.setattr(sft_grpo.sft, "train", refuse)
    monkeypatch.setattr(sft_grpo, "export_policy", refuse)
    resumed = quickstart(steps=2, sft_steps=1, eval_examples=2, out=tmp_path, resume=True,
                         console=Console(record=True, width=120), overrides=SMALL)
    assert [r["step"] for r in read_jsonl(resumed.run_dir / "metrics.jsonl")] == [1, 2]
    assert resumed.trained == "SFT (1 step) + GRPO (2 steps)"


def test_the_cli_passes_sft_steps_and_steps(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from agentgym import cli
    from agentgym.trainers import quickstart as module

    calls = []
    monkeypatch.setattr(module, "quickstart", lambda **kwargs: calls.append(kwargs))
    args = ["quickstart", "--sft-steps", "0", "--steps", "3", "--out", str(tmp_path), "--resume"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    assert {k: calls[0][k] for k in ("sft_steps", "steps", "out", "resume")} == \
        {"sft_steps": 0, "steps": 3, "out": str(tmp_path), "resume": True}
    CliRunner().invoke(cli.app, ["quickstart"])
    assert calls[1]["sft_steps"] is None and calls[1]["steps"] is None  # the YAML files' values
