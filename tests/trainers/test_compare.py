"""``agentgym compare-methods`` on a tiny budget: every method trains, is evaluated on the same
held-out tasks, and lands in one table and one plot."""

import json

import pytest
from gates import TRAIN_INSTALL, require_module, require_train_stack

require_module("torch", TRAIN_INSTALL)

from agentgym.trainers.compare import MethodResult, compare_methods, format_table  # noqa: E402

TINY = {"sft": {"num_examples": 4, "batch_size": 2, "micro_batch_size": 2},
        "rft": {"tasks_per_round": 2, "num_generations": 2, "batch_size": 2,
                "reward_threshold": 0.0},
        "rcsft": {"rollout_tasks": 2, "num_generations": 2, "batch_size": 2},
        "grpo": {"tasks_per_step": 1, "num_generations": 2},
        "*": {"max_completion_length": 16}}


def test_format_table_shows_counts_cis_and_failures():
    rows = [MethodResult("base", 0.0, 0.0), MethodResult("sft", 0.3, 0.13, 95.0, 1200),
            MethodResult("dpo", error="ValueError: no pairs")]
    table = format_table(rows, "agentgym/Calculator-v0", 4, 50)
    assert "| base | 0/50 = 0.00 ± 0.00 | - | 0 |" in table
    assert "| sft | 15/50 = 0.30 ± 0.13 | 1.6 min | 1200 |" in table
    assert "| dpo | failed: ValueError: no pairs | | |" in table


def test_compare_methods_on_a_tiny_budget(tmp_path):
    require_train_stack()
    methods = ["base", "sft", "rft", "rcsft", "grpo"]
    rows = compare_methods("agentgym/Calculator-v0", steps=1, methods=methods,
                           eval_examples=2, out=tmp_path, max_tokens=16,
                           env_kwargs={"demos": 1, "max_turns": 2}, overrides=TINY)
    assert [r.method for r in rows] == methods
    for row in rows:
        assert row.error is None, (row.method, row.error)
        assert 0.0 <= row.success <= 1.0
    for row in rows[1:]:
        assert row.train_s > 0 and row.run_dir is not None
    assert rows[1].tokens > 0  # SFT always has demonstrations to train on
    table = (tmp_path / "comparison.md").read_text()
    for method in methods:
        assert f"| {method} |" in table
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["method"] for r in saved["rows"]] == methods
    assert (tmp_path / "comparison.png").stat().st_size > 0


def test_an_unknown_method_is_a_failed_row(tmp_path):
    rows = compare_methods("agentgym/Calculator-v0", steps=1, methods=["nope"],
                           eval_examples=1, out=tmp_path)
    assert rows[0].error is not None and "unknown method 'nope'" in rows[0].error
    with pytest.raises(Exception, match="Calculator-v9"):
        compare_methods("agentgym/Calculator-v9", methods=["base"], out=tmp_path)
