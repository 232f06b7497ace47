"""agentgym envs served the OpenEnv way and OpenEnv servers played as agentgym envs, against real
servers on 127.0.0.1 (uvicorn, free port) and openenv-core's real client (GenericEnvClient).

The round trip agentgym env -> OpenEnv server -> agentgym client env must give the episodes and
rewards of the in-process env; bad input behaves as in-process; server failures are errors.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.gates import require_module, require_train_stack

require_module("openenv", "pip install '.[interop]' (openenv-core)")

import gymnasium  # noqa: E402
import httpx  # noqa: E402
from openenv.core import GenericEnvClient  # noqa: E402
from openenv.core.env_server.http_server import create_fastapi_app  # noqa: E402
from openenv.core.env_server.interfaces import Environment  # noqa: E402
from openenv.core.env_server.types import Action, Observation, State  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import agentgym  # noqa: E402
from agentgym.cli import app as cli_app  # noqa: E402
from agentgym.errors import (  # noqa: E402
    EnvError,
    EnvServerError,
    InvalidActionError,
    ResetNeededError,
    SandboxCrashedError,
)
from agentgym.eval.evaluation import read_results  # noqa: E402
from agentgym.interop.openenv_client import OpenEnvClientEnv  # noqa: E402
from agentgym.interop.openenv_server import running_server  # noqa: E402
from agentgym.registry import registry  # noqa: E402
from agentgym.rollout import RolloutConfig, RolloutEngine  # noqa: E402
from agentgym.testing import FakePolicy, ToyEnv  # noqa: E402
from agentgym.testing.stub_server import StubServer  # noqa: E402
from agentgym.tools import tool  # noqa: E402

CALC = "agentgym/Calculator-v0"
REMOTE = "agentgym/OpenEnv-v0"


def calls(*entries: tuple[str, str, Any]) -> dict[str, Any]:
    """An assistant message with native tool calls (fixed ids, so two runs compare equal);
    arguments given as a str are sent as they are (malformed JSON included)."""
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": call_id, "type": "function", "function": {
            "name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
        for call_id, name, args in entries]}


def calculator_script(task: agentgym.Task) -> list[Any]:
    """Three turns: a malformed call and an unknown tool, a good call, the answer."""
    return [calls(("c0", "calculate", "{not json"), ("c1", "calc", {"expression": "1"})),
            calls(("c2", "calculate", {"expression": task.metadata["expression"]})),
            f"<answer>{task.metadata['answer_exact']}</answer>"]


@pytest.fixture(scope="module")
def calc_server() -> Iterator[Any]:
    with running_server(CALC, {"split": "eval"}) as server:
        yield server


@pytest.fixture(scope="module")
def eval_tasks() -> tuple[agentgym.Task, ...]:
    env = agentgym.make(CALC, split="eval")
    try:
        return env.tasks
    finally:
        env.close()


def play(env: Any, task_id: str, script: list[Any]) -> list[tuple]:
    """Every (obs, reward, terminated, truncated, info without tools) of one scripted episode."""
    obs, info = env.reset(options={"task_id": task_id})
    steps: list[tuple] = [(obs, info["task_id"], info["turn"], info["tools"])]
    for action in script:
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs, reward, terminated, truncated, info.get("reward_components"),
                      info["turn"]))
        if terminated or truncated:
            break
    return steps


def test_a_calculator_episode_over_http_equals_in_process(calc_server, eval_tasks) -> None:
    local = agentgym.make(CALC, split="eval")
    remote = agentgym.make(REMOTE, base_url=calc_server.base_url, split="eval")
    try:
        assert [t.id for t in remote.tasks] == [t.id for t in eval_tasks]
        for task in eval_tasks[:2]:
            script = calculator_script(task)
            here, there = play(local, task.id, script), play(remote, task.id, script)
            assert there == here
            assert here[-1][1] == 1.0 and here[-1][2] is True  # solved, terminated
            tool_messages = [m for m in here[1][0] if m["role"] == "tool"]
            assert "not valid JSON" in tool_messages[0]["content"]  # malformed: an observation
            mine, theirs = local.trajectory(), remote.trajectory()
            assert (theirs.messages, theirs.reward, dict(theirs.reward_components),
                    theirs.terminated, theirs.truncated, theirs.final_state) == \
                (mine.messages, mine.reward, dict(mine.reward_components), mine.terminated,
                 mine.truncated, mine.final_state)
            assert [(t.assistant, t.tool_calls, t.tool_results) for t in theirs.turns] == \
                [(t.assistant, t.tool_calls, t.tool_results) for t in mine.turns]
            assert theirs.turns[0].tool_results[1].error_type == "UnknownToolError"
    finally:
        local.close()
        remote.close()


def test_a_truncated_episode_is_scored_by_the_server(calc_server, eval_tasks) -> None:
    """What the rollout engine does when the chat outgrows the context window."""
    task = eval_tasks[0]
    local = agentgym.make(CALC, split="eval")
    remote = agentgym.make(REMOTE, base_url=calc_server.base_url, split="eval")

    async def truncated(env: Any) -> agentgym.Trajectory:
        await env.areset(options={"task_id": task.id})
        await env.astep(calculator_script(task)[1])
        return await env.atruncate()

    try:
        mine = local._runner.run(truncated(local))
        theirs = remote._runner.run(truncated(remote))
        assert (theirs.truncated, theirs.terminated, theirs.reward, theirs.messages) == \
            (True, False, mine.reward, mine.messages)
    finally:
        local.close()
        remote.close()


def test_the_real_openenv_client_plays_a_session(calc_server, eval_tasks) -> None:
    task = eval_tasks[0]

    async def session() -> None:
        async with GenericEnvClient(base_url=calc_server.base_url) as client:
            with pytest.raises(RuntimeError, match="no episode in progress"):
                await client.step({"content": "hello"})
            result = await client.reset(task_id=task.id, split="eval")
            assert result.done is False
            assert [t["function"]["name"] for t in result.observation["tools"]] == ["calculate"]
            bad = await client.step(calls(("c0", "nope", {})))  # unknown tool: an observation
            assert bad.observation["messages"][-1]["role"] == "tool"
            assert "nope" in bad.observation["messages"][-1]["content"] and not bad.done
            with pytest.raises(RuntimeError, match="VALIDATION_ERROR"):
                await client.step({"content": 42})  # not an assistant message
            with pytest.raises(RuntimeError, match="VALIDATION_ERROR"):
                await client.step({"role": "user", "content": "hi"})
            state = await client.state()
            assert (state["step_count"], state["task_id"], state["done"]) == (1, task.id, False)
            done = await client.step({"content": f"<answer>{task.metadata['answer_exact']}"
                                                 "</answer>"})
            assert (done.done, done.reward) == (True, 1.0)
            assert done.observation["info"]["reward_components"]["correct"] == 1.0
            with pytest.raises(RuntimeError, match="no episode in progress"):
                await client.step({"content": "again"})

    asyncio.run(session())


def test_the_stateless_http_endpoints(calc_server) -> None:
    url = calc_server.base_url
    assert httpx.get(f"{url}/health").json()["status"] == "healthy"
    schema = httpx.get(f"{url}/schema").json()
    assert {"content", "tool_calls"} <= set(schema["action"]["properties"])
    listing = httpx.get(f"{url}/agentgym/tasks", params={"split": "train"}).json()
    assert listing["split"] == "train" and listing["tasks"][0]["id"].startswith("calc-train-")
    opening = httpx.post(f"{url}/reset", json={"seed": 0}).json()
    assert opening["done"] is False and opening["observation"]["messages"][0]["role"]
    step = httpx.post(f"{url}/step", json={"action": {"content": "hi"}})
    assert step.status_code == 409  # a fresh env per request: no episode; says to use /ws
    assert "/ws" in step.json()["detail"] and step.json()["error"]["type"] == "ResetNeededError"
    assert httpx.post(f"{url}/step", json={"action": {"content": 7}}).status_code == 422


def test_client_errors_match_in_process(calc_server) -> None:
    remote = agentgym.make(REMOTE, base_url=calc_server.base_url, split="eval")
    try:
        with pytest.raises(ResetNeededError):
            remote.step("too early")
        remote.reset(options={"task_index": 0})
        with pytest.raises(InvalidActionError):
            remote.step({"role": "user", "content": "hi"})
        with pytest.raises(KeyError, match="no task"):
            remote.reset(options={"task_id": "calc-eval-nope"})
    finally:
        remote.close()


def test_a_server_that_is_not_there_is_an_env_server_error() -> None:
    with running_server(CALC) as server:
        url = server.base_url
    env = OpenEnvClientEnv(base_url=url, connect_timeout_s=5, num_tasks=2)
    with pytest.raises(EnvServerError, match="cannot reach"):
        env.reset()
    env.close()
    with pytest.raises(EnvError, match="needs base_url"):
        agentgym.make(REMOTE).reset()


def test_a_failing_env_is_an_error_answer_not_a_crash() -> None:
    """Calculator with max_turns=0 cannot be built on the server: HTTP 500 with the reason, an
    error answer on a session, an EnvServerError in the client env, and the server lives on."""
    reason = "max_turns and max_tokens must be >= 1"
    with running_server(CALC, {"max_turns": 0}) as server:
        answer = httpx.post(f"{server.base_url}/reset", json={})
        assert answer.status_code == 500 and reason in answer.json()["detail"]

        async def session() -> None:
            async with GenericEnvClient(base_url=server.base_url) as client:
                with pytest.raises(RuntimeError, match=reason):
                    await client.reset()

        asyncio.run(session())
        env = OpenEnvClientEnv(base_url=server.base_url)
        with pytest.raises(EnvServerError, match=reason):
            env.reset()
        with pytest.raises(ResetNeededError):
            env.step("no episode started")
        env.close()
        assert httpx.get(f"{server.base_url}/health").status_code == 200


class CrashingToy(ToyEnv):
    """ToyEnv whose tool's sandbox dies: an infra failure in the middle of an episode."""

    def __init__(self, **kwargs: Any):
        super().__init__(tools=[crash], **kwargs)


@tool
def crash(a: float, b: float) -> float:
    """Add two numbers in a sandbox that dies.

    Args:
        a: first number.
        b: second number.
    """
    raise SandboxCrashedError("the sandbox died")


@pytest.fixture()
def crashing_id() -> Iterator[str]:
    env_id = "agentgymtest/CrashingToy-v0"
    agentgym.register(env_id, CrashingToy)
    yield env_id
    registry.pop(env_id)
    gymnasium.registry.pop(env_id, None)


def test_an_infra_failure_mid_episode_is_recorded_not_scored(crashing_id) -> None:
    """In-process the env raises SandboxCrashedError and the rollout records it; over HTTP the
    same episode is recorded with an EnvServerError naming it: an error, never a 0."""
    script = ['<tool_call>{"name": "crash", "arguments": {"a": 1, "b": 2}}</tool_call>', "3"]
    with running_server(crashing_id) as server:
        for make_env, error_type in (
                (lambda: agentgym.make(crashing_id), "SandboxCrashedError"),
                (lambda: agentgym.make(REMOTE, base_url=server.base_url), "EnvServerError")):
            engine = RolloutEngine(make_env, FakePolicy(script), RolloutConfig(group_size=1))

            async def one(engine: RolloutEngine = engine) -> agentgym.Trajectory:
                try:
                    return await engine.run_episode({"task_index": 0})
                finally:
                    await engine.aclose()

            trajectory = asyncio.run(one())
            assert trajectory.error is not None and trajectory.reward is None
            assert (trajectory.error.type, trajectory.error.blame) == (error_type, "infra")
            assert "the sandbox died" in trajectory.error.message


class TrackedToy(ToyEnv):
    """ToyEnv that records every episode teardown (where an env frees sandboxes, servers)."""

    torn_down: list[str] = []

    async def teardown_episode(self) -> None:
        assert self.task is not None
        TrackedToy.torn_down.append(self.task.id)


@pytest.fixture()
def tracked_id() -> Iterator[str]:
    env_id = "agentgymtest/TrackedToy-v0"
    agentgym.register(env_id, TrackedToy)
    TrackedToy.torn_down.clear()
    yield env_id
    registry.pop(env_id)
    gymnasium.registry.pop(env_id, None)


def test_idle_sessions_time_out_and_are_released(tracked_id) -> None:
    """openenv-core's reaper closes a session idle past the timeout (it looks every 5 s); the
    episode is torn down and the connection's next message is an error that says so."""
    with running_server(tracked_id, session_timeout_s=1.0) as server:
        async def idle_session() -> None:
            async with GenericEnvClient(base_url=server.base_url) as client:
                await client.reset(task_index=3)
                assert server.env_server.active_sessions == 1 and not TrackedToy.torn_down
                deadline = time.monotonic() + 60
                while server.env_server.active_sessions and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert server.env_server.active_sessions == 0
                assert TrackedToy.torn_down == ["sum-train-3"]
                with pytest.raises(RuntimeError, match="session has expired"):
                    await client.step({"content": "still there?"})

        asyncio.run(idle_session())


def test_a_finished_session_releases_its_env(tracked_id) -> None:
    """The client env closes each episode's session: the server holds no env after it."""
    with running_server(tracked_id) as server:
        env = agentgym.make(REMOTE, base_url=server.base_url)
        try:
            for index in (0, 1):
                env.reset(options={"task_index": index})
                env.step("I do not know.")
                assert env.trajectory().reward == 0.0
            deadline = time.monotonic() + 30
            while server.env_server.active_sessions and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.env_server.active_sessions == 0
            assert len(TrackedToy.torn_down) == 2
        finally:
            env.close()


def calculator_policy(tasks: tuple[agentgym.Task, ...]) -> Any:
    """A StubServer responder solving every other Calculator task with a tool call (the
    others get a wrong answer), recognising the task by its question."""
    by_question = {next(m["content"] for m in t.prompt if m["role"] == "user"): (i, t)
                   for i, t in enumerate(tasks)}

    def reply(request: Mapping[str, Any]) -> Any:
        messages = request["messages"]
        index, task = by_question[next(m["content"] for m in messages if m["role"] == "user")]
        if index % 2:
            return "<answer>-1</answer>"
        if not any(m["role"] == "tool" for m in messages):
            return calls(("c0", "calculate", {"expression": task.metadata["expression"]}))
        return f"<answer>{task.metadata['answer_exact']}</answer>"

    return reply


def test_agentgym_eval_on_the_client_env_matches_in_process(calc_server, eval_tasks,
                                                          tmp_path: Path) -> None:
    runner = CliRunner()
    rewards = {}
    with StubServer(calculator_policy(eval_tasks)) as policy:
        for env_id, extra in ((CALC, []), (REMOTE, [
                "--env-kwargs", json.dumps({"base_url": calc_server.base_url})])):
            out = tmp_path / env_id.replace("/", "_")
            result = runner.invoke(cli_app, [
                "eval", env_id, "--base-url", policy.base_url, "--model", "scripted",
                "--num-examples", "4", "--max-concurrent", "2", "--out", str(out), *extra])
            assert result.exit_code == 0, result.output
            (run_dir,) = [p.parent for p in out.rglob("metadata.json")]
            rewards[env_id] = {r["task_id"]: r["reward"] for r in read_results(run_dir)}
    assert rewards[REMOTE] == rewards[CALC]
    assert sorted(rewards[CALC].values()) == [0.0, 0.0, 1.0, 1.0]


# --- a generic OpenEnv server (not agentgym's) ------------------------------------------------


class EchoAction(Action):
    message: str


class EchoObservation(Observation):
    echoed: str = ""
    seed: int | None = None


class EchoEnvironment(Environment[EchoAction, EchoObservation, State]):
    """Echoes the message; reward = its length; done after two steps."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State()
        self._seed: int | None = None

    def reset(self, seed: int | None = None, episode_id: str | None = None,
              **kwargs: Any) -> EchoObservation:
        self._state, self._seed = State(episode_id=episode_id), seed
        return EchoObservation(echoed="", seed=seed)

    def step(self, action: EchoAction, timeout_s: float | None = None,
             **kwargs: Any) -> EchoObservation:
        self._state.step_count += 1
        return EchoObservation(echoed=action.message, seed=self._seed,
                               reward=float(len(action.message)),
                               done=self._state.step_count >= 2)

    @property
    def state(self) -> State:
        return self._state


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    import socket
    import threading

    import uvicorn

    app = create_fastapi_app(EchoEnvironment, EchoAction, EchoObservation, max_concurrent_envs=4)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)


def test_a_generic_openenv_server_plays_as_an_agentgym_env(echo_url) -> None:
    env = agentgym.make(REMOTE, base_url=echo_url, split="eval", num_tasks=3)
    try:
        assert [t.id for t in env.tasks] == ["eval-seed-0", "eval-seed-1", "eval-seed-2"]
        obs, info = env.reset(options={"task_id": "eval-seed-1"})
        assert json.loads(obs[-1]["content"])["seed"] == 1_000_001
        obs, reward, terminated, truncated, _ = env.step("hello")
        assert (reward, terminated) == (0.0, False)
        assert json.loads(obs[-1]["content"])["echoed"] == "hello"
        assert obs[-2] == {"role": "assistant", "content": "hello"}
        obs, reward, terminated, truncated, info = env.step("abc")
        assert (reward, terminated, truncated) == (8.0, True, False)  # 5 + 3: the step sum
        trajectory = env.trajectory()
        assert trajectory.reward == 8.0 and len(trajectory.turns) == 2
        assert not math.isnan(reward)
    finally:
        env.close()


def test_agentgym_train_runs_on_the_client_env(tracked_id, tmp_path: Path) -> None:
    """GRPO (tiny random model, 2 steps) trains through an OpenEnv server: every episode is
    played remotely and scored by the server, and the turns carry the policy's token ids."""
    require_train_stack()
    from agentgym.trainers.cli import run_training

    with running_server(tracked_id, {"tools": []}) as server:
        run = run_training("trainers/configs/smoke.yaml", {
            "env_id": REMOTE, "env_kwargs": {"base_url": server.base_url}, "max_steps": 2,
            "num_generations": 2, "tasks_per_step": 2, "max_completion_length": 8,
            "save_steps": 2, "output_dir": str(tmp_path)})
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["episodes"] == 4 and m["dropped_groups"] == 0 for m in metrics)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["error"] is None and s["reward"] in (0.0, 1.0) for s in samples)
    assert all(s["turns"][0]["completion_token_ids"] for s in samples)
    assert len(TrackedToy.torn_down) == 8  # every episode ran in the server's env
