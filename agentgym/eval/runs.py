"""The on-disk layout of eval runs, shared by ``agentgym eval`` and ``agentgym leaderboard``.

One run is one folder::

    OUT/<env id, "/" -> "_">--<model, sanitised>/<UTC timestamp>/
        metadata.json      who, what, how: env id + version, model, endpoint, settings, versions,
                           start/end times, status ("running" or "finished"), counts, summary
        results.jsonl      one row per rollout (see :func:`result_row`)
        trajectories.jsonl the full trajectories (:mod:`agentgym.trajectory_io`), for rescoring

``results.jsonl`` is the source of truth: every number the summary and the leaderboard show is
recomputed from it. Rows of one task are written together once the task's whole group of K
rollouts is done, so an interrupted run holds only complete groups; :func:`reconcile` trims a
torn tail (a crash mid-write) from both files before a resume appends to them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentgym.env import estimate_tokens
from agentgym.jsonl import iter_jsonl, read_jsonl, rewrite_jsonl
from agentgym.types import Trajectory

__all__ = ["RESULT_SCHEMA_VERSION", "ResultsWriter", "find_unfinished_run", "jsonable",
           "new_run_dir", "read_metadata", "read_results", "reconcile", "result_row",
           "run_key", "write_metadata"]

logger = logging.getLogger(__name__)

RESULT_SCHEMA_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Tool-call errors that make a call invalid (the model's fault in the call itself). A tool that
# raised or timed out on a well-formed call is not an invalid call.
INVALID_CALL_ERRORS = frozenset({"ToolParseError", "UnknownToolError", "ToolArgumentError"})


def run_key(env_id: str, model: str) -> str:
    """The folder name of an (env, model) pair: ``agentgym_Calculator-v0--my-model``."""
    name = Path(model).name if Path(model).is_absolute() else model  # local checkpoint: its name
    model_part = _UNSAFE.sub("_", name).strip("_")
    return f"{_UNSAFE.sub('_', env_id)}--{model_part or 'model'}"


def new_run_dir(out: str | Path, env_id: str, model: str) -> Path:
    """Create and return a fresh ``OUT/<key>/<timestamp>`` folder (suffixed if taken)."""
    parent = Path(out) / run_key(env_id, model)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free run folder under {parent}")


def find_unfinished_run(out: str | Path, env_id: str, model: str) -> Path | None:
    """The newest run folder of (env, model) whose metadata says it did not finish."""
    parent = Path(out) / run_key(env_id, model)
    if not parent.is_dir():
        return None
    for folder in sorted((p for p in parent.iterdir() if p.is_dir()), reverse=True):
        try:
            metadata = read_metadata(folder)
        except (OSError, ValueError):
            continue
        if (metadata.get("status") != "finished" and metadata.get("env_id") == env_id
                and metadata.get("model") == model):
            return folder
    return None


def jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_metadata(run_dir: Path, metadata: Mapping[str, Any]) -> None:
    """Write ``metadata.json`` atomically (a crash never leaves half a file)."""
    tmp = run_dir / "metadata.json.tmp"
    tmp.write_text(json.dumps(jsonable(metadata), indent=2, allow_nan=False) + "\n",
                   encoding="utf-8")
    tmp.replace(run_dir / "metadata.json")


def read_metadata(run_dir: Path) -> dict[str, Any]:
    """Read ``metadata.json`` of a run folder."""
    return json.loads((run_dir / "metadata.json").read_text(encoding="utf-8"))


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``results.jsonl`` (a torn last line from a crash is skipped)."""
    return read_jsonl(run_dir / "results.jsonl", missing_ok=True)


def reconcile(run_dir: Path, group_size: int) -> set[str]:
    """Keep only complete groups in both JSONL files; return the ids of those tasks.

    A task is complete when ``results.jsonl`` holds all ``group_size`` of its sample indices.
    Rows and trajectories of other tasks (a crash mid-group) are removed, so a resume plays
    those tasks again and never duplicates a rollout.
    """
    samples: dict[str, set[int]] = {}
    for row in read_results(run_dir):
        samples.setdefault(str(row["task_id"]), set()).add(int(row["sample_index"]))
    done = {t for t, s in samples.items() if s == set(range(group_size))}
    _filter_lines(run_dir / "results.jsonl", done, group_size)
    _filter_lines(run_dir / "trajectories.jsonl", done, group_size)
    return done


def _filter_lines(path: Path, done: set[str], group_size: int) -> None:
    if not path.exists():
        return
    kept: list[str] = []
    seen: Counter[str] = Counter()
    for line, data in iter_jsonl(path):
        task = str(data.get("task_id"))
        if task in done and seen[task] < group_size:
            seen[task] += 1
            kept.append(line)
    rewrite_jsonl(path, kept)


def _token_counts(trajectory: Trajectory) -> tuple[int, int, bool]:
    """(prompt tokens, completion tokens, exact?) summed over the turns of a trajectory.

    Exact when the policy reported token ids; otherwise estimated from the text (4 characters
    a token), the prompt of each turn being every message before that assistant message.
    """
    turns = trajectory.turns
    if turns and all(t.completion_token_ids for t in turns):
        prompt = sum(len(t.prompt_token_ids) for t in turns)
        completion = sum(len(t.completion_token_ids) for t in turns)
        if all(t.prompt_token_ids for t in turns):
            return prompt, completion, True
    prompt = completion = 0
    chars = 0
    for message in trajectory.messages:
        text = (message.get("content") or "") + json.dumps(message.get("tool_calls") or "")
        if message.get("role") == "assistant":
            prompt += estimate_tokens("x" * chars) if chars else 0
            completion += estimate_tokens(text)
        chars += len(text)
    return prompt, completion, False


def result_row(trajectory: Trajectory, sample_index: int, latency_s: float | None,
               pass_threshold: float) -> dict[str, Any]:
    """One ``results.jsonl`` row for a finished (or failed) rollout.

    ``passed`` is None for a failed rollout: it was not scored, so it neither passes nor fails.
    """
    calls = [c for turn in trajectory.turns for c in turn.tool_calls]
    invalid = sum(
        1 for turn in trajectory.turns
        for call, result in zip(turn.tool_calls, turn.tool_results, strict=False)
        if call.error is not None or result.error_type in INVALID_CALL_ERRORS)
    prompt, completion, exact = _token_counts(trajectory)
    error = trajectory.error
    reward = None if error is not None or trajectory.reward is None else float(trajectory.reward)
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "task_id": trajectory.task_id, "env_id": trajectory.env_id, "sample_index": sample_index,
        "reward": reward, "reward_components": jsonable(dict(trajectory.reward_components)),
        "passed": None if reward is None else reward >= pass_threshold,
        "turns": len(trajectory.turns), "tool_calls": len(calls), "invalid_tool_calls": invalid,
        "prompt_tokens": prompt, "completion_tokens": completion, "tokens_exact": exact,
        "latency_s": None if latency_s is None else round(latency_s, 4),
        "terminated": trajectory.terminated, "truncated": trajectory.truncated,
        "error": None if error is None else error.type,
        "error_blame": None if error is None else error.blame,
        "error_message": None if error is None else error.message[:500],
    }


class ResultsWriter:
    """Appends result rows to ``results.jsonl``, one flushed line each."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def write_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows (one group's) and flush."""
        self._file.write("".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in rows))
        self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._file.closed:
            self._file.close()
