"""The main job end to end, shortened: eval -> 1 GRPO step -> eval -> report files."""

from gates import TRAIN_INSTALL, require_module

require_module("transformers", TRAIN_INSTALL)


def test_quickstart_runs_end_to_end(tmp_path):
    from rich.console import Console

    from agentgym.trainers.quickstart import quickstart

    console = Console(record=True, width=120)
    result = quickstart(steps=1, eval_examples=2, out=tmp_path, console=console)
    for summary in (result.before, result.after):
        assert summary["rollouts"] == 2 and summary["errors"] == 0
        assert 0.0 <= summary["mean_reward"] <= 1.0
    assert (result.run_dir / "metrics.jsonl").read_text().count("\n") == 1
    assert (result.run_dir / "checkpoints" / "step_1" / "model").is_dir()
    assert result.curve is not None and result.curve.stat().st_size > 0
    assert result.leaderboard.name == "index.html" and result.leaderboard.exists()
    text = console.export_text()
    assert "before vs after GRPO" in text and "success rate" in text
