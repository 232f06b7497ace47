"""Experiment trackers a run mirrors its metrics to: TensorBoard and Weights & Biases.

``metrics.jsonl`` in the run folder is always written; ``report_to`` in the config adds
trackers by name (TRL's field name and values): ``"tensorboard"`` (event files in the run
folder; the ``train`` extra installs it) and ``"wandb"`` (needs ``pip install wandb`` and a
login, or ``WANDB_MODE=offline``). Asking for one that is not installed is an error at start-up,
not a silently missing dashboard.

Resuming a run continues its trackers: TensorBoard purges the events after the checkpoint's
step, and W&B reattaches to the same run (its id is kept in ``RUN_DIR/wandb_id``).
"""

from __future__ import annotations

import importlib.util
import math
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["TRACKERS", "Tracker", "open_trackers", "scalars_of"]


class Tracker(Protocol):
    """Receives one metrics row per step."""

    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Scalars to ``events.out.tfevents.*`` in the run folder."""

    def __init__(self, run_path: Path, config: dict[str, Any], resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(str(run_path), purge_step=purge)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    """A W&B run named after the run folder, with the resolved config; resumable."""

    def __init__(self, run_path: Path, config: dict[str, Any], resume_step: int | None):
        import wandb

        id_file = run_path / "wandb_id"
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(6)  # W&B run ids: letters and digits
            id_file.write_text(run_id)
        self._run = wandb.init(project=config.get("wandb_project") or "agentgym",
                               name=run_path.name, id=run_id, resume="allow",
                               dir=str(run_path), config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self._run.log(scalars, step=step)

    def close(self) -> None:
        self._run.finish()


TRACKERS: dict[str, type] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
"""name (also the package it needs) -> tracker class."""


def open_trackers(report_to: Sequence[str], run_path: Path, config: dict[str, Any],
                  resume_step: int | None = None) -> list[Tracker]:
    """Start the trackers named in ``report_to`` (``resume_step``: the checkpoint resumed).

    Raises:
        ValueError: an unknown tracker name, or one whose package is not installed.
    """
    trackers: list[Tracker] = []
    for name in report_to:
        if name not in TRACKERS:
            raise ValueError(f"report_to: unknown tracker {name!r}; known: {sorted(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"report_to lists {name!r} but it is not installed: "
                             f"pip install {name}, or remove it from report_to")
        trackers.append(TRACKERS[name](run_path, config, resume_step))
    return trackers


def scalars_of(row: dict[str, Any]) -> dict[str, float]:
    """The finite numeric fields of a metrics row, without the step."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(float(v))}
