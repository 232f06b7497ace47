"""Every registered env's data (tasks of both splits, and its corpus where it has one) matches
the digests recorded in tasks/env_digests.json, so a dependency upgrade cannot silently change a
versioned env. SearchR1-v0's data is the user's: it is checked on the test sample, and says so."""

import dataclasses
import json

import pytest
from gates import require

import agentgym
from agentgym import digests
from agentgym.errors import EntryPointError

RECORDED = digests.load_digests()


def current_digest(env_id):
    """Today's digest of ``env_id`` (a missing optional dependency skips, or fails in CI)."""
    try:
        return digests.recompute(env_id, RECORDED.get(env_id))
    except (ImportError, EntryPointError) as exc:
        require(False, f"{env_id} cannot load its tasks: {exc}")


def with_absolute_samples(record):
    """``record`` with its sample paths made absolute (for a record file outside tasks/)."""
    base = digests.digest_file().parent
    return {**record, "sample_files": {k: str(base / v) for k, v
                                       in record["sample_files"].items()}}


def test_every_registered_env_is_recorded():
    assert sorted(RECORDED) == agentgym.list_envs()
    for env_id, record in RECORDED.items():
        assert {"train", "eval"} <= set(record), f"{env_id} has no task digests"


def test_only_user_data_envs_use_samples_and_say_why():
    """SearchR1-v0 needs the user's corpus and questions: it is recorded as user data, with
    the sample files its digest is taken on (they must exist), not skipped."""
    user = {env_id: r for env_id, r in RECORDED.items() if "user_data" in r}
    assert sorted(user) == ["agentgym/SearchR1-v0"]
    base = digests.digest_file().parent
    for path in user["agentgym/SearchR1-v0"]["sample_files"].values():
        assert (base / path).is_file(), path
    assert "user" in user["agentgym/SearchR1-v0"]["user_data"]


@pytest.mark.parametrize("env_id", sorted(RECORDED))
def test_env_data_matches_the_record(env_id):
    problems = digests.differences(env_id, RECORDED[env_id], current_digest(env_id))
    assert not problems, "\n".join([*problems, digests.REFRESH_HINT])


def test_search_v0_records_its_corpus():
    assert len(RECORDED["agentgym/Search-v0"]["corpus"]) == 64  # a sha256, not "none"


def test_a_changed_task_fails_with_the_env_id(monkeypatch):
    """One changed answer in one env's eval split is reported for that env and split only."""
    from agentgym.tasks.calculator.env import CalculatorEnv

    load = CalculatorEnv.load_tasks

    def tampered(self, split):
        tasks = load(self, split)
        if split == "eval":
            tasks[3] = dataclasses.replace(tasks[3], answer=-12345.0)
        return tasks

    monkeypatch.setattr(CalculatorEnv, "load_tasks", tampered)
    env_id = "agentgym/Calculator-v0"
    problems = digests.differences(env_id, RECORDED[env_id], current_digest(env_id))
    assert len(problems) == 1 and problems[0].startswith(f"{env_id}: eval tasks changed")


def test_a_changed_corpus_and_a_new_env_fail_check_digests(monkeypatch, tmp_path):
    """check_digests (what `agentgym envs --check-digests` runs) names the env and the part;
    an env registered without a record is reported too (conftest's registry fixture removes
    the registration after the test)."""
    from agentgym.tasks.search import search_r1
    from agentgym.testing import ToyEnv

    read = search_r1.load_corpus

    def tampered(path):
        first, *rest = read(path)
        return [dataclasses.replace(first, text=first.text + " Rebuilt in 1999."), *rest]

    monkeypatch.setattr(search_r1, "load_corpus", tampered)
    monkeypatch.setattr(digests, "list_envs", lambda: ["agentgym/SearchR1-v0", "tests/Toy-v0"])
    agentgym.register("tests/Toy-v0", ToyEnv)
    path = tmp_path / "env_digests.json"
    path.write_text(json.dumps({"agentgym/SearchR1-v0": with_absolute_samples(
        RECORDED["agentgym/SearchR1-v0"])}))
    problems = digests.check_digests(path)
    assert len(problems) == 2, problems
    assert problems[0].startswith("agentgym/SearchR1-v0: corpus changed (recorded sha256 "
                                  + RECORDED["agentgym/SearchR1-v0"]["corpus"][:12])
    assert problems[1] == "tests/Toy-v0: no recorded digest"


def test_write_digests_keeps_user_data_and_roundtrips(monkeypatch, tmp_path):
    from agentgym.testing import ToyEnv

    agentgym.register("tests/Toy-v0", ToyEnv)
    monkeypatch.setattr(digests, "list_envs", lambda: ["agentgym/SearchR1-v0", "tests/Toy-v0"])
    path = tmp_path / "env_digests.json"
    user = with_absolute_samples(RECORDED["agentgym/SearchR1-v0"])
    path.write_text(json.dumps({"agentgym/SearchR1-v0": {
        "user_data": user["user_data"], "sample_files": user["sample_files"]}}))
    written = digests.write_digests(path)
    assert written["agentgym/SearchR1-v0"] == user
    assert set(written["tests/Toy-v0"]) == {"train", "eval"}  # no corpus
    assert digests.check_digests(path) == []


def test_cli_check_and_write_call_the_library(monkeypatch, tmp_path):
    """`agentgym envs --check-digests` exits 1 and prints the hint on a change; `--write-digests`
    writes the record (both are the plain functions above)."""
    from typer.testing import CliRunner

    from agentgym.cli import app

    runner = CliRunner()
    monkeypatch.setattr(digests, "check_digests", lambda: ["agentgym/X-v0: corpus changed"])
    result = runner.invoke(app, ["envs", "--check-digests"])
    assert result.exit_code == 1 and "agentgym/X-v0: corpus changed" in result.output
    assert "--write-digests" in result.output
    monkeypatch.setattr(digests, "check_digests", lambda: [])
    assert runner.invoke(app, ["envs", "--check-digests"]).exit_code == 0
    written = []
    monkeypatch.setattr(digests, "write_digests", lambda: written.append(True))
    assert runner.invoke(app, ["envs", "--write-digests"]).exit_code == 0 and written
