"""Weight sync: push the trainer's new weights to the policy server, with a deadline on every step.

One small interface, :class:`WeightSync` (``await sync.push(model) -> version``), three ways:

* :class:`LoRASync` (vLLM, LoRA training): save the peft adapter to ``<dir>/<prefix>-v<N>``,
  ``POST /v1/load_lora_adapter {"lora_name": "<prefix>-v<N>", "lora_path": ...}``, route the
  policy client's new requests to that name, then ``POST /v1/unload_lora_adapter`` for versions
  older than ``keep``. Requests already in flight finish on the adapter they started with; their
  completions carry the old version. A server restart forgets runtime adapters, so the current
  one is re-loaded by a restart hook.
* :class:`FullWeightSync` (vLLM, full fine-tuning): save the model to ``<dir>/v<N>`` and ask
  vLLM to reload its weights in place from there (``POST /collective_rpc`` with
  ``reload_weights``, which needs ``VLLM_SERVER_DEV_MODE=1``), then drop the prefix cache (its
  KV entries were computed by the old weights). Where the server has no such endpoint, the
  server is restarted on the new checkpoint instead (slow, but correct).
* :class:`SharedWeightSync` (embedded engine): the engine serves the trainer's own module, so a
  sync is a version bump.

Every step (saving, each HTTP call, a restart) runs under ``asyncio.wait_for``; a hung step raises
:class:`~agentgym.errors.SyncTimeoutError` instead of hanging the trainer. Sync traffic uses its
own HTTP client, so it never queues behind thousands of rollout requests.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx

from agentgym.errors import PolicyConnectionError, PolicyError, PolicyHTTPError, SyncTimeoutError

__all__ = ["FullWeightSync", "LoRASync", "SharedWeightSync", "WeightSync"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@runtime_checkable
class WeightSync(Protocol):
    """Moves new weights from the trainer to the policy that generates rollouts."""

    async def push(self, model: Any, version: int | None = None) -> int:
        """Make ``model``'s current weights the ones new completions are sampled from.

        Args:
            model: the trained module (a peft model for LoRA), or a saved folder's path.
            version: the new version number; None means previous + 1.

        Returns:
            The version now recorded on new completions.

        Raises:
            SyncTimeoutError: a step missed its deadline.
            PolicyError: the server refused the new weights.
        """
        ...


async def _step(what: str, awaitable: Awaitable[T], timeout_s: float) -> T:
    """Await ``awaitable`` with a deadline; a miss becomes a SyncTimeoutError naming the step."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError as exc:
        raise SyncTimeoutError(f"weight sync step '{what}' missed its {timeout_s:g} s "
                               "deadline") from exc


def _save_pretrained(model: Any, folder: Path) -> None:
    """Save a model or peft adapter as safetensors (runs in a worker thread)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)


class _ServerSync:
    """Shared plumbing: versioned folders, a deadline per step, a private HTTP client."""

    def __init__(self, server_url: str, out_dir: str | Path, *, timeout_s: float = 120.0,
                 keep: int = 1, start_version: int = 0):
        if timeout_s <= 0 or keep < 1:
            raise ValueError("timeout_s must be > 0 and keep >= 1")
        self.server_url = server_url.rstrip("/")
        self.out_dir = Path(out_dir)
        self.timeout_s = timeout_s
        self.keep = keep
        self.version = start_version

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST with the step deadline; non-2xx becomes PolicyHTTPError."""
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(timeout=None) as client:
                try:
                    return await client.post(f"{self.server_url}{path}", json=body)
                except httpx.TransportError as exc:
                    raise PolicyConnectionError(f"weight sync {path}: {exc!r}") from exc

        response = await _step(f"POST {path}", call(), self.timeout_s)
        if response.status_code >= 400:
            raise PolicyHTTPError(f"weight sync {path} answered {response.status_code}: "
                                  f"{response.text[:500]}", response.status_code)
        return response

    async def _save(self, model: Any, folder: Path) -> Path:
        """Save ``model`` into ``folder`` (or accept an existing folder path) with a deadline."""
        if isinstance(model, (str, Path)):
            return Path(model)
        if folder.exists():
            shutil.rmtree(folder)
        await _step("save", asyncio.to_thread(_save_pretrained, model, folder), self.timeout_s)
        return folder

    def _prune(self, name_of: Any) -> list[int]:
        """Versions older than the ``keep`` newest; their folders are deleted."""
        old = [v for v in range(max(0, self.version - 50), self.version - self.keep + 1)]
        for v in old:
            shutil.rmtree(self.out_dir / name_of(v), ignore_errors=True)
        return old


class LoRASync(_ServerSync):
    """Hot-load LoRA adapters into a running vLLM server under versioned names.

    Args:
        server_url: the server root (``VLLMServer.url``), without ``/v1``.
        policy: the :class:`OpenAIPolicy` whose requests are routed to the newest adapter.
        out_dir: where versioned adapter folders are written.
        prefix: adapter names are ``f"{prefix}-v{version}"``.
        timeout_s: deadline of every step.
        keep: adapters kept loaded (older ones are unloaded and their folders deleted).
        server: the :class:`VLLMServer`, if we own it: a restart re-loads the current adapter.
    """

    def __init__(self, server_url: str, policy: Any, out_dir: str | Path, *,
                 prefix: str = "policy", timeout_s: float = 120.0, keep: int = 1,
                 server: Any = None, start_version: int = 0):
        super().__init__(server_url, out_dir, timeout_s=timeout_s, keep=keep,
                         start_version=start_version)
        self.policy = policy
        self.prefix = prefix
        self.loaded: list[int] = []
        self._current_path: Path | None = None
        if server is not None:
            server.on_restart.append(self._reload_after_restart)

    def adapter_name(self, version: int) -> str:
        """The served model name of adapter ``version``."""
        return f"{self.prefix}-v{version}"

    async def push(self, model: Any, version: int | None = None) -> int:
        """Save, load under a new name, route new requests to it, unload older versions."""
        new = self.version + 1 if version is None else version
        name = self.adapter_name(new)
        path = await self._save(model, self.out_dir / name)
        await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        self.policy.set_model(name, new)
        self.version, self._current_path = new, path
        self.loaded.append(new)
        for old in [v for v in self.loaded if v != new][: max(0, len(self.loaded) - self.keep)]:
            try:
                await self._post("/v1/unload_lora_adapter", {"lora_name": self.adapter_name(old)})
            except PolicyHTTPError as exc:  # already gone (e.g. after a restart): not fatal
                logger.warning("could not unload %s: %s", self.adapter_name(old), exc)
            self.loaded.remove(old)
            if isinstance(model, (str, Path)):
                continue
            shutil.rmtree(self.out_dir / self.adapter_name(old), ignore_errors=True)
        logger.info("LoRA sync: serving %s", name)
        return new

    async def _reload_after_restart(self, server: Any) -> None:
        """A restarted server has no runtime adapters: load the current one again."""
        if self._current_path is None:
            return
        name = self.adapter_name(self.version)
        self.loaded = [self.version]
        if name in getattr(server, "adapters", {}):
            return  # the supervisor loaded every adapter the server had again
        await self._post("/v1/load_lora_adapter",
                         {"lora_name": name, "lora_path": str(self._current_path)})
        logger.info("re-loaded %s after a server restart", name)


class FullWeightSync(_ServerSync):
    """Reload full weights into a running vLLM server from a saved checkpoint.

    Args:
        server_url: the server root, without ``/v1``.
        policy: the :class:`OpenAIPolicy` whose completions get the new version.
        out_dir: where versioned checkpoints are written.
        timeout_s: deadline of every step.
        keep: checkpoints kept on disk.
        server: the :class:`VLLMServer`, used to restart on the new checkpoint when the server
            offers no in-place reload.
    """

    def __init__(self, server_url: str, policy: Any, out_dir: str | Path, *,
                 timeout_s: float = 300.0, keep: int = 1, server: Any = None,
                 start_version: int = 0):
        super().__init__(server_url, out_dir, timeout_s=timeout_s, keep=keep,
                         start_version=start_version)
        self.policy = policy
        self.server = server
        self._current_path: Path | None = None
        if server is not None:
            server.on_restart.append(self._reload_after_restart)

    async def push(self, model: Any, version: int | None = None) -> int:
        """Save a checkpoint, reload it in the server, reset its prefix cache, bump versions."""
        new = self.version + 1 if version is None else version
        path = await self._save(model, self.out_dir / f"v{new}")
        try:
            await self._post("/collective_rpc", {"method": "reload_weights",
                                                 "kwargs": {"weights_path": str(path)}})
            await self._post("/reset_prefix_cache", {})
        except PolicyHTTPError as exc:
            if exc.status_code != 404 or self.server is None:
                raise
            await self._restart_on(path)
        self.policy.set_model(self.policy.model, new)
        self.version, self._current_path = new, path
        if not isinstance(model, (str, Path)):
            self._prune(lambda v: f"v{v}")
        logger.info("full-weight sync: version %d from %s", new, path)
        return new

    async def _reload_after_restart(self, server: Any) -> None:
        """A restarted server loads its original checkpoint: reload the current one."""
        if self._current_path is None or self._current_path == server.config.model:
            return
        await self._post("/collective_rpc", {"method": "reload_weights",
                                             "kwargs": {"weights_path": str(self._current_path)}})
        await self._post("/reset_prefix_cache", {})
        logger.info("re-loaded %s after a server restart", self._current_path)

    async def _restart_on(self, path: Path) -> None:
        """Fallback: restart the server with ``path`` as its model (tokenizer files copied)."""
        import dataclasses

        for extra in self.server.config.model.glob("*"):
            if extra.suffix in (".json", ".jinja", ".txt") and not (path / extra.name).exists():
                shutil.copy(extra, path / extra.name)
        logger.warning("no in-place reload on the server: restarting it on %s", path)
        self.server.config = dataclasses.replace(self.server.config, model=path)
        await _step("restart", self.server.restart(),
                    max(self.timeout_s, self.server.config.startup_timeout_s))


class SharedWeightSync:
    """The embedded engine shares the trainer's module: a sync is a version bump (zero copy)."""

    def __init__(self, engine: Any):
        self.engine = engine

    async def push(self, model: Any = None, version: int | None = None) -> int:
        """Bump (or set) the engine's weight version; ``model`` must be the engine's own."""
        if model is not None and model is not self.engine.model:
            raise PolicyError("the embedded engine serves another module: use "
                              "engine.set_model(model) to switch it")
        if version is None:
            return int(self.engine.bump_version())
        self.engine.set_weights_version(version)
        return version
