"""MCP tool servers as env tools, against a real MCP server (tests/interop/mcp_server_fixture.py)
started by the test over stdio and over streamable HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gates import require_module

require_module("mcp", "pip install '.[interop]'")

from agentgym.errors import ErrorRecord  # noqa: E402
from agentgym.interop.mcp_tools import (  # noqa: E402
    MCPServerSpec,
    MCPToolEnv,
    ToolServerError,
)
from agentgym.policy import SamplingParams  # noqa: E402
from agentgym.rewards import Reward, Rubric  # noqa: E402
from agentgym.rollout import RolloutConfig, RolloutEngine  # noqa: E402
from agentgym.testing import FakePolicy, ToyEnv  # noqa: E402
from agentgym.types import Task  # noqa: E402

FIXTURE = Path(__file__).with_name("mcp_server_fixture.py")
TASKS = [Task(id=f"t{i}", split=split, answer=str(2 * i + 1),
              prompt=({"role": "user", "content": f"What is {i} + {i + 1}?"},))
         for split in ("train", "eval") for i in range(3)]


def _answer_in_reply(trajectory, task):
    return float(trajectory.final_text.strip() == task.answer)


class MCPToy(MCPToolEnv, ToyEnv):
    """The toy sums env, with no tools of its own: every tool comes from MCP."""


def make_env(server: MCPServerSpec, **kwargs) -> MCPToy:
    return MCPToy(mcp_servers=[server], tools=[], tasks=TASKS,
                  rubric=Rubric([Reward("exact", _answer_in_reply)]), **kwargs)


def call(name: str, **arguments) -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_http_server(log: Path) -> tuple[subprocess.Popen, str]:
    """The fixture server on a free 127.0.0.1 port; waits until it accepts connections."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(FIXTURE), "http", str(port)],
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"MCP HTTP server exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("MCP HTTP server did not start within 120s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def http_url(tmp_path_factory):
    process, url = start_http_server(tmp_path_factory.mktemp("mcp") / "server.log")
    yield url
    stop(process)


@pytest.fixture
def errlog(tmp_path):
    with (tmp_path / "stderr.log").open("w") as handle:
        yield handle


@pytest.fixture(params=["stdio", "http"])
def server(request, errlog) -> MCPServerSpec:
    if request.param == "stdio":
        return MCPServerSpec.stdio(sys.executable, str(FIXTURE), "stdio")
    return MCPServerSpec.http(request.getfixturevalue("http_url"))


def stdio_env(errlog, **kwargs) -> MCPToy:
    env = make_env(MCPServerSpec.stdio(sys.executable, str(FIXTURE), "stdio"), **kwargs)
    env.mcp.errlog = errlog
    return env


def test_tools_schemas_and_calls(server, errlog):
    env = make_env(server)
    env.mcp.errlog = errlog
    try:
        obs, info = env.reset(options={"task_id": "t1"})
        schemas = {s["function"]["name"]: s["function"] for s in info["tools"]}
        assert set(schemas) == {"add", "shout", "fail", "nap", "pid", "die"}
        add = schemas["add"]
        assert add["description"] == "Add two integers."
        assert add["parameters"]["required"] == ["a", "b"]
        assert add["parameters"]["properties"]["a"]["type"] == "integer"
        assert add["parameters"]["additionalProperties"] is False

        obs, reward, terminated, truncated, info = env.step(call("add", a=1, b=2))
        assert obs[-1]["role"] == "tool" and obs[-1]["content"] == "3"
        assert not terminated
        obs, reward, terminated, truncated, info = env.step("3")
        assert terminated and reward == 1.0
        result = env.trajectory().turns[0].tool_results[0]
        assert result.error_type is None and result.name == "add"
    finally:
        env.close()


def test_model_mistakes_become_tool_messages(server, errlog):
    env = make_env(server, tool_timeout_s=2.0, max_turns=10)
    env.mcp.errlog = errlog
    try:
        env.reset(options={"task_id": "t0"})
        attempts = [call("add", a="one", b=2), call("add", a=1, b=2, c=3), call("add", a=1),
                    call("subtract", a=1, b=2), call("fail", reason="no thanks"),
                    call("nap", seconds=30), call("shout", text="still here")]
        for action in attempts:
            obs, _, terminated, _, _ = env.step(action)
            assert not terminated
        results = [r for turn in env._turns for r in turn.tool_results]
        kinds = [r.error_type for r in results]
        assert kinds == ["ToolArgumentError", "ToolArgumentError", "ToolArgumentError",
                         "UnknownToolError", "ToolExecutionError", "ToolTimeoutError", None]
        assert "'one' is not of type 'integer'" in results[0].content
        assert "'c' was unexpected" in results[1].content
        assert "'b' is a required property" in results[2].content
        assert "available tools: add" in results[3].content
        assert "refused: no thanks" in results[4].content
        assert "timed out after 2s" in results[5].content
        assert results[6].content == "STILL HERE"  # the session survived all of that
    finally:
        env.close()


def test_a_server_that_dies_is_an_error_record_not_a_hang(errlog):
    """Over stdio the server process exits mid-call: the rollout engine records the episode
    with ToolServerError (infra), and the next reset starts a fresh server."""
    env = stdio_env(errlog)
    policy = FakePolicy([call("die"), call("pid"), "1"])
    engine = RolloutEngine(lambda: env, policy, RolloutConfig(
        group_size=1, episode_timeout_s=120, sampling=SamplingParams(max_tokens=64)))

    async def play():
        try:
            dead = await engine.run_episode({"task_id": "t0"})
            alive = await engine.run_episode({"task_id": "t0"})
            return dead, alive
        finally:
            await env.aclose()

    dead, alive = asyncio.run(play())
    assert isinstance(dead.error, ErrorRecord)
    assert dead.error.type == "ToolServerError" and dead.error.blame == "infra"
    assert dead.reward is None
    assert alive.error is None and alive.reward == 1.0
    assert int(alive.turns[0].tool_results[0].content) > 0


def test_a_dead_http_server_is_an_error_record(tmp_path):
    process, url = start_http_server(tmp_path / "server.log")
    env = make_env(MCPServerSpec.http(url), tool_timeout_s=60)
    try:
        env.reset(options={"task_id": "t0"})
        stop(process)
        # a hang would end at the tool deadline as a ToolTimeoutError tool message instead
        with pytest.raises(ToolServerError):
            env.step(call("add", a=1, b=2))
        assert env.trajectory().error.type == "ToolServerError"
    finally:
        stop(process)
        env.close()


@pytest.mark.parametrize(("spec", "match"), [
    (MCPServerSpec.stdio(sys.executable, "-c", "import time; time.sleep(600)",
                         connect_timeout_s=3), "did not answer within 3s"),
    (MCPServerSpec.stdio("/nonexistent/mcp-server"), "failed: FileNotFoundError"),
    (MCPServerSpec.http("http://127.0.0.1:9/mcp", connect_timeout_s=60), "MCP server http"),
], ids=["silent", "missing", "refused"])
def test_an_unreachable_server_fails_reset_within_its_deadline(spec, match, errlog):
    env = make_env(spec)
    env.mcp.errlog = errlog
    try:
        with pytest.raises(ToolServerError, match=match):
            env.reset()
    finally:
        env.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("scope", ["env", "episode"])
def test_session_scope_and_close(scope, errlog):
    env = stdio_env(errlog, mcp_scope=scope)
    pids = []
    try:
        for _ in range(2):
            env.reset(options={"task_id": "t0"})
            obs, *_ = env.step(call("pid"))
            pids.append(int(obs[-1]["content"]))
            env.step("1")
    finally:
        env.close()
    if scope == "env":
        assert pids[0] == pids[1]
    else:
        assert pids[0] != pids[1]
    deadline = time.monotonic() + 30
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_pid_alive(p) for p in pids), "close() left a server process running"


def test_prefix_include_and_config_mappings(http_url, errlog):
    env = MCPToy(tools=[], tasks=TASKS, mcp_servers=[
        {"command": [sys.executable, str(FIXTURE), "stdio"], "prefix": "local_",
         "include": ["add"]},
        {"url": http_url, "prefix": "remote_", "include": ["shout", "add"]}])
    env.mcp.errlog = errlog
    try:
        _, info = env.reset(options={"task_id": "t0"})
        names = sorted(s["function"]["name"] for s in info["tools"])
        assert names == ["local_add", "remote_add", "remote_shout"]
        obs, *_ = env.step(call("remote_shout", text="hi"))
        assert obs[-1]["content"] == "HI"
        obs, *_ = env.step(call("local_add", a=2, b=2))
        assert obs[-1]["content"] == "4"
    finally:
        env.close()
    with pytest.raises(ValueError, match="exactly one of"):
        MCPServerSpec.from_config({"url": http_url, "command": ["x"]})


def test_importing_the_module_does_not_import_mcp():
    code = ("import sys, agentgym, agentgym.interop.mcp_tools; "
            "assert not [m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
