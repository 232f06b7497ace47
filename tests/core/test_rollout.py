"""The rollout engine: groups, concurrency, deadlines, error isolation, token masks, JSONL."""

import asyncio
import math

import pytest

from agentgym.errors import (
    ErrorRecord,
    PolicyConnectionError,
    SandboxCrashedError,
    TokenizationDriftError,
)
from agentgym.policy import SamplingParams
from agentgym.rewards import GroupReward, Reward, Rubric, numeric_match
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.testing import FakePolicy, ToyEnv, byte_tokens
from agentgym.tokens import build_token_sequence
from agentgym.tools import tool
from agentgym.trajectory_io import TrajectoryWriter, read_trajectories, rescore

ADD = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'


def solver(messages, tools):
    """Calls add once, then answers with the tool's result."""
    if messages[-1]["role"] == "tool":
        return f"<answer>{messages[-1]['content']}</answer>"
    return ADD


async def test_group_of_g_episodes_with_rewards_and_masks():
    engine = RolloutEngine(ToyEnv, FakePolicy(responder=solver), RolloutConfig(group_size=4))
    [group] = await engine.run_groups(["sum-train-1"])
    assert len(group.trajectories) == 4 and not group.dropped
    assert group.rewards == [1.0] * 4  # 1 + 2 = 3 is the answer of task 1
    seq = build_token_sequence(group.trajectories[0])
    turns = group.trajectories[0].turns
    assert seq.prompt_ids == turns[0].prompt_token_ids
    policy_tokens = [t for t, m in zip(seq.response_ids, seq.loss_mask, strict=True) if m]
    assert policy_tokens == list(turns[0].completion_token_ids + turns[1].completion_token_ids)
    env_tokens = bytes(t for t, m in zip(seq.response_ids, seq.loss_mask, strict=True) if not m)
    assert env_tokens == b"<tool>3<end><assistant>"  # the tool result, never trained on
    assert all(lp == 0.0 for lp, m in zip(seq.logprobs, seq.loss_mask, strict=True) if not m)
    await engine.aclose()


async def test_concurrency_is_bounded():
    in_flight, peak = 0, 0

    class Counting(FakePolicy):
        async def generate(self, messages, tools, sampling):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await asyncio.sleep(0.01)
                return await super().generate(messages, tools, sampling)
            finally:
                in_flight -= 1

    engine = RolloutEngine(ToyEnv, Counting(responder=solver),
                           RolloutConfig(group_size=4, max_concurrent=3))
    groups = await engine.run_groups([f"sum-train-{i}" for i in range(5)])
    assert peak == 3 and len(groups) == 5
    assert len(engine._all_envs) == 3  # envs are pooled, one per slot


async def test_policy_failure_is_recorded_not_scored_zero():
    calls = 0

    def flaky(messages, tools):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise PolicyConnectionError("connection refused")
        return "3"

    engine = RolloutEngine(ToyEnv, FakePolicy(responder=flaky), RolloutConfig(group_size=3))
    [group] = await engine.run_groups(["sum-train-1"])
    assert group.dropped and group.rewards.count(None) == 1
    [error] = group.errors
    assert error == ErrorRecord("PolicyConnectionError", "infra", "connection refused")


async def test_resample_replaces_failed_members():
    calls = 0

    def flaky(messages, tools):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise PolicyConnectionError("blip")
        return "3"

    config = RolloutConfig(group_size=2, on_infra_error="resample", max_resamples=2)
    engine = RolloutEngine(ToyEnv, FakePolicy(responder=flaky), config)
    [group] = await engine.run_groups(["sum-train-1"])
    assert not group.dropped and group.rewards == [1.0, 1.0]


async def test_turn_deadline_becomes_an_episode_timeout_error():
    slow = FakePolicy(responder=solver, delay_s=1.0)
    engine = RolloutEngine(ToyEnv, slow, RolloutConfig(turn_timeout_s=0.05))
    trajectory = await engine.run_episode({"task_index": 0})
    assert trajectory.error.type == "EpisodeTimeoutError" and trajectory.reward is None
    assert "policy turn exceeded 0.05s" in trajectory.error.message


async def test_episode_deadline():
    engine = RolloutEngine(lambda: ToyEnv(max_turns=1000),
                           FakePolicy(responder=lambda m, t: ADD, delay_s=0.01),
                           RolloutConfig(episode_timeout_s=0.1))
    trajectory = await engine.run_episode({"task_index": 0})
    assert trajectory.error.type == "EpisodeTimeoutError" and len(trajectory.turns) >= 2


async def test_sandbox_crash_in_a_tool_is_an_infra_error():
    @tool
    def run(code: str) -> str:
        """Run code.

        Args:
            code: the code.
        """
        raise SandboxCrashedError("runner died")

    call = '<tool_call>{"name": "run", "arguments": {"code": "1"}}</tool_call>'
    engine = RolloutEngine(lambda: ToyEnv(tools=[run]), FakePolicy(responder=lambda m, t: call))
    trajectory = await engine.run_episode({"task_index": 0})
    assert trajectory.error.type == "SandboxCrashedError" and trajectory.reward is None
    # the env is reusable afterwards
    trajectory = await engine.run_episode({"task_index": 0})
    assert trajectory.error.type == "SandboxCrashedError"


async def test_unknown_task_fails_before_the_episode_starts():
    engine = RolloutEngine(ToyEnv, FakePolicy(responder=solver))
    trajectory = await engine.run_episode({"task_id": "nope"})
    assert (trajectory.error.type, trajectory.error.blame) == ("KeyError", "infra")
    assert trajectory.task_id == "nope" and trajectory.error.status_code is None


async def test_group_rewards_see_the_whole_group():
    def rank_by_length(trajectories, task):
        lengths = [len(t.final_text) for t in trajectories]
        return [float(n == min(lengths)) for n in lengths]

    replies = iter(["3", "<answer>3</answer>", "three"])
    rubric = Rubric([Reward("correct", numeric_match),
                     GroupReward("shortest", rank_by_length, weight=0.5)])
    engine = RolloutEngine(lambda: ToyEnv(rubric=rubric),
                           FakePolicy(responder=lambda m, t: next(replies)),
                           RolloutConfig(group_size=3, max_concurrent=1))
    [group] = await engine.run_groups(["sum-train-1"])
    assert group.rewards == [1.5, 1.0, 0.0]
    assert [t.reward_components["shortest"] for t in group.trajectories] == [1.0, 0.0, 0.0]


async def test_failed_group_reward_marks_the_group():
    def broken(trajectories, task):
        return [1.0]  # wrong length

    rubric = Rubric([Reward("correct", numeric_match), GroupReward("broken", broken)])
    engine = RolloutEngine(lambda: ToyEnv(rubric=rubric), FakePolicy(responder=solver),
                           RolloutConfig(group_size=2))
    [group] = await engine.run_groups(["sum-train-1"])
    assert group.dropped and all(t.reward is None and t.error for t in group.trajectories)


async def test_jsonl_round_trip_and_offline_rescoring(tmp_path):
    path = tmp_path / "runs" / "traj.jsonl"
    with TrajectoryWriter(path) as writer:
        engine = RolloutEngine(ToyEnv, FakePolicy(responder=solver),
                               RolloutConfig(group_size=2), writer=writer)
        groups = await engine.run_groups(["sum-train-1", "sum-train-2"])
    written = list(read_trajectories(path))
    assert len(written) == 4 and writer.count == 4
    originals = [t for g in groups for t in g.trajectories]
    assert sorted(written, key=repr) == sorted(originals, key=repr)

    strict = ToyEnv(rubric=Rubric([Reward("correct", numeric_match),
                                   Reward("one_turn", lambda t, task: float(len(t.turns) == 1))]))
    rescored = await rescore(written, strict)
    assert [t.reward for t in rescored] == [t.reward for t in written]  # task 2 stays wrong
    assert all(t.reward_components["one_turn"] == 0.0 for t in rescored)


def test_torn_last_line_is_skipped_and_unknown_schema_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    env = ToyEnv()
    env.reset(seed=0)
    env.step("1")
    with TrajectoryWriter(path) as writer:
        writer.write(env.trajectory())
    with path.open("a") as file:
        file.write('{"schema_version": 1, "env_')
    assert len(list(read_trajectories(path))) == 1
    path.write_text('{"schema_version": 99}\n')
    with pytest.raises(ValueError, match="schema_version 99 is not supported"):
        list(read_trajectories(path))


async def test_template_drift_is_caught():
    env = ToyEnv()
    policy = FakePolicy(responder=solver)
    obs, info = await env.areset(options={"task_index": 1})
    [first] = await policy.generate(obs, info["tools"], SamplingParams())
    obs, *_ = await env.astep(first.to_action())
    [second] = await policy.generate(obs, info["tools"], SamplingParams())
    drifted = second.to_action()
    drifted["prompt_token_ids"] = [7] + drifted["prompt_token_ids"][1:]  # history rewritten
    await env.astep(drifted)
    with pytest.raises(TokenizationDriftError, match="first difference at token 0"):
        build_token_sequence(env.trajectory())


async def test_text_only_policies_cannot_be_trained_on():
    env = ToyEnv()
    await env.areset(seed=0)
    await env.astep("1")
    with pytest.raises(TokenizationDriftError, match="has no token ids"):
        build_token_sequence(env.trajectory())
    assert math.isfinite(env.trajectory().reward)
    assert byte_tokens("a") == (97,)


class ContinuingPolicy(FakePolicy):
    """A FakePolicy that declares token continuation and records the prefixes it is given."""

    accepts_prefix_ids = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefixes = []

    async def generate(self, messages, tools, sampling, *, prefix_ids=None):
        self.prefixes.append(prefix_ids)
        return await super().generate(messages, tools, sampling)


async def test_later_turns_get_the_previous_turns_token_ids_when_the_policy_takes_them():
    policy = ContinuingPolicy(responder=solver)
    engine = RolloutEngine(ToyEnv, policy, RolloutConfig(group_size=1))
    [group] = await engine.run_groups(["sum-train-1"])
    first = group.trajectories[0].turns[0]
    assert policy.prefixes == [None, first.prompt_token_ids + first.completion_token_ids]
    # A policy without the flag is called with the plain protocol (FakePolicy takes no prefix).
    plain_engine = RolloutEngine(ToyEnv, FakePolicy(responder=solver), RolloutConfig(group_size=1))
    [plain] = await plain_engine.run_groups(["sum-train-1"])
    assert len(plain.trajectories[0].turns) == 2
    await engine.aclose()
    await plain_engine.aclose()
