"""DPO: the loss by hand, preference pairs (miner, JSONL), online mining per step, exact resume."""

import math
import os
import shutil
import subprocess
import sys

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from agentgym.errors import ErrorRecord  # noqa: E402
from agentgym.rollout import Group  # noqa: E402
from agentgym.tokens import TokenSequence  # noqa: E402
from agentgym.trainers import dpo  # noqa: E402
from agentgym.trainers.batch import pack, policy_logprobs  # noqa: E402
from agentgym.trainers.common import make_optimizer, reference_logprobs  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.dpo import (  # noqa: E402
    DPOConfig,
    dpo_loss,
    pair_batch,
    sequence_logprobs,
    train,
    update,
)
from agentgym.trainers.models import load_weights  # noqa: E402
from agentgym.trainers.preferences import (  # noqa: E402
    TokenPair,
    mine_pairs,
    read_pairs,
    to_token_pairs,
    write_pairs,
)
from agentgym.trainers.runs import RunDir  # noqa: E402
from agentgym.trainers.smoke import char_tokenizer, tiny_model  # noqa: E402
from agentgym.types import Trajectory, Turn  # noqa: E402

SMOKE = "trainers/configs/dpo_smoke.yaml"


def episode(reward, reply="77", task="t", error=False):
    """A one-turn trajectory of ``task`` with token ids (char ids of the reply)."""
    ids = tuple(char_tokenizer().convert_tokens_to_ids(list(reply)))
    prompt = tuple(char_tokenizer().convert_tokens_to_ids(list("Say 7.")))
    turn = Turn(index=0, assistant={"role": "assistant", "content": reply},
                prompt_token_ids=prompt, completion_token_ids=ids,
                logprobs=(-0.5,) * len(ids), weight_version=0)
    return Trajectory(env_id="toy", task_id=task, messages=({"role": "user", "content": "Say 7."},
                      {"role": "assistant", "content": reply}), turns=(turn,),
                      reward=None if error else reward,
                      error=ErrorRecord.from_exception(RuntimeError("boom")) if error else None)


def test_dpo_loss_matches_hand_computed_values():
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -2.0]),
                                      torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0]),
                                      beta=0.5)
    # pair 0: r_w = 0.5 * (-1 + 2) = 0.5, r_l = 0.5 * (-3 + 2) = -0.5; -log sigma(1)
    # pair 1: both rewards 0; -log sigma(0) = log 2
    assert chosen.tolist() == [0.5, 0.0] and rejected.tolist() == [-0.5, 0.0]
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log(2.0)])


def test_dpo_loss_gradient_raises_the_chosen_and_lowers_the_rejected():
    policy = torch.tensor([-1.0, -1.0], requires_grad=True)
    loss, _, _ = dpo_loss(policy[:1], policy[1:], torch.tensor([-1.0]), torch.tensor([-1.0]),
                          beta=0.2)
    loss.sum().backward()
    # d/dx -log sigma(beta (x_w - x_l)) at x_w = x_l: -beta / 2 for x_w, +beta / 2 for x_l
    assert policy.grad.tolist() == pytest.approx([-0.1, 0.1])


def test_mine_pairs_takes_best_and_worst_and_skips_ties_drops_and_failures():
    spread = Group("a", (episode(0.2, task="a"), episode(1.0, "7", "a"), episode(0.0, "x", "a"),
                         episode(1.0, "77", "a")))
    tie = Group("b", (episode(0.5, task="b"), episode(0.5, task="b")))
    dropped = Group("c", (episode(1.0, task="c"), episode(0.0, task="c")), dropped=True)
    failed = Group("d", (episode(1.0, task="d"), episode(0.0, task="d", error=True)))
    with_failure = Group("e", (episode(0.0, "x", "e", error=True), episode(0.3, "a", "e"),
                               episode(0.9, "7", "e")))
    pairs = mine_pairs([spread, tie, dropped, failed, with_failure])
    assert [p.task_id for p in pairs] == ["a", "e"]
    assert pairs[0].chosen is spread.trajectories[1]  # the first of the equal bests
    assert pairs[0].rejected is spread.trajectories[2]
    assert (pairs[1].chosen.reward, pairs[1].rejected.reward) == (0.9, 0.3)


def test_pair_batch_puts_chosen_rows_first_and_sums_policy_tokens_only(tmp_path):
    pairs, drift = to_token_pairs(mine_pairs([Group("a", (episode(0.0, "ab"),
                                                          episode(1.0, "777")))]))
    assert drift == 0
    batch = pair_batch(pairs, 0, "cpu")
    ids = char_tokenizer().convert_tokens_to_ids
    assert batch.targets[0, :3].tolist() == ids(list("777"))
    assert batch.targets[1, :2].tolist() == ids(list("ab"))
    assert batch.mask.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -100.0]])
    assert sequence_logprobs(logp, batch.mask).tolist() == [-6.0, -9.0]


def test_pair_batch_runs_the_shared_prompt_prefix_once_with_the_same_logprobs():
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, seed=0).eval()
    ids = tokenizer.convert_tokens_to_ids
    pairs = []
    for question, good, bad in (("Say 7.", "777", "ab"), ("Say 8, please.", "88", "xyz")):
        prompt = tuple(ids(list(question)))
        pairs.append(TokenPair(question, *(
            TokenSequence(prompt, tuple(ids(list(reply))), (1,) * len(reply),
                          (0.0,) * len(reply), (0,)) for reply in (good, bad))))
    shared = pair_batch(pairs, 0, "cpu")
    assert shared.prompt_ids.shape[0] == 1  # "Say " once; the rest moved, masked, to the rows
    plain = pack([p.chosen for p in pairs] + [p.rejected for p in pairs], [0.0] * 4, 0)
    with torch.no_grad():
        ours = sequence_logprobs(policy_logprobs(model, shared, 1.0)[0], shared.mask)
        reference = sequence_logprobs(policy_logprobs(model, plain, 1.0)[0], plain.mask)
    assert ours.tolist() == pytest.approx(reference.tolist(), abs=1e-4)


def test_preference_jsonl_round_trips_trajectories_and_reads_the_chat_form(tmp_path):
    mined = mine_pairs([Group("a", (episode(0.0, "ab", "a"), episode(1.0, "777", "a")))])
    path = tmp_path / "pairs.jsonl"
    assert write_pairs(mined, path) == 1
    [pair] = read_pairs(path)
    assert pair.task_id == "a" and pair.chosen == to_token_pairs(mined)[0][0].chosen

    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"prompt": [{"role": "user", "content": "Say 7."}], "chosen": "777", '
                    '"rejected": [{"role": "assistant", "content": "ab"}]}\n')
    tokenizer = char_tokenizer()
    [pair] = read_pairs(chat, tokenizer)
    assert pair.chosen.prompt_ids == pair.rejected.prompt_ids
    assert tokenizer.decode(pair.chosen.response_ids).startswith("777")
    assert all(pair.chosen.loss_mask)
    with pytest.raises(ValueError, match="tokenizer"):
        read_pairs(chat)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": [], "chosen": "7"}\n')
    with pytest.raises(ValueError, match=r"line 1.*rejected"):
        read_pairs(bad, tokenizer)


def test_update_widens_the_implicit_reward_margin_on_fixed_pairs():
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, seed=0)
    config = DPOConfig(model="tiny", lora=False, beta=0.5, micro_batch_size=1)
    ref = reference_logprobs(model, config, config.beta)  # a frozen copy of the start
    optimizer, scheduler = make_optimizer(model, 1e-3, 0.0, 0)
    pairs, _ = to_token_pairs(mine_pairs([
        Group("a", (episode(0.0, "ab", "a"), episode(1.0, "777", "a"))),
        Group("b", (episode(0.0, "xyz", "b"), episode(1.0, "77", "b")))]))
    first = update(model, ref, optimizer, scheduler, pairs, 0, config)
    assert first["loss"] == pytest.approx(math.log(2.0), abs=1e-5)  # pi == pi_ref at the start
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    for _ in range(10):
        last = update(model, ref, optimizer, scheduler, pairs, 0, config)
    assert last["loss"] < first["loss"] - 0.05 and last["reward_margin"] > 0.1
    assert last["reward_accuracy"] == 1.0


def test_online_steps_train_on_the_pairs_mined_from_their_own_groups(tmp_path, monkeypatch):
    mined, trained = [], []

    def recording_miner(groups):
        pairs = mine_pairs(groups)
        mined.append((list(groups), pairs))
        return pairs

    def recording_update(model, ref, optimizer, scheduler, pairs, *args):
        trained.append(list(pairs))
        return update(model, ref, optimizer, scheduler, pairs, *args)

    monkeypatch.setattr(dpo, "mine_pairs", recording_miner)
    monkeypatch.setattr(dpo, "update", recording_update)
    config = load_config(DPOConfig, SMOKE, {"max_steps": 3, "save_steps": 3, "report_to": [],
                                            "output_dir": str(tmp_path), "run_name": "mine"})
    run = train(config)
    rows = RunDir(run).metrics()
    assert len(mined) == 3 and [r["pairs"] for r in rows] == [len(p) for _, p in mined]
    assert trained == [to_token_pairs(p)[0] for _, p in mined if p]
    for groups, pairs in mined:
        assert len(groups) == config.tasks_per_step
        spread = [g for g in groups if len(set(g.rewards)) > 1]
        assert [p.task_id for p in pairs] == [g.task_id for g in spread]
        for pair, group in zip(pairs, spread, strict=True):
            assert pair.chosen.reward == max(group.rewards)
            assert pair.rejected.reward == min(group.rewards)
    assert {"loss", "reward_accuracy", "reward_margin", "grad_norm"} <= set(rows[-1])


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    overrides = {"max_steps": 4, "save_steps": 2, "output_dir": str(tmp_path),
                 "report_to": "[]"}
    args = [sys.executable, "-m", "agentgym.trainers.cli", "--algorithm", "dpo", "--config",
            SMOKE, "--run_name", "straight",
            *[x for k, v in overrides.items() for x in (f"--{k}", str(v))]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same numerics as this process
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    straight = tmp_path / "straight"

    resumed = tmp_path / "resumed"  # killed after step 2's checkpoint
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_4")
    assert train(load_config(DPOConfig, resumed / "config.yaml"), resume=resumed) == resumed
    rows_a, rows_b = RunDir(straight).metrics(), RunDir(resumed).metrics()
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    for key in ("reward_mean", "pairs", "loss", "reward_margin"):
        assert [r.get(key) for r in rows_b] == pytest.approx([r.get(key) for r in rows_a],
                                                             rel=1e-5, abs=1e-7), key
    weights = []
    for run in (straight, resumed):
        model = tiny_model(char_tokenizer(), seed=0)
        load_weights(model, run / "checkpoints" / "step_4" / "model", lora=False)
        weights.append(model.state_dict())
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-6), key


def test_offline_dpo_trains_on_a_pairs_file_and_resumes_exactly(tmp_path):
    mined = mine_pairs([Group(f"t{i}", (episode(0.0, "ab" * (i + 1), f"t{i}"),
                                        episode(1.0, "7" * (i + 2), f"t{i}")))
                        for i in range(6)])
    write_pairs(mined, tmp_path / "pairs.jsonl")
    overrides = {"pairs": str(tmp_path / "pairs.jsonl"), "batch_size": 4, "micro_batch_size": 2,
                 "max_steps": 6, "save_steps": 3, "learning_rate": 1e-3, "report_to": [],
                 "output_dir": str(tmp_path), "run_name": "offline"}
    straight = train(load_config(DPOConfig, SMOKE, overrides))
    rows = RunDir(straight).metrics()
    assert [r["pairs"] for r in rows] == [4] * 6
    assert rows[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-5)  # pi == pi_ref
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["reward_margin"] > 0

    resumed = tmp_path / "resumed"  # killed after step 3's checkpoint
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_6")
    train(load_config(DPOConfig, resumed / "config.yaml"), resume=resumed)
    assert [r["loss"] for r in RunDir(resumed).metrics()] == pytest.approx(
        [r["loss"] for r in rows], rel=1e-5, abs=1e-7)
