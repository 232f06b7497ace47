"""``agentgym world-model ...``: the tool simulator's fidelity from the command line."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agentgym.errors import AgentGymError
from agentgym.registry import make
from agentgym.trajectory_io import TrajectoryWriter, read_trajectories
from agentgym.world_model.fidelity import FidelityReport, fidelity, record_demonstrations
from agentgym.world_model.simulator import ToolSimulator

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="An LLM as a world model of the tools: simulate them, measure fidelity.")


@app.callback()
def world_model() -> None:
    """An LLM as a world model of the tools: simulate them, measure their fidelity."""


def _share(value: float, ci: tuple[float, float]) -> str:
    return "-" if math.isnan(value) else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def print_report(report: FidelityReport, title: str) -> None:
    """The fidelity table: one row per tool and one for all, shares with 95 % intervals."""
    table = Table(title=title, title_justify="left")
    for column in ("tool", "n", "exact [95% CI]", "normalised [95% CI]", "errors"):
        table.add_column(column, justify="left" if column == "tool" else "right")
    for row in [*report.per_tool.values(), report.overall]:
        table.add_row(row.tool, str(row.n), _share(row.exact, row.exact_ci),
                      _share(row.normalised, row.normalised_ci), str(row.errors))
    Console().print(table)


@app.command("fidelity")
def fidelity_command(
    env_id: Annotated[str, typer.Argument(help="the env the trajectories were recorded on")],
    trajectories: Annotated[Path, typer.Option(
        help="a JSONL file of trajectories (TrajectoryWriter output) with real tool results")],
    base_url: Annotated[str | None, typer.Option(
        help="the simulator's OpenAI-compatible API root (.../v1)")] = None,
    model: Annotated[str | None, typer.Option(
        help="the simulator's served model name (with --engine hf: a local folder; default "
             "SmolLM2)")] = None,
    engine: Annotated[str | None, typer.Option(help="hf: the embedded engine")] = None,
    split: Annotated[str, typer.Option(help="the split the trajectories come from")] = "train",
    limit: Annotated[int | None, typer.Option(help="compare at most N calls")] = None,
    max_tokens: Annotated[int, typer.Option(help="prediction length cap")] = 256,
    max_concurrent: Annotated[int, typer.Option(help="predictions in flight")] = 4,
    timeout: Annotated[float, typer.Option(help="seconds per prediction (the embedded engine "
                                                "on a busy CPU is slow)")] = 600.0,
    out: Annotated[Path | None, typer.Option(help="write the report (with rows) as JSON")] = None,
) -> None:
    """Replay recorded tool calls through a simulator; share of matching results per tool."""
    settings = {k: v for k, v in {"base_url": base_url, "model": model, "engine": engine,
                                  "max_tokens": max_tokens,
                                  "max_concurrent": max_concurrent,
                                  "timeout_s": timeout}.items() if v is not None}
    try:
        simulator = ToolSimulator.from_settings(settings)
        env = make(env_id, split=split)
        try:
            report = asyncio.run(fidelity(env, read_trajectories(trajectories), simulator,
                                          limit=limit))
        finally:
            env.close()
    except (ValueError, FileNotFoundError, AgentGymError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    print_report(report, f"{env_id} · simulator {model or base_url or 'smollm2'}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_json(), indent=1, default=str), encoding="utf-8")


@app.command("record")
def record_command(
    env_id: Annotated[str, typer.Argument(help="a registered env with demonstrations")],
    out: Annotated[Path, typer.Option(help="the JSONL file of trajectories to write")],
    split: Annotated[str, typer.Option(help="task split")] = "train",
    num_examples: Annotated[int, typer.Option(help="first N tasks")] = 20,
) -> None:
    """Record trajectories with real tool results by playing the env's reference solutions."""
    try:
        env = make(env_id, split=split)
        try:
            trajectories = env._runner.run(record_demonstrations(env, num_examples))
        finally:
            env.close()
    except (ValueError, AgentGymError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with TrajectoryWriter(out) as writer:
        for trajectory in trajectories:
            writer.write(trajectory)
    calls = sum(len(t.tool_calls) for trajectory in trajectories for t in trajectory.turns)
    typer.echo(f"{len(trajectories)} trajectories, {calls} tool calls -> {out}")
