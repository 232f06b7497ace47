"""Where models run and in which precision: one meaning of ``device`` and ``dtype`` for the
trainer, its value head and reference model, and the embedded engine.

* ``device``: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or
  ``"cuda:N"`` (any ``torch.device`` string is accepted).
* ``dtype``: ``"auto"`` (bfloat16 on CUDA, float32 elsewhere), ``"float32"``, ``"bfloat16"`` or
  ``"float16"`` -- the *compute* precision. Frozen weights (a LoRA base, the reference copy,
  an engine that only generates) are stored in it; weights that are trained stay float32 (the
  optimiser's master copy and its state), and forward passes run under :func:`autocast`.

Everything else (branching on CUDA) is memory statistics, nothing more: the CPU runs the same
code paths a GPU runs. Imports torch: import it from engine or trainer code only.
"""

from __future__ import annotations

import contextlib
import os
import resource

import torch

__all__ = ["autocast", "module_device", "peak_memory", "reset_peak_memory", "resolve_device",
           "resolve_dtype"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is visible (``cuda:$LOCAL_RANK`` under torchrun or
    accelerate launch, one GPU per rank), else ``cpu``; other names as torch reads them.

    Raises:
        ValueError: a CUDA device was asked for and none is available.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on CUDA, float32 elsewhere; else the named dtype.

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU for a module without any)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type; a no-op for float32 (the same code path)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory` (CUDA; the CPU's peak is the process's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float | str]:
    """``{"memory/peak_gib": ..., "memory/kind": ...}``: on CUDA the most memory allocated by
    tensors on ``device`` since :func:`reset_peak_memory` (kind ``"cuda_max_allocated"``);
    elsewhere the process's peak resident set size so far (kind ``"process_max_rss"``, Linux
    reports it in KiB; it never goes down, so a step shows the run's peak up to then)."""
    if device.type == "cuda":
        return {"memory/peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 4),
                "memory/kind": "cuda_max_allocated"}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"memory/peak_gib": round(peak_kib / 2**20, 4), "memory/kind": "process_max_rss"}
