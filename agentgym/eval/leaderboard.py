"""``agentgym leaderboard``: every finished eval run under a folder, as markdown and a web page.

Runs are read from ``RUNS/**/metadata.json`` (+ ``results.jsonl`` beside it; unfinished runs are
skipped: resume them first). They are grouped into entries keyed by (env id, env version,
model, comparable settings): runs of one entry -- e.g. the same eval repeated with another seed --
are pooled (their rollouts of a task are samples of that task); runs that differ in split,
number of tasks, K, sampling, pass threshold or env options are separate entries, never averaged
together. Every number is recomputed from the rows by :func:`agentgym.eval.stats.summarize`.

Output (``OUT/``):

* ``leaderboard.md`` -- README-style: an overall table, then one table per env family.
* ``index.html`` -- one self-contained page (inline CSS, JS and SVG; nothing loaded from the
  network when viewed): the same tables, sortable by clicking a header, and a plot of the mean
  rewards with their 95 % intervals.
* ``leaderboard.json`` -- the entries as data.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentgym.eval.leaderboard_html import render_html
from agentgym.eval.runs import jsonable, read_metadata, read_results
from agentgym.eval.stats import summarize
from agentgym.eval.table import COLUMNS, cells, families, sort_value

__all__ = ["COLUMNS", "cells", "collect_entries", "families", "render_html", "render_markdown",
           "write_leaderboard"]

logger = logging.getLogger(__name__)

_IDENTITY = ("split", "rollouts_per_example", "temperature", "top_p", "max_tokens",
             "pass_threshold", "env_kwargs")



def _settings_label(settings: Mapping[str, Any], tasks: int) -> str:
    parts = [str(settings.get("split")), f"{tasks} tasks",
             f"K={settings.get('rollouts_per_example')}", f"T={settings.get('temperature'):g}",
             f"max_tokens={settings.get('max_tokens')}"]
    if settings.get("top_p", 1.0) != 1.0:
        parts.append(f"top_p={settings['top_p']:g}")
    if settings.get("pass_threshold", 1.0) != 1.0:
        parts.append(f"pass>={settings['pass_threshold']:g}")
    if settings.get("env_kwargs"):
        parts.append(json.dumps(settings["env_kwargs"], sort_keys=True))
    return ", ".join(parts)


def _finished_runs(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    runs = []
    for path in sorted(runs_dir.rglob("metadata.json")):
        try:
            metadata = read_metadata(path.parent)
        except (OSError, ValueError) as exc:
            logger.warning("skipping %s: unreadable metadata (%s)", path.parent, exc)
            continue
        if metadata.get("status") != "finished":
            logger.info("skipping unfinished run %s (agentgym eval --resume finishes it)",
                        path.parent)
            continue
        runs.append((path.parent, metadata))
    return runs


def collect_entries(runs_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per (env id + version, model, comparable settings), from finished runs.

    Returns:
        Entries sorted by env id, then mean reward (best first). Each has ``env_id``,
        ``env_name``, ``env_version``, ``env_family``, ``model``, ``settings``,
        ``settings_label``, ``k``, ``runs``, ``run_dirs``, ``summary`` and ``wall_time_s``.
    """
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = defaultdict(list)
    for run_dir, metadata in _finished_runs(Path(runs_dir)):
        settings = metadata.get("settings", {})
        identity = {k: settings.get(k) for k in _IDENTITY}
        key = json.dumps([metadata["env_id"], metadata.get("env_version"), metadata["model"],
                          identity, metadata.get("counts", {}).get("tasks")], sort_keys=True)
        groups[key].append((run_dir, metadata))
    entries = []
    for members in groups.values():
        first = members[0][1]
        k = int(first["settings"]["rollouts_per_example"])
        rows = [row for run_dir, _ in members for row in read_results(run_dir)]
        tasks = int(first.get("counts", {}).get("tasks") or len({r["task_id"] for r in rows}))
        entries.append({
            "env_id": first["env_id"], "env_name": first.get("env_name", first["env_id"]),
            "env_version": first.get("env_version"), "env_family": first.get("env_family", "other"),
            "model": first["model"], "settings": first["settings"],
            "settings_label": _settings_label(first["settings"], tasks), "k": k,
            "runs": len(members), "run_dirs": [str(d) for d, _ in members],
            "summary": summarize(rows, k_max=k),
            "wall_time_s": sum(float(m.get("wall_time_s") or 0.0) for _, m in members),
        })
    entries.sort(key=lambda e: (e["env_id"], -sort_value(e["summary"]["mean_reward"]), e["model"]))
    return entries


def _md_table(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "| " + " | ".join("---" if key in ("env", "model", "settings") else "---:"
                               for key, _ in COLUMNS) + " |"]
    for entry in entries:
        row = cells(entry)
        lines.append("| " + " | ".join(row[key][0].replace("|", "\\|") for key, _ in COLUMNS)
                     + " |")
    return lines


def render_markdown(entries: Sequence[Mapping[str, Any]]) -> str:
    """The README-style leaderboard: an overall table, then one table per env family."""
    lines = ["# agentgym leaderboard", "",
             "Mean reward over tasks with a 95 % Student-t interval (the task is the unit); "
             "pass@k is the unbiased estimator of Chen et al. (2021), pass^k the chance that k "
             "samples all pass; failed rollouts count in the error rate, never as a score of 0. "
             "Rows with different settings are separate entries.", "", "## Overall", ""]
    lines += _md_table(entries) if entries else ["No finished runs found."]
    for family, members in families(entries).items():
        lines += ["", f"## {family}", ""] + _md_table(members)
    return "\n".join(lines) + "\n"


def write_leaderboard(runs_dir: str | Path = "runs/eval",
                      out_dir: str | Path = "leaderboard") -> dict[str, Path]:
    """Collect the runs under ``runs_dir`` and write the leaderboard files to ``out_dir``.

    Returns:
        ``{"markdown": ..., "html": ..., "json": ...}`` paths.

    Raises:
        FileNotFoundError: ``runs_dir`` does not exist.
    """
    runs = Path(runs_dir)
    if not runs.is_dir():
        raise FileNotFoundError(f"no eval runs folder at {runs} (run agentgym eval first)")
    entries = collect_entries(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "leaderboard.md", "html": out / "index.html",
             "json": out / "leaderboard.json"}
    paths["markdown"].write_text(render_markdown(entries), encoding="utf-8")
    paths["html"].write_text(render_html(entries), encoding="utf-8")
    paths["json"].write_text(json.dumps(jsonable(entries), indent=2, allow_nan=False) + "\n",
                             encoding="utf-8")
    logger.info("leaderboard of %d entries written to %s", len(entries), out)
    return paths

