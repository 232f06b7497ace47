"""agentgym/Support-v0: offline deterministic data, the verifiable gate, and the judged reward
over HTTP (a real StubServer on 127.0.0.1 as the judge)."""

from __future__ import annotations

import json
import math
import re

import pytest

import agentgym
from agentgym.conformance import adversarial_scores
from agentgym.tasks.support.data import CODES, make_case, split_cases
from agentgym.tasks.support.env import CRITERIA
from agentgym.testing.stub_server import StubServer

SUPPORT = "agentgym/Support-v0"


def lookup(order_id: str) -> dict:
    call = {"id": "c1", "type": "function",
            "function": {"name": "lookup_order", "arguments": json.dumps({"order_id": order_id})}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def play(env, reply: str, *, look_up: bool = True, task_index: int = 0):
    env.reset(options={"task_index": task_index})
    if look_up:
        _, _, terminated, _, _ = env.step(lookup("#" + env.task.metadata["order_id"].lower()))
        assert not terminated
    _, reward, terminated, _, info = env.step(reply)
    assert terminated
    return reward, info


def verdicts(*answers: str) -> str:
    return "\n".join(f"Reason {k}.\nCRITERION {k}: {a}" for k, a in enumerate(answers, 1))


def test_cases_are_deterministic_and_the_splits_disjoint():
    assert make_case("train", 7) == make_case("train", 7)
    train, evaluation = split_cases("train", 2000, 2000), split_cases("eval", 200, 2000)
    train_ids = {c.order["order_id"] for c in train}
    assert len(train_ids) == 2000 and len({c.order["order_id"] for c in evaluation}) == 200
    assert not train_ids & {c.order["order_id"] for c in evaluation}
    assert {c.kind for c in evaluation} == {"delayed", "delivered", "refund", "cancelled",
                                            "backorder", "double_charge"}
    for case in train[:200]:
        assert case.order["order_id"] in case.question and case.order["order_id"] in \
            case.reference
        assert case.codes and all(code in CODES for code in case.codes)
        assert all(code not in case.reference for code in case.codes)


def test_tools_return_the_record_and_the_glossary():
    env = agentgym.make(SUPPORT)
    try:
        env.reset(options={"task_index": 3})
        order_id = env.task.metadata["order_id"]
        obs, *_ = env.step(lookup(order_id))
        assert json.loads(obs[-1]["content"]) == env.task.metadata["order"]
        code = env.task.metadata["codes"][0]
        call = {"id": "c2", "type": "function",
                "function": {"name": "lookup_code", "arguments": json.dumps({"code": code})}}
        obs, *_ = env.step({"role": "assistant", "content": "", "tool_calls": [call]})
        assert obs[-1]["content"] == CODES[code]
        obs, *_ = env.step(lookup("Z00000"))
        assert obs[-1]["content"].startswith("Error") and "no order" in obs[-1]["content"]
    finally:
        env.close()


def test_the_judge_scores_the_reply_from_its_verdicts():
    prompts = []

    def judge(request):
        prompts.append(request["messages"][0]["content"])
        return verdicts("YES", "YES", "NO", "YES", "NO")

    with StubServer(judge) as server:
        env = agentgym.make(SUPPORT, judge={"base_url": server.base_url, "model": "judge"})
        try:
            reward, info = play(env, "Hi! Your order ships on the date below. Sorry!")
            reference = env.task.answer
        finally:
            env.close()
    weights = [c.weight for c in CRITERIA]
    assert reward == pytest.approx((weights[0] + weights[1] + weights[3]) / sum(weights))
    assert info["reward_components"]["looked_up"] == 1.0
    [prompt] = prompts
    assert reference in prompt and "[tool lookup_order]" in prompt
    assert all(f"{k}. {c.text}" in prompt for k, c in enumerate(CRITERIA, 1))


def test_the_gate_gives_zero_without_a_judge_call():
    with StubServer(lambda request: verdicts(*["YES"] * 5)) as server:
        env = agentgym.make(SUPPORT, judge={"base_url": server.base_url, "model": "judge"})
        try:
            no_lookup, _ = play(env, "Your order is on its way!", look_up=False)
            empty, _ = play(env, "")
        finally:
            env.close()
        assert no_lookup == 0.0 and empty == 0.0 and server.requests == 0


def test_no_judge_is_a_clear_error_and_attacks_still_score_zero():
    env = agentgym.make(SUPPORT)
    try:
        reward, info = play(env, "Here is what happened to your order.")
        assert math.isnan(reward) and info["error"].type == "JudgeError"
        assert re.search(r"needs a judge: make\(\.\.\., judge=", info["error"].message)
        scores = adversarial_scores(env)
    finally:
        env.close()
    assert all(s == 0.0 for values in scores.values() for s in values), scores


def test_judge_failures_are_error_records_and_identical_replies_one_call():
    with StubServer(lambda request: "The reply is fine.") as server:  # no verdicts
        env = agentgym.make(SUPPORT, judge={"base_url": server.base_url, "model": "judge"})
        try:
            reward, info = play(env, "Your refund is on the way.")
        finally:
            env.close()
    assert math.isnan(reward) and info["error"].type == "JudgeError"
    assert "no verdict for criteria" in info["error"].message
    with StubServer(lambda request: verdicts(*["YES"] * 5)) as server:
        judge = {"base_url": server.base_url, "model": "judge", "max_concurrent": 2}
        envs = [agentgym.make(SUPPORT, judge=judge) for _ in range(3)]
        try:
            rewards = [play(env, "Same reply.", task_index=5)[0] for env in envs]
        finally:
            for env in envs:
                env.close()
        assert rewards == [1.0] * 3 and server.requests == 1


def test_a_rewards_judge_term_named_resolution_configures_the_env_judge():
    with StubServer(lambda request: verdicts("YES", "NO", "YES", "YES", "YES")) as server:
        env = agentgym.make(SUPPORT, rewards=[{"kind": "judge", "name": "resolution",
                                               "base_url": server.base_url, "model": "judge"}])
        try:
            reward, info = play(env, "Your parcel is delayed; it will arrive soon.")
            gated, _ = play(env, "No lookup.", look_up=False)
        finally:
            env.close()
        assert reward == pytest.approx(5 / 6) and gated == 0.0 and server.requests == 1
        assert set(info["reward_components"]) == {"resolution", "looked_up", "facts_covered",
                                                  "jargon", "turns"}


def test_bad_judge_settings_name_the_closest_key():
    with pytest.raises(ValueError, match=r"unknown key 'base-url' \(did you mean 'base_url'"):
        agentgym.make(SUPPORT, judge={"base-url": "http://127.0.0.1:1/v1"})


def support_agent(request):
    """A scripted policy: look the order up, then explain (the tool's text is in the chat)."""
    messages = request["messages"]
    if not any(m["role"] == "tool" for m in messages):
        order_id = re.search(r"order ([A-Z]\d{5})", messages[-1]["content"]).group(1)
        return lookup(order_id)
    return "Thanks for waiting! I checked your order and here is what happened."


@pytest.mark.parametrize("how", ["env-kwargs", "rewards"])
def test_agentgym_eval_with_a_judge(tmp_path, how):
    from typer.testing import CliRunner

    from agentgym.eval.cli import app

    with StubServer(lambda request: verdicts("YES", "YES", "YES", "NO", "YES")) as judge, \
            StubServer(support_agent) as policy:
        endpoint = {"base_url": judge.base_url, "model": "judge"}
        if how == "env-kwargs":
            extra = ["--env-kwargs", json.dumps({"judge": endpoint})]
        else:
            (tmp_path / "judge.yaml").write_text(json.dumps(
                {"rewards": [{"kind": "judge", "name": "resolution", **endpoint}]}))
            extra = ["--rewards", str(tmp_path / "judge.yaml")]
        result = CliRunner().invoke(app, [
            "eval", SUPPORT, "--base-url", policy.base_url, "--model", "agent",
            "--num-examples", "4", "--out", str(tmp_path / "runs"), *extra])
        assert result.exit_code == 0, result.output
        assert judge.requests == 4  # four different chats
    [results] = list((tmp_path / "runs").rglob("results.jsonl"))
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["reward"] for row in rows] == [pytest.approx(5 / 6)] * 4
