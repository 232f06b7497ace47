"""Accuracy and calibration of an eval run whose rollouts carry a confidence.

A run that was scored with a self-feedback term (``answer_confidence``: the geometric-mean
probability of the final reply's tokens, or a self-evaluation's share of "Yes") records that
term in each row's ``reward_components`` next to the correctness term (``correct`` for the
math envs). :func:`calibration_summary` turns those rows into

* ``accuracy`` with a Wilson score 95 % interval (sound near 0 and 1, where the normal
  approximation collapses to a zero-width interval),
* ``ece`` (expected calibration error, equal-width bins) and ``brier`` (mean squared error of
  the confidence against the 0/1 outcome), each with a percentile-bootstrap 95 % interval
  over rollouts (seeded, so a report is reproducible).

The metrics themselves are :func:`agentgym.rewards.self_feedback.calibration`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from agentgym.rewards.self_feedback import calibration

__all__ = ["bootstrap_ci", "calibration_summary", "confidence_pairs", "wilson_interval"]

Z_95 = 1.959963984540054
"""The two-sided 95 % standard-normal quantile."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``successes / n``.

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside ``[0, n]``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(confidences: Sequence[float], correct: Sequence[bool], metric: str,
                 resamples: int = 1000, seed: int = 0, bins: int = 10) -> tuple[float, float]:
    """Percentile-bootstrap 95 % interval of a :func:`calibration` metric (``ece``, ``brier``).

    Rollouts are resampled with replacement ``resamples`` times with a seeded RNG.
    """
    rng = random.Random(seed)
    n = len(confidences)
    values = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        values.append(calibration([confidences[i] for i in picks], [correct[i] for i in picks],
                                  bins)[metric])
    values.sort()
    return values[int(0.025 * (resamples - 1))], values[int(math.ceil(0.975 * (resamples - 1)))]


def confidence_pairs(rows: Sequence[Mapping[str, Any]], confidence_key: str,
                     correct_key: str, threshold: float = 1.0) -> tuple[list[float], list[bool]]:
    """(confidences, outcomes) of the scored rows that carry both reward components.

    A row is correct when its ``correct_key`` component is ``>= threshold``; failed rollouts
    (an ``error``) and rows without either component are left out, never counted as wrong.
    """
    confidences: list[float] = []
    outcomes: list[bool] = []
    for row in rows:
        components = row.get("reward_components") or {}
        if row.get("error") is not None or confidence_key not in components \
                or correct_key not in components:
            continue
        confidence, outcome = components[confidence_key], components[correct_key]
        if confidence is None or outcome is None:
            continue
        confidences.append(float(confidence))
        outcomes.append(float(outcome) >= threshold)
    return confidences, outcomes


def calibration_summary(rows: Sequence[Mapping[str, Any]], confidence_key: str = "confidence",
                        correct_key: str = "correct", bins: int = 10, resamples: int = 1000,
                        seed: int = 0, threshold: float = 1.0) -> dict[str, Any] | None:
    """Accuracy (Wilson 95 %) and ECE / Brier (bootstrap 95 %) of ``rows``; None when no row
    carries both the confidence and the correctness component."""
    confidences, outcomes = confidence_pairs(rows, confidence_key, correct_key, threshold)
    if not confidences:
        return None
    metrics = calibration(confidences, outcomes, bins)
    n, hits = len(outcomes), sum(outcomes)
    return {
        "n": n, "confidence_key": confidence_key, "correct_key": correct_key, "bins": bins,
        "accuracy": hits / n, "accuracy_ci95": wilson_interval(hits, n),
        "mean_confidence": metrics["mean_confidence"],
        "ece": metrics["ece"], "ece_ci95": bootstrap_ci(confidences, outcomes, "ece",
                                                        resamples, seed, bins),
        "brier": metrics["brier"], "brier_ci95": bootstrap_ci(confidences, outcomes, "brier",
                                                              resamples, seed, bins),
    }
