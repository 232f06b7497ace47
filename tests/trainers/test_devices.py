"""Device and precision: every tensor on the model's device, chunked logprobs, token-budget
micro-batches, gradient checkpointing, CUDA RNG in checkpoints, bf16 storage with fp32 masters."""

import asyncio
import dataclasses
import linecache
import re
import sys
from pathlib import Path

import pytest
from gates import TRAIN_INSTALL, require_module

torch = require_module("torch", TRAIN_INSTALL)

from torch.overrides import TorchFunctionMode  # noqa: E402

from agentgym.policies.devices import (  # noqa: E402
    autocast,
    peak_memory,
    resolve_device,
    resolve_dtype,
)
from agentgym.policies.hf_engine import HFEngine, _Request  # noqa: E402
from agentgym.policy import SamplingParams  # noqa: E402
from agentgym.tokens import TokenSequence  # noqa: E402
from agentgym.trainers import grpo, ppo  # noqa: E402
from agentgym.trainers.batch import micro_batches, pack, policy_logprobs  # noqa: E402
from agentgym.trainers.common import make_optimizer, precision, reference_logprobs  # noqa: E402
from agentgym.trainers.models import load_model  # noqa: E402
from agentgym.trainers.runs import RunDir  # noqa: E402
from agentgym.trainers.smoke import char_tokenizer, tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OURS = (str(ROOT / "trainers"), str(ROOT / "agentgym" / "policies"))
FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
             torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace}


def sequences(tokenizer, groups=2, rows=3):
    """``groups`` prompts of different lengths, ``rows`` replies each (lengths and masks vary)."""
    ids = tokenizer.convert_tokens_to_ids
    out = []
    for g in range(groups):
        prompt = tuple(ids(list("Say " + "7" * (g + 1) + ".")))
        for r in range(rows):
            reply = tuple(ids(list("7a" * (r + 2))))
            mask = tuple(int(i % 3 != 1) for i in range(len(reply)))
            out.append(TokenSequence(prompt, reply, mask, tuple(-0.2 for _ in reply), (0, 0)))
    return out


def small_config(cls, **overrides):
    fields = {"model": "tiny", "lora": False, "micro_batch_size": 64, "report_to": [],
              "max_completion_length": 16, **overrides}
    return cls(**fields)


class DevicelessFactories(TorchFunctionMode):
    """Records tensor factory calls made from our code without a ``device=`` (a tensor made on
    the default device, whatever the model's); lines marked ``host`` are host-side on purpose."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            frame = sys._getframe(1)
            while frame is not None and f"{Path('torch')}" in frame.f_code.co_filename \
                    and not frame.f_code.co_filename.startswith(OURS):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(OURS):
                line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
                if "host" not in line:
                    self.calls.append(f"{frame.f_code.co_filename}:{frame.f_lineno}: "
                                      f"{line.strip()}")
        return func(*args, **kwargs)


# --- (a) every tensor on the model's device ------------------------------------------------

def test_device_and_dtype_names_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    auto = resolve_device("auto")
    assert resolve_dtype("auto", auto) == (torch.bfloat16 if auto.type == "cuda"
                                           else torch.float32)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda:0")
    config = small_config(grpo.GRPOConfig, device="cpu", bf16=True)
    assert precision(config) == (torch.device("cpu"), torch.bfloat16)


def test_pack_makes_every_tensor_on_the_requested_device():
    seqs = sequences(char_tokenizer())
    # one reply written by an exploration guide, so the optional guide tensor exists too
    seqs[1] = dataclasses.replace(seqs[1], guide_mask=(1,) * len(seqs[1].response_ids))
    batch = pack(seqs, [1.0] * 6, 0, device="meta")
    for field in dataclasses.fields(batch):
        assert getattr(batch, field.name).device.type == "meta", field.name
    plain = pack(sequences(char_tokenizer()), [1.0] * 6, 0, device="meta")
    assert plain.guide is None  # no guide: no tensor (the one optional field)
    assert all(getattr(plain, f.name).device.type == "meta"
               for f in dataclasses.fields(plain) if f.name != "guide")


def test_trainer_and_engine_make_no_tensor_without_a_device():
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, seed=0)
    seqs = sequences(tokenizer)
    recorder = DevicelessFactories()
    config = small_config(grpo.GRPOConfig, beta=0.1, tis_cap=2.0, micro_batch_tokens=40)
    optimizer, scheduler = make_optimizer(model, 1e-3, 0.0, 0)
    ref = reference_logprobs(model, config, config.beta)
    pconfig = small_config(ppo.PPOConfig, num_ppo_epochs=1, micro_batch_tokens=40)
    head = ppo.value_head_for(model)
    loop = asyncio.new_event_loop()
    engine = HFEngine(model, tokenizer, dtype="float32")
    requests = [_Request(list(seqs[0].prompt_ids), SamplingParams(
        n=2, temperature=1.0, max_tokens=4, seed=3, stop=["b"]), loop.create_future(), loop),
        _Request(list(seqs[3].prompt_ids), SamplingParams(temperature=0.7, max_tokens=3),
                 loop.create_future(), loop)]
    with recorder:
        batch = pack(seqs, [0.5, -0.5, 1.0, -1.0, 0.0, 0.2], 0, device="cpu")
        grpo.update(model, ref, optimizer, scheduler, batch, config)
        targets = ppo.prepare(model, head, ref, batch, batch.advantages, pconfig)
        ppo.update(model, head, optimizer, batch, targets, pconfig,
                   torch.Generator(device="cpu").manual_seed(0))
        engine._run_batch(requests)
    loop.close()
    assert recorder.calls == []


HARD_CODED = re.compile(r'autocast\(\s*"cpu"|device\s*=\s*"cpu"|torch\.Generator\(\s*\)'
                        r'|\.cpu\(\)')


def test_no_hard_coded_cpu_in_trainers_and_policies():
    """The CPU appears only where host-side work is meant (marked ``host``), or as a default /
    fallback in the device helpers themselves."""
    allowed = {"agentgym/policies/devices.py"}
    found = []
    for folder in ("trainers", "agentgym/policies"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            for number, line in enumerate(path.read_text().splitlines(), 1):
                previous = path.read_text().splitlines()[number - 2] if number > 1 else ""
                if HARD_CODED.search(line) and name not in allowed \
                        and "host" not in line and "host" not in previous:
                    found.append(f"{name}:{number}: {line.strip()}")
    assert found == []


# --- (b) chunked logprobs -------------------------------------------------------------------

@pytest.mark.parametrize("chunk_tokens", [1, 7, 20])
def test_chunked_logprobs_equal_the_full_computation(chunk_tokens):
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, seed=3)
    batch = pack(sequences(tokenizer), [0.0] * 6, 0)
    results = []
    for chunk in (None, chunk_tokens):
        model.zero_grad(set_to_none=True)
        logp, entropy = policy_logprobs(model, batch, 0.7, True, chunk)
        ((logp * batch.mask).sum() + (entropy * batch.mask).sum()).backward()
        results.append((logp.detach(), entropy, [p.grad.clone() for p in model.parameters()]))
    (full, full_h, full_g), (part, part_h, part_g) = results
    assert torch.allclose(full, part, atol=1e-5)
    assert torch.allclose(full_h, part_h, atol=1e-5)
    for a, b in zip(full_g, part_g, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_chunked_entropy_keeps_its_gradient_for_an_entropy_bonus():
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, seed=4)
    head = ppo.value_head_for(model)
    batch = pack(sequences(tokenizer), [0.0] * 6, 0)
    grads = []
    for chunk in (None, 5):
        model.zero_grad(set_to_none=True)
        _, _, entropy = ppo.forward(model, head, batch, 1.0, entropy_grad=True,
                                    chunk_tokens=chunk)
        (entropy * batch.mask).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


# --- (c) token-budget micro-batches --------------------------------------------------------

def test_micro_batches_respect_the_token_budget():
    batch = pack(sequences(char_tokenizer(), groups=3), [0.0] * 9, 0)
    parts = micro_batches(batch, max_rows=4, max_tokens=45)
    assert sum(len(p) for p in parts) == len(batch) and len(parts) > 3
    for part in parts:
        width = part.prompt_ids.shape[1] + part.targets.shape[1]
        assert len(part) <= 4 and (len(part) == 1 or len(part) * width <= 45)
    assert [len(p) for p in micro_batches(batch, max_rows=4)] == [4, 4, 1]


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_token_budget_micro_batches_give_the_gradient_of_one_batch(loss_type):
    tokenizer = char_tokenizer()
    batch = pack(sequences(tokenizer, groups=3), [0.9, -0.4, 0.3, -1.2, 0.8, 0.1, -0.6, 1.5,
                                                   -0.2], 0)
    grads = []
    for budget in (None, 30):
        model = tiny_model(tokenizer, seed=5)
        config = small_config(grpo.GRPOConfig, loss_type=loss_type, micro_batch_tokens=budget,
                              max_grad_norm=1e9)
        optimizer, scheduler = make_optimizer(model, 0.0, 0.0, 0)  # lr 0: grads stay put
        stats = grpo.update(model, None, optimizer, scheduler, batch, config)
        grads.append(([p.grad.clone() for p in model.parameters()], stats["loss"]))
    (whole, loss_whole), (split, loss_split) = grads
    assert loss_whole == pytest.approx(loss_split, abs=1e-6)
    for a, b in zip(whole, split, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


# --- (d) CUDA RNG in checkpoints ------------------------------------------------------------

def test_checkpoint_rng_holds_the_cuda_state_when_cuda_is_used(tmp_path, monkeypatch):
    import numpy as np

    model = tiny_model(char_tokenizer())
    optimizer, scheduler = make_optimizer(model, 1e-3, 0.0, 0)
    run = RunDir(tmp_path / "run")
    run.save_checkpoint(1, model, optimizer, scheduler, np.random.default_rng(0))
    saved = torch.load(run.checkpoints()[-1] / "rng.pt", weights_only=False)
    assert "cuda" in saved
    if not torch.cuda.is_initialized():
        assert saved["cuda"] is None
        states = [torch.arange(8, dtype=torch.uint8)]  # what a one-GPU machine would hold
        restored = []
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
        run.save_checkpoint(2, model, optimizer, scheduler, np.random.default_rng(0))
        run.load_checkpoint(optimizer, scheduler, np.random.default_rng(0))
        assert len(restored) == 1 and torch.equal(restored[0][0], states[0])


# --- (e) gradient checkpointing -------------------------------------------------------------

@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradient(lora):
    tokenizer = char_tokenizer()
    batch = pack(sequences(tokenizer), [0.0] * 6, 0)
    results = []
    for checkpointing in (False, True):
        model, _ = load_model("tiny", lora=lora, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                              lora_target_modules=["q_proj", "v_proj"], seed=6,
                              gradient_checkpointing=checkpointing)
        if lora:  # adapters start at B = 0: move off it so every gradient is non-trivial
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(std=0.1, generator=torch.Generator().manual_seed(1))  # host
        model.train()
        logp, _ = policy_logprobs(model, batch, 1.0, chunk_tokens=8)
        loss = -(logp * batch.mask).sum() / batch.mask.sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss.detach()), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name


# --- precision: frozen weights in the compute dtype, trained ones float32 -------------------

def test_bf16_stores_the_frozen_base_in_bf16_and_trains_float32_adapters():
    model, tokenizer = load_model("tiny", lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                  lora_target_modules=["q_proj", "v_proj"], seed=0,
                                  device=torch.device("cpu"), dtype=torch.bfloat16)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert all(p.dtype == torch.bfloat16 for p in frozen.values())
    batch = pack(sequences(tokenizer), [1.0, -1.0, 0.5, 0.0, 0.2, -0.3], 0)
    optimizer, _ = make_optimizer(model, 1e-2, 0.0, 0)
    with autocast(torch.device("cpu"), torch.bfloat16):
        logp, _ = policy_logprobs(model, batch, 1.0, chunk_tokens=8)
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    (-(logp * batch.mask).sum()).backward()
    optimizer.step()
    state = [s for s in optimizer.state.values()]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state)


async def test_engine_generates_under_its_compute_dtype():
    tokenizer = char_tokenizer()
    engine = HFEngine(tiny_model(tokenizer), tokenizer, device="cpu", dtype="bfloat16")
    try:
        [completion] = await engine.generate([{"role": "user", "content": "Say 7."}], None,
                                             SamplingParams(temperature=1.0, max_tokens=5,
                                                            seed=1))
        assert 0 < len(completion.completion_token_ids) == len(completion.logprobs) <= 5
    finally:
        await engine.aclose()


def test_peak_memory_names_its_kind():
    stats = peak_memory(torch.device("cpu"))
    assert stats["memory/kind"] == "process_max_rss" and stats["memory/peak_gib"] > 0
