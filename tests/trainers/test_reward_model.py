"""The Bradley-Terry reward model: the loss by hand, held-out accuracy with its interval, scores
of padded rows, a smoke run on mined pairs, exact resume, and its use as a rubric term."""

import asyncio
import json
import math
import shutil
import subprocess
import sys

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.rewards import Reward, Rubric  # noqa: E402
from agentgym.rewards.config import attach_rewards  # noqa: E402
from agentgym.rewards.reward_model import RewardModelReward  # noqa: E402
from agentgym.tokens import TokenSequence  # noqa: E402
from agentgym.trainers.batch import pack  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.preferences import read_pairs  # noqa: E402
from agentgym.trainers.reward_model import (  # noqa: E402
    HEAD,
    RewardModelConfig,
    RewardModelScorer,
    bradley_terry_loss,
    pairwise_accuracy,
    sequence_scores,
    train,
    wilson_interval,
)
from agentgym.trainers.runs import RunDir  # noqa: E402
from agentgym.trainers.smoke import DigitEnv, char_tokenizer, tiny_model  # noqa: E402
from agentgym.types import Trajectory, Turn  # noqa: E402

SMOKE = "trainers/configs/reward_model_smoke.yaml"


def test_bradley_terry_loss_matches_hand_computed_values():
    loss = bradley_terry_loss(torch.tensor([2.0, 0.5, 0.0]), torch.tensor([0.0, 0.5, 1.0]))
    # -log sigma(d) = log(1 + exp(-d)) for d = 2, 0, -1
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-2.0)), math.log(2.0),
                                           math.log1p(math.e)])


def test_pairwise_accuracy_counts_ties_half_and_has_a_wilson_interval():
    report = pairwise_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 1.0, 1.0])
    assert report["pairs"] == 4 and report["accuracy"] == 0.625  # (1 + 0.5 + 1 + 0) / 4
    # Wilson 95 % for 8/10, by hand: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(50, 100)
    assert low < 0.5 < high and high - 0.5 == pytest.approx(0.5 - low)
    with pytest.raises(ValueError):
        pairwise_accuracy([1.0], [])


def test_scores_read_each_rows_last_token_whatever_the_padding():
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, seed=0).eval()
    head = torch.nn.Linear(model.config.hidden_size, 1)
    ids = tokenizer.convert_tokens_to_ids
    short = TokenSequence(tuple(ids(list("Say 7."))), tuple(ids(list("7"))), (1,), (0.0,), (0,))
    long = TokenSequence(tuple(ids(list("Repeat 7 now."))), tuple(ids(list("777ab"))),
                         (1,) * 5, (0.0,) * 5, (0,))
    with torch.no_grad():
        together = sequence_scores(model, head, pack([short, long], [0.0, 0.0], 0))
        alone = [float(sequence_scores(model, head, pack([s], [0.0], 0))[0])
                 for s in (short, long)]
    assert together.tolist() == pytest.approx(alone, abs=1e-5)


def smoke_config(tmp_path, name, **overrides):
    return load_config(RewardModelConfig, SMOKE, {"output_dir": str(tmp_path), "run_name": name,
                                                  "report_to": [], **overrides})


def test_smoke_run_trains_on_mined_pairs_and_reports_held_out_accuracy(tmp_path):
    run = train(smoke_config(tmp_path, "learn", max_steps=12, save_steps=12))
    rows = RunDir(run).metrics()
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-6)  # zero head: r_w = r_l
    assert sum(r["loss"] for r in rows[-3:]) / 3 < 0.9 * math.log(2.0)
    mined = read_pairs(run / "pairs.jsonl")
    assert mined and all(p.chosen.prompt_ids == p.rejected.prompt_ids for p in mined)
    lines = [json.loads(line) for line in (run / "pairs.jsonl").read_text().splitlines()]
    assert all(line["chosen"]["reward"] > line["rejected"]["reward"] for line in lines)
    report = json.loads((run / "heldout.json").read_text())
    assert report["train_pairs"] == len(mined) and report["pairs"] >= 1
    assert report["ci95_low"] <= report["accuracy"] <= report["ci95_high"]
    head = torch.load(run / "checkpoints" / "step_12" / f"{HEAD}.pt")
    assert head["weight"].abs().sum() > 0  # it started at 0

    # the trained model as a rubric term scores a held-out episode like the trainer does
    line = json.loads((run / "heldout_pairs.jsonl").read_text().splitlines()[0])
    turn = line["chosen"]["turns"][0]
    episode = Trajectory(env_id="toy", task_id="t", messages=tuple(line["chosen"]["messages"]),
                         turns=(Turn(index=0, assistant=turn["assistant"],
                                     prompt_token_ids=tuple(turn["prompt_token_ids"]),
                                     completion_token_ids=tuple(turn["completion_token_ids"]),
                                     logprobs=tuple(turn["logprobs"])),))
    reward = RewardModelReward(run, device="cpu")
    score = asyncio.run(Rubric([Reward("reward_model", reward, 1.0)]).score(episode, None))
    env = attach_rewards(DigitEnv(split="eval"), [
        {"kind": "reward_model", "path": str(run), "device": "cpu"},
        {"kind": "env", "name": "*", "weight": 0}])  # the verifiable reward: logged only
    configured = asyncio.run(env.rubric.score(episode, env.tasks[0]))
    assert configured.reward == pytest.approx(score.reward, abs=1e-5)
    assert set(configured.components) == {"reward_model", "digit_share"}
    with pytest.raises(ValueError, match="path"):
        attach_rewards(DigitEnv(split="eval"), [{"kind": "reward_model"}])
    [pair] = read_pairs(run / "heldout_pairs.jsonl")[:1]
    scorer = RewardModelScorer(run, device="cpu")
    with torch.no_grad():
        expected = float(sequence_scores(scorer.model, scorer.head,
                                         pack([pair.chosen], [0.0], 0))[0])
    assert score.reward == pytest.approx(expected, abs=1e-5) and score.reward != 0.0
    text_only = Trajectory(env_id="toy", task_id="t", messages=episode.messages)
    assert math.isfinite(reward.score(text_only))  # no token ids: rendered by the template


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    straight = train(smoke_config(tmp_path, "straight", max_steps=4, save_steps=2))
    resumed = tmp_path / "resumed"  # killed after step 2's checkpoint
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_4")
    (resumed / "heldout.json").unlink()
    config = load_config(RewardModelConfig, resumed / "config.yaml")
    assert train(config, resume=resumed) == resumed
    rows_a, rows_b = RunDir(straight).metrics(), RunDir(resumed).metrics()
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    for key in ("loss", "accuracy", "margin", "grad_norm"):
        assert [r[key] for r in rows_b] == pytest.approx([r[key] for r in rows_a],
                                                         rel=1e-5, abs=1e-7), key
    heads = [torch.load(run / "checkpoints" / "step_4" / f"{HEAD}.pt")
             for run in (straight, resumed)]
    assert torch.allclose(heads[0]["weight"], heads[1]["weight"], atol=1e-6)
    assert json.loads((resumed / "heldout.json").read_text()) == pytest.approx(
        json.loads((straight / "heldout.json").read_text()))


def test_the_rubric_term_imports_without_torch():
    code = ("import sys, agentgym.rewards.reward_model as m; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(m.RewardModelReward)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_mining_shows_a_progress_bar_over_groups():
    """Mining pairs is the long part of a reward-model run: the bar counts groups done of all."""
    import io

    from rich.console import Console

    from agentgym.trainers.common import group_progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    with group_progress("mining train pairs", 3, console=console) as advance:
        advance()
        advance(object())  # the rollout engine passes the finished group
    text = out.getvalue()
    assert "mining train pairs" in text and "2/3" in text
    quiet = io.StringIO()
    with group_progress("mining eval pairs", 3, enabled=False,
                        console=Console(file=quiet)) as advance:
        advance()
    assert quiet.getvalue() == ""
