"""``agentgym compare-methods``: train each learning method on one env and budget, evaluate each
on the same held-out tasks, and write one table and one plot.

For every method (``sft``, ``rft``, ``rcsft``, ``grpo``, and ``dpo`` when trainers/dpo.py is
there; ``base`` is the untrained model; ``sft_grpo``, ``sft_rft`` and ``sft_dpo`` are SFT on
demonstrations, then GRPO, RFT or DPO from the SFT policy, ``steps`` steps each):

1. load its config (``trainers/configs/<method>.yaml``, ``quickstart.yaml`` for ``grpo``; the
   trainer's defaults otherwise) and override the env, the model, the engine and
   ``max_steps = steps`` (the budget: the same number of optimiser steps for every method);
2. train it in ``OUT/train/<method>`` (wall time measured);
3. evaluate its final weights greedily on the first ``eval_examples`` tasks of the eval split
   (``eval_env_kwargs``: the same for every method; RCSFT conditioned on its highest return);
4. write ``OUT/comparison.md`` / ``.json`` (held-out success with its 95 % CI, training wall
   time, trained tokens = the loss's tokens summed over steps) and ``OUT/comparison.png``.

A method that fails is a row with its error, not the end of the comparison. With ``resume``,
the rows already in ``OUT/comparison.json`` (same env, steps and held-out tasks, no error) are
kept, not trained again: an interrupted comparison continues with the methods it has not done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agentgym
from agentgym.eval.evaluation import evaluate
from agentgym.jsonl import read_jsonl
from agentgym.plots import plot_method_comparison
from agentgym.policy import Policy
from agentgym.trainers import sft_grpo
from agentgym.trainers.cli import TRAINERS
from agentgym.trainers.config import load_config
from agentgym.trainers.models import base_engine, trained_engine
from agentgym.trainers.rcsft import ReturnConditionedPolicy

__all__ = ["CHAINS", "CONFIGS", "MethodResult", "compare_methods", "default_methods",
           "format_table"]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("configs")
CONFIGS: dict[str, str] = {"grpo": "quickstart.yaml", "sft": "sft.yaml", "rft": "rft.yaml",
                           "rcsft": "rcsft.yaml", "dpo": "dpo.yaml"}
"""Method -> its config file in trainers/configs (used when it exists)."""


@dataclass
class MethodResult:
    """One row of the table."""

    method: str
    success: float = math.nan
    ci95: float = math.nan
    train_s: float = 0.0
    tokens: int = 0
    run_dir: str | None = None
    error: str | None = None


def default_methods() -> list[str]:
    """``base``, then every trainer that exists of sft, rft, rcsft, grpo, dpo."""
    known = [m for m in ("sft", "rft", "rcsft", "grpo", "dpo") if m in TRAINERS]
    out = ["base"]
    for method in known:
        try:
            TRAINERS[method]()
            out.append(method)
        except ImportError:
            logger.info("%s is not available; left out", method)
    return out


def _trained_tokens(run_dir: Path) -> int:
    rows = read_jsonl(run_dir / "metrics.jsonl", missing_ok=True)
    return int(sum(r.get("tokens", r.get("policy_tokens", 0)) or 0 for r in rows))


def _conditioned(policy: Policy, run_dir: Path, env_id: str,
                 env_kwargs: dict[str, Any]) -> Policy:
    """RCSFT's policy asked for the highest return of its data."""
    labels = json.loads((run_dir / "rcsft" / "labels.json").read_text())
    env = agentgym.make(env_id, split="eval", **env_kwargs)
    lengths = {len(t.prompt) for t in env.tasks}
    env.close()
    if len(lengths) != 1:
        raise ValueError(f"{env_id}'s eval prompts differ in length: cannot place the label")
    return ReturnConditionedPolicy(policy, labels["target_return"], lengths.pop())


def _evaluate(label: str, policy: Policy, env_id: str, out: Path, examples: int,
              max_tokens: int, env_kwargs: dict[str, Any]) -> tuple[float, float]:
    result = evaluate(env_id, label, policy=policy, out=out, num_examples=examples,
                      rollouts_per_example=1, temperature=0.0, max_tokens=max_tokens,
                      max_concurrent=16, seed=0, turn_timeout_s=900.0, env_kwargs=env_kwargs)
    return result.summary["mean_reward"], result.summary["ci95"]


def _config(method: str, run_name: str, env_id: str, steps: int, out: Path,
            overrides: dict[str, Any], env_kwargs: dict[str, Any]) -> Any:
    """``method``'s config: its YAML, then the env, the budget, the run folder, overrides."""
    config_cls, _ = TRAINERS[method]()
    path = CONFIG_DIR / CONFIGS.get(method, f"{method}.yaml")
    base = load_config(config_cls, path if path.exists() else None)
    return load_config(config_cls, path if path.exists() else None, {
        "env_id": env_id, "env_kwargs": {**base.env_kwargs, **env_kwargs}, "max_steps": steps,
        "save_steps": steps, "output_dir": str(out / "train"), "run_name": run_name,
        "report_to": [], **overrides})


CHAINS = ("sft_grpo", "sft_rft", "sft_dpo")
"""SFT on demonstrations for ``steps`` steps, then the named trainer for ``steps`` steps from
the SFT policy (LoRA merged; :mod:`agentgym.trainers.sft_grpo`)."""


def _train(method: str, env_id: str, steps: int, out: Path, overrides: dict[str, dict[str, Any]],
           env_kwargs: dict[str, Any]) -> tuple[Path, Any, float, int]:
    """Train ``method``; returns (its final run folder, that run's config, wall seconds,
    trained tokens; a chain's are both stages' together)."""
    if method in CHAINS:
        then = method.removeprefix("sft_")
        sft_config = _config("sft", f"{method}-sft", env_id, steps, out, overrides["sft"],
                             env_kwargs)
        then_config = _config(then, method, env_id, steps, out, overrides[then], env_kwargs)
        started = time.perf_counter()
        runs = sft_grpo.train(sft_config, then_config, out / "train" / f"{method}-policy",
                              trainer=TRAINERS[then]()[1])
        wall = time.perf_counter() - started
        tokens = sum(_trained_tokens(run) for run in (runs.sft_run, runs.grpo_run) if run)
        return runs.grpo_run, runs.grpo_config, wall, tokens
    config = _config(method, method, env_id, steps, out, overrides[method], env_kwargs)
    started = time.perf_counter()
    run_dir = Path(TRAINERS[method]()[1](config))
    return run_dir, config, time.perf_counter() - started, _trained_tokens(run_dir)


def _run_method(method: str, env_id: str, steps: int, out: Path,
                overrides: dict[str, dict[str, Any]], env_kwargs: dict[str, Any],
                eval_examples: int, eval_env_kwargs: dict[str, Any]) -> MethodResult:
    """Train and evaluate one method."""
    run_dir, config, train_s, tokens = _train(method, env_id, steps, out, overrides, env_kwargs)
    policy: Policy = trained_engine(run_dir, config)
    if method == "rcsft":
        policy = _conditioned(policy, run_dir, env_id, eval_env_kwargs)
    try:
        success, ci = _evaluate(f"{method}-{steps}", policy, env_id, out / "eval", eval_examples,
                                config.max_completion_length, eval_env_kwargs)
    finally:
        asyncio.run(policy.aclose())
    return MethodResult(method, success, ci, round(train_s, 1), tokens, str(run_dir))


def compare_methods(env_id: str = "agentgym/Calculator-v0", steps: int = 12,
                    methods: Sequence[str] | None = None, eval_examples: int = 50,
                    out: str | Path = "runs/compare", model: str = "smollm2",
                    engine: str = "hf", env_kwargs: dict[str, Any] | None = None,
                    eval_env_kwargs: dict[str, Any] | None = None, max_tokens: int = 48,
                    overrides: dict[str, dict[str, Any]] | None = None,
                    on_result: Callable[[MethodResult], None] | None = None,
                    resume: bool = False) -> list[MethodResult]:
    """Train and evaluate each method (see the module docstring); returns the rows and writes
    ``OUT/comparison.{md,json,png}``.

    Args:
        env_kwargs: merged into every method's training env arguments.
        eval_env_kwargs: the eval env's arguments (default: ``env_kwargs``).
        max_tokens: completion cap per turn of the base model's eval (trained methods use
            their config's ``max_completion_length``).
        overrides: method -> config fields to set (e.g. ``{"sft": {"batch_size": 4}}``);
            the key ``"*"`` applies to every trained method (e.g. ``{"device": "cuda"}``).
        resume: keep the finished rows of an earlier comparison in ``out`` (see above).
    """
    out = Path(out)
    env_kwargs = dict(env_kwargs or {})
    eval_env_kwargs = dict(env_kwargs if eval_env_kwargs is None else eval_env_kwargs)
    agentgym.spec(env_id)  # fail early on a typo
    done = _finished_rows(out, env_id, steps, eval_examples) if resume else {}
    rows: list[MethodResult] = []
    for method in methods or default_methods():
        try:
            if method in done:
                logger.info("%s: kept from %s", method, out / "comparison.json")
                row = done[method]
            elif method == "base":
                policy = base_engine(model)
                try:
                    success, ci = _evaluate("base", policy, env_id, out / "eval",
                                            eval_examples, max_tokens, eval_env_kwargs)
                finally:
                    asyncio.run(policy.aclose())
                row = MethodResult("base", success, ci)
            elif method not in TRAINERS and method not in CHAINS:
                raise ValueError(f"unknown method {method!r}; choose from base, "
                                 f"{', '.join(CHAINS)}, {', '.join(sorted(TRAINERS))}")
            else:
                given = overrides or {}
                fields = {name: {"model": model, "engine": engine, **given.get("*", {}),
                                 **given.get(name, {})}
                          for name in {method, "sft", method.removeprefix("sft_")}}
                row = _run_method(method, env_id, steps, out, fields, env_kwargs,
                                  eval_examples, eval_env_kwargs)
        except Exception as exc:  # one method's failure is its row, not the end of the table
            logger.exception("%s failed", method)
            row = MethodResult(method, error=f"{type(exc).__name__}: {exc}")
        rows.append(row)
        if on_result is not None:
            on_result(row)
        _write(rows, out, env_id, steps, eval_examples)
    return rows


def _finished_rows(out: Path, env_id: str, steps: int, examples: int,
                   ) -> dict[str, MethodResult]:
    """The error-free rows of ``out/comparison.json`` if it was made with the same env, steps
    and held-out tasks (else none: they would not be comparable)."""
    path = out / "comparison.json"
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    if (saved.get("env_id"), saved.get("steps"), saved.get("eval_examples")) != \
            (env_id, steps, examples):
        logger.warning("%s is from another setting; not resuming from it", path)
        return {}
    rows = (MethodResult(**row) for row in saved.get("rows", []))
    return {row.method: row for row in rows if row.error is None}


def format_table(rows: Sequence[MethodResult], env_id: str, steps: int, examples: int) -> str:
    """The markdown table."""
    lines = [f"{env_id}, {steps} optimiser steps per method, {examples} held-out tasks "
             "(greedy)", "",
             "| method | held-out success (95% CI) | train wall time | trained tokens |",
             "| --- | --- | --- | --- |"]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.method} | failed: {r.error[:80]} | | |")
            continue
        solved = round(r.success * examples)
        wall = "-" if r.method == "base" else f"{r.train_s / 60:.1f} min"
        lines.append(f"| {r.method} | {solved}/{examples} = {r.success:.2f} ± {r.ci95:.2f} | "
                     f"{wall} | {r.tokens} |")
    return "\n".join(lines) + "\n"


def _write(rows: Sequence[MethodResult], out: Path, env_id: str, steps: int,
           examples: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(format_table(rows, env_id, steps, examples))
    (out / "comparison.json").write_text(json.dumps(
        {"env_id": env_id, "steps": steps, "eval_examples": examples,
         "rows": [r.__dict__ for r in rows]}, indent=1, default=str))
    scored = [r for r in rows if r.error is None]
    if scored:
        try:
            plot_method_comparison([(r.method, r.success, r.ci95) for r in scored],
                                   out / "comparison.png",
                                   f"{env_id}: held-out success, {steps} steps")
        except ImportError as exc:
            logger.warning("no plot: %s", exc)
