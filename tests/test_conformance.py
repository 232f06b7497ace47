"""Every registered environment passes gymnasium's checker and agentgym's own checks."""

from pathlib import Path

import pytest
from gates import has_module, require

import agentgym
from agentgym.conformance import adversarial_scores, check
from agentgym.rewards import Reward, Rubric

SEARCH_R1_SAMPLE = Path(__file__).parent / "tasks" / "data" / "search_r1_sample"

# Envs that need user-supplied files get small samples shipped with the tests.
ENV_KWARGS = {
    "agentgym/SearchR1-v0": {"corpus_path": str(SEARCH_R1_SAMPLE / "corpus.jsonl"),
                             "train_path": str(SEARCH_R1_SAMPLE / "train.jsonl"),
                             "eval_path": str(SEARCH_R1_SAMPLE / "test.jsonl")},
}


@pytest.fixture(scope="module")
def served_calculator():
    """agentgym/OpenEnv-v0 plays an OpenEnv server: here Calculator-v0, served by agentgym."""
    require(has_module("openenv"), "openenv-core is not installed (pip install '.[interop]')")
    from agentgym.interop.openenv_server import running_server

    with running_server("agentgym/Calculator-v0") as server:
        yield server.base_url


@pytest.mark.parametrize("env_id", agentgym.list_envs())
def test_registered_env_conforms(env_id, request):
    kwargs = ENV_KWARGS.get(env_id, {})
    if env_id == "agentgym/OpenEnv-v0":
        kwargs = {"base_url": request.getfixturevalue("served_calculator")}
    failures = [f"{r.name}: {r.detail}" for r in check(env_id, **kwargs) if not r.ok]
    assert failures == []


def test_a_broken_env_fails_the_checks():
    agentgym.register("tests/NoTasks-v0", "agentgym.testing:ToyEnv", tasks=[])
    results = {r.name: r for r in check("tests/NoTasks-v0")}
    assert not results["seeded task sampling"].ok
    assert "has no 'train' tasks" in results["seeded task sampling"].detail
    agentgym.register("tests/Endless-v0", "agentgym.testing:ToyEnv", max_turns=3,
                      follow_ups=[{"role": "user", "content": "more"}] * 10)
    results = {r.name: r for r in check("tests/Endless-v0")}
    assert results["episode budget"].ok  # the turn budget still ends it
    assert all(r.ok for r in results.values())


def _contains_answer(trajectory, task):
    return float(str(task.answer) in trajectory.final_text)


def test_a_lenient_grader_fails_the_adversarial_check():
    """A grader that credits any reply containing the answer loses to the spray (and only to
    the attacks that put the answer in the reply)."""
    agentgym.register("tests/Lenient-v0", "agentgym.testing:ToyEnv",
                      rubric=Rubric([Reward("contains", _contains_answer, 1.0)]))
    results = {r.name: r for r in check("tests/Lenient-v0")}
    assert not results["adversarial policies"].ok
    assert "answer spray" in results["adversarial policies"].detail
    env = agentgym.make("tests/Lenient-v0")
    try:
        scores = adversarial_scores(env)
    finally:
        env.close()
    assert scores["answer spray"] == [1.0] * 3 and scores["empty"] == [0.0] * 3
