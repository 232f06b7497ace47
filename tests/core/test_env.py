"""The environment contract, exercised with the shipped fakes (ToyEnv, FakePolicy)."""

import asyncio
import math

import pytest

from agentgym.errors import InvalidActionError, JudgeError, ResetNeededError, SandboxCrashedError
from agentgym.policy import SamplingParams
from agentgym.rewards import Reward, Rubric
from agentgym.testing import FakePolicy, ToyEnv, byte_tokens
from agentgym.tools import tool

ADD_CALL = '<tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call>'


async def play(env, policy, **reset_kwargs):
    """Drive one episode; return the last step's (reward, terminated, truncated, info)."""
    obs, info = await env.areset(**reset_kwargs)
    while True:
        [completion] = await policy.generate(obs, info["tools"], SamplingParams())
        obs, reward, terminated, truncated, info = await env.astep(completion.to_action())
        if terminated or truncated:
            return reward, terminated, truncated, info


async def test_tool_call_then_answer_earns_the_reward():
    env = ToyEnv()
    policy = FakePolicy(responder=lambda messages, tools: (
        "The answer is 3." if messages[-1]["role"] == "tool" else ADD_CALL))
    tasks = {t.id: t for t in env.tasks}
    # a task whose answer is 3 does not exist; pick task 1 (1 + 2 = 3)
    reward, terminated, truncated, info = await play(env, policy,
                                                     options={"task_id": "sum-train-1"})
    assert tasks["sum-train-1"].answer == 3.0
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["reward_components"] == {"correct": 1.0} and info["turn"] == 2
    trajectory = env.trajectory()
    assert trajectory.reward == 1.0 and trajectory.terminated
    assert [m["role"] for m in trajectory.messages] == ["user", "assistant", "tool", "assistant"]
    assert trajectory.messages[2]["content"] == "7"
    assert trajectory.turns[0].tool_results[0].content == "7"


async def test_policy_token_data_is_kept_on_the_turn():
    env = ToyEnv()
    policy = FakePolicy(["It is 1."], weight_version=4)
    await play(env, policy, options={"task_index": 0})
    [turn] = env.trajectory().turns
    assert turn.completion_token_ids == byte_tokens("It is 1.<end>")
    assert len(turn.logprobs) == len(turn.completion_token_ids) and turn.weight_version == 4
    assert turn.prompt_token_ids  # the fake policy reports its prompt tokens


async def test_malformed_and_unknown_calls_do_not_end_the_episode():
    env = ToyEnv(max_turns=5)
    script = ["<tool_call>{not json}</tool_call>",
              '<tool_call>{"name": "multiply", "arguments": {}}</tool_call>',
              '<tool_call>{"name": "add", "arguments": {"a": "x"}}</tool_call>',
              "1"]
    reward, terminated, truncated, _ = await play(env, FakePolicy(script),
                                                  options={"task_index": 0})
    tool_messages = [m["content"] for m in env.trajectory().messages if m["role"] == "tool"]
    assert "not valid JSON" in tool_messages[0]
    assert "unknown tool 'multiply'" in tool_messages[1]
    assert "invalid arguments for 'add'" in tool_messages[2]
    assert (reward, terminated, truncated) == (1.0, True, False)  # task 0 is 0 + 1


async def test_turn_budget_truncates():
    env = ToyEnv(max_turns=3)
    policy = FakePolicy(responder=lambda m, t: ADD_CALL)
    reward, terminated, truncated, info = await play(env, policy)
    assert (terminated, truncated, info["turn"]) == (False, True, 3)
    assert reward == 0.0 and env.trajectory().truncated  # no answer given: a model failure


async def test_token_budget_truncates():
    env = ToyEnv(max_turns=50, max_tokens=100)
    _, terminated, truncated, info = await play(env, FakePolicy(responder=lambda m, t: ADD_CALL))
    assert truncated and not terminated and info["turn"] == 2  # 72 byte-tokens per turn


async def test_wall_time_budget_truncates():
    env = ToyEnv(max_turns=50, max_seconds=0.05)
    policy = FakePolicy(responder=lambda m, t: ADD_CALL, delay_s=0.03)
    _, terminated, truncated, info = await play(env, policy)
    assert truncated and not terminated and info["turn"] < 50


async def test_follow_up_user_turns_continue_the_dialogue():
    env = ToyEnv(follow_ups=[{"role": "user", "content": "And now say it again."}])
    reward, terminated, _, _ = await play(env, FakePolicy(["1", "still 1"]),
                                          options={"task_index": 0})
    roles = [m["role"] for m in env.trajectory().messages]
    assert roles == ["user", "assistant", "user", "assistant"] and terminated and reward == 1.0


async def test_step_before_reset_and_after_end_is_refused():
    env = ToyEnv()
    with pytest.raises(ResetNeededError):
        await env.astep("hi")
    await env.areset(seed=0)
    await env.astep("done")
    with pytest.raises(ResetNeededError):
        await env.astep("again")


@pytest.mark.parametrize("action", [42, {"role": "user", "content": "x"}, {"content": 5},
                                    {"content": "x", "tool_calls": "add"}])
async def test_invalid_actions_are_rejected(action):
    env = ToyEnv()
    await env.areset(seed=0)
    with pytest.raises(InvalidActionError):
        await env.astep(action)


async def test_a_failed_reward_is_an_error_not_a_zero():
    def judge(trajectory, task):
        raise JudgeError("judge endpoint returned 503")

    env = ToyEnv(rubric=Rubric([Reward("judge", judge)]))
    await env.areset(seed=0)
    _, reward, terminated, _, info = await env.astep("1")
    assert terminated and math.isnan(reward)
    assert info["error"].type == "JudgeError" and info["error"].blame == "infra"
    assert env.trajectory().reward is None and env.trajectory().error == info["error"]


async def test_infra_failure_in_a_tool_propagates_and_is_recorded():
    @tool
    def run_code(code: str) -> str:
        """Run code.

        Args:
            code: the code.
        """
        raise SandboxCrashedError("container died")

    released = []

    class Env(ToyEnv):
        async def teardown_episode(self):
            released.append(True)

    env = Env(tools=[run_code])
    await env.areset(seed=0)
    with pytest.raises(SandboxCrashedError):
        await env.astep('<tool_call>{"name": "run_code", "arguments": {"code": "1"}}</tool_call>')
    assert env.trajectory().error.blame == "infra" and released == [True]
    with pytest.raises(ResetNeededError):
        await env.astep("x")


def test_sync_api_and_fresh_objects_every_call():
    env = ToyEnv()
    obs1, info1 = env.reset(seed=1)
    obs2, _, _, _, info2 = env.step(ADD_CALL)
    assert obs2[: len(obs1)] == obs1 and obs1 is not obs2 and obs1[0] is not obs2[0]
    assert info1["tools"] is not info2["tools"]
    obs1.append({"role": "user", "content": "tampered"})
    obs3, *_ = env.step("3")
    assert "tampered" not in str(obs3)
    env.close()
    env.close()  # idempotent


def test_seeded_reset_is_reproducible():
    env = ToyEnv()
    first = [env.reset(seed=s)[1]["task_id"] for s in range(5)]
    assert first == [env.reset(seed=s)[1]["task_id"] for s in range(5)]
    assert env.reset(options={"task_id": "sum-train-7"})[1]["task_id"] == "sum-train-7"
    with pytest.raises(KeyError, match="no task 'nope'"):
        env.reset(options={"task_id": "nope"})


async def test_sync_step_works_inside_a_running_loop():
    env = ToyEnv()  # e.g. a notebook: the sync API must not fail under a running loop
    obs, _ = env.reset(seed=0)
    assert obs and asyncio.get_running_loop()
    env.close()


def test_episode_end_tool_terminates():
    class SubmitEnv(ToyEnv):
        @tool
        def submit(self, answer: float) -> str:
            """Submit the final answer.

            Args:
                answer: the number.
            """
            self.end_episode()
            return "submitted"

    env = SubmitEnv(tools=None)
    env._given_tools = [env.submit]
    env.reset(options={"task_index": 0})
    _, _, terminated, truncated, info = env.step(
        '<tool_call>{"name": "submit", "arguments": {"answer": 1}}</tool_call>')
    assert terminated and not truncated and "reward_components" in info


def test_truncate_from_outside_scores_the_episode_as_truncated() -> None:
    env = ToyEnv()
    env.reset(seed=0)
    env.step({"role": "assistant", "content": "",
              "tool_calls": [{"id": "c1", "type": "function",
                              "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]})
    trajectory = env.truncate()
    assert trajectory.truncated and not trajectory.terminated
    assert trajectory.reward == 0.0 and trajectory.error is None
    with pytest.raises(ResetNeededError):
        env.step({"role": "assistant", "content": "3"})
    env.close()
