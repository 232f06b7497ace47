"""Sharded full fine-tuning (FSDP2, ``torch.distributed.fsdp.fully_shard``) for GRPO.

::

    torchrun --nproc_per_node 2 -m agentgym.trainers.cli --config c.yaml --lora false --fsdp true
    accelerate launch --use_fsdp --num_processes 2 -m agentgym.trainers.cli --config c.yaml \\
        --lora false

Each rank holds 1/N of every decoder layer's and of the trunk's (embeddings, final norm)
weights, gradients and AdamW state; a forward/backward all-gathers a layer's weights just in
time and reduce-scatters its gradients. The rest of the data-parallel design is unchanged
(``distributed.py``): each rank plays its share of the groups, the loss is normalised by the
global batch. What sharding adds, and how it is handled here:

* **the same passes on every rank**: FSDP's all-gathers and reduce-scatters are collectives,
  so every rank runs as many forward/backward passes as the rank with the most micro-batches;
  the extra ones are zero-weight passes over a one-token dummy row (:func:`equal_passes`);
* **gradients summed, not averaged**: each rank's loss already carries its share of the global
  normaliser, so the reduce-scatter's divide factor is 1, as a plain SUM (:func:`shard_model`);
  a parameter FSDP does not manage would still be all-reduced by
  :meth:`World.reduce_gradients`, which skips the sharded ones;
* **rollouts on full weights**: the embedded engine (``engine: hf``) generates with the
  trainer's own module, independently on each rank (no collective may run while generating),
  so every unit is all-gathered before the rollouts and resharded after (:func:`unsharded`):
  the full weights are in memory while generating, and ``generate`` runs with its default
  ``synced_gpus=False`` (transformers only syncs modules it sharded itself);
* **the tied LM head** reads the embedding's current weight (:class:`TiedHead`), since FSDP
  swaps sharded and gathered weights only on the modules inside a unit;
* **checkpoints**: gathered into a full state dict on rank 0 (a collective) and written by
  rank 0 as a plain ``save_pretrained`` folder, loadable by one process
  (:func:`gathered_for_saving`); the optimiser state is saved gathered too (keyed by
  parameter name). A resume (same world size) reads them on every rank and keeps each rank's
  shard (:func:`load_full_weights`, :func:`for_loading`).

``gradient_checkpointing`` composes with it (the recomputed layers gather their weights
again; tested).

Not supported (each refused with an error, by :func:`check_supported` unless said): LoRA
(``lora: true``: the adapters are small; use plain data parallel), engines other than ``hf`` (a
vLLM server would need the gathered weights pushed each step), ``beta > 0`` (the frozen
reference copy would have to be made before sharding and sharded itself), ``max_staleness > 0``
(rollouts would run while the weights are sharded), PPO and the other trainers (``join_world``
and ``open_session``: PPO's value head and minibatch passes are not padded), and models with an
untied LM head (:func:`shard_model`). One process with ``fsdp: true`` trains unsharded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from agentgym.tokens import TokenSequence
from agentgym.trainers.batch import Batch, pack

__all__ = ["FSDP_LAUNCH", "check_supported", "equal_passes", "fsdp_launch", "gathered_for_saving",
           "shard_model", "unsharded"]

logger = logging.getLogger(__name__)

FSDP_LAUNCH = "ACCELERATE_USE_FSDP"
"""The variable ``accelerate launch --use_fsdp`` (or an FSDP config file) sets."""


def fsdp_launch(env: Mapping[str, str]) -> bool:
    """True when ``accelerate launch`` was given an FSDP config."""
    return env.get(FSDP_LAUNCH, "").strip().lower() in ("1", "true", "yes")


def check_supported(config: Any) -> None:
    """Raise ValueError naming what FSDP supports when ``config`` asks for something else."""
    problems = []
    if config.lora:
        problems.append("lora: true (set lora: false; LoRA trains with plain data parallel)")
    if config.engine != "hf":
        problems.append(f"engine {config.engine!r} (use engine: hf)")
    if getattr(config, "beta", 0.0):
        problems.append("beta > 0 (no sharded reference model yet: use beta: 0)")
    if config.max_staleness:
        problems.append("max_staleness > 0 (use the on-policy loop)")
    if problems:
        raise ValueError("FSDP (fsdp: true / accelerate launch --use_fsdp) supports GRPO full "
                         "fine-tuning with engine hf, beta 0 and no async pipeline; not: "
                         + "; ".join(problems))


def shard_model(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Shard ``model`` in place over the default process group; returns its FSDP units.

    Raises:
        ValueError: the LM head has its own weight (untied embeddings), not wired yet.

    Units: each decoder layer, then the trunk (embeddings, final norm). The tied LM head
    becomes a :class:`TiedHead` that reads the embedding's weight when called: FSDP swaps the
    weight of the modules inside a unit only, and the trunk is the root, which FSDP keeps
    gathered after forward, so the head (called outside the trunk's forward) finds the full
    weight, and its gradient joins the embedding's reduce-scatter.
    Gradients are summed over ranks (divide factor 1, with a plain SUM reduce-scatter)."""
    from torch.distributed.fsdp import fully_shard

    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise ValueError("FSDP here needs a model whose LM head is tied to its embeddings "
                         "(tie_word_embeddings, e.g. SmolLM2, Qwen2.5-0.5B/1.5B/3B)")
    decoder = model.get_decoder()
    units = [fully_shard(layer) for layer in decoder.layers]
    units.append(fully_shard(decoder))
    model.set_output_embeddings(TiedHead(model.get_input_embeddings()))
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    logger.info("FSDP: %d units sharded over %d processes", len(units),
                torch.distributed.get_world_size())
    return units


class TiedHead(torch.nn.Module):
    """An LM head without a weight of its own: ``hidden @ embedding.weight.T`` with whatever
    tensor the embedding holds now (FSDP swaps it between sharded and gathered). The
    embedding is not a submodule, so parameters and state dicts list it once."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        self._embedding = [embedding]  # a list: not registered as a submodule

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight)


def fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """``model``'s FSDP units, outermost (the root) first; empty if it is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(model: torch.nn.Module) -> Iterator[None]:
    """Every FSDP unit's full weights gathered for the block (the embedded engine's rollouts:
    no collective may run inside), resharded after. Every rank enters and leaves together;
    an unsharded model passes through."""
    units = fsdp_units(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not units[0], recurse=False)


def dummy_batch(device: torch.device) -> Batch:
    """One row, a two-token prompt and one response token outside the loss: the input of a
    padding pass (the same calls into the model as a real micro-batch)."""
    row = TokenSequence((0, 0), (0,), (0,), (0.0,), (0,))
    return pack([row], [0.0], 0, device=device)


def equal_passes(micro: list[Batch], world: Any, device: torch.device) -> tuple[list[Batch], int]:
    """(``micro`` padded with dummy micro-batches to the most any rank has, how many were
    added): every rank then runs the same number of forward/backward passes."""
    most = max(world.gather([len(micro)]))
    pads = most - len(micro)
    return micro + [dummy_batch(device) for _ in range(pads)], pads


def is_sharded(param: torch.Tensor) -> bool:
    """True for a parameter FSDP manages (a DTensor)."""
    from torch.distributed.tensor import DTensor

    return isinstance(param, DTensor)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or a DTensor's full value (a collective when it is partial)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


class _FullModel:
    """``save_pretrained`` of a sharded model with its gathered full state dict."""

    def __init__(self, model: torch.nn.Module, state: dict[str, torch.Tensor]):
        self.model, self.state = model, state

    def save_pretrained(self, folder: str) -> None:
        self.model.save_pretrained(folder, state_dict=dict(self.state))  # it empties its copy


class _FullOptimizer:
    """``state_dict`` of a sharded optimiser: its gathered full state (keyed by name)."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def gathered_for_saving(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        ) -> tuple[_FullModel, _FullOptimizer]:
    """(model, optimizer) stand-ins whose ``save_pretrained`` / ``state_dict`` write the full,
    gathered state (on the CPU). A collective: call on every rank, save on rank 0."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    return _FullModel(model, state), _FullOptimizer(optim)


class _ShardingOptimizer:
    """``load_state_dict`` of a sharded optimiser from a gathered full state: each rank keeps
    its shard of it."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(self.model, self.optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))


def for_loading(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> _ShardingOptimizer:
    """A stand-in for ``optimizer`` whose ``load_state_dict`` takes a checkpoint's gathered
    optimiser state (what :func:`gathered_for_saving` wrote). A collective."""
    return _ShardingOptimizer(model, optimizer)


def load_full_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a checkpoint's full weights (a ``save_pretrained`` folder, read by every rank)
    into the sharded ``model``: each rank keeps its shard. A collective."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    state.pop("lm_head.weight", None)  # tied: the embedding's
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
