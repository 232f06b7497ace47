"""The leaderboard's columns: what each entry shows and how it sorts (shared by markdown, HTML)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COLUMNS", "cells", "families", "fmt", "sort_value"]

COLUMNS: tuple[tuple[str, str], ...] = (
    ("env", "Env"), ("model", "Model"), ("settings", "Settings"), ("runs", "Runs"),
    ("rollouts", "Rollouts"), ("mean", "Mean reward ± 95% CI"), ("pass1", "pass@1"),
    ("passk", "pass@k"), ("passhatk", "pass^k"), ("validity", "Tool-call validity"),
    ("error_rate", "Error rate"), ("tokens", "Tokens / rollout"), ("time", "Wall time (s)"),
)
"""(key, header) of every table column, in order."""


def sort_value(value: Any) -> float:
    """A sortable number: None and NaN become -inf."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -math.inf
    return float(value)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def cells(entry: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """(display text, sort value) of every column for one entry."""
    s = entry["summary"]
    k = str(entry["k"])
    mean, ci = s["mean_reward"], s["ci95"]
    mean_text = fmt(mean) + ("" if ci is None or math.isnan(ci) else f" ± {fmt(ci)}")
    return {
        "env": (entry["env_id"], entry["env_id"]), "model": (entry["model"], entry["model"]),
        "settings": (entry["settings_label"], entry["settings_label"]),
        "runs": (str(entry["runs"]), entry["runs"]),
        "rollouts": (str(s["rollouts"]), s["rollouts"]),
        "mean": (mean_text, mean),
        "pass1": (fmt(s["pass_at_k"].get("1")), s["pass_at_k"].get("1")),
        "passk": (f"{fmt(s['pass_at_k'].get(k))} (k={k})", s["pass_at_k"].get(k)),
        "passhatk": (f"{fmt(s['pass_hat_k'].get(k))} (k={k})", s["pass_hat_k"].get(k)),
        "validity": (fmt(s["tool_call_validity"]), s["tool_call_validity"]),
        "error_rate": (fmt(s["error_rate"]), s["error_rate"]),
        "tokens": (fmt(s["tokens_per_rollout"], 1), s["tokens_per_rollout"]),
        "time": (fmt(entry["wall_time_s"], 1), entry["wall_time_s"]),
    }


def families(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Entries grouped by env family (``math``, ``api``, ``code``...), families sorted by name."""
    grouped: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for entry in entries:
        grouped[str(entry["env_family"])].append(entry)
    return dict(sorted(grouped.items()))
