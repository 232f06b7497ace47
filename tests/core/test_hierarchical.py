"""Hierarchical agents (agentgym/hierarchical.py): planner sub-goals reach the executor over
HTTP, tool calls run, each level's tokens have their own loss mask, the episode's reward
trains the chosen level (a GRPO step with train_level planner).

The policies are real OpenAI-compatible HTTP servers (StubServer) with scripted replies; the
trained level in the token tests is the embedded engine on the tiny smoke model.
"""

import asyncio
import json

import pytest

import agentgym
from agentgym.hierarchical import (
    PLAN_NOTE,
    SUBGOAL_PREFIX,
    HierarchicalPolicy,
    HierarchySettings,
    level_sequence,
    parse_subgoals,
    trained_view,
    turn_levels,
    with_subgoals,
)
from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.policy import SamplingParams
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.testing.stub_server import StubServer
from agentgym.tokens import build_token_sequence
from tests.gates import require_train_stack

TASK_ID = "calc-train-3"


def calculator_env():
    return with_subgoals(agentgym.make("agentgym/Calculator-v0", split="train", demos=0,
                                       num_tasks=10), max_subgoals=3)


def planner_script(expression):
    def planner(request):
        assert PLAN_NOTE in request["messages"][0]["content"]
        return f"1. Compute {expression} with the calculator\n2. Give the final answer"
    return planner


def executor_script(request):
    """Calls calculate on sub-goal 1's expression, reports its result, then answers."""
    messages = request["messages"]
    last = messages[-1]
    results = [m["content"] for m in messages if m["role"] == "tool"]
    if last["role"] == "tool":
        return f"The result is {last['content']}."
    goal = last["content"]
    if goal.startswith(f"{SUBGOAL_PREFIX}1 of 2: Compute "):
        expression = goal.split("Compute ", 1)[1].split(" with", 1)[0]
        return {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "calculate",
                          "arguments": json.dumps({"expression": expression})}}]}
    return f"<answer>{results[-1]}</answer>"


def test_planner_subgoals_reach_the_executor_and_its_tool_calls_run():
    env = calculator_env()
    task = next(t for t in env.tasks if t.id == TASK_ID)
    executor_chats = []

    def executor(request):
        executor_chats.append(request["messages"])
        return executor_script(request)

    with StubServer(planner_script(task.metadata["expression"])) as planner_server, \
            StubServer(executor) as executor_server:
        async def play():
            policy = HierarchicalPolicy(OpenAIPolicy(planner_server.base_url, "planner"),
                                        OpenAIPolicy(executor_server.base_url, "executor"))
            engine = RolloutEngine(calculator_env, policy, RolloutConfig(
                sampling=SamplingParams(seed=0)))
            trajectory = await engine.run_episode({"task_id": TASK_ID})
            await engine.aclose()
            return trajectory, policy.calls

        trajectory, calls = asyncio.run(play())
    assert trajectory.error is None and trajectory.reward == 1.0
    assert planner_server.requests == 1 and calls == {"planner": 1, "executor": 3}
    goals = [m["content"] for m in executor_chats[0] if m["role"] == "user"]
    assert goals[-1] == (f"{SUBGOAL_PREFIX}1 of 2: Compute {task.metadata['expression']} "
                         "with the calculator")
    assert executor_chats[-1][-1]["content"] == f"{SUBGOAL_PREFIX}2 of 2: Give the final answer"
    tool_turn = trajectory.turns[1]
    assert tool_turn.tool_calls[0].name == "calculate"
    assert tool_turn.tool_results[0].content == task.metadata["answer_exact"]
    assert turn_levels(trajectory) == ["planner", "executor", "executor", "executor"]
    assert trajectory.final_text == f"<answer>{task.metadata['answer_exact']}</answer>"


def test_subgoal_parsing_and_settings():
    assert parse_subgoals("Plan:\n1. add\n2) check\n- answer\nthanks", 5) == \
        ["add", "check", "answer"]
    assert parse_subgoals("1. a\n2. b\n3. c", 2) == ["a", "b"]
    assert parse_subgoals("just do it", 3) == ["just do it"]
    assert parse_subgoals("  ", 3) == ["Solve the task."]
    assert HierarchySettings.from_dict(
        {"train_level": "executor", "fixed": {"base_url": "http://x/v1"}}).max_subgoals == 3
    with pytest.raises(ValueError, match="train_level"):
        HierarchySettings(train_level="critic", fixed={"base_url": "http://x/v1"})
    with pytest.raises(ValueError, match="fixed"):
        HierarchySettings(train_level="planner")
    with pytest.raises(ValueError, match="unknown hierarchy settings"):
        HierarchySettings.from_dict({"train_levle": "planner"})
    with pytest.raises(ValueError, match="train_level"):
        HierarchicalPolicy(None, None, "both")


def digit_env():
    from agentgym.trainers.smoke import DigitEnv

    return with_subgoals(DigitEnv(), max_subgoals=2)


def echo_executor(request):
    """Echoes the requested digit once per character of its sub-goal when that has even
    length, else writes "x": the reward depends on the planner's text only."""
    messages = request["messages"]
    digit = next(c for m in messages if m["role"] == "user"
                 and not m["content"].startswith(SUBGOAL_PREFIX) for c in m["content"]
                 if c.isdigit())
    goal = messages[-1]["content"].split(": ", 1)[1]
    return digit * len(goal) if len(goal) % 2 == 0 else "x"


def tiny_engine():
    from agentgym.policies.hf_engine import HFEngine
    from agentgym.trainers.smoke import char_tokenizer, tiny_model

    tokenizer = char_tokenizer()
    return HFEngine(tiny_model(tokenizer, seed=0), tokenizer, max_batch_size=8)


def play_levels(train_level, fixed_server):
    async def play():
        trained = tiny_engine()
        fixed = OpenAIPolicy(fixed_server.base_url, "fixed")
        planner, executor = (trained, fixed) if train_level == "planner" else (fixed, trained)
        policy = HierarchicalPolicy(planner, executor, train_level)
        engine = RolloutEngine(digit_env, policy, RolloutConfig(
            group_size=3, sampling=SamplingParams(max_tokens=8, seed=1)))
        group = await engine.run_group("digit-train-0-7")
        await engine.aclose()
        await policy.aclose()
        return group

    return asyncio.run(play())


@pytest.mark.parametrize("train_level", ["planner", "executor"])
def test_each_level_has_its_own_loss_mask(train_level):
    require_train_stack()
    if train_level == "planner":
        fixed = echo_executor
    else:
        def fixed(request):
            return "1. Say 7"  # one sub-goal: the tiny model's context is 256 characters
    with StubServer(fixed) as server:
        group = play_levels(train_level, server)
    for trajectory in group.trajectories:
        assert trajectory.error is None, trajectory.error
        levels = turn_levels(trajectory)
        assert levels[0] == "planner" and set(levels[1:]) == {"executor"}
        plan = trajectory.turns[0].assistant["content"]
        assert len(trajectory.turns) == 1 + len(parse_subgoals(plan, 2))  # one reply per goal
        full = build_token_sequence(trajectory)  # both levels' tokens are in the sequence
        sequence = level_sequence(trajectory, train_level)
        assert sequence.response_ids == full.response_ids
        trained = [t for t, level in zip(trajectory.turns, levels, strict=True)
                   if level == train_level]
        fixed_turns = [t for t in trajectory.turns if t not in trained]
        masked = [i for i, m in zip(sequence.response_ids, sequence.loss_mask, strict=True) if m]
        assert masked == [i for t in trained for i in t.completion_token_ids]
        assert all(t.weight_version == ("executor" if train_level == "planner" else "planner")
                   for t in fixed_turns)  # re-encoded fixed replies, tagged with their level
        assert all(lp < 0 for t in trained for lp in t.logprobs)  # sampled by the trained model
        view = build_token_sequence(trained_view(trajectory, train_level))
        assert [i for i, m in zip(view.response_ids, view.loss_mask, strict=True) if m] == masked


def test_grpo_step_trains_the_planner_on_the_episode_reward(tmp_path):
    require_train_stack()
    from agentgym.trainers.grpo import GRPOConfig, train

    with StubServer(echo_executor) as server:
        config = GRPOConfig(
            model="tiny", env_id="agentgym.trainers.smoke:DigitEnv", engine="hf", lora=False,
            num_generations=4, tasks_per_step=2, max_completion_length=8, max_steps=1,
            micro_batch_size=8, learning_rate=1e-3, save_steps=1, report_to=[],
            output_dir=str(tmp_path), run_name="hier",
            hierarchy={"train_level": "planner", "max_subgoals": 2,
                       "fixed": {"base_url": server.base_url, "model": "executor"}})
        run = train(config)
        executor_requests = server.requests
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert executor_requests >= 8  # every episode's sub-goals went to the executor over HTTP
    assert row["episodes"] == 8 and row["dropped_groups"] == 0
    assert 0 <= row["reward/digit_share"] <= 1
    assert row["zero_variance_groups"] < 2 and row["grad_norm"] > 0  # the reward reached it
    assert 0 < row["policy_tokens"] <= 8 * 8  # only planner tokens (<= 8 per episode) trained
