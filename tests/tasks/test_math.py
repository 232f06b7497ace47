"""Math-v0 and OneShotRLVR-v0: generators, verifiers, splits, selection by reward variance."""

import json

import pytest

import agentgym
from agentgym.tasks.math.one_shot import load_history, select_example


@pytest.fixture(scope="module")
def math_env():
    env = agentgym.make("agentgym/Math-v0", split="eval", per_dataset=10)
    yield env
    env.close()


def test_tasks_come_from_every_generator_and_are_seeded(math_env):
    again = agentgym.make("agentgym/Math-v0", split="eval", per_dataset=10).tasks
    assert math_env.tasks == again and len(again) == 60
    assert {t.metadata["dataset"] for t in again} == {
        "basic_arithmetic", "chain_sum", "products", "gcd", "lcm", "leg_counting"}


def test_oracle_answer_scores_one_on_every_task(math_env):
    for index, task in enumerate(math_env.tasks):
        math_env.reset(options={"task_index": index})
        _, reward, terminated, _, _ = math_env.step(f"<answer>{task.answer}</answer>")
        assert (reward, terminated) == (1.0, True), task.id


def test_prose_answers_are_read_by_math_verify(math_env):
    index = next(i for i, t in enumerate(math_env.tasks) if t.metadata["dataset"] == "products")
    task = math_env.tasks[index]
    math_env.reset(options={"task_index": index})
    assert math_env.step(f"So the product is {task.answer}.")[1] == 1.0


@pytest.mark.parametrize("reply", ["", "I am not sure.", "<answer>-123456789</answer>"])
def test_wrong_or_empty_answers_score_zero(math_env, reply):
    math_env.reset(options={"task_index": 0})
    assert math_env.step(reply)[1] == 0.0


def test_calculator_tool_works_and_can_be_removed(math_env):
    math_env.reset(options={"task_index": 0})
    call = '<tool_call>{"name": "calculate", "arguments": {"expression": "6*7"}}</tool_call>'
    obs, *_ = math_env.step(call)
    assert obs[-1]["content"] == "42"
    bare = agentgym.make("agentgym/Math-v0", calculator=False, per_dataset=2)
    assert bare.reset(seed=0)[1]["tools"] == []


def test_difficulty_is_configurable():
    env = agentgym.make("agentgym/Math-v0", datasets={"products": {"min_digits": 4,
                                                                   "max_digits": 4}},
                        per_dataset=5)
    for task in env.tasks:
        assert task.metadata["dataset"] == "products"
        assert all(len(n) == 4 for n in task.prompt[-1]["content"].split(":")[1]
                   .split(".")[0].replace("*", " ").split())


def test_selection_by_historical_variance(tmp_path):
    history = tmp_path / "h.jsonl"
    rows = [{"task_id": "a", "rewards": [1, 1, 1, 1]}, {"task_id": "b", "rewards": [1, 0, 1, 0]},
            {"task_id": "c", "rewards": [0, 0, 0, 1]}, {"task_id": "d", "rewards": [1, 0, 0, 1]}]
    history.write_text("\n".join(json.dumps(r) for r in rows))
    assert select_example(load_history(history)) == ("b", 0.25)  # tie with d: lowest id
    trajectories = tmp_path / "t.jsonl"
    trajectories.write_text("\n".join(json.dumps({"task_id": "x", "reward": r})
                                      for r in (0.0, 1.0, None)))
    assert load_history(trajectories) == {"x": [0.0, 1.0]}
    with pytest.raises(ValueError, match="two or more rewards"):
        select_example({"x": [1.0]})


def test_one_shot_trains_on_one_example_and_evaluates_on_math(tmp_path):
    env = agentgym.make("agentgym/OneShotRLVR-v0", per_dataset=5)
    task_id, variance = env.chosen_example()
    assert [t.id for t in env.tasks] == [task_id] and variance > 0
    ids = {env.reset(seed=s)[1]["task_id"] for s in range(5)}
    assert ids == {task_id}  # every draw is the one example
    evals = agentgym.make("agentgym/OneShotRLVR-v0", split="eval", per_dataset=5).tasks
    assert [t.id for t in evals] == [t.id for t in agentgym.make(
        "agentgym/Math-v0", split="eval", per_dataset=5).tasks]
    fixed = agentgym.make("agentgym/OneShotRLVR-v0", example_id="gcd-train-3")
    assert [t.id for t in fixed.tasks] == ["gcd-train-3"]
    missing = agentgym.make("agentgym/OneShotRLVR-v0", history=tmp_path / "none.jsonl")
    with pytest.raises(FileNotFoundError, match="no reward history"):
        missing.reset(seed=0)


def test_hedged_or_padded_answers_earn_nothing(math_env):
    """reasoning-gym's partial credit for an answer containing the oracle is not passed on
    (before #21: "<answer>{gold} or 0</answer>" earned len(gold)/len(answer), e.g. 0.39)."""
    for index, task in enumerate(math_env.tasks[:12]):
        decoy = "0" if task.answer != "0" else "1"
        for reply in (f"<answer>{task.answer} or {decoy}</answer>",
                      f"<answer>{task.answer}, {decoy}</answer>",
                      f"<answer>{task.answer}{decoy}</answer>"):
            math_env.reset(options={"task_index": index})
            assert math_env.step(reply)[1] == 0.0, (task.id, reply)


def test_echoing_the_question_is_no_answer():
    """The one-shot example asks for the LCM of 6 and 90: the question's last number is the
    answer, and math-verify read it from an echoed question (1.0 before #21)."""
    env = agentgym.make("agentgym/OneShotRLVR-v0")
    try:
        env.reset(seed=0)
        question = env.task.prompt[-1]["content"]
        assert env.step(question)[1] == 0.0
        env.reset(seed=0)
        assert env.step(f"{question}\nThe LCM is {env.task.answer}.")[1] == 1.0
    finally:
        env.close()
