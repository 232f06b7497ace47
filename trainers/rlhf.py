"""RLHF end to end: SFT -> a Bradley-Terry reward model -> PPO against the reward model, with a
KL penalty to the SFT policy (Ouyang et al., 2022, "InstructGPT"; Stiennon et al., 2020).

The three stages, each a trainer of its own with its own run folder under ``output_dir``:

1. **SFT** (``sft/``, :mod:`agentgym.trainers.sft`): pi_SFT = argmin -E log pi(y|x) on
   demonstrations; its final weights are exported as a plain Hugging Face folder
   (``sft_policy/``, LoRA merged), the starting point of the next two stages;
2. **reward model** (``reward_model/``, :mod:`agentgym.trainers.reward_model`): initialised
   from pi_SFT, trained with ``-log sigma(r(x, y_w) - r(x, y_l))`` on pairs mined from pi_SFT's
   rollout groups (best vs worst by the env's verifiable reward) or on a preference file;
   its held-out pairwise accuracy is in ``reward_model/heldout.json``;
3. **PPO** (``ppo/``, :mod:`agentgym.trainers.ppo`), unchanged: the policy starts from
   ``sft_policy/`` with fresh LoRA adapters, so PPO's reference (adapters off) *is* pi_SFT,
   and the per-token reward is PPO's own KL-penalised one::

       R_t = r_phi(x, y) * [t = T] - beta * log(pi(y_t | .) / pi_SFT(y_t | .))

   with ``r_phi`` the reward model, which scores episodes through the env's rubric (a
   ``rewards:`` list, set by the chain: ``{kind: reward_model, path: reward_model/}`` with
   weight 1, and the env's own verifiable terms at weight 0). Every metrics row of
   ``ppo/metrics.jsonl`` therefore has ``reward/reward_model`` (what PPO maximises) next to
   the env's verifiable terms (e.g.
   ``reward/correct``): when the first climbs and the second does not, the policy is
   exploiting the reward model (reward hacking).

``agentgym train --algorithm rlhf --config trainers/configs/rlhf.yaml`` runs the chain; a
stage whose output exists is skipped, and an interrupted stage resumes from its checkpoint
(``--resume OUTPUT_DIR`` or the same command again).

Deviations from InstructGPT: rewards come from rollouts ranked by a verifiable reward instead
of human labels (a preference JSONL can stand in: ``reward_model: {pairs: file.jsonl}``); no
pretraining-gradient mix (PPO-ptx); LoRA throughout by default.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentgym.trainers import ppo, reward_model, sft
from agentgym.trainers.config import config_to_dict, load_config
from agentgym.trainers.models import load_model, load_weights
from agentgym.trainers.runs import RunDir, last_step

__all__ = ["RLHFConfig", "export_policy", "train"]

logger = logging.getLogger(__name__)


@dataclass
class RLHFConfig:
    """The chain's settings: where it goes, and one ``{config: YAML, key: value...}`` mapping
    per stage (the stage's YAML, then the keys as overrides; ``model``, ``output_dir`` and
    ``run_name`` are set by the chain)."""

    output_dir: str = "runs/rlhf"
    """Folder of the chain: ``sft/``, ``sft_policy/``, ``reward_model/``, ``ppo/``."""
    sft: dict[str, Any] = field(default_factory=lambda: {"config": "trainers/configs/sft.yaml"})
    """Stage 1 (SFTConfig)."""
    reward_model: dict[str, Any] = field(
        default_factory=lambda: {"config": "trainers/configs/reward_model.yaml"})
    """Stage 2 (RewardModelConfig); its ``model`` is the SFT policy."""
    ppo: dict[str, Any] = field(
        default_factory=lambda: {"config": "trainers/configs/rlhf_ppo.yaml"})
    """Stage 3 (PPOConfig); its ``model`` is the SFT policy (hence the KL reference)."""
    reward_model_weight: float = 1.0
    """Weight of the reward model's score in PPO's reward."""
    env_reward_weight: float = 0.0
    """Weight of the env's verifiable terms in PPO's reward (0: logged only)."""


def _stage(cls: type, spec: dict[str, Any], **fixed: Any) -> Any:
    """``cls`` from a stage mapping (its ``config`` YAML, then its keys, then ``fixed``)."""
    overrides = {k: v for k, v in spec.items() if k != "config"}
    return load_config(cls, spec.get("config"), {**overrides, **fixed})


def export_policy(run: str | Path, out: str | Path) -> Path:
    """The newest checkpoint of a training run as a plain Hugging Face folder at ``out``
    (LoRA adapters merged into the base weights, tokenizer and chat template included)."""
    run, out = Path(run), Path(out)
    config = yaml.safe_load((run / "config.yaml").read_text())
    lora = bool(config.get("lora", True))
    model, tokenizer = load_model(
        config["model"], lora=lora, lora_r=config.get("lora_r", 16),
        lora_alpha=config.get("lora_alpha", 32), lora_dropout=0.0,
        lora_target_modules=config.get("lora_target_modules", ["q_proj", "v_proj"]),
        seed=config.get("seed", 0))
    checkpoints = RunDir(run).checkpoints()
    if not checkpoints:
        raise FileNotFoundError(f"{run} has no checkpoint to export")
    load_weights(model, checkpoints[-1] / "model", lora)
    if lora:
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted export's leftovers
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out)  # complete or absent: a later run skips the stage only when it is there
    return out


def _rewards(config: RLHFConfig, reward_model: Path) -> list[dict[str, Any]]:
    """PPO's ``rewards:`` list: the reward model, and the env's terms at their new weight."""
    return [{"kind": "reward_model", "path": str(reward_model),
             "weight": config.reward_model_weight},
            {"kind": "env", "name": "*", "weight": config.env_reward_weight}]


def train(config: RLHFConfig, resume: str | Path | None = None) -> Path:
    """Run (or finish) the chain; returns its folder (``resume``: that folder)."""
    out = Path(resume) if resume is not None else Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))  # for --resume
    policy = out / "sft_policy"
    if not (policy / "config.json").exists():
        sft_config = _stage(sft.SFTConfig, config.sft, output_dir=str(out), run_name="sft")
        run = out / "sft"
        sft.train(sft_config, resume=run if last_step(run) else None)
        export_policy(run, policy)
    rm_run = out / "reward_model"
    if not (rm_run / "heldout.json").exists():
        rm_config = _stage(reward_model.RewardModelConfig, config.reward_model,
                           model=str(policy), output_dir=str(out), run_name="reward_model")
        reward_model.train(rm_config, resume=rm_run if rm_run.exists() else None)
    ppo_config = _stage(ppo.PPOConfig, config.ppo, model=str(policy),
                        rewards=_rewards(config, rm_run), output_dir=str(out), run_name="ppo")
    run = out / "ppo"
    if last_step(run) < ppo_config.max_steps:
        ppo.train(ppo_config, resume=run if last_step(run) else None)
    return out

