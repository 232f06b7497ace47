"""The embedded engine (``--engine hf``): transformers in-process, behind the Policy protocol.

No server, no extra install beyond the ``train`` extra. Many coroutines (a rollout engine runs
hundreds of episodes at once) call :meth:`HFEngine.generate`; their requests are queued and a
background batching task merges them into one left-padded ``model.generate`` call:

* it waits for the first request, then up to ``max_wait_s`` for more, until ``max_batch_size``
  rows (a request with ``n`` samples is ``n`` rows) are gathered; requests that arrive while a
  batch runs wait in the queue and form the next batch;
* each row keeps its own temperature, top-p, seed, token budget and stop strings
  (:mod:`agentgym.policies.sampling`), so merging never changes what a request gets;
* ``generate`` runs in one worker thread, so the event loop keeps serving tools and HTTP while
  the model computes.

Weights are shared with the trainer: :attr:`HFEngine.model` is the very ``torch.nn.Module`` the
trainer optimizes, so a weight sync is a version bump (:meth:`bump_version`), zero copy. The
trainer runs its update through :meth:`run_exclusive` (in the engine's compute thread, between
batches) so no generation reads half-updated weights. Every
completion records the ``weight_version`` of the weights that produced it. Generation runs with
the module in eval mode (no dropout, LoRA dropout included) and restores the trainer's mode after.

Device and precision (:mod:`agentgym.policies.devices`): every input tensor, the sampler's
per-row state and its seeded generators live on the model's device; with a ``dtype`` the
forward passes autocast to it, as the trainer's do, so sampler and trainer compute alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentgym.errors import PolicyError
from agentgym.parsing import parse_text_tool_calls
from agentgym.policies.batching import stop_batching
from agentgym.policies.chat_tokens import prompt_ids_for
from agentgym.policies.model_prep import resolve_model
from agentgym.policy import Completion, SamplingParams

__all__ = ["HFEngine"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Generate with dropout off (LoRA dropout included), then restore the trainer's mode."""
    was_training = bool(getattr(model, "training", False))
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


@dataclass
class _Request:
    """One queued ``generate`` call: its prompt, settings and the future to resolve."""

    prompt_ids: list[int]
    sampling: SamplingParams
    future: asyncio.Future[list[Completion]]
    loop: asyncio.AbstractEventLoop
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = self.sampling.n


class HFEngine:
    """A transformers model served in-process with request batching.

    Args:
        model: a causal LM (``transformers`` ``PreTrainedModel`` or a peft wrapper of one).
        tokenizer: its tokenizer, whose chat template renders tools (see ``model_prep``).
        max_batch_size: most rows per ``generate`` call.
        max_wait_s: how long the first request of a batch waits for company.
        weight_version: the version recorded on completions until the next bump.
        device: move the model there (``"auto"``, ``"cpu"``, ``"cuda[:N]"``); None keeps it
            where it is (a trainer's shared module).
        dtype: autocast generation to this compute dtype (``"auto"``: bfloat16 on CUDA,
            float32 elsewhere; a name or a ``torch.dtype``); None: the weights' own precision.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 32,
                 max_wait_s: float = 0.01, weight_version: int = 0, device: Any = None,
                 dtype: Any = None):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_s >= 0")
        self._dtype = None
        if device is not None or dtype is not None:
            from agentgym.policies.devices import module_device, resolve_device, resolve_dtype

            if device is not None:
                model.to(resolve_device(device))
            if dtype is not None:
                self._dtype = resolve_dtype(dtype, module_device(model))
        self._model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._version = weight_version
        self._weights_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hf-engine")
        self._pending: deque[_Request] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.batch_sizes: list[int] = []  # rows of every generate call, for tests and metrics
        self._eos_ids = self._collect_eos_ids()
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(self._eos_ids)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, device: str = "auto",
                        dtype: str = "auto", **kwargs: Any) -> HFEngine:
        """Load a local Hugging Face folder (None: the prepared default SmolLM2) onto ``device``
        with its weights in ``dtype`` (``"auto"``: bfloat16 on CUDA, float32 elsewhere).

        A LoRA adapter folder (a trained checkpoint's ``model/``, with ``adapter_config.json``)
        is served as its base model with the adapter merged in (needs peft)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from agentgym.policies.devices import resolve_device, resolve_dtype

        folder = resolve_model(path)
        where = resolve_device(device)
        precision = resolve_dtype(dtype, where)
        adapter = folder / "adapter_config.json"
        base = resolve_model(json.loads(adapter.read_text())["base_model_name_or_path"]) \
            if adapter.exists() else folder
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=precision)
        if adapter.exists():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        model.to(where)
        model.eval()
        return cls(model, tokenizer, dtype=precision, **kwargs)

    # --- weights ---------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The served ``torch.nn.Module``; the trainer updates it in place (shared weights)."""
        return self._model

    @property
    def weight_version(self) -> int:
        """The version recorded on new completions."""
        return self._version

    def bump_version(self) -> int:
        """Declare that the shared weights changed (zero-copy sync); returns the new version."""
        with self._weights_lock:
            self._version += 1
            return self._version

    def set_weights_version(self, version: int) -> None:
        """Set the version explicitly (e.g. the trainer's step number)."""
        with self._weights_lock:
            self._version = version

    def set_model(self, model: Any, version: int | None = None) -> None:
        """Serve another module (e.g. a peft-wrapped copy); waits for the running batch."""
        with self._weights_lock:
            self._model = model
            self._version = self._version + 1 if version is None else version

    async def run_exclusive(self, fn: Callable[..., T], *args: Any,
                            version: int | None = None) -> T:
        """``fn(*args)`` in the engine's compute thread, between batches, weights locked.

        The trainer's forward, backward and optimizer step go here: no generation reads
        half-updated weights, and all torch work runs on one thread. Two threads computing in
        turn each keep their own OpenMP team, and on a small CPU the idle team slowed the other
        one's generation by up to 1.7x (measured on 2 cores). With ``version``, the weight
        version is set before the lock is released, so the first batch that runs on the new
        weights is already tagged with it (rollouts that overlap training need that).
        """
        def locked() -> T:
            with self._weights_lock:
                result = fn(*args)
                if version is not None:
                    self._version = version
                return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, locked)

    # --- the protocol ----------------------------------------------------------------------

    accepts_prefix_ids = True
    """:meth:`generate` continues a chat from the token ids of its previous turn."""

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None,
                       sampling: SamplingParams, *,
                       prefix_ids: Sequence[int] | None = None) -> list[Completion]:
        """Sample ``sampling.n`` completions; concurrent calls are batched together.

        ``prefix_ids`` (the previous turn's prompt and completion ids) stands for the chat up
        to its last assistant message: the prompt is those ids plus the rendered new messages
        (:func:`~agentgym.policies.chat_tokens.continue_prompt`), so the model continues from
        what it sampled rather than from a re-tokenization of its text.

        Raises:
            PolicyError: the engine is closed, the prompt does not fit, or generation failed.
        """
        if self._closed:
            raise PolicyError("the embedded engine is closed")
        prompt_ids = prompt_ids_for(self.tokenizer, messages, tools, prefix_ids, self._eos_ids)
        limit = getattr(getattr(self._model, "config", None), "max_position_embeddings", None)
        if limit is not None and len(prompt_ids) + sampling.max_tokens > limit:
            raise PolicyError(f"prompt ({len(prompt_ids)} tokens) + max_tokens "
                              f"({sampling.max_tokens}) exceeds the context ({limit})")
        loop = asyncio.get_running_loop()
        wakeup = self._ensure_worker(loop)
        request = _Request(prompt_ids, sampling, loop.create_future(), loop)
        self._pending.append(request)
        wakeup.set()
        return await request.future

    async def aclose(self) -> None:
        """Stop the batching task and fail queued requests (idempotent; the model stays)."""
        self._closed = True
        await stop_batching(self._task, self._pending, "the embedded engine was closed")
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- batching --------------------------------------------------------------------------

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """Start the batching task on the caller's loop (again if the loop changed).

        Returns:
            The event that wakes the batching task up.
        """
        if (self._loop is loop and self._wakeup is not None and self._task is not None
                and not self._task.done()):
            return self._wakeup
        # Requests queued from a loop that is gone can never be answered: drop them.
        self._pending = deque(r for r in self._pending if r.loop is loop)
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._batch_loop(self._wakeup), name="hf-engine-batcher")
        return self._wakeup

    def _take_batch(self) -> list[_Request]:
        """Pop requests from the queue up to ``max_batch_size`` rows (at least one request)."""
        batch = [self._pending.popleft()]
        rows = batch[0].rows
        while self._pending and rows + self._pending[0].rows <= self.max_batch_size:
            request = self._pending.popleft()
            batch.append(request)
            rows += request.rows
        return batch

    async def _batch_loop(self, wakeup: asyncio.Event) -> None:
        """Gather requests into batches and run each in the worker thread, forever."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                wakeup.clear()
                await wakeup.wait()
            deadline = loop.time() + self.max_wait_s
            while sum(r.rows for r in self._pending) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), remaining)
            batch = [r for r in self._take_batch() if not r.future.done()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as exc:
                logger.exception("embedded generation failed")
                error = exc if isinstance(exc, PolicyError) else PolicyError(
                    f"embedded generation failed: {type(exc).__name__}: {exc}")
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            for request, completions in zip(batch, results, strict=True):
                if not request.future.done():
                    request.future.set_result(completions)

    def _collect_eos_ids(self) -> frozenset[int]:
        """Token ids that end an assistant turn (generation config's and the tokenizer's)."""
        ids: set[int] = set()
        config_eos = getattr(getattr(self._model, "generation_config", None), "eos_token_id", None)
        for value in (config_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if not ids:
            raise PolicyError("the model defines no end-of-sequence token")
        return frozenset(ids)

    # --- the worker thread -----------------------------------------------------------------

    def _run_batch(self, batch: list[_Request]) -> list[list[Completion]]:
        """Run one left-padded ``generate`` for every row of ``batch`` (worker thread)."""
        import torch
        from transformers import GenerationConfig

        from agentgym.policies.devices import autocast, module_device
        from agentgym.policies.sampling import RowSampler, RowSpec, RowStop, cut_completion
        from agentgym.policies.shared_prompts import distinct_rows, prefill_shared

        rows: list[tuple[_Request, RowSpec]] = []
        for request in batch:
            s = request.sampling
            for k in range(s.n):
                seed = None if s.seed is None else s.seed + k
                rows.append((request, RowSpec(s.temperature, s.top_p, s.max_tokens,
                                              tuple(s.stop), seed)))
        device = module_device(self._model)
        width = max(len(r.prompt_ids) for r, _ in rows)
        pads = [width - len(r.prompt_ids) for r, _ in rows]
        input_ids = torch.tensor([[self._pad_id] * pad + list(r.prompt_ids)
                                  for pad, (r, _) in zip(pads, rows, strict=True)],
                                 dtype=torch.long, device=device)  # [B, T]
        mask = torch.tensor([[0] * pad + [1] * (width - pad) for pad in pads],
                            dtype=torch.long, device=device)  # [B, T]
        specs = [spec for _, spec in rows]
        sampler = RowSampler(specs, device)
        stopper = RowStop(specs, width, self.tokenizer, device)
        # A clean config: the model's own sampling defaults (top_k, repetition penalty...) must
        # not leak in; every row's sampling is RowSampler's. Its greedy pick is the sampled token.
        config = GenerationConfig(do_sample=False, num_beams=1, eos_token_id=sorted(self._eos_ids),
                                  pad_token_id=self._pad_id,
                                  max_new_tokens=max(s.max_tokens for s in specs))
        precision = self._dtype or torch.float32  # float32: autocast off, the weights' own
        with self._weights_lock, torch.inference_mode(), _eval_mode(self._model), \
                autocast(device, precision):
            version = self._version
            cache = None
            prompt_of, first_rows = distinct_rows([r.prompt_ids for r, _ in rows])
            if len(first_rows) < len(rows) and width > 1:  # G rows share a prompt: prefill
                # it once; generate then runs only the last prompt column and the new tokens
                cache, _ = prefill_shared(self._model, input_ids[first_rows, :-1],
                                          mask[first_rows, :-1],
                                          torch.tensor(prompt_of, device=device))
            out = self._model.generate(input_ids=input_ids, attention_mask=mask,
                                       past_key_values=cache, generation_config=config,
                                       logits_processor=[sampler], stopping_criteria=[stopper])
        self.batch_sizes.append(len(rows))
        generated = out[:, width:].tolist()  # [B, new]
        logprobs = sampler.logprobs().tolist()  # [B, new]
        per_request: dict[int, list[Completion]] = {id(r): [] for r in batch}
        for i, (request, spec) in enumerate(rows):
            ids, lps, text, finish = cut_completion(generated[i], logprobs[i], spec,
                                                    self._eos_ids, self.tokenizer)
            calls = parse_text_tool_calls(text).tool_calls
            if calls and finish == "stop" and ids and ids[-1] in self._eos_ids:
                finish = "tool_calls"
            per_request[id(request)].append(Completion(
                text=text, tool_calls=calls, finish_reason=finish,
                prompt_token_ids=tuple(request.prompt_ids), completion_token_ids=tuple(ids),
                logprobs=tuple(lps), weight_version=version))
        return [per_request[id(r)] for r in batch]
