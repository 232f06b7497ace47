"""vLLM settings as the server's command line and the colocated engine's arguments, the trainer's
engine wiring, and the merged weights a colocated sync loads. No vLLM process is started."""

import asyncio
from pathlib import Path

import pytest
from gates import TRAIN_INSTALL, require_module

from agentgym.policies import vllm_colocated, vllm_server
from agentgym.policies.vllm_server import VLLMServer, VLLMServerConfig


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


@pytest.fixture(params=[True, False], ids=["vllm-cpu", "vllm-gpu"])
def cpu_build(request, monkeypatch):
    monkeypatch.setattr(vllm_server, "vllm_is_cpu_build", lambda: request.param)
    monkeypatch.setattr(vllm_colocated, "vllm_is_cpu_build", lambda: request.param)
    return request.param


def test_defaults_dtype_auto_float32_only_on_the_cpu_build(cpu_build):
    cmd = VLLMServer(VLLMServerConfig(model=Path("/m"), port=8001)).command()
    assert flag(cmd, "--dtype") == ("float32" if cpu_build else "auto")
    assert flag(cmd, "--tensor-parallel-size") == "1"
    assert flag(cmd, "--max-model-len") == "4096"
    assert "--enable-prefix-caching" in cmd and "--no-enable-prefix-caching" not in cmd
    if cpu_build:  # vllm-cpu sizes its KV cache from VLLM_CPU_KVCACHE_SPACE instead
        assert "--gpu-memory-utilization" not in cmd
        assert "--no-enable-chunked-prefill" in cmd
    else:
        assert flag(cmd, "--gpu-memory-utilization") == "0.9"
        assert "--no-enable-chunked-prefill" not in cmd


def test_settings_are_passed_through(cpu_build):
    config = VLLMServerConfig(model=Path("/m"), port=8001, dtype="bfloat16",
                              gpu_memory_utilization=0.35, tensor_parallel_size=4,
                              prefix_caching=False, max_model_len=8192)
    cmd = VLLMServer(config).command()
    assert flag(cmd, "--dtype") == "bfloat16"  # an explicit dtype is kept, even on CPU
    assert flag(cmd, "--tensor-parallel-size") == "4"
    assert flag(cmd, "--max-model-len") == "8192"
    assert "--no-enable-prefix-caching" in cmd and "--enable-prefix-caching" not in cmd
    assert ("--gpu-memory-utilization" in cmd) is not cpu_build


def test_colocated_engine_arguments_match_the_server(cpu_build):
    config = VLLMServerConfig(model=Path("/m"), gpu_memory_utilization=0.3, max_model_len=1024)
    kwargs = vllm_colocated._engine_kwargs(config, sleep=not cpu_build)
    assert kwargs["model"] == "/m" and kwargs["max_model_len"] == 1024
    assert kwargs["dtype"] == ("float32" if cpu_build else "auto")
    assert kwargs["enable_prefix_caching"] is True
    assert kwargs["logprobs_mode"] == "processed_logprobs"
    assert kwargs["enable_sleep_mode"] is not cpu_build
    assert kwargs["distributed_executor_backend"] == "uni"  # weights load by reference
    assert kwargs.get("gpu_memory_utilization") == (None if cpu_build else 0.3)
    assert kwargs["enable_chunked_prefill"] is not cpu_build


@pytest.mark.parametrize("bad", [dict(gpu_memory_utilization=0.0),
                                 dict(gpu_memory_utilization=1.5),
                                 dict(tensor_parallel_size=0), dict(max_model_len=0)])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        VLLMServerConfig(model=Path("/m"), **bad)


def test_colocated_needs_one_rank_and_a_known_sleep_level():
    with pytest.raises(ValueError, match="tensor-parallel"):
        vllm_colocated.ColocatedVLLM(VLLMServerConfig(model=Path("/m"), tensor_parallel_size=2),
                                     None)
    with pytest.raises(ValueError, match="sleep_level"):
        vllm_colocated.ColocatedVLLM(VLLMServerConfig(model=Path("/m")), None, sleep_level=3)


# --- the trainer's wiring ------------------------------------------------------------------

def test_trainer_config_reaches_the_vllm_settings(monkeypatch):
    require_module("torch", TRAIN_INSTALL)
    from agentgym.trainers import common
    from agentgym.trainers.grpo import GRPOConfig

    monkeypatch.setattr(common, "resolve_model", lambda name: Path("/models/x"))
    config = GRPOConfig(engine="vllm", lora=False, vllm_dtype="bfloat16",
                        vllm_gpu_memory_utilization=0.5, vllm_tensor_parallel_size=2,
                        vllm_prefix_caching=False, vllm_max_model_len=2048)
    settings = common.vllm_settings(config)
    assert (settings.model, settings.dtype, settings.gpu_memory_utilization) == (
        Path("/models/x"), "bfloat16", 0.5)
    assert (settings.tensor_parallel_size, settings.prefix_caching, settings.max_model_len) == (
        2, False, 2048)
    assert settings.enable_lora is False  # full-weight training serves no adapters
    defaults = common.vllm_settings(GRPOConfig(engine="vllm"))
    assert (defaults.dtype, defaults.gpu_memory_utilization, defaults.tensor_parallel_size,
            defaults.prefix_caching, defaults.enable_lora) == ("auto", 0.9, 1, True, True)


def test_lora_false_syncs_full_weights_with_the_configured_deadline(tmp_path):
    require_module("torch", TRAIN_INSTALL)
    from agentgym.policies.weight_sync import FullWeightSync, LoRASync
    from agentgym.trainers import common
    from agentgym.trainers.grpo import GRPOConfig

    server = VLLMServer(VLLMServerConfig(model=tmp_path, port=8123))
    full = common.server_sync(GRPOConfig(engine="vllm", lora=False, sync_timeout_s=42.0),
                              server, None, tmp_path)
    assert isinstance(full, FullWeightSync) and full.timeout_s == 42.0
    assert full.server is server and full.out_dir == tmp_path / "weights"
    lora = common.server_sync(GRPOConfig(engine="vllm"), server, None, tmp_path)
    assert isinstance(lora, LoRASync) and lora.timeout_s == 300.0
    assert len(server.on_restart) == 2  # both re-load their current weights after a restart


def test_an_unknown_engine_names_the_known_ones(tmp_path):
    require_module("torch", TRAIN_INSTALL)
    from agentgym.trainers import common
    from agentgym.trainers.grpo import GRPOConfig

    with pytest.raises(ValueError, match="vllm_colocated"):
        asyncio.run(common.make_policy(GRPOConfig(engine="vlm"), None, None, tmp_path))


# --- the weights a colocated sync loads ----------------------------------------------------

@pytest.mark.parametrize("lora", [False, True])
def test_hf_weights_have_base_names_and_merged_lora_deltas(lora):
    torch = require_module("torch", TRAIN_INSTALL)
    from agentgym.trainers.models import load_model

    model, _ = load_model("tiny", lora=lora, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                          lora_target_modules=["q_proj", "v_proj"], seed=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)  # a non-zero delta (peft initialises B to zero)
        weights = dict(vllm_colocated.hf_weights(model))
    base = model.get_base_model() if lora else model
    plain = {n.replace(".base_layer.", "."): t for n, t in base.state_dict().items()
             if ".lora_" not in n}
    assert set(weights) == set(plain)
    assert not any("lora" in n or "base_layer" in n for n in weights)
    q = next(n for n in weights if n.endswith("q_proj.weight"))
    k = next(n for n in weights if n.endswith("k_proj.weight"))
    assert torch.equal(weights[k], plain[k])
    if lora:
        layer = base.get_submodule(q.removesuffix(".weight"))
        expected = layer.base_layer.weight + layer.get_delta_weight("default")
        assert torch.allclose(weights[q], expected) and not torch.equal(weights[q], plain[q])
        assert all(not p.grad_fn for p in weights.values())
    else:
        assert torch.equal(weights[q], plain[q])
