"""Fidelity of a tool simulator: how often its predicted tool results match the real ones.

Recorded trajectories hold real tool results. For every call the real tool answered (not the
malformed or rejected ones, whose answers the toolbox writes, not the tool), the simulator
predicts the result from the same inputs the simulated env would give it (the tool's schema,
the chat up to the assistant message that made the call, and the call), and the prediction is
compared with the recorded result:

* exact: the texts are equal;
* normalised: equal after :func:`normalise` (JSON re-serialised with sorted keys, case and
  whitespace folded), so ``{"a": 1}`` matches ``{ "a":1 }``.

The report gives the share of matches per tool and overall, each with a 95 % Wilson interval.
A failed prediction is counted under ``errors`` and left out of the shares (it is neither a
match nor a mismatch), and its row carries the error record.

    agentgym world-model fidelity agentgym/HttpAPI-v0 --trajectories demos.jsonl --engine hf
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agentgym.env import AgentEnv
from agentgym.errors import ErrorRecord
from agentgym.eval.calibration import wilson_interval
from agentgym.types import ToolCall, Trajectory
from agentgym.world_model.simulator import SimulatorError, ToolSimulator

__all__ = ["FidelityReport", "ToolFidelity", "fidelity", "normalise", "record_demonstrations",
           "recorded_calls"]

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """A tool result in canonical form: each line that is JSON re-serialised with sorted keys
    and no spaces, then lower-cased with runs of whitespace folded to one space."""
    lines = []
    for line in text.strip().splitlines():
        with contextlib.suppress(ValueError):  # not JSON: kept as text
            line = json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))
        lines.append(line)
    return _SPACE.sub(" ", "\n".join(lines)).strip().lower()


@dataclass(frozen=True)
class RecordedCall:
    """One real tool call of a trajectory and what it is predicted from."""

    task_id: str
    turn: int
    name: str
    arguments: Mapping[str, Any]
    history: tuple[Mapping[str, Any], ...]
    real: str


def recorded_calls(trajectory: Trajectory) -> list[RecordedCall]:
    """The calls of ``trajectory`` that a real tool answered, with their history (the chat up
    to and including the assistant message that made the call)."""
    assistant_at = [i for i, m in enumerate(trajectory.messages) if m.get("role") == "assistant"]
    calls = []
    for turn in trajectory.turns:
        if turn.index >= len(assistant_at):
            break
        history = tuple(trajectory.messages[: assistant_at[turn.index] + 1])
        for call, result in zip(turn.tool_calls, turn.tool_results, strict=False):
            if call.error is None and result.error_type is None:
                calls.append(RecordedCall(trajectory.task_id, turn.index, call.name,
                                          dict(call.arguments), history, result.content))
    return calls


@dataclass(frozen=True)
class ToolFidelity:
    """Match shares of one tool (or ``"all"``), with 95 % Wilson intervals.

    Attributes:
        tool: the tool name, or ``"all"``.
        n: predictions compared (failed ones excluded).
        exact, normalised: shares of matches.
        exact_ci, normalised_ci: their 95 % intervals ((nan, nan) when n is 0).
        errors: predictions that failed.
    """

    tool: str
    n: int
    exact: float
    exact_ci: tuple[float, float]
    normalised: float
    normalised_ci: tuple[float, float]
    errors: int

    @classmethod
    def of(cls, tool: str, rows: Sequence[Mapping[str, Any]]) -> ToolFidelity:
        scored = [r for r in rows if r["error"] is None]
        n, errors = len(scored), len(rows) - len(scored)
        exact = sum(r["exact"] for r in scored)
        loose = sum(r["normalised"] for r in scored)
        if n == 0:
            nan = float("nan")
            return cls(tool, 0, nan, (nan, nan), nan, (nan, nan), errors)
        return cls(tool, n, exact / n, wilson_interval(exact, n), loose / n,
                   wilson_interval(loose, n), errors)


@dataclass(frozen=True)
class FidelityReport:
    """Per-tool and overall fidelity, and one row per compared call."""

    per_tool: dict[str, ToolFidelity]
    overall: ToolFidelity
    rows: list[dict[str, Any]] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-able data (what ``--out`` writes)."""
        return {"overall": asdict(self.overall),
                "per_tool": {k: asdict(v) for k, v in self.per_tool.items()}, "rows": self.rows}


async def _predict(simulator: ToolSimulator, schema: Mapping[str, Any],
                   call: RecordedCall) -> dict[str, Any]:
    row: dict[str, Any] = {"task_id": call.task_id, "turn": call.turn, "tool": call.name,
                           "arguments": dict(call.arguments), "real": call.real}
    try:
        predicted = await simulator.predict(schema, ToolCall("fidelity", call.name,
                                                             call.arguments), call.history)
    except SimulatorError as exc:
        return {**row, "predicted": None, "exact": False, "normalised": False,
                "error": ErrorRecord.from_exception(exc).to_dict()}
    return {**row, "predicted": predicted, "exact": predicted.strip() == call.real.strip(),
            "normalised": normalise(predicted) == normalise(call.real), "error": None}


async def fidelity(env: AgentEnv, trajectories: Iterable[Trajectory], simulator: ToolSimulator,
                   *, limit: int | None = None) -> FidelityReport:
    """Replay the real tool calls of ``trajectories`` through ``simulator`` and compare.

    Args:
        env: an env of the trajectories' id and split (for each task's tool schemas).
        trajectories: recorded episodes (failed ones are skipped).
        simulator: the world model under test.
        limit: compare at most this many calls (the first ones, in file order).
    """
    tasks = {task.id: task for task in env.tasks}
    jobs = []
    for trajectory in trajectories:
        if trajectory.error is not None:
            continue
        task = tasks.get(trajectory.task_id)
        if task is None:
            raise ValueError(f"{env.env_id} ({env.split}) has no task {trajectory.task_id!r}: "
                             "give the split the trajectories were recorded on")
        schemas = {tool.name: tool.schema for tool in env.episode_tools(task)}
        for call in recorded_calls(trajectory):
            if call.name in schemas:
                jobs.append((schemas[call.name], call))
    jobs = jobs[:limit] if limit is not None else jobs
    if not jobs:
        raise ValueError("the trajectories have no tool call that a real tool answered")
    rows = list(await asyncio.gather(*(_predict(simulator, s, c) for s, c in jobs)))
    names = sorted({r["tool"] for r in rows})
    return FidelityReport({n: ToolFidelity.of(n, [r for r in rows if r["tool"] == n])
                           for n in names}, ToolFidelity.of("all", rows), rows)


async def record_demonstrations(env: AgentEnv, count: int) -> list[Trajectory]:
    """Trajectories with real tool results: the env's reference solutions
    (:meth:`~agentgym.env.AgentEnv.demonstrate`) of its first ``count`` tasks, played through
    the real env (an oracle policy), for measuring fidelity without a trained model.

    Raises:
        ValueError: the env has no demonstrations.
    """
    trajectories = []
    for task in env.tasks[:count]:
        chat = env.demonstrate(task)
        if chat is None:
            raise ValueError(f"{env.env_id} has no demonstrations: record trajectories with "
                             "'agentgym eval' (results.jsonl) instead")
        obs, _ = await env.areset(options={"task_id": task.id})
        for message in [m for m in chat[len(obs):] if m.get("role") == "assistant"]:
            _, _, terminated, truncated, _ = await env.astep(dict(message))
            if terminated or truncated:
                break
        trajectory = env.trajectory() or await env.atruncate()
        trajectories.append(trajectory)
    return trajectories
