"""``agentgym compare-methods`` on a tiny budget: every method trains, is evaluated on the same
held-out tasks, and lands in one table and one plot (the smoke setting: the code paths are the
ones Calculator-v0 with SmolLM2 takes, at a size two CPU cores run in minutes)."""

import json
from pathlib import Path

import pytest
import yaml
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


def test_sft_then_rft_and_dpo_chains_start_from_the_sft_policy(tmp_path):
    """sft_rft / sft_dpo: SFT, the merged SFT policy exported, then RFT / DPO with that policy
    as their model; the row's tokens are both stages'."""
    if "test/Digit-v0" not in agentgym.list_envs():
        agentgym.register("test/Digit-v0", DIGIT_ENV)
    data = digit_file(tmp_path / "digits.jsonl")
    overrides = {**TINY, "sft": {**TINY["sft"], "data": [str(data)]},
                 "dpo": {"tasks_per_step": 2, "num_generations": 2}}
    rows = compare_methods("test/Digit-v0", steps=2, methods=["sft_rft", "sft_dpo"],
                           eval_examples=2, out=tmp_path, model="tiny", max_tokens=12,
                           overrides=overrides)
    for row in rows:
        assert row.error is None, (row.method, row.error)
        policy = tmp_path / "train" / f"{row.method}-policy"
        assert (policy / "config.json").exists()
        trained = yaml.safe_load((Path(row.run_dir) / "config.yaml").read_text())
        assert trained["model"] == str(policy)  # the last stage starts from the SFT policy
        sft_tokens = _trained_tokens(_sft_run(tmp_path, row.method))
        assert sft_tokens == 2 * 4 * 7
        assert row.tokens == sft_tokens + _trained_tokens(Path(row.run_dir))


def _sft_run(out: Path, method: str) -> Path:
    """The SFT stage's run folder of chain ``method`` under ``out/train``."""
    found = [p for p in (out / "train").rglob("config.yaml") if f"{method}-sft" in str(p)]
    assert len(found) == 1, found
    return found[0].parent


def test_resume_keeps_finished_rows_of_the_same_setting(tmp_path):
    kept = MethodResult("base", 0.25, 0.1)
    failed = MethodResult("sft", error="RuntimeError: killed")
    (tmp_path / "comparison.json").write_text(json.dumps(
        {"env_id": "agentgym/Calculator-v0", "steps": 3, "eval_examples": 4,
         "rows": [kept.__dict__, failed.__dict__]}))
    rows = compare_methods("agentgym/Calculator-v0", steps=3, methods=["base", "nope"],
                           eval_examples=4, out=tmp_path, resume=True)
    assert rows[0] == kept  # not evaluated again (an eval of the real model would differ)
    assert not (tmp_path / "eval").exists()
    assert rows[1].error is not None and "unknown method 'nope'" in rows[1].error
    table = (tmp_path / "comparison.md").read_text()
    assert "| base | 1/4 = 0.25 ± 0.10 |" in table
    # another budget: nothing kept (so the unknown method is the only row, and base is redone
    # only when asked: here it is not)
    rows = compare_methods("agentgym/Calculator-v0", steps=5, methods=["nope"],
                           eval_examples=4, out=tmp_path, resume=True)
    assert [r.method for r in rows] == ["nope"]
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["steps"] == 5 and [r["method"] for r in saved["rows"]] == ["nope"]
