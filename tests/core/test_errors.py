"""ErrorRecord: the one record of a failure, built from the exception where it is caught."""

import json
import math

import pytest

from agentgym.env import AgentEnv
from agentgym.errors import (
    EpisodeTimeoutError,
    ErrorRecord,
    PolicyHTTPError,
    RewardError,
    ToolTimeoutError,
)
from agentgym.testing import ToyEnv
from agentgym.trajectory_io import TrajectoryWriter, read_trajectories, to_json


def test_from_exception_reads_class_blame_message_and_status():
    record = ErrorRecord.from_exception(PolicyHTTPError("http://x/v1 answered 401: no", 401))
    assert record == ErrorRecord("PolicyHTTPError", "infra", "http://x/v1 answered 401: no", 401)
    assert ErrorRecord.from_exception(ToolTimeoutError("slow")) == \
        ErrorRecord("ToolTimeoutError", "model", "slow")
    # not an agentgym error (a bug in a tool or env): infra, no status
    assert ErrorRecord.from_exception(KeyError("k")) == ErrorRecord("KeyError", "infra", "'k'")


def test_dict_round_trip_and_dicts_written_before_status_code():
    record = ErrorRecord("PolicyHTTPError", "infra", "answered 503", 503)
    assert ErrorRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    old = {"type": "JudgeError", "blame": "infra", "message": "judge down"}
    assert ErrorRecord.from_dict(old) == ErrorRecord("JudgeError", "infra", "judge down", None)


def test_failed_trajectories_round_trip_through_jsonl_old_lines_included(tmp_path):
    env = ToyEnv()
    env.reset(seed=0)
    failed = env._runner.run(env.aabort(PolicyHTTPError("answered 500", 500)))
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as writer:
        writer.write(failed)
    old_line = to_json(failed)
    old_line["error"] = {"type": "EpisodeTimeoutError", "blame": "infra", "message": "late"}
    with path.open("a") as file:
        file.write(json.dumps(old_line) + "\n")
    now, old = read_trajectories(path)
    assert now == failed and now.error.status_code == 500
    assert old.error == ErrorRecord.from_exception(EpisodeTimeoutError("late"))
    env.close()


class _UnreadableStateEnv(ToyEnv):
    async def final_state(self):
        raise RewardError("state service down")


def test_a_final_state_that_cannot_be_read_is_an_unscored_error():
    env = _UnreadableStateEnv()
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("1")
    assert terminated and math.isnan(reward)
    assert info["error"] == ErrorRecord("RewardError", "infra", "state service down")
    assert env.trajectory().error == info["error"] and env.trajectory().reward is None
    env.close()


def test_a_blocking_hook_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"final_state must be 'async def'"):
        class _Blocking(AgentEnv):  # noqa: F841
            def final_state(self):
                return {}
