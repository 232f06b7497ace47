"""The SFT -> export -> GRPO chain (trainers/sft_grpo.py) that the quickstart and compare-methods'
``sft_grpo`` run: the stages hand over the policy, and ``resume`` redoes nothing finished.

The smoke setting (tiny random-init model, DigitEnv, LoRA as in the quickstart) keeps each chain
to seconds; the quickstart on SmolLM2 is tests/trainers/test_quickstart.py.
"""

import shutil

import pytest
from gates import TRAIN_INSTALL, require_module

require_module("torch", TRAIN_INSTALL)

from test_sft import DIGIT_ENV, digit_file  # noqa: E402

from agentgym.jsonl import read_jsonl  # noqa: E402
from agentgym.trainers import sft_grpo  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.grpo import GRPOConfig  # noqa: E402
from agentgym.trainers.runs import last_step  # noqa: E402
from agentgym.trainers.sft import SFTConfig  # noqa: E402

COMMON = {"model": "tiny", "env_id": DIGIT_ENV, "engine": "hf", "lora": True,
          "learning_rate": 3e-3, "report_to": [], "save_steps": 1}


def configs(tmp_path, sft_steps=2, grpo_steps=2):
    out = str(tmp_path / "train")
    sft = load_config(SFTConfig, None, {
        **COMMON, "data": [str(tmp_path / "digits.jsonl")], "min_reward": 0.9, "batch_size": 4,
        "micro_batch_size": 4, "max_steps": sft_steps, "output_dir": out, "run_name": "sft"})
    grpo = load_config(GRPOConfig, None, {
        **COMMON, "tasks_per_step": 2, "num_generations": 2, "micro_batch_size": 4,
        "max_completion_length": 8, "max_steps": grpo_steps, "output_dir": out,
        "run_name": "grpo"})
    return sft, grpo


@pytest.fixture
def chain(tmp_path):
    """A finished chain (2 SFT steps, 2 GRPO steps) in tmp_path/train."""
    digit_file(tmp_path / "digits.jsonl", count=8)
    sft, grpo = configs(tmp_path)
    runs = sft_grpo.train(sft, grpo, tmp_path / "train" / "policy")
    return tmp_path, runs


def forbid(monkeypatch, module, name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} was called")
    monkeypatch.setattr(module, name, refuse)


def steps_logged(run):
    return [row["step"] for row in read_jsonl(run / "metrics.jsonl")]


def test_grpo_starts_from_the_exported_sft_policy(chain):
    tmp_path, runs = chain
    assert runs.sft_run == tmp_path / "train" / "sft" and steps_logged(runs.sft_run) == [1, 2]
    assert (runs.policy / "config.json").exists()  # merged: a plain model folder, no adapter
    assert not (runs.policy / "adapter_config.json").exists()
    assert runs.grpo_config.model == str(runs.policy)
    trained = load_config(GRPOConfig, runs.grpo_run / "config.yaml")
    assert trained.model == str(runs.policy) and trained.lora
    assert steps_logged(runs.grpo_run) == [1, 2] and last_step(runs.grpo_run) == 2


def test_resume_skips_the_finished_sft_and_reuses_the_policy(chain, monkeypatch):
    tmp_path, runs = chain
    exported = (runs.policy / "config.json").stat().st_mtime_ns
    sft_rows = read_jsonl(runs.sft_run / "metrics.jsonl")
    forbid(monkeypatch, sft_grpo.sft, "train")
    forbid(monkeypatch, sft_grpo, "export_policy")
    sft, grpo = configs(tmp_path, grpo_steps=3)  # the GRPO stage was "interrupted" at step 2
    again = sft_grpo.train(sft, grpo, runs.policy, resume=True)
    assert (runs.policy / "config.json").stat().st_mtime_ns == exported
    assert read_jsonl(runs.sft_run / "metrics.jsonl") == sft_rows
    assert steps_logged(again.grpo_run) == [1, 2, 3]  # continued, not restarted
    forbid(monkeypatch, sft_grpo.grpo, "train")  # everything finished: nothing is redone
    sft_grpo.train(sft, grpo, runs.policy, resume=True)


def test_resume_exports_again_without_retraining_a_finished_sft(chain, monkeypatch):
    tmp_path, runs = chain
    for path in runs.policy.iterdir():  # killed mid-export: only the temporary folder is left
        path.unlink()
    runs.policy.rename(runs.policy.with_name("policy.tmp"))
    forbid(monkeypatch, sft_grpo.sft, "train")
    forbid(monkeypatch, sft_grpo.grpo, "train")
    sft_grpo.train(*configs(tmp_path), runs.policy, resume=True)
    assert (runs.policy / "config.json").exists()
    assert not runs.policy.with_name("policy.tmp").exists()


def test_resume_continues_an_interrupted_sft(tmp_path):
    digit_file(tmp_path / "digits.jsonl", count=8)
    sft, grpo = configs(tmp_path, sft_steps=1, grpo_steps=1)
    first = sft_grpo.train(sft, grpo, tmp_path / "train" / "policy")
    step_one = read_jsonl(first.sft_run / "metrics.jsonl")
    for stale in (first.policy, first.grpo_run):  # as if SFT had been stopped after step 1
        shutil.rmtree(stale)
    runs = sft_grpo.train(*configs(tmp_path, sft_steps=3, grpo_steps=1), first.policy,
                          resume=True)
    rows = read_jsonl(runs.sft_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0] == step_one[0]
    assert (runs.policy / "config.json").exists() and last_step(runs.grpo_run) == 1


def test_resume_with_other_step_counts_than_a_finished_stage_is_refused(chain):
    tmp_path, runs = chain
    with pytest.raises(ValueError, match="trained for 2 steps, not 3"):
        sft_grpo.train(*configs(tmp_path, sft_steps=3), runs.policy, resume=True)
    with pytest.raises(ValueError, match="trained for 2 steps, not 1"):
        sft_grpo.train(*configs(tmp_path, grpo_steps=1), runs.policy, resume=True)


def test_without_resume_every_stage_starts_anew(chain):
    tmp_path, runs = chain
    (runs.policy / "stale.txt").write_text("from an earlier run")
    again = sft_grpo.train(*configs(tmp_path, grpo_steps=1), runs.policy)
    assert steps_logged(again.sft_run) == [1, 2]  # not appended to the earlier run's log
    assert steps_logged(again.grpo_run) == [1]
    assert not (again.grpo_run / "checkpoints" / "step_2").exists()
    assert not (runs.policy / "stale.txt").exists()  # exported afresh


def test_without_sft_the_chain_is_grpo_alone(tmp_path):
    _, grpo = configs(tmp_path, grpo_steps=1)
    runs = sft_grpo.train(None, grpo, tmp_path / "train" / "policy")
    assert runs.sft_run is None and runs.policy is None and runs.grpo_config == grpo
    assert load_config(GRPOConfig, runs.grpo_run / "config.yaml").model == "tiny"
    assert not (tmp_path / "train" / "policy").exists()
    assert not (tmp_path / "train" / "sft").exists()
    assert steps_logged(runs.grpo_run) == [1]


def test_a_stage_without_run_name_is_refused(tmp_path):
    sft, grpo = configs(tmp_path)
    with pytest.raises(ValueError, match="run_name"):
        sft_grpo.train(sft, load_config(GRPOConfig, None, {"run_name": None}), tmp_path / "p")
