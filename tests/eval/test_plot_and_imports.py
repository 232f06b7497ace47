"""``agentgym plot`` and the import cost of the eval modules."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from gates import require
from typer.testing import CliRunner

from agentgym.eval.cli import app
from agentgym.plots import read_reward_curve

runner = CliRunner()


def write_metrics(run_dir: Path, with_std: bool = True) -> None:
    rows = [{"step": s, "reward_mean": 0.1 * s, **({"reward_std": 0.05} if with_std else {})}
            for s in range(10)]
    rows.insert(3, {"step": 3, "eval/reward": 0.4})  # other kinds of rows are ignored
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 10, "rew')  # torn last line


@pytest.mark.parametrize("with_std", [True, False])
def test_plot_writes_a_png_of_the_reward_curve(tmp_path: Path, with_std: bool) -> None:
    require(importlib.util.find_spec("matplotlib") is not None,
            "matplotlib is not installed (pip install 'agentgym[plot]')")
    write_metrics(tmp_path / "run", with_std)
    result = runner.invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    png = tmp_path / "run" / "reward_curve.png"
    assert result.output.strip().replace("\n", "") == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    points = read_reward_curve(tmp_path / "run" / "metrics.jsonl")
    assert [p["step"] for p in points] == list(range(10))
    assert all(("reward_std" in p) is with_std for p in points)


def test_plot_without_metrics_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output == f"error: no metrics.jsonl in {tmp_path}\n"
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    result = runner.invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 2 and "no rows with both 'step' and 'reward_mean'" in result.output


def test_import_agentgym_stays_light() -> None:
    heavy = ["matplotlib", "rich.progress", "agentgym.eval.evaluation", "agentgym.eval.leaderboard",
             "agentgym.plots", "agentgym.eval.cli"]
    code = ("import sys, json, agentgym, agentgym.eval.evaluation, agentgym.eval.leaderboard; "
            f"print(json.dumps([m for m in {heavy[:2]!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    code = ("import sys, json, agentgym; "
            f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
