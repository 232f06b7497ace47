"""Trajectories as JSON Lines: stream them out, read them back, score them again offline.

One line per trajectory, each carrying ``schema_version``; readers refuse versions they do not
know rather than guessing. Writing flushes every line, so a crashed run keeps what it finished.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from agentgym.errors import AgentGymError, ErrorRecord
from agentgym.jsonl import iter_jsonl
from agentgym.types import ToolCall, ToolResult, Trajectory, Turn

__all__ = ["SCHEMA_VERSION", "TrajectoryWriter", "from_json", "read_trajectories", "rescore",
           "to_json"]

SCHEMA_VERSION = 1


def to_json(trajectory: Trajectory) -> dict[str, Any]:
    """A JSON-able dict of ``trajectory`` (with ``schema_version``)."""
    return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(trajectory)}


def _turn(data: Mapping[str, Any]) -> Turn:
    return Turn(
        index=data["index"], assistant=data["assistant"],
        tool_calls=tuple(ToolCall(**c) for c in data["tool_calls"]),
        tool_results=tuple(ToolResult(**r) for r in data["tool_results"]),
        prompt_token_ids=tuple(data["prompt_token_ids"]),
        completion_token_ids=tuple(data["completion_token_ids"]),
        logprobs=tuple(data["logprobs"]), weight_version=data["weight_version"])


def from_json(data: Mapping[str, Any]) -> Trajectory:
    """Rebuild a Trajectory from :func:`to_json` output.

    Raises:
        ValueError: the line has an unknown ``schema_version``.
    """
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"trajectory schema_version {version!r} is not supported "
                         f"(this agentgym reads version {SCHEMA_VERSION})")
    fields = {k: v for k, v in data.items() if k != "schema_version"}
    fields["messages"] = tuple(fields["messages"])
    fields["turns"] = tuple(_turn(t) for t in fields["turns"])
    fields["turn_rewards"] = tuple(fields.get("turn_rewards", ()))
    if fields.get("error") is not None:  # lines written before status_code existed load too
        fields["error"] = ErrorRecord.from_dict(fields["error"])
    return Trajectory(**fields)


class TrajectoryWriter:
    """Appends trajectories to a JSONL file, one flushed line each (thread-safe).

    Args:
        path: the file; parent folders are created; an existing file is appended to.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self.count = 0

    def write(self, trajectory: Trajectory) -> None:
        """Append one trajectory."""
        line = json.dumps(to_json(trajectory), ensure_ascii=False, allow_nan=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            self.count += 1

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Yield the trajectories of a JSONL file (a torn last line from a crash is skipped)."""
    for _, data in iter_jsonl(path):
        yield from_json(data)


async def rescore(trajectories: Sequence[Trajectory], env: Any) -> list[Trajectory]:
    """Score trajectories again with ``env``'s current rubric (e.g. after a reward fix).

    Failed trajectories (``error`` set) are returned unchanged; a scoring failure marks the
    trajectory with the error instead of a reward.
    """
    tasks = {t.id: t for t in env.tasks}
    out = []
    for trajectory in trajectories:
        if trajectory.error is not None:
            out.append(trajectory)
            continue
        try:
            score = await env.rubric.score(trajectory, tasks[trajectory.task_id])
        except AgentGymError as exc:
            out.append(dataclasses.replace(trajectory, reward=None, reward_components={},
                                           turn_rewards=(), error=ErrorRecord.from_exception(exc)))
            continue
        out.append(dataclasses.replace(trajectory, reward=score.reward,
                                       reward_components=dict(score.components),
                                       turn_rewards=score.turn_rewards))
    return out
