"""Resume after an interruption, failing rollouts, endpoint errors: each through the real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _eval_helpers import (
    FlakyServer,
    Oracle,
    StatusServer,
    expected_pass,
    only_run_dir,
    read_rows,
    wait_until_quiet,
)
from typer.testing import CliRunner

from agentgym.eval.cli import app
from agentgym.eval.evaluation import EvalProgress, evaluate
from agentgym.testing.stub_server import StubServer

CALC = "agentgym/Calculator-v0"
runner = CliRunner()


class Interrupt(Exception):
    """Raised by a progress callback to cut a run short, like a crash or Ctrl-C would."""


def test_resume_finishes_an_interrupted_run_without_redoing_rollouts(tmp_path: Path) -> None:
    n, k = 8, 2
    oracle = Oracle([CALC], n)
    with StubServer(oracle) as server:
        def stop_after_three_groups(report: EvalProgress) -> None:
            if report.done >= 3 * k:
                raise Interrupt

        with pytest.raises(Interrupt):
            evaluate(CALC, "oracle", base_url=server.base_url, out=tmp_path, num_examples=n,
                     rollouts_per_example=k, max_concurrent=2, on_progress=stop_after_three_groups)
        run_dir = only_run_dir(tmp_path)
        first = read_rows(run_dir)
        assert 3 * k <= len(first) < n * k and len(first) % k == 0
        metadata = json.loads((run_dir / "metadata.json").read_text())
        assert metadata["status"] == "running" and metadata["counts"]["rollouts_done"] == len(first)
        wait_until_quiet(server)  # requests sent just before the interrupt may still arrive
        before = server.requests
        result = runner.invoke(app, ["eval", CALC, "--base-url", server.base_url, "--model",
                                     "oracle", "--num-examples", str(n),
                                     "--rollouts-per-example", str(k), "--max-concurrent", "2",
                                     "--out", str(tmp_path), "--resume"])
        assert result.exit_code == 0, result.output
        assert server.requests - before == 2 * (n * k - len(first))  # 2 turns per rollout
    assert only_run_dir(tmp_path) == run_dir  # continued, not a new run
    rows = read_rows(run_dir)
    assert rows[: len(first)] == first
    keys = [(r["task_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == n * k
    assert len((run_dir / "trajectories.jsonl").read_text().splitlines()) == n * k
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["status"] == "finished" and metadata["segments"] == 2
    assert metadata["counts"]["rollouts_done"] == n * k
    assert metadata["summary"]["pass_at_k"]["1"] == pytest.approx(
        sum(expected_pass(i, s) for i in range(n) for s in range(k)) / (n * k))


def test_resume_drops_a_torn_group_and_replays_it(tmp_path: Path) -> None:
    n = 4
    with StubServer(Oracle([CALC], n)) as server:
        evaluate(CALC, "oracle", base_url=server.base_url, out=tmp_path, num_examples=n,
                 rollouts_per_example=2)
        run_dir = only_run_dir(tmp_path)
        rows = read_rows(run_dir)
        last_task = rows[-1]["task_id"]
        # fake a crash in the middle of the last group: one of its two rows, then half a line
        kept = [r for r in rows if r["task_id"] != last_task]
        torn = [r for r in rows if r["task_id"] == last_task][:1]
        (run_dir / "results.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in kept + torn) + '{"task_id": "calc-')
        metadata = json.loads((run_dir / "metadata.json").read_text())
        metadata["status"] = "running"
        (run_dir / "metadata.json").write_text(json.dumps(metadata))
        evaluate(CALC, "oracle", base_url=server.base_url, out=tmp_path, num_examples=n,
                 rollouts_per_example=2, resume=True)
    rows = read_rows(run_dir)
    keys = [(r["task_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * n
    trajectories = [json.loads(line)["task_id"] for line in
                    (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert sorted(trajectories) == sorted(r["task_id"] for r in rows)


def test_resume_with_other_settings_is_refused_in_one_line(tmp_path: Path) -> None:
    with StubServer(Oracle([CALC], 2)) as server:
        with pytest.raises(Interrupt):
            evaluate(CALC, "oracle", base_url=server.base_url, out=tmp_path, num_examples=2,
                     on_progress=lambda report: (_ for _ in ()).throw(Interrupt()))
        result = runner.invoke(app, ["eval", CALC, "--base-url", server.base_url, "--model",
                                     "oracle", "--num-examples", "2", "--rollouts-per-example",
                                     "3", "--out", str(tmp_path), "--resume"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: cannot resume")
    assert "rollouts_per_example=1 (now 3)" in result.output


def test_failing_rollouts_are_counted_as_errors_not_zeros(tmp_path: Path) -> None:
    n, k = 6, 2
    oracle = Oracle([CALC], n)
    with FlakyServer(oracle, fail=lambda env_id, position: position in (0, 4)) as server:
        result = runner.invoke(app, ["eval", CALC, "--base-url", server.base_url, "--model",
                                     "oracle", "--num-examples", str(n), "--rollouts-per-example",
                                     str(k), "--max-concurrent", "12", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path)
    rows = read_rows(run_dir)
    order = json.loads((run_dir / "metadata.json").read_text())["task_ids"]
    for row in rows:
        position = order.index(row["task_id"])
        if position in (0, 4):
            assert (row["error"], row["error_blame"], row["reward"], row["passed"]) == \
                ("PolicyHTTPError", "infra", None, None)
            assert "500" in row["error_message"]
        else:
            assert row["error"] is None and row["passed"] is expected_pass(position,
                                                                           row["sample_index"])
    summary = json.loads((run_dir / "metadata.json").read_text())["summary"]
    assert summary["errors"] == 4 and summary["error_rate"] == pytest.approx(4 / 12)
    assert summary["errors_by_class"] == {"PolicyHTTPError": 4}
    # scored tasks: positions 1 (0.5), 2 (0), 3 (1), 5 (0) -> mean 0.375; the failed ones
    # (0 would have scored 1) are left out, not counted as 0
    assert summary["mean_reward"] == pytest.approx(0.375)
    assert "PolicyHTTPError 4" in result.output


def test_endpoint_down_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-m", "agentgym.cli", "eval", CALC, "--base-url",
         f"http://127.0.0.1:{port}/v1", "--model", "m", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: cannot reach the endpoint http://127.0.0.1:{port}/v1")
    assert not any(tmp_path.iterdir())  # no run folder for a run that never started


@pytest.mark.parametrize(("models_status", "chat_status"), [(401, 401), (200, 403)])
def test_refused_credentials_stop_the_run_in_one_line(tmp_path: Path, models_status: int,
                                                      chat_status: int) -> None:
    with StatusServer(models_status, chat_status) as server:
        os.environ["AGENTGYM_TEST_KEY"] = "wrong"
        try:
            result = runner.invoke(app, ["eval", CALC, "--base-url", server.base_url, "--model",
                                         "stub", "--num-examples", "3", "--api-key-env",
                                         "AGENTGYM_TEST_KEY", "--out", str(tmp_path)])
        finally:
            del os.environ["AGENTGYM_TEST_KEY"]
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refused the credentials" in errors[0]
    assert f"HTTP {chat_status}" in errors[0]


def test_unknown_env_and_missing_key_variable_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "agentgym/Calculatr-v0", "--base-url",
                                 "http://127.0.0.1:9/v1", "--model", "m", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: No environment registered as "
                                    f"'agentgym/Calculatr-v0'. Did you mean: {CALC}")
    result = runner.invoke(app, ["eval", CALC, "--base-url", "http://127.0.0.1:9/v1", "--model",
                                 "m", "--api-key-env", "AGENTGYM_NO_SUCH_VARIABLE"])
    assert result.exit_code == 2
    assert result.output == "error: the environment variable AGENTGYM_NO_SUCH_VARIABLE is not set\n"
