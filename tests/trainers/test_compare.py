"""``agentgym compare-methods`` on a tiny budget: every method trains, is evaluated on the same
held-out tasks, and lands in one table and one plot (the smoke setting: the code paths are the
ones Calculator-v0 with SmolLM2 takes, at a size two CPU cores run in minutes)."""

import json
from pathlib import Path

import pytest
from gates import TRAIN_INSTALL, require_module

require_module("torch", TRAIN_INSTALL)

from test_sft import DIGIT_ENV, digit_file  # noqa: E402

import agentgym  # noqa: E402
from agentgym.trainers.compare import (  # noqa: E402
    MethodResult,
    _trained_tokens,
    compare_methods,
    format_table,
)

TINY = {"sft": {"min_reward": 0.9, "batch_size": 4},
        "rft": {"tasks_per_round": 4, "num_generations": 2, "reward_threshold": 0.05,
                "batch_size": 4},
        "rcsft": {"rollout_tasks": 4, "num_generations": 2, "batch_size": 4},
        "grpo": {"tasks_per_step": 2, "num_generations": 2},
        "*": {"env_kwargs": {}, "lora": False, "learning_rate": 3e-3,
              "max_completion_length": 12}}


def test_format_table_shows_counts_cis_and_failures():
    rows = [MethodResult("base", 0.0, 0.0), MethodResult("sft", 0.3, 0.13, 95.0, 1200),
            MethodResult("dpo", error="ValueError: no pairs")]
    table = format_table(rows, "agentgym/Calculator-v0", 4, 50)
    assert "| base | 0/50 = 0.00 ± 0.00 | - | 0 |" in table
    assert "| sft | 15/50 = 0.30 ± 0.13 | 1.6 min | 1200 |" in table
    assert "| dpo | failed: ValueError: no pairs | | |" in table


def test_compare_methods_on_a_tiny_budget(tmp_path):
    """Every method on the smoke setting (tiny model, DigitEnv registered under a test id)."""
    if "test/Digit-v0" not in agentgym.list_envs():
        agentgym.register("test/Digit-v0", DIGIT_ENV)
    data = digit_file(tmp_path / "digits.jsonl")
    methods = ["base", "sft", "rft", "rcsft", "grpo", "sft_grpo"]
    rows = compare_methods("test/Digit-v0", steps=2, methods=methods, eval_examples=4,
                           out=tmp_path, model="tiny", max_tokens=12,
                           overrides={**TINY, "sft": {**TINY["sft"], "data": [str(data)]}})
    assert [r.method for r in rows] == methods
    for row in rows:
        assert row.error is None, (row.method, row.error)
        assert 0.0 <= row.success <= 1.0
    for row in rows[1:]:
        assert row.train_s > 0 and row.run_dir is not None
    assert rows[1].tokens == 2 * 4 * 7  # SFT: 2 steps x 4 chats x (6 digits + end token)
    # sft_grpo counts both stages: its SFT stage (the same 2 x 4 x 7 tokens) plus its GRPO run's
    # (which may be 0 when every group ties, so the sum is checked, not a strict increase)
    grpo_tokens = _trained_tokens(Path(rows[-1].run_dir))
    assert rows[-1].tokens == rows[1].tokens + grpo_tokens
    table = (tmp_path / "comparison.md").read_text()
    for method in methods:
        assert f"| {method} |" in table
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["method"] for r in saved["rows"]] == methods
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert (tmp_path / "train" / "sft_grpo-policy" / "config.json").exists()


def test_an_unknown_method_is_a_failed_row(tmp_path):
    rows = compare_methods("agentgym/Calculator-v0", steps=1, methods=["nope"],
                           eval_examples=1, out=tmp_path)
    assert rows[0].error is not None and "unknown method 'nope'" in rows[0].error
    with pytest.raises(Exception, match="Calculator-v9"):
        compare_methods("agentgym/Calculator-v9", methods=["base"], out=tmp_path)
