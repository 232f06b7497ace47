"""Plumbing both trainers share: seeding, run folders, envs, optimiser, policy + weight sync,
and the progress bar. The algorithms themselves live in grpo.py and ppo.py."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["Progress", "TrainerConfig", "make_env_factory", "make_optimizer", "make_policy",
           "make_rollout_engine", "run_folder", "run_training", "seed_everything",
           "step_sampling"]

T = TypeVar("T")


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
    engine: str = "hf"
    """``"hf"`` (embedded, shared weights) or ``"vllm"`` (a local vLLM server, LoRA sync)."""
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
    bf16: bool = False
    """Run the trainer's forward passes under bfloat16 autocast (CPUs with bf16 support)."""
    max_steps: int = 50
    """Training steps of the run (rollouts -> update -> sync)."""
    max_concurrent: int = 64
    """Episodes in flight during rollouts."""
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
    """KV cache of the local vLLM server (engine ``"vllm"``)."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_folder(output_dir: str, run_name: str | None, env_id: str) -> Path:
    """``output_dir/<run_name or env name + timestamp>``."""
    name = run_name or f"{env_id.split('/')[-1].split(':')[-1]}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(output_dir) / name


def make_env_factory(env_id: str, env_kwargs: dict[str, Any]) -> Callable[[], Any]:
    """A zero-argument env factory for the train split (a registered id or ``module:Class``)."""
    import agentgym
    from agentgym.registry import _load

    if "/" not in env_id and ":" in env_id:
        cls = _load(env_id)
        return lambda: cls(split="train", **env_kwargs)
    agentgym.spec(env_id)  # fail early, with suggestions, on a typo
    return lambda: agentgym.make(env_id, split="train", **env_kwargs)


def step_sampling(config: TrainerConfig, step: int) -> Any:
    """Sampling settings of training step ``step``: a fresh, reproducible seed per step."""
    from agentgym.policy import SamplingParams

    return SamplingParams(temperature=config.temperature, top_p=config.top_p,
                          max_tokens=config.max_completion_length,
                          seed=config.seed * 1_000_003 + step * 10_007)


def make_rollout_engine(config: Any, policy: Any) -> Any:
    """One rollout engine for the whole run: its envs (tasks loaded, servers started) are
    pooled across steps; each step only sets its sampling (:func:`step_sampling`)."""
    from agentgym.rollout import RolloutConfig, RolloutEngine

    return RolloutEngine(make_env_factory(config.env_id, config.env_kwargs), policy,
                         RolloutConfig(group_size=config.num_generations,
                                       max_concurrent=config.max_concurrent))


def make_optimizer(model: Any, learning_rate: float, weight_decay: float,
                   warmup_steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable parameters, constant learning rate after a linear warm-up."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)
    return optimizer, scheduler


async def make_policy(config: Any, model: Any, tokenizer: Any,
                      run_path: Path) -> tuple[Any, Any, Callable[[], Awaitable[None]]]:
    """(policy, weight sync, async closer) for ``config.engine``.

    ``hf``: the embedded engine serves the trainer's own module (sync = version bump).
    ``vllm``: a local vLLM server on the base model; LoRA adapters are hot-loaded every step.
    """
    from agentgym.policies.weight_sync import SharedWeightSync

    if config.engine == "hf":
        from agentgym.policies.hf_engine import HFEngine

        engine = HFEngine(model, tokenizer, max_batch_size=64, max_wait_s=0.02)
        return engine, SharedWeightSync(engine), engine.aclose
    if config.engine != "vllm":
        raise ValueError(f"engine must be 'hf' or 'vllm', got {config.engine!r}")
    if not config.lora:
        raise ValueError("engine 'vllm' syncs LoRA adapters: set lora: true")
    from agentgym.policies.model_prep import resolve_model
    from agentgym.policies.openai_client import OpenAIPolicy
    from agentgym.policies.vllm_server import VLLMServer, VLLMServerConfig
    from agentgym.policies.weight_sync import LoRASync

    server = VLLMServer(VLLMServerConfig(model=resolve_model(
        None if config.model == "smollm2" else config.model), max_lora_rank=config.lora_r,
        kv_cache_gib=config.vllm_kv_cache_gib))
    await server.start()
    policy = OpenAIPolicy(server.base_url, "policy", max_concurrency=32, tokenizer=tokenizer)
    sync = LoRASync(server.url, policy, run_path / "adapters", server=server)
    await sync.push(model, 0)

    async def close() -> None:
        await policy.aclose()
        await server.stop()

    return policy, sync, close


async def run_training(policy: Any, fn: Callable[..., T], *args: Any) -> T:
    """Run the trainer's compute ``fn(*args)``: in the embedded engine's compute thread when
    the policy is one (shared weights: never during a generate; one thread for all torch
    work), else right here (a vLLM server has its own copy of the weights)."""
    if hasattr(policy, "run_exclusive"):
        return await policy.run_exclusive(fn, *args)
    return fn(*args)


class Progress:
    """A rich progress bar over training steps showing the latest mean reward and the ETA."""

    def __init__(self, total: int, start: int = 0):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                 TextColumn("reward {task.fields[reward]}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        self._task = self._bar.add_task("train", total=total, completed=start, reward="-")

    def __enter__(self) -> Progress:
        self._bar.start()
        return self

    def advance(self, step: int, reward: float) -> None:
        self._bar.update(self._task, completed=step, reward=f"{reward:.3f}")

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()
