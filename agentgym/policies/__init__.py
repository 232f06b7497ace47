"""Policy backends behind the :class:`~agentgym.policy.Policy` protocol, and what serves them.

* :class:`HFEngine` (``--engine hf``): transformers in-process, concurrent requests batched into
  one ``generate``; shares its module with the trainer (weight sync = version bump).
* :class:`OpenAIPolicy`: httpx client for vLLM or any OpenAI-compatible endpoint.
* :class:`ReplicaRouter`: several servers of one model behind one policy (least-loaded, sticky
  per episode, failover when a replica dies).
* :class:`VLLMServer` (``--engine vllm``): a supervised vLLM subprocess with tool parsing,
  token ids and runtime LoRA updates enabled; dtype, GPU memory share, tensor parallelism,
  prefix caching and context length in :class:`VLLMServerConfig`.
* :class:`ColocatedVLLM` (``engine: vllm_colocated``): vLLM's in-process engine in the
  trainer's process, asleep during the trainer's compute on CUDA; :class:`ColocatedSync` loads
  the trainer's weights (LoRA merged) into it in place.
* :class:`LoRASync`, :class:`FullWeightSync`, :class:`SharedWeightSync`: weight sync with a
  deadline on every step.
* :func:`prepare_model`: GGUF -> cached safetensors folder with the tool-aware chat template.
* :func:`render_prompt`, :func:`continue_prompt`: chat -> prompt ids, whole or continuing the
  previous turn's token ids.
* :func:`check_extends`: catches chat templates that rewrite earlier turns.

Importing this package is cheap: torch, transformers and vllm load only when an engine starts.
"""

from agentgym.policies.chat_tokens import continue_prompt, render_prompt
from agentgym.policies.drift import check_extends
from agentgym.policies.hf_engine import HFEngine
from agentgym.policies.model_prep import chat_template_path, default_model_path, prepare_model
from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.policies.router import ReplicaRouter
from agentgym.policies.serve import make_policy, serve
from agentgym.policies.vllm_colocated import ColocatedSync, ColocatedVLLM
from agentgym.policies.vllm_server import VLLMServer, VLLMServerConfig, vllm_available
from agentgym.policies.weight_sync import (
    FullWeightSync,
    LoRASync,
    SharedWeightSync,
    WeightSync,
)

__all__ = [
    "ColocatedSync",
    "ColocatedVLLM",
    "FullWeightSync",
    "HFEngine",
    "LoRASync",
    "OpenAIPolicy",
    "ReplicaRouter",
    "SharedWeightSync",
    "VLLMServer",
    "VLLMServerConfig",
    "WeightSync",
    "chat_template_path",
    "check_extends",
    "continue_prompt",
    "default_model_path",
    "make_policy",
    "prepare_model",
    "render_prompt",
    "serve",
    "vllm_available",
]
