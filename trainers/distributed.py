"""Data-parallel training over several processes: ``torchrun`` or ``accelerate launch``.

::

    torchrun --nproc_per_node 2 -m agentgym.trainers.cli --config trainers/configs/smoke.yaml
    accelerate launch --multi_gpu --num_processes 2 -m agentgym.trainers.cli --config ...

Both launchers start one process per GPU (or per CPU share) and set ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`join_world` reads them and joins the
process group (NCCL when CUDA is present, each rank on ``cuda:LOCAL_RANK``; gloo on CPU). A
plain ``agentgym train`` is the world of one, where every method below is a no-op.

How a step is shared (see grpo.py and ppo.py):

* every rank draws the same tasks from the same seeded task RNG and plays only its contiguous
  share of them (:meth:`World.shard`) with its own embedded engine. Episode ``i`` of a group
  is sampled with ``step seed + i`` whichever rank plays it, so the union of the shares is the
  single-process batch, trajectory for trajectory;
* the loss is normalised by the *global* batch (rows and policy tokens summed over ranks), so
  each rank's gradient is its share of the single-process gradient and :meth:`World.
  reduce_gradients` **sums** them (an all-reduce after the micro-batches, before clipping);
  PPO's batch-wide statistics (whitening) use moments summed over ranks (:meth:`World.
  all_sum`), and its minibatches are one shuffle of the global rows (:meth:`World.offset`
  says which of them a rank holds), each normalised by its global policy tokens;
  clipping and AdamW then run identically on every rank, and the weights stay equal;
* metrics: loss statistics are summed (each is already weighted by the rank's share), counts
  are summed, and the groups are gathered so that rank 0 logs the same reward mean and samples
  as a single process would;
* rank 0 alone writes the run folder (config, metrics, samples, trackers, checkpoints); each
  checkpoint also keeps every rank's RNG states (``ranks.pt``), and a resume needs the world
  size that wrote it.

Engines: ``hf`` runs one embedded engine per rank (on the rank's own module). ``vllm`` shares
one server (:func:`share_server`): rank 0 starts it and syncs the weights into it after each
update (:class:`LeaderSync`); the other ranks connect a client to its URL and, at every sync,
wait for rank 0's push and route their requests to the weights it now serves
(:class:`FollowerSync`), so every rank samples from the new weights and none before they are
loaded. All ranks' weights are equal after a step, so rank 0's push is everyone's. The server
listens on rank 0's machine (127.0.0.1): one machine, several GPUs (give the server its own
with ``CUDA_VISIBLE_DEVICES`` / ``vllm_tensor_parallel_size``). ``vllm_colocated`` (an
in-process engine per rank) is single-process for now.

Why not DDP or ``accelerate.Accelerator``: the trainer runs a micro-batch as two forward calls
(the shared prompt prefill, then the responses; batch.py), calls the module outside any wrapper
(the embedded engine generates with it, peft disables its adapters for pi_ref) and reduces once
per optimiser step anyway; DDP's per-forward hooks, ``no_sync`` and ``.module`` unwrapping would
add more than the one bucketed all-reduce they replace. What is lost: communication does not
overlap the backward pass.

DeepSpeed and Megatron-LM configs of ``accelerate launch`` are refused (:func:`join_world`
raises) rather than silently run as plain data parallel. FSDP (an accelerate FSDP config, or
``fsdp: true``) is wired for GRPO full fine-tuning with the embedded engine
(``trainers/fsdp.py``: zero-weight padding passes so every rank runs the same collectives,
units gathered for the rollouts, a SUM reduce-scatter, full-state checkpoints on rank 0);
:attr:`World.sharded` tells this module to leave the parameters FSDP manages to FSDP. Other
trainers (PPO), LoRA, engine vllm, ``beta > 0`` and resuming refuse it with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from agentgym.errors import PolicyError
from agentgym.trainers.fsdp import fsdp_launch
from agentgym.trainers.runs import set_rng_state

__all__ = ["SINGLE", "FollowerSync", "LeaderSync", "World", "join_world", "load_rank_rng",
           "refuse_sharded_launch", "share_server"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
N = TypeVar("N", int, float)

_BUCKET_BYTES = 64 * 2**20
"""Gradient bytes per all-reduce call."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes.

    Attributes:
        rank: this process's index (0 writes the run folder).
        world_size: processes in the run.
        local_rank: index on this machine (its GPU).
        owns_group: True when :func:`join_world` created the process group (and
            :meth:`leave` destroys it).
        sharded: FSDP shards the model (``trainers/fsdp.py``): the parameters it manages
            are reduced by FSDP itself, and this class only handles the others.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    sharded: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that writes the run folder."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: this rank's GPU under NCCL, else the CPU."""
        if self.world_size > 1 and dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``items`` (sizes differ by at most one; concatenating
        the shares in rank order gives ``items`` back)."""
        size, extra = divmod(len(items), self.world_size)
        start = self.rank * size + min(self.rank, extra)
        return list(items[start: start + size + (self.rank < extra)])

    def gather(self, items: list[T]) -> list[T]:
        """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
        if self.world_size == 1:
            return items
        parts: list[list[T] | None] = [None] * self.world_size
        with self._current_device():
            dist.all_gather_object(parts, items)
        return [item for part in parts for item in part or []]

    def sum(self, values: Mapping[str, N]) -> dict[str, N]:
        """Each value summed over the ranks (in float64; ints stay ints)."""
        if self.world_size == 1:
            return dict(values)
        keys = sorted(values)
        total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                             device=self.device)
        dist.all_reduce(total)
        return {k: type(values[k])(round(v) if isinstance(values[k], int) else v)
                for k, v in zip(keys, total.tolist(), strict=True)}

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed element-wise over the ranks (a new tensor on ``tensor``'s device;
        ``tensor`` itself in one process). Every rank passes the same shape and dtype."""
        if self.world_size == 1:
            return tensor
        total = tensor.to(self.device, copy=True)
        dist.all_reduce(total)
        return total.to(tensor.device)

    def offset(self, count: int) -> tuple[int, int]:
        """(this rank's first global index, the global total) when each rank holds ``count``
        consecutive items of a batch concatenated in rank order."""
        if self.world_size == 1:
            return 0, count
        counts = self.gather([count])
        return sum(counts[: self.rank]), sum(counts)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        with self._current_device():
            dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def _current_device(self) -> contextlib.AbstractContextManager:
        """Make this rank's GPU the thread's current CUDA device (NCCL's object collectives
        use it; a worker thread, such as the embedded engine's compute thread, starts on GPU
        0 whatever the rank)."""
        if self.device.type == "cuda":
            return torch.cuda.device(self.device)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world_size > 1:
            dist.barrier()

    def reduce_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum ``.grad`` over the ranks, in place (call after the last backward of a step).

        Each rank's loss already carries its share of the global normaliser, so the sum is the
        single-process gradient. A parameter without a gradient on some rank gets zeros there;
        one without a gradient on every rank keeps ``None`` (AdamW skips it, as in one process).
        """
        if self.world_size == 1:
            return
        params = [p for p in params if p.requires_grad and not self._fsdp_managed(p)]
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8,
                           device=self.device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        used = [p for p, flag in zip(params, has.tolist(), strict=True) if flag]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets([p.grad for p in used]):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    def sync_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's trainable parameters to every rank (they start equal already, from the
        same seed and checkpoint; this makes it certain, as DDP does)."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for param in module.parameters():
                if param.requires_grad and not self._fsdp_managed(param):
                    dist.broadcast(param.data, src=0)

    def _fsdp_managed(self, param: torch.Tensor) -> bool:
        """True for a parameter FSDP shards (it reduces and holds it consistently itself)."""
        if not self.sharded:
            return False
        from torch.distributed.tensor import DTensor

        return isinstance(param, DTensor)

    def leave(self) -> None:
        """Destroy the process group if :func:`join_world` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = World()
"""The world of one process (plain ``agentgym train``)."""


_SHARDED_LAUNCHES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
                     "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}
"""Environment variables ``accelerate launch`` sets for a sharded config -> its name."""


def refuse_sharded_launch(env: Mapping[str, str], fsdp_ok: bool = False) -> None:
    """Raise if ``accelerate launch`` was given a DeepSpeed or Megatron-LM config, or an FSDP
    config when the caller cannot shard (``fsdp_ok``: GRPO can, see ``trainers/fsdp.py``).

    Raises:
        ValueError: naming the config and what to use instead (see the module docstring).
    """
    for variable, name in _SHARDED_LAUNCHES.items():
        if name == "FSDP" and fsdp_ok:
            continue
        if env.get(variable, "").strip().lower() in ("1", "true", "yes"):
            if name == "FSDP":
                raise ValueError(
                    f"accelerate launch with an FSDP config ({variable}) is supported for GRPO "
                    "full fine-tuning only (algorithm grpo, lora: false, engine: hf, beta: 0); "
                    "for this trainer use a data-parallel config (accelerate launch "
                    "--multi_gpu --num_processes N, or torchrun --nproc_per_node N)")
            raise ValueError(
                f"accelerate launch with a {name} config ({variable}) is not supported: "
                "agentgym's trainers run their own data parallelism, where every rank holds "
                "the whole model (its embedded engine generates from it) and trains its own "
                "share of the batch, which FSDP's per-layer collectives cannot follow. Use a "
                "data-parallel config (accelerate launch --multi_gpu --num_processes N, or "
                "torchrun --nproc_per_node N); LoRA (lora: true), gradient_checkpointing and "
                "dtype bfloat16 are the ways to fit a larger model")


def join_world(timeout_s: float = 1800.0, env: Mapping[str, str] | None = None,
               fsdp: bool | None = None) -> World:
    """The :class:`World` the launcher set up, joining its process group if needed.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun`` and ``accelerate
    launch``); without them, or with ``WORLD_SIZE=1``, this is :data:`SINGLE`. A group that
    already exists (initialised by the caller) is reused. A sharded ``accelerate`` config
    (DeepSpeed, Megatron-LM; FSDP unless ``fsdp`` is a bool) raises ValueError
    (:func:`refuse_sharded_launch`).

    Args:
        timeout_s: how long a collective waits for the slowest rank (its rollouts included)
            before the run fails with an error instead of hanging.
        fsdp: None when the caller cannot shard the model; else whether its config asks for
            FSDP (``fsdp: true``), which an accelerate FSDP launch also turns on. The world is
            ``sharded`` when FSDP is on and there are several processes.
    """
    env = os.environ if env is None else env
    refuse_sharded_launch(env, fsdp_ok=fsdp is not None)
    shard = fsdp is not None and (fsdp or fsdp_launch(env))
    world_size = int(env.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE
    rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
    cuda = torch.cuda.is_available()
    if cuda:  # "cuda" now means this rank's GPU: call before the model moves to the device
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    logger.info("rank %d of %d (%s)", rank, world_size, dist.get_backend())
    return World(rank=rank, world_size=world_size, local_rank=local_rank, owns_group=owns,
                 sharded=shard)


def _buckets(grads: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    """Consecutive runs of gradients with one dtype and device, of at most ``_BUCKET_BYTES``
    each (a single larger gradient is a bucket alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads:
        nbytes = grad.numel() * grad.element_size()
        if bucket and (size + nbytes > _BUCKET_BYTES or grad.dtype != bucket[0].dtype
                       or grad.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(grad)
        size += nbytes
    if bucket:
        yield bucket


def load_rank_rng(path: Path, world: World) -> None:
    """Restore this rank's RNG states from a checkpoint's ``ranks.pt`` (one entry per rank).

    Raises:
        ValueError: the checkpoint was written by a different number of processes (a
            checkpoint without ``ranks.pt`` comes from one process).
    """
    states = torch.load(path, weights_only=False) if path.exists() else None
    written = 1 if states is None else len(states)
    if written != world.world_size:
        raise ValueError(f"{path.parent} was written by {written} training process(es) and "
                         f"this run has {world.world_size}: resume with the same number "
                         "(torchrun --nproc_per_node / accelerate launch --num_processes)")
    if states is not None:
        set_rng_state(states[world.rank])


# --- one policy server for every rank (engine "vllm") -----------------------------------------

ServerParts = tuple[str, Any, Any, Callable[[], Awaitable[None]]]
"""(server base URL, rank 0's policy client, its weight sync, closer), what a starter returns."""


class LeaderSync:
    """Rank 0's weight sync into the shared server: pushes with ``inner``, then tells the other
    ranks what it now serves (or that the push failed, so they raise instead of waiting).

    Args:
        inner: the sync into the server (``LoRASync``, ``FullWeightSync``).
        policy: rank 0's client, whose ``model`` and ``weight_version`` the push set.
        world: the training processes.
    """

    def __init__(self, inner: Any, policy: Any, world: World):
        self.inner, self.policy, self.world = inner, policy, world

    async def push(self, model: Any, version: int | None = None) -> int:
        """``inner.push``, then broadcast (served model name, version) to the other ranks."""
        try:
            new = await self.inner.push(model, version)
        except BaseException as exc:
            await asyncio.to_thread(self.world.broadcast,
                                    ("failed", f"{type(exc).__name__}: {exc}"))
            raise
        await asyncio.to_thread(self.world.broadcast, ("serving", self.policy.model, new))
        return new


class FollowerSync:
    """A rank > 0's side of the shared server's weight sync: waits for rank 0's push and routes
    this rank's client to the model name and version rank 0 now serves.

    Raises (from :meth:`push`):
        PolicyError: rank 0's push failed (its error is in the message).
    """

    def __init__(self, policy: Any, world: World):
        self.policy, self.world = policy, world

    async def push(self, model: Any = None, version: int | None = None) -> int:
        """Wait (in a worker thread; the deadline is the process group's) for rank 0's push."""
        message = await asyncio.to_thread(self.world.broadcast, None)
        if message[0] == "failed":
            raise PolicyError(f"rank 0's weight sync into the shared server failed: "
                              f"{message[1]}")
        _, name, new = message
        self.policy.set_model(name, new)
        return new


async def share_server(world: World, start: Callable[[], Awaitable[ServerParts]],
                       connect: Callable[[str], Any]) -> tuple[Any, Any,
                                                                Callable[[], Awaitable[None]]]:
    """(policy, weight sync, closer) of this rank, around one server for every rank.

    Rank 0 calls ``start()`` (start the server, its client and its sync) and broadcasts the
    server's URL; the other ranks call ``connect(url)`` for a client of their own. In one
    process this is ``start()``'s parts. Nothing is pushed yet: call ``sync.push`` on every rank.

    Raises:
        PolicyError: on ranks > 0, when rank 0 could not start the server.
    """
    if world.is_main:
        try:
            url, policy, sync, close = await start()
        except BaseException as exc:
            world.broadcast(("failed", f"{type(exc).__name__}: {exc}"))
            raise
        world.broadcast(("url", url))
        return policy, (LeaderSync(sync, policy, world) if world.world_size > 1 else sync), close
    message = await asyncio.to_thread(world.broadcast, None)
    if message[0] == "failed":
        raise PolicyError(f"rank 0 could not start the shared policy server: {message[1]}")
    policy = connect(message[1])
    return policy, FollowerSync(policy, world), policy.aclose
