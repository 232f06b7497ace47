"""The tool simulator (an LLM as a world model of the tools) against a real HTTP endpoint.

The simulator is a StubServer (a real OpenAI-compatible server on 127.0.0.1) with scripted
predictions: tests check that the prompt carries the schema, the call and the history, that the
prediction replaces the real tool, that simulated episodes are marked, that a failed prediction
is an error record, and that fidelity counts matches per tool as computed by hand.
"""

from __future__ import annotations

import json
import math
import socket

import pytest
from typer.testing import CliRunner

import agentgym
from agentgym.testing import ToyEnv, add
from agentgym.testing.stub_server import StubServer
from agentgym.tools import tool
from agentgym.trajectory_io import TrajectoryWriter, read_trajectories
from agentgym.types import Task, ToolCall, ToolResult, Trajectory, Turn
from agentgym.world_model import SimulatorError, ToolSimulator, fidelity, normalise
from agentgym.world_model.cli import app

CALL = '<tool_call>{"name": "calculate", "arguments": {"expression": "2+2"}}</tool_call>'


def user_text(request):
    return request["messages"][-1]["content"]


def settings(server, **extra):
    return {"base_url": server.base_url, "model": "sim", "max_retries": 0, "timeout_s": 30,
            **extra}


def test_simulated_calculator_answers_with_the_prediction_and_is_marked():
    seen = []

    def predict(request):
        seen.append(user_text(request))
        return "5"  # the real tool would say 4: the episode must see the prediction

    with StubServer(predict) as server:
        env = agentgym.make("agentgym/Calculator-v0", split="eval", num_tasks=3,
                            simulate_tools=settings(server))
        try:
            obs, info = env.reset(options={"task_index": 0})
            assert info["simulated"] is True
            obs, reward, terminated, _, info = env.step(CALL)
            assert obs[-1]["role"] == "tool" and obs[-1]["content"] == "5"
            assert info["simulated"] is True and not terminated
            env.step("<answer>5</answer>")
            trajectory = env.trajectory()
        finally:
            env.close()
    assert server.requests == 1
    prompt = seen[0]
    assert '"name": "calculate"' in prompt  # the schema
    assert 'calculate({"expression": "2+2"})' in prompt  # the call
    question = env.tasks[0].prompt[-1]["content"]
    assert question[:40] in prompt  # the history
    assert trajectory.reward_components["simulated"] == 1.0
    assert trajectory.turns[0].tool_results[0].content == "5"


def test_real_env_is_not_marked_and_runs_the_tool():
    env = agentgym.make("agentgym/Calculator-v0", split="eval", num_tasks=3)
    try:
        _, info = env.reset(options={"task_index": 0})
        obs, *_, info = env.step(CALL)
        assert obs[-1]["content"] == "4" and "simulated" not in info
    finally:
        env.close()


def test_bad_arguments_are_rejected_without_asking_the_simulator():
    with StubServer(lambda request: "5") as server:
        env = agentgym.make("agentgym/Calculator-v0", num_tasks=2,
                            simulate_tools=settings(server))
        try:
            env.reset(options={"task_index": 0})
            obs, *_ = env.step('<tool_call>{"name": "calculate", "arguments": {"x": 1}}'
                               '</tool_call>')
        finally:
            env.close()
    assert server.requests == 0 and "invalid arguments" in obs[-1]["content"]


def test_an_empty_prediction_is_an_error_record_not_a_tool_result():
    with StubServer(lambda request: "  ") as server:
        env = agentgym.make("agentgym/Calculator-v0", num_tasks=2,
                            simulate_tools=settings(server))
        try:
            env.reset(options={"task_index": 0})
            with pytest.raises(SimulatorError, match="empty prediction"):
                env.step(CALL)
            trajectory = env.trajectory()
        finally:
            env.close()
    assert trajectory.error.type == "SimulatorError" and trajectory.error.blame == "infra"
    assert trajectory.reward is None
    assert not any(m["role"] == "tool" for m in trajectory.messages)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_simulator_endpoint_is_an_error_record():
    dead = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "sim",
            "max_retries": 0, "timeout_s": 20}
    env = agentgym.make("agentgym/Calculator-v0", num_tasks=2, simulate_tools=dead)
    try:
        env.reset(options={"task_index": 0})
        with pytest.raises(SimulatorError):
            env.step(CALL)
        assert env.trajectory().error.type == "SimulatorError"
    finally:
        env.close()


def test_invalid_settings_name_the_problem():
    with pytest.raises(ValueError, match="did you mean 'base_url'"):
        agentgym.make("agentgym/Calculator-v0", simulate_tools={"base_ur": "http://x/v1"})
    with pytest.raises(ValueError, match="model"):
        agentgym.make("agentgym/Calculator-v0", simulate_tools={"base_url": "http://x/v1"})
    with pytest.raises(ValueError, match="max_tokens must be an integer"):
        ToolSimulator.from_settings({"engine": "hf", "max_tokens": "many"})


def test_simulation_composes_with_a_rewards_section():
    with StubServer(lambda request: "4") as server:
        env = agentgym.make("agentgym/Calculator-v0", num_tasks=2, simulate_tools=settings(server),
                            rewards=[{"kind": "env", "name": "turns", "drop": True}])
        try:
            env.reset(options={"task_index": 0})
            env.step(CALL)
            env.step("<answer>4</answer>")
            components = env.trajectory().reward_components
        finally:
            env.close()
    assert components["simulated"] == 1.0 and "turns" not in components


@tool(inline=True)
def echo(text: str) -> str:
    """Repeat a text.

    Args:
        text: what to repeat.
    """
    return text


def toy_task():
    return Task(id="t0", prompt=({"role": "user", "content": "use the tools"},), answer=1.0)


def call_turn(index, calls):
    """A turn with (tool, arguments, real result, error_type) calls."""
    tool_calls = tuple(ToolCall(f"c{index}{k}", name, args) for k, (name, args, *_ ) in
                       enumerate(calls))
    results = tuple(ToolResult(c.id, c.name, real, error) for c, (_, _, real, error) in
                    zip(tool_calls, calls, strict=True))
    return Turn(index, {"role": "assistant", "content": f"turn {index}"}, tool_calls, results)


def hand_made_trajectories():
    """Six real calls (one of them a rejected call, not compared) with known predictions."""
    turns = (call_turn(0, [("add", {"a": 1, "b": 1}, "2", None),          # exact
                           ("add", {"a": 2, "b": 2}, "4.0", None)]),      # mismatch
             call_turn(1, [("echo", {"text": "x"}, '{"a": 1, "b": [1]}', None),  # normalised
                           ("echo", {"text": "y"}, "Hello  World", None),        # normalised
                           ("add", {"a": 9, "b": 9}, "bad args", "ToolArgumentError")]),
             call_turn(2, [("echo", {"text": "z"}, "zzz", None)]))           # simulator fails
    messages = [{"role": "user", "content": "use the tools"}]
    for turn in turns:
        messages.append(dict(turn.assistant))
        messages += [r.to_message() for r in turn.tool_results]
    return [Trajectory("toy/Toy-v0", "t0", tuple(messages), turns, terminated=True, reward=1.0)]


PREDICTIONS = {'add({"a": 1, "b": 1})': "2", 'add({"a": 2, "b": 2})': "4",
               'echo({"text": "x"})': '{"b":[1],"a":1}', 'echo({"text": "y"})': "hello world",
               'echo({"text": "z"})': ""}


def scripted_predictor(seen):
    def predict(request):
        text = user_text(request)
        seen.append(text)
        return next(v for k, v in PREDICTIONS.items() if k in text)
    return predict


def test_fidelity_counts_matches_per_tool_by_hand():
    seen = []
    env = ToyEnv(tasks=[toy_task()], tools=[add, echo], split="train")
    with StubServer(scripted_predictor(seen)) as server:
        simulator = ToolSimulator.from_settings(settings(server))
        report = env._runner.run(fidelity(env, hand_made_trajectories(), simulator))
    env.close()
    assert len(seen) == 5  # the rejected call is not predicted
    add_row, echo_row = report.per_tool["add"], report.per_tool["echo"]
    assert (add_row.n, add_row.exact, add_row.normalised, add_row.errors) == (2, 0.5, 0.5, 0)
    assert (echo_row.n, echo_row.exact, echo_row.normalised, echo_row.errors) == (2, 0.0, 1.0, 1)
    overall = report.overall
    assert (overall.n, overall.exact, overall.normalised, overall.errors) == (4, 0.25, 0.75, 1)
    low, high = overall.normalised_ci
    assert 0 <= low < 0.75 < high <= 1
    failed = [r for r in report.rows if r["error"] is not None]
    assert len(failed) == 1 and failed[0]["predicted"] is None
    assert failed[0]["error"]["type"] == "SimulatorError"
    # the history of turn 1 holds turn 0's real results, and stops at turn 1's assistant message
    turn1 = next(t for t in seen if 'echo({"text": "x"})' in t)
    assert "[tool add] 4.0" in turn1 and "turn 1" in turn1 and "turn 2" not in turn1


def test_normalise_folds_json_case_and_space():
    assert normalise('HTTP 200\n{"b": 1,  "a": [1, 2]}') == normalise('http 200\n{"a":[1,2],"b":1}')
    assert normalise("4") != normalise("4.0")


def test_fidelity_cli_prints_the_table_and_writes_the_report(tmp_path):
    path = tmp_path / "traj.jsonl"
    env = agentgym.make("agentgym/Calculator-v0", split="train", num_tasks=4)
    try:
        with TrajectoryWriter(path) as writer:
            for index in range(2):
                env.reset(options={"task_index": index})
                env.step('<tool_call>{"name": "calculate", "arguments": '
                         f'{{"expression": "{index}+40"}}}}</tool_call>')
                env.step("<answer>0</answer>")
                writer.write(env.trajectory())
    finally:
        env.close()

    def predict(request):  # right for 0+40, wrong for 1+40
        return "40" if '"0+40"' in user_text(request) else "42"

    with StubServer(predict) as server:
        result = CliRunner().invoke(app, [
            "fidelity", "agentgym/Calculator-v0", "--trajectories", str(path),
            "--base-url", server.base_url, "--model", "sim", "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "calculate" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["overall"]["n"] == 2 and report["overall"]["exact"] == 0.5
    assert not math.isnan(report["per_tool"]["calculate"]["exact_ci"][0])


def test_fidelity_cli_rejects_trajectories_of_another_split(tmp_path):
    path = tmp_path / "traj.jsonl"
    trajectory = Trajectory("agentgym/Calculator-v0", "calc-eval-0", (), ())
    with TrajectoryWriter(path) as writer:
        writer.write(trajectory)
    result = CliRunner().invoke(app, ["fidelity", "agentgym/Calculator-v0", "--trajectories",
                                      str(path), "--base-url", "http://127.0.0.1:9/v1",
                                      "--model", "m"])
    assert result.exit_code == 2 and "has no task 'calc-eval-0'" in result.output


def test_record_plays_reference_solutions_through_the_real_env(tmp_path):
    path = tmp_path / "demos.jsonl"
    result = CliRunner().invoke(app, ["record", "agentgym/Calculator-v0", "--out", str(path),
                                      "--num-examples", "3"])
    assert result.exit_code == 0, result.output
    trajectories = list(read_trajectories(path))
    env = agentgym.make("agentgym/Calculator-v0", split="train", num_tasks=3)
    answers = [t.metadata["answer_exact"] for t in env.tasks]
    env.close()
    assert [t.reward for t in trajectories] == [1.0, 1.0, 1.0]
    assert [t.turns[0].tool_results[0].content for t in trajectories] == answers
