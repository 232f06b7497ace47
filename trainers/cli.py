"""``agentgym train``: run a trainer from a YAML config with ``--key value`` overrides.

    agentgym train --config trainers/configs/smoke.yaml --max_steps 20
    agentgym train --config trainers/configs/smoke.yaml --resume runs/smoke/Digit-...
    python -m agentgym.trainers.cli ...     (the same, without the CLI wrapper)
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentgym.trainers.config import load_config

__all__ = ["TRAINERS", "main", "run_training"]


def _grpo() -> tuple[type, Callable[..., Path]]:
    from agentgym.trainers.grpo import GRPOConfig, train

    return GRPOConfig, train


def _ppo() -> tuple[type, Callable[..., Path]]:
    from agentgym.trainers.ppo import PPOConfig, train

    return PPOConfig, train


def _dpo() -> tuple[type, Callable[..., Path]]:
    from agentgym.trainers.dpo import DPOConfig, train

    return DPOConfig, train


def _sft() -> tuple[type, Callable[..., Path]]:
    from agentgym.trainers.sft import SFTConfig, train

    return SFTConfig, train


def _rft() -> tuple[type, Callable[..., Path]]:
    from agentgym.trainers.rft import RFTConfig, train

    return RFTConfig, train


def _rcsft() -> tuple[type, Callable[..., Path]]:
    from agentgym.trainers.rcsft import RCSFTConfig, train

    return RCSFTConfig, train


def _reward_model() -> tuple[type, Callable[..., Path]]:
    from agentgym.trainers.reward_model import RewardModelConfig, train

    return RewardModelConfig, train


def _rlhf() -> tuple[type, Callable[..., Path]]:
    from agentgym.trainers.rlhf import RLHFConfig, train

    return RLHFConfig, train


TRAINERS: dict[str, Callable[[], tuple[type, Callable[..., Path]]]] = {"grpo": _grpo,
                                                                      "ppo": _ppo,
                                                                      "dpo": _dpo,
                                                                      "sft": _sft,
                                                                      "rft": _rft,
                                                                      "rcsft": _rcsft,
                                                                      "reward_model":
                                                                          _reward_model,
                                                                      "rlhf": _rlhf}
"""Trainer name -> (config class, train function), imported on demand."""


def run_training(config_path: str | None, overrides: Sequence[str] | dict[str, Any] = (),
                 algorithm: str = "grpo", resume: str | None = None) -> Path:
    """Load the config (the run's own config.yaml when resuming) and train; returns the run."""
    if algorithm not in TRAINERS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(TRAINERS)}")
    config_cls, train = TRAINERS[algorithm]()
    if resume is not None and config_path is None:
        config_path = str(Path(resume) / "config.yaml")
    config = load_config(config_cls, config_path, overrides)
    return train(config, resume=resume)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a policy on an agentgym environment.")
    parser.add_argument("--config", default=None, help="YAML config (trainers/configs/...)")
    parser.add_argument("--algorithm", default="grpo", choices=sorted(TRAINERS))
    parser.add_argument("--resume", default=None, help="a run folder to continue")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = run_training(args.config, overrides, args.algorithm, args.resume)
    print(f"run folder: {run}")


if __name__ == "__main__":
    main()
