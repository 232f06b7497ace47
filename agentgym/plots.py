"""``agentgym plot RUN_DIR``: the reward curve of a training run, as a PNG.

A training run writes ``metrics.jsonl``, one JSON object per line; the rows with a ``step`` and
a ``reward_mean`` are plotted (reward mean against step), with a +-1 std band where
``reward_std`` is present. Other rows (eval lines, timing lines) are ignored. matplotlib is an
optional dependency (``pip install 'agentgym[plot]'``), imported only here, only when called.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from agentgym.jsonl import read_jsonl

__all__ = ["plot_method_comparison", "plot_reward_curve", "read_reward_curve"]

logger = logging.getLogger(__name__)


def read_reward_curve(metrics_path: str | Path) -> list[dict[str, float]]:
    """The ``(step, reward_mean[, reward_std])`` rows of a metrics file, sorted by step.

    Raises:
        FileNotFoundError: no such file.
        ValueError: it holds no row with both ``step`` and ``reward_mean``.
    """
    path = Path(metrics_path)
    points: list[dict[str, float]] = []
    for row in read_jsonl(path):
        if not isinstance(row, dict) or row.get("step") is None \
                or row.get("reward_mean") is None:
            continue
        point = {"step": float(row["step"]), "reward_mean": float(row["reward_mean"])}
        if row.get("reward_std") is not None and math.isfinite(float(row["reward_std"])):
            point["reward_std"] = float(row["reward_std"])
        points.append(point)
    if not points:
        raise ValueError(f"{path} has no rows with both 'step' and 'reward_mean'")
    return sorted(points, key=lambda p: p["step"])


def plot_reward_curve(run_dir: str | Path, out: str | Path | None = None,
                      title: str | None = None) -> Path:
    """Draw ``RUN_DIR/metrics.jsonl`` as a reward curve and save it as a PNG.

    Args:
        run_dir: the training run folder (or a ``metrics.jsonl`` path).
        out: the PNG to write (default: ``RUN_DIR/reward_curve.png``).
        title: the plot title (default: the run folder's name).

    Returns:
        The path of the PNG.

    Raises:
        FileNotFoundError: no ``metrics.jsonl``.
        ValueError: no plottable rows.
        ImportError: matplotlib is not installed (the message says how to get it).
    """
    run = Path(run_dir)
    metrics = run if run.is_file() else run / "metrics.jsonl"
    folder = metrics.parent
    if not metrics.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {folder}")
    points = read_reward_curve(metrics)
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("agentgym plot needs matplotlib: pip install 'agentgym[plot]'") from exc
    steps = [p["step"] for p in points]
    means = [p["reward_mean"] for p in points]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    banded = [p for p in points if "reward_std" in p]
    if banded:
        axes.fill_between([p["step"] for p in banded],
                          [p["reward_mean"] - p["reward_std"] for p in banded],
                          [p["reward_mean"] + p["reward_std"] for p in banded],
                          alpha=0.25, label="± 1 std")
    axes.plot(steps, means, marker="o" if len(points) < 40 else None, label="reward mean")
    axes.set_xlabel("step")
    axes.set_ylabel("reward")
    axes.set_title(title or folder.name)
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    target = Path(out) if out is not None else folder / "reward_curve.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    plt.close(figure)
    logger.info("reward curve of %d points written to %s", len(points), target)
    return target


def plot_method_comparison(rows: list[tuple[str, float, float]], out: str | Path,
                           title: str = "held-out success") -> Path:
    """A bar per ``(method, success, ci95 half-width)`` with its 95 % CI as an error bar,
    saved as a PNG at ``out`` (``agentgym compare-methods``).

    Raises:
        ImportError: matplotlib is not installed (the message says how to get it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'agentgym[plot]'") from exc
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    names = [r[0] for r in rows]
    errors = [r[2] if math.isfinite(r[2]) else 0.0 for r in rows]
    axes.bar(names, [r[1] for r in rows], yerr=errors, capsize=6, alpha=0.8)
    axes.set_ylabel("held-out success (95% CI)")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    plt.close(figure)
    return target
