"""FSDP (GRPO full fine-tuning) on two gloo ranks (CPU): the sharded update equals the
single-process update on the same batch, its gathered checkpoint loads into one process, and a
``torchrun ... --fsdp true`` run (rollouts from the unsharded weights, checkpoint) takes the
single-process step. What FSDP does not support is refused with an error naming what it does.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from gates import TRAIN_INSTALL, require_module, require_train_stack

torch = require_module("torch", TRAIN_INSTALL)

import torch.multiprocessing as mp  # noqa: E402
from test_distributed import (  # noqa: E402
    CPU_ONLY,
    DEADLINE_S,
    SMOKE,
    TORCHRUN,
    free_port,
    sequences,
    untimed,
)

from agentgym.trainers.batch import pack  # noqa: E402
from agentgym.trainers.config import load_config  # noqa: E402
from agentgym.trainers.distributed import SINGLE, join_world  # noqa: E402
from agentgym.trainers.fsdp import check_supported, gathered_for_saving, shard_model  # noqa: E402
from agentgym.trainers.grpo import GRPOConfig, train, update  # noqa: E402
from agentgym.trainers.models import enable_gradient_checkpointing, load_weights  # noqa: E402
from agentgym.trainers.runs import RunDir  # noqa: E402
from agentgym.trainers.smoke import char_tokenizer, tiny_model  # noqa: E402

# (loss_type, micro_batch_size, rank 1 gets no sequences, gradient checkpointing): 7 rows over
# 2 ranks give 4 and 3 micro-batches of one row (rank 1 adds one padding pass), or rank 0 all 7
# rows in 4 micro-batches of two and rank 1 none (four padding passes)
CASES = [("dapo", 1, False, False), ("grpo", 2, False, False), ("dr_grpo", 1, False, False),
         ("dapo", 2, True, False), ("dapo", 1, False, True)]


def sharded_update(world, loss_type: str, micro: int, empty_rank: bool, recompute: bool,
                   out: Path | None = None) -> dict:
    """Full parameters after one GRPO update (SGD, lr 1, so they show the gradient itself) on
    this rank's share, sharded when ``world`` is; rank 0 also writes the gathered checkpoint
    to ``out`` (only rank 0 gets the gathered parameters)."""
    seqs, advantages = sequences()
    every = list(range(len(seqs)))
    rows = (every if world.rank == 0 else []) if empty_rank else world.shard(every)
    config = GRPOConfig(loss_type=loss_type, micro_batch_size=micro, lora=False,
                        max_completion_length=12, fsdp=True)
    model = tiny_model(char_tokenizer(), seed=0).train()
    if recompute:
        enable_gradient_checkpointing(model)
    if world.sharded:
        shard_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batch = pack([seqs[i] for i in rows], [advantages[i] for i in rows], 0) if rows else None
    stats = update(model, None, optimizer, scheduler, batch, config, world)
    if not world.sharded:
        return {"params": {k: v.clone() for k, v in model.state_dict().items()}, "stats": stats}
    full, _ = gathered_for_saving(model, optimizer)
    if world.is_main:
        full.save_pretrained(str(out))
    return {"params": {k: v.clone() for k, v in full.state.items()}, "stats": stats}


def fsdp_worker(rank: int, port: int, out: str) -> None:
    """Both ranks as ``accelerate launch --use_fsdp`` starts them (its variable, no config)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_FSDP="true",
                      **CPU_ONLY)
    torch.set_num_threads(1)
    world = join_world(timeout_s=120, fsdp=False)  # GRPO's join: the launch turns FSDP on
    assert world.sharded
    try:
        results = [sharded_update(world, *case, Path(out) / f"case{i}")
                   for i, case in enumerate(CASES)]
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        world.leave()


@pytest.fixture(scope="module")
def sharded_updates(tmp_path_factory) -> tuple[list[list[dict]], Path]:
    """(each rank's results of :func:`fsdp_worker`, the folder of their checkpoints)."""
    require_train_stack()
    out = tmp_path_factory.mktemp("fsdp")
    context = mp.start_processes(fsdp_worker, args=(free_port(), str(out)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.time() + DEADLINE_S
    while not context.join(timeout=1):  # raises if a rank failed
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish in time")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


def test_sharded_update_equals_the_whole_batch_update(sharded_updates):
    ranks, _ = sharded_updates
    worst = 0.0
    for i, (loss_type, micro, _, recompute) in enumerate(CASES):
        single = sharded_update(SINGLE, loss_type, micro, False, recompute)
        for rank in ranks:
            for name, value in single["stats"].items():
                assert rank[i]["stats"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
        got = ranks[0][i]["params"]  # gathered on rank 0
        assert set(got) - {"lm_head.weight"} == set(single["params"]) - {"lm_head.weight"}
        for name, value in got.items():
            worst = max(worst, float((single["params"][name] - value).abs().max()))
            assert torch.allclose(single["params"][name], value, atol=1e-6), (i, name)
    print(f"FSDP: max |param difference| after one SGD(lr=1) update: {worst:.2e}")


def test_the_gathered_checkpoint_loads_into_one_process(sharded_updates):
    ranks, out = sharded_updates
    for i in range(len(CASES)):
        model = tiny_model(char_tokenizer(), seed=1)
        load_weights(model, out / f"case{i}", lora=False)
        gathered = ranks[0][i]["params"]
        assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again
        for name, value in model.state_dict().items():
            if name != "lm_head.weight":
                assert torch.equal(value, gathered[name]), (i, name)


@pytest.mark.parametrize("change", [{"lora": True}, {"engine": "vllm"}, {"beta": 0.1},
                                    {"max_staleness": 1}])
def test_what_fsdp_does_not_support_is_refused(change):
    config = GRPOConfig(**{"lora": False, **change})
    with pytest.raises(ValueError, match="supports GRPO full fine-tuning with engine hf"):
        check_supported(config)


def test_an_fsdp_launch_is_refused_where_the_trainer_cannot_shard():
    launched = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "ACCELERATE_USE_FSDP": "true"}
    with pytest.raises(ValueError, match="supported for GRPO full fine-tuning only"):
        join_world(env=launched)  # PPO and the other trainers join without fsdp


# --- end to end: torchrun + the CLI ----------------------------------------------------------

def torchrun(*args: str) -> None:
    """``torchrun --nproc_per_node 2 -m agentgym.trainers.cli ...`` with a deadline."""
    command = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "agentgym.trainers.cli",
               *args, "--report_to", "[]", "--distributed_timeout_s", "120"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **CPU_ONLY})
    assert result.returncode == 0, result.stderr[-3000:]


def checkpoint_weights(run: Path, step: int) -> dict:
    model = tiny_model(char_tokenizer(), seed=1)
    load_weights(model, run / "checkpoints" / f"step_{step}" / "model", lora=False)
    return model.state_dict()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    """A 2-rank FSDP smoke run of two steps with a checkpoint after each."""
    require_train_stack()
    out = tmp_path_factory.mktemp("fsdp_run")
    torchrun("--config", SMOKE, "--max_steps", "2", "--save_steps", "1", "--fsdp", "true",
             "--output_dir", str(out), "--run_name", "fsdp")
    return out / "fsdp"


def test_torchrun_fsdp_run_takes_the_single_process_step(fsdp_run, tmp_path):
    config = load_config(GRPOConfig, SMOKE, {"max_steps": 1, "output_dir": str(tmp_path),
                                             "run_name": "single", "report_to": [],
                                             "device": "cpu"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(config)
    finally:
        torch.set_num_threads(threads)
    one, two = RunDir(single).metrics()[0], RunDir(fsdp_run).metrics()[0]
    for key in ("reward_mean", "episodes", "policy_tokens"):
        assert two[key] == one[key], key
    for key in ("loss", "grad_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
    a, b = checkpoint_weights(single, 1), checkpoint_weights(fsdp_run, 1)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 0.01 * config.learning_rate  # AdamW's first step: see test_distributed
    print(f"FSDP end to end: max |param difference| {worst:.2e} (lr {config.learning_rate})")


def test_fsdp_run_resumes_exactly(fsdp_run, tmp_path):
    killed = tmp_path / "killed"  # after writing step 2's metrics, before its checkpoint
    shutil.copytree(fsdp_run, killed)
    shutil.rmtree(killed / "checkpoints" / "step_2")
    torchrun("--resume", str(killed))
    assert untimed(RunDir(killed).metrics()) == untimed(RunDir(fsdp_run).metrics())
    a, b = checkpoint_weights(fsdp_run, 2), checkpoint_weights(killed, 2)
    for key in a:
        assert torch.equal(a[key], b[key]), key
