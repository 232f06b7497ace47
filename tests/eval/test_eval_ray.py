"""``agentgym eval --ray-workers 2``: the same rows, rewards and order as a local run.

The "model" is the Oracle behind a real StubServer (its pass pattern depends on each request's
seed, so a sample that ran with the wrong seed would show); the rollouts run on Ray env workers
of the session's local cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

from _eval_helpers import Oracle, expected_pass
from gates import require_module
from typer.testing import CliRunner

from agentgym.eval.cli import app
from agentgym.testing.stub_server import StubServer

require_module("ray", "pip install 'agentgym[ray]'")

ENV, N, K = "agentgym/Calculator-v0", 4, 2
runner = CliRunner()


def _rows(out: Path) -> list[tuple[int, int, float | None, str | None]]:
    """(task position, sample, reward, error), sorted: rows are appended as groups finish,
    which is timing, not results (the engine returns groups in task order either way)."""
    (results,) = out.rglob("results.jsonl")
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    return sorted((int(r["task_id"].rsplit("-", 1)[1]), r["sample_index"], r["reward"],
                   r["error"]) for r in rows)


def test_eval_on_ray_workers_matches_a_local_run(ray_cluster: None, tmp_path: Path) -> None:
    oracle = Oracle([ENV], N)
    with StubServer(oracle) as server, StubServer(oracle) as replica:
        outs = {}
        both = f"{server.base_url},{replica.base_url}"
        for name, url, extra in (("local", server.base_url, []),
                                 ("ray", server.base_url, ["--ray-workers", "2"]),
                                 ("replicas", both, ["--ray-workers", "2"])):
            outs[name] = tmp_path / name
            result = runner.invoke(app, [
                "eval", ENV, "--base-url", url, "--model", "oracle",
                "--num-examples", str(N), "--rollouts-per-example", str(K),
                "--max-concurrent", "4", "--out", str(outs[name]), *extra])
            assert result.exit_code == 0, result.output
    assert replica.requests > 0  # the workers' routers used both servers
    local = _rows(outs["local"])
    assert _rows(outs["ray"]) == local and _rows(outs["replicas"]) == local
    assert [r[2] == 1.0 for r in local] == \
        [expected_pass(i // K, i % K, "oracle") for i in range(N * K)]
    (metadata,) = outs["ray"].rglob("metadata.json")
    assert json.loads(metadata.read_text())["settings"]["ray"]["num_workers"] == 2
