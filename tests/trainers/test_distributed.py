"""Data-parallel GRPO and PPO on two gloo ranks (CPU): the same step as one process, and exact
resume.

The end-to-end runs go through ``torchrun --nproc_per_node 2 -m agentgym.trainers.cli``, the
command the README gives; every wait has a deadline, so a dead rank fails the test instead of
hanging it.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

import torch.multiprocessing as mp  # noqa: E402

from agentgym.tokens import TokenSequence  # noqa: E402
from agentgym.trainers import ppo  # noqa: E402
from agentgym.trainers.batch import pack  # noqa: E402
from agentgym.trainers.common import reference_logprobs  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.distributed import SINGLE, World, join_world  # noqa: E402
from agentgym.trainers.grpo import GRPOConfig, train, update  # noqa: E402
from agentgym.trainers.models import load_weights  # noqa: E402
from agentgym.trainers.runs import RunDir  # noqa: E402
from agentgym.trainers.smoke import char_tokenizer, tiny_model  # noqa: E402

SMOKE = "trainers/configs/smoke.yaml"
PPO_SMOKE = "trainers/configs/ppo_smoke.yaml"
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
DEADLINE_S = 600  # a failure detector with headroom for a busy machine, not a timing
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}  # gloo ranks on the CPU, on a GPU machine too
# (loss_type, beta, rank 1 gets no sequences)
CASES = [("dapo", 0.0, False), ("grpo", 0.0, False), ("dr_grpo", 0.0, False),
         ("dapo", 0.1, False), ("dapo", 0.0, True)]
# PPO: (whiten_rewards, kl_coef, num_mini_batches, rank 1 gets no sequences, per-turn rewards)
PPO_CASES = [(False, 0.0, 1, False, False), (True, 0.05, 2, False, True),
             (False, 0.05, 3, True, False)]


def test_shards_are_contiguous_and_cover_the_items():
    items = list(range(7))
    shards = [World(rank=r, world_size=3).shard(items) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert SINGLE.shard(items) == items
    assert SINGLE.sum({"a": 2, "b": 0.5}) == {"a": 2, "b": 0.5}


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED",
                                      "ACCELERATE_USE_MEGATRON_LM"])
def test_a_sharded_accelerate_config_is_refused(variable):
    launched = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    with pytest.raises(ValueError, match="supported.*--multi_gpu"):
        join_world(env={**launched, variable: "true"})
    assert join_world(env={variable: "false", "WORLD_SIZE": "1"}) is SINGLE


# --- the sharded update on a fixed batch (torch.multiprocessing, gloo) ----------------------

def sequences() -> tuple[list[TokenSequence], list[float]]:
    """Seven sequences in three prompt groups, with env tokens and uneven lengths."""
    tokenizer = char_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    generator = torch.Generator().manual_seed(0)
    out = []
    for i in range(7):
        prompt = tuple(ids(list(f"<|im_start|>user\nSay {i // 3}.")))
        length = 3 + i % 4
        response = tuple(ids(list(("0123456789" * 2)[i: i + length])))
        mask = tuple(0 if j == 1 else 1 for j in range(length))
        logprobs = tuple(-float(torch.rand((), generator=generator)) * m for m in mask)
        out.append(TokenSequence(prompt, response, mask, logprobs, (0,)))
    return out, [1.0, -0.5, -0.5, 0.7, -0.7, 0.3, -0.3]


def one_update(world: World, loss_type: str, beta: float, empty_rank: bool) -> dict:
    """Parameters after one GRPO update (SGD, so they show the gradient itself) on this
    rank's share of :func:`sequences`."""
    seqs, advantages = sequences()
    every = list(range(len(seqs)))
    # empty_rank: rank 0 plays everything, rank 1 nothing (but joins every reduction)
    rows = (every if world.rank == 0 else []) if empty_rank else world.shard(every)
    config = GRPOConfig(loss_type=loss_type, beta=beta, micro_batch_size=2, lora=False,
                        max_completion_length=12)
    model = tiny_model(char_tokenizer(), seed=0).train()
    ref = reference_logprobs(model, config, beta)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batch = pack([seqs[i] for i in rows], [advantages[i] for i in rows], 0) if rows else None
    stats = update(model, ref, optimizer, scheduler, batch, config, world)
    return {"params": {k: v.clone() for k, v in model.state_dict().items()}, "stats": stats}


def one_ppo_update(world: World, whiten: bool, kl_coef: float, minibatches: int,
                   empty_rank: bool, shaped: bool) -> dict:
    """Parameters (policy and value head) after PPO's two epochs of SGD steps on this rank's
    share of :func:`sequences` (the scores are the episode rewards)."""
    seqs, scores = sequences()
    every = list(range(len(seqs)))
    rows = (every if world.rank == 0 else []) if empty_rank else world.shard(every)
    config = ppo.PPOConfig(whiten_rewards=whiten, kl_coef=kl_coef, num_mini_batches=minibatches,
                           num_ppo_epochs=2, micro_batch_size=2, lora=False, lam=0.9,
                           max_completion_length=12)
    model = tiny_model(char_tokenizer(), seed=0).train()
    head = ppo.value_head_for(model)
    ref = reference_logprobs(model, config, kl_coef)
    trained = torch.nn.ModuleList([model, head])
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    batch = pack([seqs[i] for i in rows], [scores[i] for i in rows], 0) if rows else None
    shaping = None
    if shaped and batch is not None:  # row i: 0.1 * (i + 1) on its first policy token
        shaping = torch.zeros_like(batch.mask)
        for row, i in enumerate(rows):
            shaping[row, 0] = 0.1 * (i + 1)
    targets = ppo.prepare(model, head, ref, batch, batch.advantages if batch else None, config,
                          world, shaping)
    stats = ppo.batch_means(targets, batch, world)
    stats |= ppo.update(model, head, optimizer, batch, targets, config,
                        torch.Generator().manual_seed(0), world)
    return {"params": {k: v.detach().clone() for k, v in trained.state_dict().items()},
            "stats": stats}


def update_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **CPU_ONLY)
    torch.set_num_threads(1)
    world = join_world(timeout_s=120)
    try:
        torch.save({"grpo": [one_update(world, *case) for case in CASES],
                    "ppo": [one_ppo_update(world, *case) for case in PPO_CASES]},
                   Path(out) / f"rank{rank}.pt")
    finally:
        world.leave()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_updates(tmp_path_factory) -> list[dict]:
    """What each of two gloo ranks got from :func:`update_worker`."""
    out = tmp_path_factory.mktemp("updates")
    context = mp.start_processes(update_worker, args=(free_port(), str(out)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.time() + DEADLINE_S
    while not context.join(timeout=1):  # raises if a rank failed
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish in time")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def compare(ranks: list[dict], single: dict, case: tuple, atol: float) -> float:
    """Assert both ranks' stats and parameters match the single process's; returns the largest
    parameter difference."""
    worst = 0.0
    for rank in ranks:
        assert rank["stats"].keys() == single["stats"].keys()
        for name, value in single["stats"].items():
            assert rank["stats"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
        for name, value in single["params"].items():
            worst = max(worst, float((rank["params"][name] - value).abs().max()))
            assert torch.allclose(rank["params"][name], value, atol=atol), (case, name)
    for name in single["params"]:  # the ranks hold the very same weights
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name])
    return worst


def test_two_rank_update_equals_the_whole_batch_update(two_rank_updates):
    worst = max(compare([rank["grpo"][i] for rank in two_rank_updates], one_update(SINGLE, *case),
                        case, atol=1e-6) for i, case in enumerate(CASES))
    print(f"GRPO: max |param difference| after one SGD(lr=1) update: {worst:.2e}")


def test_two_rank_ppo_update_equals_the_whole_batch_update(two_rank_updates):
    worst = max(compare([rank["ppo"][i] for rank in two_rank_updates],
                        one_ppo_update(SINGLE, *case), case, atol=1e-6)
                for i, case in enumerate(PPO_CASES))
    print(f"PPO: max |param difference| after 2 epochs of SGD(lr=0.5) minibatch steps: "
          f"{worst:.2e}")


def dying_worker(rank: int, port: int, out: str) -> None:
    """Rank 1 dies right after joining; rank 0 reports what its next collective did."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **CPU_ONLY)
    world = join_world(timeout_s=30)
    if rank == 1:
        os._exit(3)  # killed: no exception, no goodbye
    try:
        world.sum({"rows": 1})
        result = "returned"
    except Exception as exc:  # what a trainer rank would see instead of a hang
        result = f"raised {type(exc).__name__}: {exc}"
    (Path(out) / "rank0.txt").write_text(result)


def test_a_dead_rank_fails_the_others_instead_of_hanging(tmp_path):
    spawn = mp.get_context("spawn")
    port = free_port()
    ranks = [spawn.Process(target=dying_worker, args=(r, port, str(tmp_path))) for r in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=DEADLINE_S)
    alive = [p for p in ranks if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, "a rank hung after its peer died"
    assert (tmp_path / "rank0.txt").read_text().startswith("raised")


# --- end to end: torchrun + the CLI ----------------------------------------------------------

def torchrun(*args: str) -> None:
    """``torchrun --nproc_per_node 2 -m agentgym.trainers.cli ...`` with a deadline."""
    command = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "agentgym.trainers.cli",
               *args, "--report_to", "[]", "--distributed_timeout_s", "120"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **CPU_ONLY})
    assert result.returncode == 0, result.stderr[-3000:]


def untimed(rows: list[dict]) -> list[dict]:
    """Metrics rows without what differs between processes (wall times, memory peaks)."""
    return [{k: v for k, v in row.items() if not k.startswith(("time/", "memory/"))}
            for row in rows]


def weights(run: Path, step: int) -> dict:
    model = tiny_model(char_tokenizer())
    load_weights(model, run / "checkpoints" / f"step_{step}" / "model", lora=False)
    return model.state_dict()


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    """A 2-rank smoke run of two steps with a checkpoint after each."""
    out = tmp_path_factory.mktemp("dist")
    torchrun("--config", SMOKE, "--max_steps", "2", "--save_steps", "1",
             "--output_dir", str(out), "--run_name", "straight")
    return out / "straight"


def test_two_ranks_take_the_single_process_step(two_rank_run, tmp_path):
    config = load_config(GRPOConfig, SMOKE, {"max_steps": 1, "output_dir": str(tmp_path),
                                             "run_name": "single", "report_to": [],
                                             "device": "cpu"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' numerics (torchrun sets OMP_NUM_THREADS=1)
    try:
        single = train(config)
    finally:
        torch.set_num_threads(threads)
    one, two = RunDir(single).metrics()[0], RunDir(two_rank_run).metrics()[0]
    for key in ("reward_mean", "reward_std", "episodes", "policy_tokens", "zero_variance_groups"):
        assert two[key] == one[key], key
    for key in ("loss", "entropy", "grad_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    # AdamW's first step is lr * g / (|g| + eps): ~lr * sign(g), so an element whose gradient
    # is below eps (1e-8) moves by a fraction of lr that float summation order can shift; the
    # gradient itself (the first moment, 0.1 * g) must agree to float precision.
    a, b = weights(single, 1), weights(two_rank_run, 1)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 0.01 * config.learning_rate
    moments = [torch.load(run / "checkpoints" / "step_1" / "optimizer.pt")["state"]
               for run in (single, two_rank_run)]
    for index, state in moments[0].items():
        assert torch.allclose(state["exp_avg"], moments[1][index]["exp_avg"], atol=1e-9)
    gap = max(float((state["exp_avg"] - moments[1][index]["exp_avg"]).abs().max())
              for index, state in moments[0].items())
    print(f"max |param difference| {worst:.2e} (lr {config.learning_rate}), "
          f"max |first-moment difference| {gap:.2e}")


def test_two_rank_run_resumes_exactly(two_rank_run, tmp_path):
    # killed after writing step 2's metrics but before its checkpoint
    killed = tmp_path / "killed"
    shutil.copytree(two_rank_run, killed)
    shutil.rmtree(killed / "checkpoints" / "step_2")
    torchrun("--resume", str(killed))
    assert untimed(RunDir(killed).metrics()) == untimed(RunDir(two_rank_run).metrics())
    a, b = weights(two_rank_run, 2), weights(killed, 2)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_needs_the_same_number_of_processes(two_rank_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(two_rank_run, copy)
    with pytest.raises(ValueError, match="written by 2 training process"):
        train(load_config(GRPOConfig, copy / "config.yaml"), resume=copy)


# --- PPO end to end: torchrun + the CLI -------------------------------------------------------

def ppo_state(run: Path, step: int) -> dict:
    """The policy's and the value head's weights saved at ``step``."""
    folder = run / "checkpoints" / f"step_{step}"
    head = torch.load(folder / "value_head.pt")
    return {**weights(run, step), **{f"value_head.{k}": v for k, v in head.items()}}


@pytest.fixture(scope="module")
def two_rank_ppo_run(tmp_path_factory) -> Path:
    """A 2-rank PPO smoke run of two steps with a checkpoint after each."""
    out = tmp_path_factory.mktemp("dist_ppo")
    torchrun("--algorithm", "ppo", "--config", PPO_SMOKE, "--max_steps", "2", "--save_steps",
             "1", "--output_dir", str(out), "--run_name", "straight")
    return out / "straight"


def test_two_ppo_ranks_take_the_single_process_step(two_rank_ppo_run, tmp_path):
    config = load_config(ppo.PPOConfig, PPO_SMOKE, {"max_steps": 1, "output_dir": str(tmp_path),
                                                    "run_name": "single", "report_to": [],
                                                    "device": "cpu"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' numerics (torchrun sets OMP_NUM_THREADS=1)
    try:
        single = ppo.train(config)
    finally:
        torch.set_num_threads(threads)
    one, two = RunDir(single).metrics()[0], RunDir(two_rank_ppo_run).metrics()[0]
    for key in ("reward_mean", "reward_std", "episodes", "policy_tokens"):
        assert two[key] == one[key], key
    for key in ("loss", "policy_loss", "value_loss", "kl", "value_mean", "return_mean",
                "grad_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), key
    a, b = ppo_state(single, 1), ppo_state(two_rank_ppo_run, 1)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    # 16 AdamW steps (4 epochs x 4 minibatches): each moves an element by ~lr * sign(g), so
    # float-rounding differences stay a small fraction of lr
    assert worst < 0.05 * config.learning_rate, worst
    print(f"PPO: max |param difference| after one step (16 AdamW updates, lr "
          f"{config.learning_rate}): {worst:.2e}")


def test_two_rank_ppo_run_resumes_exactly(two_rank_ppo_run, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(two_rank_ppo_run, killed)
    shutil.rmtree(killed / "checkpoints" / "step_2")
    torchrun("--algorithm", "ppo", "--resume", str(killed))
    assert untimed(RunDir(killed).metrics()) == untimed(RunDir(two_rank_ppo_run).metrics())
    a, b = ppo_state(two_rank_ppo_run, 2), ppo_state(killed, 2)
    for key in a:
        assert torch.equal(a[key], b[key]), key
