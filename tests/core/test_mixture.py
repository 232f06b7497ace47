"""agentgym/Mixture-v0: weighted task draws, delegation to member envs, tools kept to their own
episodes, per-env metrics."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest
from gates import TRAIN_INSTALL, has_module, require

import agentgym
from agentgym.errors import UnknownEnvError
from agentgym.mixture import SEPARATOR, MixtureEnv, env_breakdown, task_probabilities
from agentgym.policy import SamplingParams
from agentgym.rewards import Reward, Rubric
from agentgym.rollout import RolloutConfig, RolloutEngine
from agentgym.testing import FakePolicy, ToyEnv
from agentgym.tools import tool
from agentgym.types import Task

SUMS = "tests/MixSums-v0"
WORDS = "tests/MixWords-v0"
DIGITS = "tests/MixDigits-v0"


@tool
def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: what to upper-case.
    """
    return text.upper()


def _word_tasks() -> list[Task]:
    return [Task(id=f"w{i}", split=split, answer=f"WORD{i}",
                 prompt=({"role": "user", "content": f"Shout word{i}."},))
            for split in ("train", "eval") for i in range(10)]


def _shouted(trajectory, task):
    return float(trajectory.final_text.strip() == task.answer)


def _polite(trajectory, task):
    return float("please" in trajectory.final_text)


@pytest.fixture(autouse=True)
def _member_envs() -> None:
    """The member envs, registered for each test (conftest removes them after it, so they never
    reach the all-registered-envs tests)."""
    agentgym.register(SUMS, "agentgym.testing:ToyEnv")
    agentgym.register(WORDS, "agentgym.testing:ToyEnv", tasks=_word_tasks(), tools=[shout],
                      rubric=Rubric([Reward("shouted", _shouted),
                                     Reward("polite", _polite, 0.0)]))
    agentgym.register(DIGITS, "agentgym.trainers.smoke:DigitEnv")


def mixture(**kwargs) -> MixtureEnv:
    return MixtureEnv(**{"envs": {SUMS: 3, WORDS: 1}, **kwargs})


def call(name: str, **arguments) -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


def test_tasks_carry_their_source_and_probability():
    env = mixture()
    try:
        tasks = env.tasks
        assert len(tasks) == 20 + 10
        sources = {t.metadata["mixture"]["env_id"] for t in tasks}
        assert sources == {SUMS, WORDS}
        for task in tasks:
            source = task.metadata["mixture"]
            assert task.id == f"{source['env_id']}{SEPARATOR}{source['task_id']}"
        p = task_probabilities(tasks)
        assert math.isclose(sum(p), 1.0)
        share = sum(pi for pi, t in zip(p, tasks, strict=True)
                    if t.metadata["mixture"]["env_id"] == SUMS)
        assert math.isclose(share, 0.75)
        member, member_task = env.source(tasks[0].id)
        assert member_task.id == tasks[0].metadata["mixture"]["task_id"]
        assert member.env_id == tasks[0].metadata["mixture"]["env_id"]
    finally:
        env.close()
    assert task_probabilities(ToyEnv().tasks) is None


def test_order_is_seeded_and_its_prefix_follows_the_weights():
    def order(seed):
        env = mixture(split="eval", seed=seed)
        try:
            return [t.id for t in env.tasks]
        finally:
            env.close()

    assert order(0) == order(0)
    assert order(0) != order(1)
    # sums: 20 tasks at weight 3, words: 10 at weight 1 -> a sum task is 1.5x as likely first
    shares = [sum(SUMS in i for i in order(seed)[:10]) / 10 for seed in range(40)]
    assert 0.62 < float(np.mean(shares)) < 0.9


def test_bare_resets_draw_by_weight_and_are_seeded():
    env = mixture()
    try:
        drawn = [env.reset(seed=s)[1]["env_id"] for s in range(300)]
        again = [env.reset(seed=s)[1]["env_id"] for s in range(20)]
    finally:
        env.close()
    assert again == drawn[:20]
    share = drawn.count(SUMS) / len(drawn)
    assert 0.65 < share < 0.85, share


def test_an_episode_is_its_members_with_only_its_tools():
    env = mixture()
    try:
        word_task = next(t for t in env.tasks if t.metadata["mixture"]["env_id"] == WORDS)
        obs, info = env.reset(options={"task_id": word_task.id})
        assert [s["function"]["name"] for s in info["tools"]] == ["shout"]
        assert info["task_id"] == word_task.id and info["env_id"] == WORDS
        assert obs[-1]["content"] == word_task.prompt[-1]["content"]
        obs, *_ = env.step(call("add", a=1, b=2))  # the sums env's tool: not offered here
        assert "unknown tool 'add'" in obs[-1]["content"]
        obs, *_ = env.step(call("shout", text=word_task.answer.lower()))
        assert obs[-1]["content"] == word_task.answer
        obs, reward, terminated, truncated, info = env.step(f"{word_task.answer}")
        assert terminated and reward == 1.0
        assert info["reward_components"] == {"shouted": 1.0, "polite": 0.0}
        trajectory = env.trajectory()
        assert trajectory.env_id == WORDS and trajectory.task_id == word_task.id

        sum_task = next(t for t in env.tasks if t.metadata["mixture"]["env_id"] == SUMS)
        _, info = env.reset(options={"task_id": sum_task.id})
        assert [s["function"]["name"] for s in info["tools"]] == ["add"]
        obs, *_ = env.step(call("shout", text="x"))
        assert "unknown tool 'shout'" in obs[-1]["content"]
        _, reward, terminated, _, info = env.step(str(sum_task.answer))
        assert terminated and reward == 1.0 and set(info["reward_components"]) == {"correct"}
        with pytest.raises(agentgym.errors.ResetNeededError):
            env.step("again")
    finally:
        env.close()


def test_rollouts_and_per_env_metrics():
    """The rollout engine plays a mixture like any env; env_breakdown splits the metrics."""
    def respond(messages, tools):
        names = [t["function"]["name"] for t in tools]
        question = messages[-1]["content"]
        if "shout" in names:
            return "please"  # the words env: wrong answer, polite
        a, b = (int(x) for x in question.removeprefix("What is ").rstrip("?").split(" + "))
        return str(a + b)

    engine = RolloutEngine(lambda: mixture(), FakePolicy(responder=respond),
                           RolloutConfig(group_size=2, sampling=SamplingParams(max_tokens=32)))

    async def play():
        try:
            ids = [t.id for t in engine.tasks]
            sums = [i for i in ids if i.startswith(SUMS)][:3]
            words = [i for i in ids if i.startswith(WORDS)][:2]
            return await engine.run_groups(sums + words)
        finally:
            await engine.aclose()

    groups = asyncio.run(play())
    trajectories = [t for g in groups for t in g.trajectories]
    assert all(t.error is None for t in trajectories)
    assert {g.task_id for g in groups} == {t.task_id for t in trajectories}
    metrics = env_breakdown(trajectories)
    assert metrics[f"env/{SUMS}/episodes"] == 6 and metrics[f"env/{WORDS}/episodes"] == 4
    assert metrics[f"env/{SUMS}/reward_mean"] == 1.0
    assert metrics[f"env/{SUMS}/reward/correct"] == 1.0
    assert metrics[f"env/{WORDS}/reward_mean"] == 0.0
    assert metrics[f"env/{WORDS}/reward/polite"] == 1.0
    assert f"env/{SUMS}/reward/polite" not in metrics
    assert env_breakdown([t for t in trajectories if t.env_id == SUMS]) == {}


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"envs": {}}, ValueError, "non-empty"),
    ({"envs": {SUMS: 0}}, ValueError, "finite number > 0"),
    ({"envs": {SUMS: float("nan")}}, ValueError, "finite number > 0"),
    ({"envs": {"tests/MixSum-v0": 1}}, UnknownEnvError, "MixSums-v0"),
    ({"envs": {SUMS: 1}, "env_kwargs": {WORDS: {}}}, ValueError, "not in the mixture"),
])
def test_bad_mixtures_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        MixtureEnv(**kwargs)


def test_member_kwargs_and_common_kwargs():
    env = MixtureEnv(envs={SUMS: 1, WORDS: 1}, max_turns=3, env_kwargs={WORDS: {"max_turns": 5}})
    try:
        assert env.member(SUMS).max_turns == 3 and env.member(WORDS).max_turns == 5
    finally:
        env.close()


def test_eval_on_a_mixture_reports_each_env(tmp_path):
    from agentgym.eval.evaluation import evaluate

    agentgym.register("tests/Mixture-v0", "agentgym.mixture:MixtureEnv")
    policy = FakePolicy(responder=lambda messages, tools: "please")
    result = evaluate("tests/Mixture-v0", "fake", policy=policy, out=tmp_path, num_examples=12,
                      env_kwargs={"envs": {SUMS: 1, WORDS: 1}})
    rows = result.rows
    assert len(rows) == 12 and {r["env_id"] for r in rows} == {SUMS, WORDS}
    by_env = result.summary["by_env"]
    assert set(by_env) == {SUMS, WORDS}
    assert sum(s["rollouts"] for s in by_env.values()) == 12
    assert by_env[WORDS]["mean_reward"] == 0.0  # "please" is never the shouted word
    assert result.metadata["summary"]["by_env"][SUMS]["tasks"] == by_env[SUMS]["tasks"]




def test_grpo_trains_on_a_mixture_with_weighted_draws_and_per_env_metrics(tmp_path):
    """``agentgym train`` on a mixture: GRPO draws tasks by the env weights and writes each
    env's reward and components into the metrics rows (tiny model, two steps)."""
    require(has_module("torch") and has_module("transformers"), f"no torch ({TRAIN_INSTALL})")
    from types import SimpleNamespace

    from agentgym.trainers.config import load_config
    from agentgym.trainers.grpo import GRPOConfig, draw_tasks, train
    from agentgym.trainers.runs import RunDir

    env = MixtureEnv(envs={DIGITS: 9, SUMS: 1})
    try:
        session = SimpleNamespace(task_rng=np.random.default_rng(0),
                                  task_ids=[t.id for t in env.tasks],
                                  task_weights=task_probabilities(env.tasks),
                                  config=SimpleNamespace(tasks_per_step=2000))
    finally:
        env.close()
    drawn = draw_tasks(session)
    assert 0.87 < sum(t.startswith(DIGITS) for t in drawn) / len(drawn) < 0.93

    agentgym.register("tests/Mixture-v0", "agentgym.mixture:MixtureEnv")
    config = load_config(GRPOConfig, "trainers/configs/smoke.yaml", {
        "env_id": "tests/Mixture-v0", "env_kwargs": {"envs": {DIGITS: 1, SUMS: 1}},
        "max_steps": 2, "tasks_per_step": 6, "num_generations": 2, "save_steps": 2,
        "output_dir": str(tmp_path), "run_name": "mix", "report_to": []})
    rows = RunDir(train(config)).metrics()
    assert [r["step"] for r in rows] == [1, 2]
    keys = {k for r in rows for k in r}
    for member, component in ((DIGITS, "digit_share"), (SUMS, "correct")):
        assert {f"env/{member}/episodes", f"env/{member}/reward_mean",
                f"env/{member}/reward/{component}"} <= keys
    for row in rows:
        episodes = sum(v for k, v in row.items() if k.endswith("/episodes"))
        assert episodes in (0, 12)  # every episode counted once (0: the step drew one env)
