"""The ``eval``, ``leaderboard`` and ``plot`` commands: thin typer wrappers over library calls.

:func:`register_commands` mounts them on an app (``agentgym.cli.app``); :data:`app` is a
standalone app with just these three, for tests and ``python -m agentgym.eval.cli``.

Failures that stop a command (unknown env, endpoint down, credentials refused, bad settings)
print one ``error: ...`` line on stderr and exit non-zero: 2 for a caller mistake, 1 for an
infrastructure failure. A failed rollout is not one of them: it is counted in the summary.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agentgym.errors import AgentGymError
from agentgym.eval.calibration import calibration_summary, wilson_interval
from agentgym.plots import plot_reward_curve
from agentgym.rewards.config import load_rewards_file

__all__ = ["app", "eval_command", "leaderboard_command", "plot_command", "register_commands"]

_out = Console()
_err = Console(stderr=True)


def json_object(text: str | None, option: str) -> dict[str, Any]:
    """``text`` read as a JSON object ({} for None); a ValueError that names ``option``."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def _fail(exc: BaseException) -> typer.Exit:
    """Print ``exc`` as one line on stderr; the exit to raise (2: caller's mistake, 1: infra)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    typer.echo(f"error: {message}", err=True)
    user = isinstance(exc, ValueError | FileNotFoundError | ImportError) or (
        isinstance(exc, AgentGymError) and exc.blame == "user")
    return typer.Exit(2 if user else 1)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def print_summary(env_id: str, model: str, summary: dict[str, Any], run_dir: Path) -> None:
    """The end-of-run summary table (stdout)."""
    table = Table(title=f"{env_id} · {model}", show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value")
    ci = summary["ci95"]
    table.add_row("rollouts", f"{summary['rollouts']} ({summary['tasks']} tasks, "
                  f"{summary['scored_rollouts']} scored)")
    table.add_row("mean reward", _fmt(summary["mean_reward"])
                  + ("" if ci is None or math.isnan(ci) else f" ± {_fmt(ci)} (95% CI)"))
    table.add_row("pass@k", "  ".join(f"pass@{k} {_fmt(v)}"
                                      for k, v in summary["pass_at_k"].items()) or "–")
    table.add_row("pass^k", "  ".join(f"pass^{k} {_fmt(v)}"
                                      for k, v in summary["pass_hat_k"].items()) or "–")
    table.add_row("tool-call validity", f"{_fmt(summary['tool_call_validity'])} "
                  f"({summary['tool_calls']} calls, {summary['invalid_tool_calls']} invalid)")
    by_class = ", ".join(f"{name} {count} ({summary['error_rate_by_class'][name]:.1%})"
                         for name, count in summary["errors_by_class"].items())
    table.add_row("errors", f"{summary['errors']} ({_fmt(summary['error_rate'])})"
                  + (f": {by_class}" if by_class else ""))
    table.add_row("tokens", f"{summary['prompt_tokens']} prompt + "
                  f"{summary['completion_tokens']} completion "
                  f"({_fmt(summary['tokens_per_rollout'], 1)} per rollout)")
    table.add_row("wall time", f"{_fmt(summary.get('wall_time_s'), 1)} s "
                  f"(mean rollout {_fmt(summary['latency_mean_s'], 2)} s)")
    table.add_row("results", str(run_dir / "results.jsonl"))
    _out.print(table)


class _Bar:
    """A rich progress bar fed by :class:`~agentgym.eval.evaluation.EvalProgress` reports; it
    appears with the first report, i.e. once the endpoint answered and the run folder exists."""

    def __init__(self, label: str):
        self.label = label
        self.progress: Any = None

    def __call__(self, report: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("reward {task.fields[mean]}"),
                TextColumn("errors {task.fields[errors]}"), TextColumn("ETA {task.fields[eta]}"),
                console=_err)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=report.total, mean="–",
                                               errors=0, eta="–")
        eta = "–" if report.eta_s is None else \
            f"{int(report.eta_s // 60)}:{int(report.eta_s % 60):02d}"
        self.progress.update(self.task, completed=report.done, total=report.total,
                             mean=_fmt(report.mean_reward), errors=report.errors, eta=eta)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def eval_command(
    env_id: Annotated[str, typer.Argument(help="a registered env id, e.g. agentgym/Math-v0")],
    model: Annotated[str, typer.Option(help="served model name (or a local path with --engine)")],
    base_url: Annotated[str | None, typer.Option(
        help="OpenAI-compatible API root, .../v1 (several, comma-separated: replicas of one "
             "model, routed least-loaded and sticky per rollout)")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="name of the environment variable that holds the API key")] = None,
    engine: Annotated[str | None, typer.Option(
        help="start a local engine for the run instead: hf (in-process) or vllm")] = None,
    num_examples: Annotated[int | None, typer.Option(help="first N tasks (default: all)")] = None,
    rollouts_per_example: Annotated[int, typer.Option(help="K samples per task")] = 1,
    max_concurrent: Annotated[int, typer.Option(help="rollouts in flight")] = 8,
    split: Annotated[str, typer.Option(help="task split: eval or train")] = "eval",
    temperature: Annotated[float | None, typer.Option(
        help="default: 0 for K=1, 1.0 for K>1")] = None,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass")] = 1.0,
    max_tokens: Annotated[int, typer.Option(help="completion tokens per turn")] = 1024,
    seed: Annotated[int, typer.Option(help="sampling seed (sample i uses seed + i)")] = 0,
    pass_threshold: Annotated[float, typer.Option(help="reward >= this passes")] = 1.0,
    out: Annotated[Path, typer.Option(help="root folder of eval runs")] = Path("runs/eval"),
    resume: Annotated[bool, typer.Option(
        help="continue the newest unfinished run of this env and model")] = False,
    token_ids: Annotated[bool, typer.Option(
        help="ask a vLLM endpoint for token ids (exact token counts)")] = False,
    turn_timeout: Annotated[float, typer.Option(help="seconds per policy call")] = 120.0,
    episode_timeout: Annotated[float, typer.Option(help="seconds per rollout")] = 900.0,
    ray_workers: Annotated[int, typer.Option(
        help="play rollouts on this many Ray env workers (0: in this process)")] = 0,
    ray_address: Annotated[str | None, typer.Option(
        help="the Ray cluster for --ray-workers: auto, ray://HOST:10001 or HOST:6379 "
             "(default: a private local cluster)")] = None,
    env_kwargs: Annotated[str | None, typer.Option(
        help='env arguments as a JSON object, e.g. \'{"base_url": "http://127.0.0.1:8001"}\' '
             "for agentgym/OpenEnv-v0")] = None,
    rewards: Annotated[Path | None, typer.Option(
        help="a YAML file of reward terms (a list, or a 'rewards:' key) that add to, reweight "
             "or replace the env's own: judges, confidence, shaping, env terms by name")] = None,
    confidence_key: Annotated[str, typer.Option(
        help="reward component read as the confidence for ECE and Brier (when rows carry it)")
    ] = "confidence",
    correct_key: Annotated[str, typer.Option(
        help="reward component read as correctness (>= pass threshold) for calibration")
    ] = "correct",
) -> None:
    """Evaluate a model on an environment: N tasks x K rollouts, results on disk, a summary."""
    from agentgym.eval.evaluation import evaluate
    from agentgym.ray_rollout import RaySettings

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise _fail(ValueError(f"the environment variable {api_key_env} is not set"))
    bar = _Bar(f"{env_id} · {Path(model).name if Path(model).is_absolute() else model}")
    try:
        arguments = json_object(env_kwargs, "--env-kwargs")
        if rewards is not None:
            arguments["rewards"] = load_rewards_file(rewards)
        result = evaluate(
            env_id, model, base_url=base_url, api_key=api_key, engine=engine, out=out,
            resume=resume, token_ids=token_ids, on_progress=bar, num_examples=num_examples,
            rollouts_per_example=rollouts_per_example, max_concurrent=max_concurrent,
            split=split, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
            seed=seed, pass_threshold=pass_threshold, turn_timeout_s=turn_timeout,
            episode_timeout_s=episode_timeout,
            ray=RaySettings(ray_address, ray_workers) if ray_workers else None,
            env_kwargs=arguments)
    except (AgentGymError, ValueError, FileNotFoundError, ImportError) as exc:
        bar.stop()
        raise _fail(exc) from None
    except KeyboardInterrupt:
        bar.stop()
        typer.echo("interrupted: finished rollouts are saved; continue with the same command "
                   "and --resume", err=True)
        raise typer.Exit(130) from None
    bar.stop()
    print_summary(env_id, model, result.summary, result.run_dir)
    print_accuracy(result.rows, confidence_key, correct_key, pass_threshold)


def print_accuracy(rows: list[dict[str, Any]], confidence_key: str, correct_key: str,
                   threshold: float = 1.0) -> None:
    """Pass rate with its Wilson 95 % interval; ECE and Brier when rows carry a confidence."""
    passed = [bool(r["passed"]) for r in rows if r.get("passed") is not None]
    if passed:
        low, high = wilson_interval(sum(passed), len(passed))
        _out.print(f"pass rate {sum(passed)}/{len(passed)} = {sum(passed) / len(passed):.3f} "
                   f"(Wilson 95% CI {low:.3f}-{high:.3f})")
    calib = calibration_summary(rows, confidence_key, correct_key, threshold=threshold)
    if calib is not None:
        (alow, ahigh), (elow, ehigh), (blow, bhigh) = (
            calib["accuracy_ci95"], calib["ece_ci95"], calib["brier_ci95"])
        _out.print(f"calibration ({confidence_key} vs {correct_key}, n={calib['n']}): accuracy "
                   f"{calib['accuracy']:.3f} ({alow:.3f}-{ahigh:.3f}), mean confidence "
                   f"{calib['mean_confidence']:.3f}, ECE {calib['ece']:.3f} ({elow:.3f}-"
                   f"{ehigh:.3f}), Brier {calib['brier']:.3f} ({blow:.3f}-{bhigh:.3f}); "
                   "95% CIs: Wilson, bootstrap")


def leaderboard_command(
    runs: Annotated[Path, typer.Option(help="root folder of eval runs")] = Path("runs/eval"),
    out: Annotated[Path, typer.Option(help="where to write the files")] = Path("leaderboard"),
) -> None:
    """Aggregate eval runs into leaderboard.md and a static, sortable index.html."""
    from agentgym.eval.leaderboard import write_leaderboard

    try:
        paths = write_leaderboard(runs, out)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from None
    count = len(json.loads(paths["json"].read_text(encoding="utf-8")))
    _out.print(f"{count} entries -> {paths['markdown']}, {paths['html']}")


def plot_command(
    run_dir: Annotated[Path, typer.Argument(help="a training run folder with metrics.jsonl")],
    out: Annotated[Path | None, typer.Option(help="PNG path (default RUN_DIR/reward_curve.png)")
                   ] = None,
) -> None:
    """Plot a training run's reward curve (metrics.jsonl) as a PNG."""
    try:
        path = plot_reward_curve(run_dir, out)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise _fail(exc) from None
    _out.print(str(path))


def register_commands(target: typer.Typer) -> None:
    """Mount ``eval``, ``leaderboard`` and ``plot`` on ``target``."""
    target.command("eval")(eval_command)
    target.command("leaderboard")(leaderboard_command)
    target.command("plot")(plot_command)


app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="agentgym eval, leaderboard and plot.")
register_commands(app)

if __name__ == "__main__":
    app()
