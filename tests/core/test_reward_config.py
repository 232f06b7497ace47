"""Rewards from configuration (agentgym.rewards.config): validation, env terms kept /
reweighted / replaced, judges over HTTP (a real StubServer on 127.0.0.1) with caching,
bounded concurrency and deadlines, self-feedback, shaping, and the eval CLI flag."""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import re
import threading
import time

import pytest
from gates import require_train_stack
from typer.testing import CliRunner

import agentgym
from agentgym.policy import SamplingParams
from agentgym.rewards.config import (
    JudgeClient,
    RewardsConfig,
    attach_rewards,
    judge_client,
    load_rewards_file,
)
from agentgym.testing.stub_server import StubServer

CALC = "agentgym/Calculator-v0"


def tool_progress(state, task):
    """A potential for the shaping tests: 0.5 once a tool answered."""
    return 0.5 if any(m.get("role") == "tool" for m in state) else 0.0


def play_calculator(env, *, logprobs=None, solve=True):
    """Reset task 0, call the tool with the right expression (or not), then answer."""
    env.reset(options={"task_index": 0})
    expression = env.task.metadata.get("expression", "1+1")
    answer = env.task.answer if solve else -1
    call = {"id": "c1", "type": "function",
            "function": {"name": "calculate", "arguments": json.dumps({"expression": expression})}}
    env.step({"role": "assistant", "content": "", "tool_calls": [call]})
    action = {"role": "assistant", "content": f"<answer>{answer}</answer>"}
    if logprobs is not None:
        action |= {"logprobs": logprobs, "completion_token_ids": list(range(len(logprobs)))}
    _, reward, terminated, _, info = env.step(action)
    assert terminated
    return reward, info


def judge_term(server, **extra):
    return {"kind": "judge", "base_url": server.base_url, "model": "judge", "max_retries": 0,
            **extra}


# --- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ([{"kind": "judg"}], r"unknown kind 'judg' \(did you mean 'judge'\?\)"),
    ([{"kind": "judge", "base_ur": "http://x"}],
     r"unknown key 'base_ur' \(did you mean 'base_url'"),
    ([{"kind": "judge", "rubric": "be nice"}], r"give base_url: .* or engine: hf"),
    ([{"kind": "judge", "base_url": "http://127.0.0.1:1/v1", "rubric": "x"}], "needs model:"),
    ([{"kind": "judge", "engine": "vlm", "rubric": "x"}], r"engine must be 'hf'"),
    ([{"kind": "confidence", "weight": "high"}], "weight must be a finite number, got 'high'"),
    ([{"kind": "confidence", "weight": True}], "weight must be a finite number"),
    ([{"kind": "confidence", "weight": float("inf")}], "weight must be a finite number"),
    ([{"kind": "confidence"}, {"kind": "confidence"}], r"names must be unique, \['confidence'\]"),
    ([{"kind": "env", "name": "correct"}], r"give weight: .* or drop: true"),
    ([{"kind": "shaping", "potential": "magic"}], "potential must be 'judge'"),
    ([{"kind": "shaping", "potential": "m:f", "gamma": 1.5}], r"gamma must be in \(0, 1\]"),
    ([{"kind": "judge", "engine": "hf", "rubric": "a", "constitution": ["b"]}], "not both"),
    ([{"kind": "judge", "engine": "hf", "api_key_env": "AGENTGYM_NO_SUCH_KEY_VAR"}],
     "AGENTGYM_NO_SUCH_KEY_VAR .* is not set"),
    ([{"kind": "self_evaluation", "samples": 0}], "samples must be a positive integer"),
    ({"kind": "confidence"}, "must be a list of terms"),
    (["confidence"], r"rewards\[0\]: each term is a mapping"),
])
def test_invalid_specs_name_the_item_and_the_closest_key(spec, message):
    with pytest.raises(ValueError, match=message):
        RewardsConfig(spec)


def test_unknown_env_terms_suggest_the_closest_one():
    with pytest.raises(ValueError, match=r"has no reward term 'corect' \(did you mean 'correct'"):
        agentgym.make(CALC, rewards=[{"kind": "env", "name": "corect", "weight": 1}])
    with pytest.raises(ValueError, match="needs rubric: or constitution:"):
        agentgym.make(CALC, rewards=[{"kind": "judge", "engine": "hf"}])


# --- env terms and local terms ---------------------------------------------------------------

def test_env_terms_are_kept_reweighted_dropped_and_terms_added():
    env = agentgym.make(CALC, rewards=[
        {"kind": "env", "name": "correct", "weight": 0.5},
        {"kind": "env", "name": "turns", "drop": True},
        {"kind": "confidence", "weight": 2.0}])
    try:
        assert isinstance(env, agentgym.AgentEnv) and type(env).__name__ == "CalculatorEnv"
        weights = {r.name: r.weight for r in env.rubric.rewards}
        assert weights == {"correct": 0.5, "used_tool": 0.0, "valid_tool_call": 0.0,
                           "confidence": 2.0}
        reward, info = play_calculator(env, logprobs=[math.log(0.5)] * 4)
        assert info["reward_components"]["confidence"] == pytest.approx(0.5)
        assert reward == pytest.approx(0.5 * 1.0 + 2.0 * 0.5)
    finally:
        env.close()


def test_star_rule_turns_every_other_env_term_into_a_logged_metric():
    env = agentgym.make(CALC, rewards=[{"kind": "env", "name": "*", "weight": 0},
                                       {"kind": "env", "name": "used_tool", "weight": 1}])
    try:
        reward, info = play_calculator(env, solve=False)
        assert info["reward_components"]["correct"] == 0.0 and reward == 1.0  # used the tool
    finally:
        env.close()


def test_a_failing_term_is_an_error_on_the_trajectory_not_a_zero():
    env = agentgym.make(CALC, rewards=[{"kind": "confidence"}])  # no logprobs given
    try:
        reward, info = play_calculator(env)
        assert math.isnan(reward) and info["error"].type == "RewardError"
        assert "logprobs" in info["error"].message and env.trajectory().reward is None
    finally:
        env.close()


def test_mixtures_take_rewards_per_member():
    spec = [{"kind": "env", "name": "turns", "weight": 0.25}]
    with pytest.raises(ValueError, match="give the rewards list to its member envs"):
        agentgym.make("agentgym/Mixture-v0", envs={CALC: 1}, rewards=spec)
    mixture = agentgym.make("agentgym/Mixture-v0", envs={CALC: 1},
                            env_kwargs={CALC: {"rewards": spec}})
    try:
        weights = {r.name: r.weight for r in mixture.member(CALC).rubric.rewards}
        assert weights["turns"] == 0.25
    finally:
        mixture.close()


def test_load_rewards_file_reads_a_list_or_a_rewards_key(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- kind: confidence\n  weight: 0.5\n")
    keyed = tmp_path / "train.yaml"
    keyed.write_text("env_id: agentgym/Math-v0\nrewards:\n  - kind: confidence\n")
    assert load_rewards_file(listed) == [{"kind": "confidence", "weight": 0.5}]
    assert load_rewards_file(keyed) == [{"kind": "confidence"}]
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward:\n  - kind: confidence\n")
    with pytest.raises(ValueError, match=r"no 'rewards' key \(is 'reward' a typo of 'rewards'\?\)"):
        load_rewards_file(bad)


def test_equal_lists_share_one_config_and_it_pickles_as_its_list():
    spec = [{"kind": "confidence"}]
    first, second = agentgym.make(CALC, rewards=spec), agentgym.make(CALC, rewards=list(spec))
    try:
        assert first.rewards_config is second.rewards_config
        clone = pickle.loads(pickle.dumps(first.rewards_config))
        assert isinstance(clone, RewardsConfig) and clone.spec == spec
    finally:
        first.close()
        second.close()


# --- judges over HTTP ------------------------------------------------------------------------

def test_judge_with_a_rubric_text_scores_the_grade():
    with StubServer(lambda request: "Clear and correct.\nGRADE: 7/10") as server:
        env = agentgym.make(CALC, rewards=[
            judge_term(server, rubric="Reward replies that show the tool's result."),
            {"kind": "env", "name": "*", "weight": 0}])
        try:
            reward, info = play_calculator(env)
        finally:
            env.close()
        assert reward == pytest.approx(0.7) and info["reward_components"]["judge"] == 0.7
        assert server.requests == 1


def test_judge_with_a_constitution_maps_the_verdicts():
    seen = []

    def judge(request):
        seen.append(request["messages"][0]["content"])
        return "CRITERION 1: YES\nCRITERION 2: NO"

    with StubServer(judge) as server:
        env = agentgym.make(CALC, rewards=[judge_term(server, name="principles", constitution=[
            {"text": "Be honest.", "weight": 3}, "Be brief."])])
        try:
            _, info = play_calculator(env)
        finally:
            env.close()
    assert info["reward_components"]["principles"] == 0.75
    assert "1. Be honest.\n2. Be brief." in seen[0] and "[tool calculate]" in seen[0]


def test_judge_failures_are_error_records():
    with StubServer(lambda request: "I cannot decide.") as server:  # no GRADE line
        env = agentgym.make(CALC, rewards=[judge_term(server, rubric="x")])
        try:
            reward, info = play_calculator(env)
        finally:
            env.close()
    assert math.isnan(reward) and info["error"].type == "JudgeError"
    assert "GRADE" in info["error"].message
    with StubServer(lambda request: "unused") as gone:
        url = gone.base_url
    env = agentgym.make(CALC, rewards=[{"kind": "judge", "base_url": url, "model": "judge",
                                        "max_retries": 0, "rubric": "x"}])
    try:
        reward, info = play_calculator(env)
    finally:
        env.close()
    assert math.isnan(reward) and info["error"].type == "JudgeError"
    assert "PolicyConnectionError" in info["error"].message


def test_identical_requests_make_one_http_call():
    with StubServer(lambda request: "GRADE: 5/10") as server:
        spec = [judge_term(server, rubric="x")]
        envs = [agentgym.make(CALC, rewards=spec) for _ in range(3)]
        try:
            rewards = [play_calculator(env)[1]["reward_components"]["judge"] for env in envs]
            assert rewards == [0.5] * 3 and server.requests == 1  # same chat -> one call
            play_calculator(envs[0], solve=False)  # another chat -> a second call
            assert server.requests == 2
        finally:
            for env in envs:
                env.close()


def test_in_flight_requests_are_shared_and_concurrency_is_bounded():
    peak, lock = [0], threading.Lock()

    def slow(request):
        with lock:
            peak[0] = max(peak[0], len(server.connections))
        time.sleep(0.2)
        return "GRADE: 1/2"

    def client(bound):
        return judge_client({"base_url": server.base_url, "model": "judge",
                             "max_concurrent": bound, "max_retries": 0, "timeout_s": 60})

    async def ask(judge: JudgeClient, prompts):
        sampling = SamplingParams(temperature=0.0, max_tokens=8)
        return await asyncio.gather(*(judge.generate([{"role": "user", "content": p}], None,
                                                     sampling) for p in prompts))

    with StubServer(slow) as server:
        judge = client(2)
        answers = asyncio.run(ask(judge, [f"q{i % 4}" for i in range(8)]))
        assert all(a[0].text == "GRADE: 1/2" for a in answers)
        assert judge.calls == 4 and judge.hits == 4 and server.requests == 4
        assert peak[0] <= 2
        peak[0] = 0
        asyncio.run(ask(client(4), [f"other{i}" for i in range(4)]))
        assert peak[0] > 2  # the measure sees concurrency when the bound allows it


def test_a_judge_past_its_deadline_is_an_error():
    def stuck(request):
        time.sleep(1.5)
        return "GRADE: 1/1"

    with StubServer(stuck) as server:
        env = agentgym.make(CALC, rewards=[judge_term(server, rubric="x", timeout_s=0.3)])
        try:
            reward, info = play_calculator(env)
        finally:
            env.close()
    assert math.isnan(reward) and info["error"].type == "JudgeError"
    assert "no answer within 0.3 s" in info["error"].message


def test_an_embedded_engine_judge_reads_the_episode():
    """engine: hf runs the judge in-process (the prepared SmolLM2): whatever the tiny model
    writes is either mapped to a score or recorded as a JudgeError, never a silent 0."""
    require_train_stack()
    env = agentgym.make(CALC, rewards=[{"kind": "judge", "engine": "hf", "max_tokens": 12,
                                        "rubric": "Is the answer right?", "timeout_s": 600}])
    try:
        reward, info = play_calculator(env)
        client = env.rewards_config.client(env.rewards_config.terms[0])
    finally:
        env.close()
    assert client.calls == 1
    if math.isnan(reward):
        assert info["error"].type == "JudgeError" and "GRADE" in info["error"].message
    else:
        assert 0.0 <= info["reward_components"]["judge"] <= 1.0


# --- self-feedback ---------------------------------------------------------------------------

def test_self_evaluation_asks_the_bound_policy_and_fails_without_one():
    from agentgym.policies.openai_client import OpenAIPolicy

    config = RewardsConfig([{"kind": "self_evaluation", "samples": 2}])
    env = attach_rewards(agentgym.make(CALC), config)
    try:
        reward, info = play_calculator(env)
        assert math.isnan(reward) and "has no policy to ask" in info["error"].message
        with StubServer(lambda request: "Yes") as server:
            config.bind_policy(OpenAIPolicy(server.base_url, "policy", vllm_extras=False,
                                            max_retries=0))
            _, info = play_calculator(env)
            assert info["reward_components"]["self_evaluation"] == 1.0
            assert server.requests == 1
    finally:
        env.close()


def test_the_trainers_env_factory_validates_shares_and_binds_the_policy():
    require_train_stack()
    from agentgym.policies.openai_client import OpenAIPolicy
    from agentgym.trainers.common import TrainerConfig, make_env_factory

    with pytest.raises(ValueError, match=r"unknown kind 'confidense' \(did you mean"):
        make_env_factory(CALC, {}, [{"kind": "confidense"}])
    assert TrainerConfig().rewards is None
    with StubServer(lambda request: "Yes") as server:
        spec = [{"kind": "self_evaluation", "samples": 1}]
        for env_id in (CALC, "agentgym.tasks.calculator.env:CalculatorEnv"):
            # one HTTP client per event loop: each sync env here runs its own loop (the
            # trainer's rollout engine runs every env on one)
            policy = OpenAIPolicy(server.base_url, "policy", vllm_extras=False, max_retries=0)
            factory = make_env_factory(env_id, {"max_turns": 3}, spec, policy)
            first, second = factory(), factory()
            try:
                assert first.rewards_config is second.rewards_config and first.max_turns == 3
                _, info = play_calculator(first)
                assert info["reward_components"]["self_evaluation"] == 1.0
            finally:
                first.close()
                second.close()


# --- shaping ---------------------------------------------------------------------------------

def test_shaping_adds_the_discounted_potential_differences():
    env = agentgym.make(CALC, rewards=[
        {"kind": "shaping", "potential": f"{__name__}:tool_progress", "gamma": 0.9,
         "weight": 2.0}])
    try:
        reward, info = play_calculator(env)
    finally:
        env.close()
    components = info["reward_components"]
    # s0: the prompt (Phi 0); s1: after the tool call (Phi 0.5); s2: terminal (Phi 0)
    f0, f1 = 0.9 * 0.5 - 0.0, 0.9 * 0.0 - 0.5
    assert components["shaping"] == pytest.approx(f0 + 0.9 * f1)
    assert reward == pytest.approx(components["correct"] + 2.0 * (f0 + 0.9 * f1))
    # the per-turn record a token-level learner (PPO) places at each turn's end
    assert env.trajectory().turn_rewards == pytest.approx((2.0 * f0, 2.0 * 0.9 * f1))
    with pytest.raises(ValueError, match="cannot load the potential 'no_such_module:phi'"):
        agentgym.make(CALC, rewards=[{"kind": "shaping", "potential": "no_such_module:phi"}])


def test_judge_progress_shaping_over_http():
    def progress(request):
        transcript = request["messages"][0]["content"]
        return "PROBABILITY: 0.8" if "[tool calculate]" in transcript else "PROBABILITY: 0.2"

    with StubServer(progress) as server:
        env = agentgym.make(CALC, rewards=[judge_term(server, kind="shaping", name="progress",
                                                      potential="judge")])
        try:
            _, info = play_calculator(env)
        finally:
            env.close()
        assert server.requests == 3  # Phi(s0), Phi(s1), Phi(s2): three distinct prompts
    # F0 = 0.8 - 0.2, F1 = 0 (terminal) - 0.8
    assert info["reward_components"]["progress"] == pytest.approx((0.8 - 0.2) + (0.0 - 0.8))


# --- agentgym eval --rewards -----------------------------------------------------------------

def test_eval_cli_applies_a_rewards_file(tmp_path):
    from agentgym.eval.cli import app

    with StubServer(lambda request: "Fine.\nGRADE: 3/4") as judge, \
            StubServer(lambda request: "<answer>7</answer>") as policy:
        rewards = tmp_path / "rewards.yaml"
        rewards.write_text(f"rewards:\n  - kind: judge\n    base_url: {judge.base_url}\n"
                           "    model: judge\n    rubric: Is the answer given?\n"
                           "  - kind: env\n    name: '*'\n    weight: 0\n")
        result = CliRunner().invoke(app, [
            "eval", CALC, "--base-url", policy.base_url, "--model", "stub", "--num-examples",
            "3", "--out", str(tmp_path / "runs"), "--rewards", str(rewards)])
        assert result.exit_code == 0, result.output
        assert judge.requests == 3
    [results] = list((tmp_path / "runs").rglob("results.jsonl"))
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["reward"] for row in rows] == [0.75] * 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("- kind: jduge\n")
    result = CliRunner().invoke(app, ["eval", CALC, "--base-url", "http://127.0.0.1:1/v1",
                                      "--model", "x", "--rewards", str(bad)])
    assert result.exit_code == 2 and re.search(r"did you mean 'judge'", result.output)
