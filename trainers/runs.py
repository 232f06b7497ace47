"""A training run's folder: resolved config, metrics, samples, checkpoints, resume.

::

    RUN_DIR/
      config.yaml            the resolved config
      metrics.jsonl          one row per step
      samples.jsonl          a few trajectories per step (agentgym trajectory JSONL)
      events.out.tfevents.*  TensorBoard (``report_to``; see trackers.py), wandb/ likewise
      checkpoints/step_N/    model or adapter, optimizer.pt, scheduler.pt, rng.pt, state.json
                             (+ <name>.pt per extra state, e.g. PPO's value_head.pt)

A checkpoint holds everything needed to continue exactly: weights, optimizer and scheduler
state, every RNG (python, numpy, torch's CPU generator and, when CUDA is in use, every CUDA
device's generator, the task sampler) and the step, so a run killed and resumed on the same
device reaches the same state as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from agentgym.jsonl import append_jsonl, iter_jsonl, read_jsonl, rewrite_jsonl
from agentgym.trainers.trackers import Tracker, open_trackers, scalars_of
from agentgym.trajectory_io import to_json
from agentgym.types import Trajectory

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

__all__ = ["RunDir", "last_step", "rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)


PAUSE_AFTER_CHECKPOINT = "AGENTGYM_PAUSE_AFTER_CHECKPOINT"
"""Fault injection for kill-and-resume tests: with this variable set to N, a run stops (sleeps)
right after its step-N checkpoint is complete, so that the test's SIGKILL lands exactly there
however busy the machine is (polling for the checkpoint alone races fast steps)."""


def pause_for_crash_test(step: int) -> None:
    """Sleep for good once the step named by ``$AGENTGYM_PAUSE_AFTER_CHECKPOINT`` is saved."""
    if os.environ.get(PAUSE_AFTER_CHECKPOINT) == str(step):
        logger.warning("%s=%d: pausing for the test's kill", PAUSE_AFTER_CHECKPOINT, step)
        while True:
            time.sleep(60)


class RunDir:
    """Reads and writes one run folder.

    Args:
        path: the folder (created if missing).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._trackers: list[Tracker] = []

    def open_trackers(self, report_to: Sequence[str], config: dict[str, Any],
                      resume_step: int | None = None) -> None:
        """Mirror metrics to the trackers named in ``report_to`` from now on."""
        self._trackers = open_trackers(report_to, self.path, config, resume_step)

    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one step's metrics (and mirror its scalars to the trackers)."""
        append_jsonl(self.path / "metrics.jsonl", [row])
        if self._trackers:
            scalars = scalars_of(row)
            for tracker in self._trackers:
                tracker.log(scalars, int(row["step"]))

    def log_samples(self, step: int, trajectories: list[Trajectory]) -> None:
        append_jsonl(self.path / "samples.jsonl",
                     ({"step": step, **to_json(t)} for t in trajectories))

    def metrics(self) -> list[dict[str, Any]]:
        """Every logged row."""
        return read_jsonl(self.path / "metrics.jsonl", missing_ok=True)

    def truncate_to(self, step: int) -> None:
        """Drop log rows after ``step`` (a resumed run redoes them)."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.path / name
            if path.exists():
                rewrite_jsonl(path, [line for line, row in iter_jsonl(path)
                                     if row["step"] <= step])

    # --- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: LRScheduler, task_rng: np.random.Generator, keep: int = 2,
                        extra: dict[str, Any] | None = None) -> Path:
        """Write ``checkpoints/step_<step>/`` atomically and keep the newest ``keep``.

        ``model`` is saved with its ``save_pretrained`` (a transformers or peft model).

        ``extra`` maps a name to a picklable state (e.g. a module's ``state_dict()``), saved
        as ``<name>.pt`` inside the same atomic folder.
        """
        final = self.path / "checkpoints" / f"step_{step}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp / "model"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({**rng_state(), "tasks": task_rng.bit_generator.state}, tmp / "rng.pt")
        for name, state in (extra or {}).items():
            torch.save(state, tmp / f"{name}.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        pause_for_crash_test(step)
        return final

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        folder = self.path / "checkpoints"
        if not folder.exists():
            return []
        done = [p for p in folder.iterdir() if p.is_dir() and (p / "state.json").exists()
                and not p.name.endswith(".tmp")]
        return sorted(done, key=lambda p: int(p.name.split("_")[1]))

    def load_checkpoint(self, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
                        task_rng: np.random.Generator) -> tuple[int, Path]:
        """Restore optimizer, scheduler and RNGs from the newest checkpoint.

        Returns:
            (its step, the folder of its saved model) -- the caller loads the weights.
        """
        latest = self.checkpoints()[-1]
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=False))
        rng = torch.load(latest / "rng.pt", weights_only=False)
        set_rng_state(rng, source=latest)
        task_rng.bit_generator.state = rng["tasks"]
        step = json.loads((latest / "state.json").read_text())["step"]
        return step, latest / "model"

    def close(self) -> None:
        """Close the trackers (the files need no closing)."""
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []


def last_step(run: str | Path) -> int:
    """The step of the newest complete checkpoint of the run folder ``run`` (0: none, or no
    run yet); what a chain of stages compares with a stage's ``max_steps`` to skip or resume
    it."""
    if not Path(run).exists():
        return 0
    checkpoints = RunDir(run).checkpoints()
    return int(checkpoints[-1].name.removeprefix("step_")) if checkpoints else 0


def rng_state() -> dict[str, Any]:
    """This process's global RNG states: python, numpy, torch's CPU generator, and every CUDA
    device's generator (None when CUDA was never initialised: nothing drew from it)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, Any], source: object = "the checkpoint") -> None:
    """Restore what :func:`rng_state` returned (CUDA states need a GPU; without one the run
    continues, not bit-exactly, and says so)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    elif state.get("cuda") is not None:
        logger.warning("%s was saved on CUDA; resuming without a GPU continues the run, "
                       "but not bit-exactly", source)
