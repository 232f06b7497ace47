"""RFT: the rejection filter, the round's tasks, and a killed run that resumes to the same state
(mid-round: the round's kept episodes are read back, not played again)."""

import json

from gates import TRAIN_INSTALL, require_module

require_module("torch", TRAIN_INSTALL)

from test_sft import DIGIT_ENV, killed_and_resumed  # noqa: E402

from agentgym.errors import ErrorRecord  # noqa: E402
from agentgym.rollout import Group  # noqa: E402
from agentgym.trainers.rft import RFTConfig, keep_successes, round_tasks, train  # noqa: E402
from agentgym.trainers.runs import RunDir  # noqa: E402
from agentgym.types import Trajectory  # noqa: E402


def episode(task, reward, error=False):
    return Trajectory(env_id="e", task_id=task, messages=(), reward=None if error else reward,
                      error=ErrorRecord("PolicyError", "down", "infra") if error else None)


def test_keep_successes_filters_by_verified_reward():
    groups = [Group("a", (episode("a", 1.0), episode("a", 0.0), episode("a", 0.7))),
              Group("b", (episode("b", 1.0), episode("b", 0, error=True)), dropped=True),
              Group("c", (episode("c", 0.5), episode("c", 1.2)))]
    kept = keep_successes(groups, threshold=0.7)
    assert [(t.task_id, t.reward) for t in kept] == [("a", 1.0), ("a", 0.7), ("c", 1.2)]
    assert keep_successes(groups, threshold=2.0) == []


def test_round_tasks_are_distinct_and_a_function_of_seed_and_round():
    ids = [f"t{i}" for i in range(20)]
    first = round_tasks(ids, 8, seed=1, round_index=0)
    assert len(set(first)) == 8 and set(first) <= set(ids)
    assert round_tasks(ids, 8, seed=1, round_index=0) == first
    assert round_tasks(ids, 8, seed=1, round_index=1) != first
    assert sorted(round_tasks(ids[:5], 8, seed=1, round_index=0)) == sorted(ids[:5])


def test_rft_keeps_successes_trains_and_resumes_mid_round_after_a_kill(tmp_path):
    overrides = {"model": "tiny", "env_id": DIGIT_ENV, "lora": False, "engine": "hf",
                 "max_completion_length": 12, "tasks_per_round": 8, "num_generations": 4,
                 "steps_per_round": 3, "reward_threshold": 0.05, "learning_rate": 3e-3,
                 "batch_size": 8, "micro_batch_size": 8, "max_steps": 6, "save_steps": 2,
                 "report_to": [], "output_dir": str(tmp_path)}
    straight, killed = killed_and_resumed("rft", RFTConfig, train, overrides, tmp_path)
    rows = RunDir(straight).metrics()
    assert [r["round"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert rows[0]["episodes"] == 32 and "kept" in rows[0] and "kept" not in rows[1]
    for run in (straight, killed):
        for r in (0, 1):
            kept = [json.loads(line) for line in
                    (run / "rft" / f"round_{r}.jsonl").read_text().splitlines()]
            assert all(t["reward"] >= 0.05 for t in kept)
            assert len(kept) == rows[3 * r]["kept"]
    assert rows[0]["kept"] > 0 and "loss" in rows[0]  # something to train on from round 0


def test_dropped_groups_are_reported_with_their_first_error(caplog):
    """A round whose groups are all dropped trains on nothing; the log says why (and, for a
    turn deadline, which knob to raise) instead of leaving only NaN metrics."""
    from agentgym.trainers.common import _warn_dropped

    late = Trajectory(env_id="e", task_id="a", messages=(), reward=None,
                      error=ErrorRecord("EpisodeTimeoutError", "infra",
                                        "policy turn exceeded 120.0s"))
    groups = [Group("a", (late, episode("a", 1.0)), dropped=True),
              Group("b", (episode("b", 1.0), episode("b", 0.0)))]
    with caplog.at_level("WARNING", logger="agentgym.trainers.common"):
        _warn_dropped(3, groups)
    assert "step 3: 1 of 2 groups dropped" in caplog.text
    assert "EpisodeTimeoutError: policy turn exceeded 120.0s" in caplog.text
    assert "raise turn_timeout_s" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="agentgym.trainers.common"):
        _warn_dropped(4, groups[1:])
    assert caplog.text == ""
