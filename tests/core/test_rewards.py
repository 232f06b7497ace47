"""Every reward kind and its error paths, with FakePolicy as judge / self-evaluator."""

import math

import pytest

from agentgym.errors import JudgeError, PolicyHTTPError, RewardError
from agentgym.rewards import (
    Criterion,
    JudgeProgress,
    JudgeReward,
    Reward,
    Rubric,
    SelfEvaluation,
    answer_confidence,
    calibration,
    constitutional_reward,
    exact_match,
    final_state_match,
    math_match,
    numeric_match,
    parse_criteria,
    parse_grade,
    parse_probability,
    potential_shaping,
    shaping_terms,
)
from agentgym.testing import FakePolicy, ToyEnv
from agentgym.types import Task, Trajectory, Turn


def episode(final: str, *, answer=None, turns=(), final_state=None, terminated=True):
    messages = ({"role": "user", "content": "Q?"}, {"role": "assistant", "content": final})
    task = Task(id="t", prompt=(messages[0],), answer=answer)
    return Trajectory(env_id="e", task_id="t", messages=messages, turns=tuple(turns),
                      final_state=final_state, terminated=terminated), task


@pytest.mark.parametrize("final, answer, expected", [
    ("The answer is Paris.", "paris", 0.0), ("<answer>The Paris</answer>", "Paris", 1.0),
    ("<answer>Tokyo</answer>", ["Kyoto", "tokyo"], 1.0), ("Paris!", "Paris", 1.0),
])
def test_exact_match(final, answer, expected):
    assert exact_match(*episode(final, answer=answer)) == expected


@pytest.mark.parametrize("final, answer, expected", [
    ("so 1,234 apples", 1234, 1.0), ("<answer>3.5</answer> (not 4)", 3.5, 1.0),
    ("I think 12", 13, 0.0), ("no number", 1, 0.0),
])
def test_numeric_match(final, answer, expected):
    assert numeric_match(*episode(final, answer=answer)) == expected


@pytest.mark.parametrize("final, answer, expected", [
    (r"The answer is $\frac{1}{2}$", "0.5", 1.0), (r"\boxed{3/4}", r"$\frac{3}{4}$", 1.0),
    ("x = 2", "3", 0.0),
])
def test_math_match(final, answer, expected):
    assert math_match(*episode(final, answer=answer)) == expected


def test_final_state_match_and_its_error():
    state = {"orders": [{"id": 1, "status": "refunded"}]}
    assert final_state_match(*episode("done", answer={"final_state": state},
                                      final_state=state)) == 1.0
    assert final_state_match(*episode("done", answer={"final_state": state},
                                      final_state={"orders": []})) == 0.0
    with pytest.raises(RewardError, match="no answer\\['final_state'\\]"):
        final_state_match(*episode("done", answer="x"))


def test_critique_mappings():
    assert parse_grade("Good work.\nGRADE: 7/10") == 0.7
    assert parse_grade("grade: 2/4 ... GRADE: 3/4") == 0.75  # the last one counts
    assert parse_probability("Nearly there. PROBABILITY: 0.8") == 0.8
    criteria = [Criterion("correct", 2.0), Criterion("polite", 1.0)]
    assert parse_criteria("CRITERION 1: YES\nCRITERION 2: no", criteria) == pytest.approx(2 / 3)
    for bad, parse in [("looks fine", parse_grade), ("GRADE: 11/10", parse_grade),
                       ("PROBABILITY: 1.5", parse_probability)]:
        with pytest.raises(JudgeError):
            parse(bad)
    with pytest.raises(JudgeError, match=r"no verdict for criteria \[2\]"):
        parse_criteria("CRITERION 1: YES", criteria)


async def test_judge_reward_sees_the_transcript_and_maps_the_grade():
    judge = FakePolicy(["The final answer is right and the tool use was sensible.\nGRADE: 9/10"])
    reward = JudgeReward(judge)
    value = await reward(*episode("It is 42.", answer=42))
    assert value == 0.9 and "GRADE" in reward.last_critique
    [(messages, tools, sampling)] = judge.requests
    prompt = messages[0]["content"]
    assert "[assistant] It is 42." in prompt and "Q?" in prompt and "42" in prompt
    assert tools is None and sampling.temperature == 0.0


async def test_judge_failures_are_errors_not_zero():
    def down(messages, tools):
        raise PolicyHTTPError("503 from judge", 503)

    with pytest.raises(JudgeError, match="judge call failed: PolicyHTTPError"):
        await JudgeReward(FakePolicy(responder=down))(*episode("x"))
    with pytest.raises(JudgeError, match="no 'GRADE"):
        await JudgeReward(FakePolicy(["I like it"]))(*episode("x"))

    env = ToyEnv(rubric=Rubric([Reward("judge", JudgeReward(FakePolicy(["no grade here"])))]))
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("1")
    assert terminated and math.isnan(reward) and info["error"].type == "JudgeError"


async def test_constitutional_reward_weights_principles():
    judge = FakePolicy(["Honest: CRITERION 1: YES\nHarmless: CRITERION 2: NO"])
    reward = constitutional_reward(judge, [Criterion("Be honest.", 3.0), "Be harmless."])
    assert await reward(*episode("x")) == 0.75
    assert "1. Be honest.\n2. Be harmless." in judge.requests[0][0][0]["content"]


async def test_answer_confidence_from_logprobs():
    turn = Turn(index=0, assistant={}, logprobs=(math.log(0.5), math.log(0.5)),
                completion_token_ids=(1, 2))
    assert answer_confidence(*episode("x", turns=[turn])) == pytest.approx(0.5)
    with pytest.raises(RewardError, match="needs the policy's logprobs"):
        answer_confidence(*episode("x"))


async def test_self_evaluation_counts_yes_votes():
    votes = iter(["Yes.", "no", "YES", "maybe"])

    class Voter(FakePolicy):
        async def generate(self, messages, tools, sampling):
            assert "Is it correct?" in messages[-1]["content"]
            completion = (await super().generate(messages, tools, sampling))[0]
            return [completion.__class__(text=next(votes)) for _ in range(sampling.n)]

    assert await SelfEvaluation(Voter(["unused"]), samples=4)(*episode("x")) == 2 / 3
    with pytest.raises(RewardError, match="neither Yes nor No"):
        await SelfEvaluation(FakePolicy(["Perhaps"]), samples=1)(*episode("x"))


def test_calibration_metrics():
    perfect = calibration([1.0, 0.0, 1.0], [True, False, True])
    assert perfect == {"ece": 0.0, "brier": 0.0, "mean_confidence": 2 / 3, "accuracy": 2 / 3}
    over = calibration([0.9, 0.9], [False, False])
    assert over["ece"] == pytest.approx(0.9) and over["brier"] == pytest.approx(0.81)
    with pytest.raises(ValueError):
        calibration([0.5], [])


async def test_potential_based_shaping_telescopes():
    messages = ({"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"},
                {"role": "tool", "content": "r"}, {"role": "assistant", "content": "b"})
    trajectory = Trajectory(env_id="e", task_id="t", messages=messages, terminated=True)
    task = Task(id="t", prompt=(messages[0],))

    def progress(state, task):  # potential: how many messages so far
        return float(len(state))

    terms = await shaping_terms(trajectory, task, progress, gamma=0.5)
    # s0 = 1 msg, s1 = 3 msgs, s2 = terminal (Phi = 0)
    assert terms == [0.5 * 3 - 1, 0.5 * 0 - 3]
    total = await potential_shaping(progress, gamma=0.5)(trajectory, task)
    assert total == pytest.approx(0.5 ** 2 * 0 - 1)  # gamma^T Phi(s_T) - Phi(s_0)


async def test_judge_progress_is_a_potential():
    judge = FakePolicy(responder=lambda m, t: "Half done. PROBABILITY: 0.5")
    trajectory, task = episode("x", terminated=False)
    terms = await shaping_terms(trajectory, task, JudgeProgress(judge), gamma=1.0)
    assert terms == [0.0]  # Phi(s0) = Phi(s1) = 0.5 for an unfinished episode
