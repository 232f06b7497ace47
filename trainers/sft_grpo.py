"""SFT on demonstrations, then GRPO (or another trainer) from the SFT policy: the chain behind
``agentgym quickstart`` and the ``sft_grpo``, ``sft_rft`` and ``sft_dpo`` methods of ``agentgym
compare-methods``.

Three stages, each with its own output:

1. **SFT** (:mod:`agentgym.trainers.sft`, run folder ``sft_config.output_dir/run_name``):
   ``pi_SFT = argmin_theta -E_{(x, y) ~ D} sum_t log pi_theta(y_t | x, y_<t)`` on the
   demonstrations ``D`` (the loss on the assistant's tokens only);
2. **export** (:func:`agentgym.trainers.rlhf.export_policy`): pi_SFT's final weights as a plain
   Hugging Face folder (``policy``; LoRA merged into the base weights);
3. **GRPO** (:mod:`agentgym.trainers.grpo`, its own run folder) with ``model = policy``: fresh
   LoRA adapters on top of pi_SFT, trained with GRPO's clipped group-relative objective
   ``-E[min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps_high) A_i)]``,
   ``A_i = (r_i - mean(r)) / (std(r) + eps)`` over each task's group of episodes.

Without an SFT config the chain is GRPO alone, on the GRPO config's own model. ``trainer``
swaps GRPO in stage 3 for any trainer whose config has a ``model`` (RFT: rejection sampling
needs a policy that sometimes succeeds, which the untrained SmolLM2 on Calculator-v0 never
does; DPO: its online pairs need groups whose rewards differ).

``resume=True`` continues whichever stage was interrupted: a stage whose run reached its
``max_steps`` is not redone, an interrupted one continues from its newest checkpoint, and an
exported policy is reused (the export writes a temporary folder and renames it, so the folder
is either complete or absent); resuming with other step counts than a finished stage was
trained for is refused (its output is not the one asked for). ``resume=False`` starts every
stage anew (removing the stages' earlier outputs, which would otherwise mix into the new runs'
logs and checkpoints).

No deviation from the two trainers: each stage is the trainer unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentgym.trainers import grpo, sft
from agentgym.trainers.common import run_folder
from agentgym.trainers.rlhf import export_policy
from agentgym.trainers.runs import last_step

__all__ = ["ChainRuns", "train"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainRuns:
    """Where the chain's stages went (``sft_run`` and ``policy`` are None without SFT)."""

    sft_run: Path | None
    policy: Path | None
    grpo_run: Path
    """The last stage's run (GRPO's, or the ``trainer`` given)."""
    grpo_config: Any
    """The last stage's config as trained (its ``model`` is ``policy`` after SFT)."""


def train(sft_config: sft.SFTConfig | None, grpo_config: Any,
          policy: str | Path, resume: bool = False,
          on_stage: Callable[[str], None] | None = None,
          trainer: Callable[..., Path] = grpo.train) -> ChainRuns:
    """Run (or, with ``resume``, finish) SFT -> export to ``policy`` -> GRPO from it; with
    ``sft_config`` None, GRPO alone. Both configs need a ``run_name`` (a fixed run folder is
    what ``resume`` finds again). ``on_stage`` is called with ``"sft"`` and ``"grpo"`` as
    each stage begins (e.g. to print a header). ``trainer`` (with ``grpo_config`` its
    config) replaces GRPO as the last stage, e.g. ``rft.train`` with an RFT config."""
    announce = on_stage or (lambda name: None)
    grpo_run = _run_dir(grpo_config)
    sft_run = _run_dir(sft_config) if sft_config is not None else None
    policy = Path(policy)
    if not resume:
        for stale in (sft_run, policy, policy.with_name(policy.name + ".tmp"), grpo_run):
            if stale is not None and stale.exists():
                logger.info("starting anew: removing %s", stale)
                shutil.rmtree(stale)
    if sft_config is None or sft_run is None:
        announce("grpo")
        _run_stage(trainer, grpo_config, grpo_run)
        return ChainRuns(None, None, grpo_run, grpo_config)
    announce("sft")
    if (policy / "config.json").exists():
        _check_done(sft_run, sft_config.max_steps, "its exported policy")
        logger.info("reusing the exported SFT policy %s", policy)
    else:
        _run_stage(sft.train, sft_config, sft_run)
        export_policy(sft_run, policy)
    grpo_config = dataclasses.replace(grpo_config, model=str(policy))
    announce("grpo")
    _run_stage(trainer, grpo_config, grpo_run)
    return ChainRuns(sft_run, policy, grpo_run, grpo_config)


def _run_dir(config: Any) -> Path:
    if not config.run_name:
        raise ValueError("the chain needs each stage's run_name (its run folder must not "
                         "depend on the time it started)")
    return run_folder(config.output_dir, config.run_name, config.env_id)


def _run_stage(train_stage: Callable[..., Path], config: Any, run: Path) -> None:
    """Train ``config`` in ``run`` unless it already reached ``max_steps``; continue from the
    newest checkpoint if there is one (a folder without any is started again, cleanly)."""
    done = last_step(run)
    if done > config.max_steps:
        _check_done(run, config.max_steps, "it")
    if done == config.max_steps:
        logger.info("%s is complete (step %d): not redone", run, done)
        return
    if done == 0 and run.exists():
        shutil.rmtree(run)
    train_stage(config, resume=run if done else None)


def _check_done(run: Path, max_steps: int, what: str) -> None:
    """Refuse to resume onto a stage that was trained for another number of steps (its output
    would not be the one asked for)."""
    done = last_step(run)
    if done != max_steps:
        raise ValueError(f"cannot resume: {run} was trained for {done} steps, not {max_steps}, "
                         f"and {what} would be reused; run again without resume to start anew")
