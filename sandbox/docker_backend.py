"""The Docker backend: one hardened container per sandbox, driven through a live runner.

Each container runs ``sandbox/runner.py`` as PID 1 (see its docstring for the protocol and why
user code cannot reach it). The host talks to it over the container's stdin/stdout through one
Docker attach socket, so a call is a couple of pipe hops (~0.2 ms) instead of a ``docker exec``.

Hardening, all from ``SandboxConfig`` (``container_spec`` is the single place it is set):
no network, read-only root, tmpfs ``/work`` (owned by the unprivileged uid) and ``/tmp``, run as
that uid, every capability dropped, ``no-new-privileges``, memory == memory+swap, pids limit,
CPU quota, ``fsize``/``nofile``/``core`` ulimits, capped json-file logs, no host environment,
no mounts, private IPC, ``agentgym.*`` labels. Docker's ``--init`` is deliberately *not* used:
the runner itself is the init (it reaps zombies), because tini would hold the protocol pipes in
a dumpable PID 1 that user code could open through ``/proc/1/fd``.

Leaks: the container is created with ``auto_remove`` and ``stdin_once``; when the host process
dies for any reason its attach socket closes, the runner reads EOF, exits, and the engine
removes the container. ``sweep`` removes whatever is left (e.g. the engine restarted).

``import docker`` happens lazily inside functions, never when this module is imported.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ..errors import SandboxCrashedError, SandboxError, SandboxUnavailableError
from .base import (
    Candidate,
    ExecResult,
    GradeResult,
    Sandbox,
    SandboxBackend,
    expected_tests,
    grade_from_report,
)
from .client import docker_client
from .config import SandboxConfig
from .image import default_image
from .protocol import ChannelBroken, RunnerChannel

__all__ = ["DockerBackend", "DockerSandbox", "LABEL", "docker_client", "owner_alive",
           "owner_labels"]

logger = logging.getLogger(__name__)

LABEL = "agentgym.sandbox"
"""Every container agentgym starts carries ``agentgym.sandbox=1`` (plus pool/owner labels)."""

_KILL_SLACK_S = 2.5  # the runner's own SIGINT->SIGKILL escalation and cleanup


@functools.cache
def runner_source() -> str:
    """The in-container runner as one script: ``runner_lib.py``, ``grader.py``'s source as the
    string ``GRADER_SOURCE``, then ``runner.py`` (passed on the command line with
    ``python3 -c``; nothing is copied into the container)."""
    pkg = resources.files(__package__)
    lib, runner, grader = (pkg.joinpath(n).read_text(encoding="utf-8")
                           for n in ("runner_lib.py", "runner.py", "grader.py"))
    return "\n\n".join([lib, f"GRADER_SOURCE = {grader!r}", runner])


def _process_start_time(pid: int) -> str | None:
    """Kernel start time of a process (detects pid reuse), or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def owner_labels() -> dict[str, str]:
    """Labels naming the host process that owns a container, so a later sweep can tell a
    crashed run's leftovers from a live pool in another process."""
    pid = os.getpid()
    return {
        LABEL: "1",
        "agentgym.host": socket.gethostname(),
        "agentgym.pid": str(pid),
        "agentgym.pid_start": _process_start_time(pid) or "",
    }


def owner_alive(labels: Mapping[str, str]) -> bool:
    """True unless the labels name a process on this host that no longer exists."""
    if labels.get("agentgym.host") != socket.gethostname():
        return True  # another machine's container on a shared engine: not ours to judge
    try:
        pid = int(labels.get("agentgym.pid", ""))
    except ValueError:
        return False
    start = _process_start_time(pid)
    return start is not None and start == labels.get("agentgym.pid_start", start)


class DockerBackend(SandboxBackend):
    """Creates ``DockerSandbox`` containers from one ``SandboxConfig``.

    Args:
        config: limits for every container (default ``SandboxConfig()``).
        client: a ``docker.DockerClient`` to use (default: from the environment, made lazily).
    """

    def __init__(self, config: SandboxConfig | None = None, *, client: Any = None):
        self.config = config or SandboxConfig()
        self._client = client
        self._connecting: asyncio.Lock | None = None

    async def connect(self) -> Any:
        """Make the Docker client once (in a thread: it does network I/O) and return it."""
        if self._client is None:
            if self._connecting is None:
                self._connecting = asyncio.Lock()
            async with self._connecting:
                if self._client is None:
                    self._client = await asyncio.to_thread(docker_client)
        return self._client

    @property
    def client(self) -> Any:
        """The ``docker.DockerClient`` (connects on first use)."""
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def image(self) -> str:
        """The image containers run."""
        if self.config.image:
            return self.config.image
        return default_image()

    def container_spec(self, labels: Mapping[str, str]) -> dict[str, Any]:
        """The ``/containers/create`` body: every hardening setting lives here."""
        from docker.types import LogConfig, Ulimit

        cfg, uid = self.config, self.config.uid
        fsize = cfg.max_file_size_mb * 2**20
        host_config = self.client.api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs={
                "/work": f"rw,exec,nosuid,nodev,size={cfg.work_dir_mb}m,mode=0700,"
                f"uid={uid},gid={uid}",
                "/tmp": f"rw,noexec,nosuid,nodev,size={cfg.tmp_mb}m,mode=1777",
            },
            shm_size=f"{cfg.tmp_mb}m",
            ipc_mode="private",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            privileged=False,
            mem_limit=f"{cfg.memory_mb}m",
            memswap_limit=f"{cfg.memory_mb}m",
            pids_limit=cfg.pids_limit,
            nano_cpus=int(cfg.cpus * 1e9),
            ulimits=[
                Ulimit(name="fsize", soft=fsize, hard=fsize),
                Ulimit(name="nofile", soft=cfg.max_open_files, hard=cfg.max_open_files),
                Ulimit(name="core", soft=0, hard=0),
            ],
            init=False,  # the runner is the init; see the module docstring
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            auto_remove=True,
        )
        config = self.client.api.create_container_config(
            image=self.image,
            command=["/usr/bin/python3", "-I", "-c", runner_source(),
                     json.dumps(cfg.runner_config())],
            user=f"{uid}:{uid}",
            working_dir="/work",
            hostname="sandbox",
            environment={},  # nothing from the host (and no proxy settings)
            stdin_open=True,
            tty=False,
            network_disabled=True,
            labels={**dict(labels), LABEL: "1"},
            host_config=host_config,
        )
        config["StdinOnce"] = True  # stdin closes when our attach socket does: see module doc
        return config

    def start_container(self, labels: Mapping[str, str]) -> tuple[str, socket.socket]:
        """Create, attach and start one container (blocking; run it in a thread).

        Returns the container id and a private socket connected to its stdin/stdout.
        """
        import docker

        api = self.client.api
        try:
            cid = api.create_container_from_config(self.container_spec(labels))["Id"]
        except docker.errors.ImageNotFound as e:
            raise SandboxUnavailableError(
                f"sandbox image {self.image!r} not found; run `agentgym sandbox build`"
            ) from e
        except docker.errors.DockerException as e:
            raise SandboxUnavailableError(f"cannot create a sandbox container: {e}") from e
        try:
            params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            holder = api.attach_socket(cid, params=params)
            raw = holder if isinstance(holder, socket.socket) else getattr(holder, "_sock", None)
            if not isinstance(raw, socket.socket):
                raise SandboxUnavailableError(
                    f"unsupported Docker transport for attach ({type(holder).__name__})"
                )
            sock = raw.dup()
            holder.close()
            api.start(cid)
        except BaseException:
            self.remove(cid)
            raise
        return cid, sock

    def remove(self, container_id: str) -> None:
        """Force-remove a container; already gone is fine (blocking)."""
        import docker

        try:
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in str(e) and "No such container" not in str(e):
                logger.warning("could not remove sandbox container %s: %s", container_id[:12], e)

    def remove_labeled(self, labels: Mapping[str, str] | None = None) -> int:
        """Remove containers by label: all carrying ``labels``, or (without) every agentgym
        container whose owning process is gone. Blocking."""
        filters = [f"{k}={v}" for k, v in (labels or {}).items()] + [f"{LABEL}=1"]
        containers = self.client.api.containers(all=True, filters={"label": filters})
        stale = [c["Id"] for c in containers if labels or not owner_alive(c.get("Labels") or {})]
        for cid in stale:
            self.remove(cid)
        if stale:
            logger.info("swept %d leftover sandbox container(s)", len(stale))
        return len(stale)

    async def create(self, labels: Mapping[str, str]) -> DockerSandbox:
        await self.connect()
        sb = DockerSandbox(self, labels)
        await sb.start()
        return sb

    async def sweep(self, labels: Mapping[str, str] | None = None) -> int:
        await self.connect()
        return await asyncio.to_thread(self.remove_labeled, labels)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)


class _HostDeadline(Exception):
    """The runner did not answer within the host's deadline."""


class DockerSandbox(Sandbox):
    """One container with a live runner. Made by ``DockerBackend.create`` (or a pool).

    If the runner dies or hangs *during a code call* (e.g. the code exhausted memory so badly
    that the container died), the call returns an ``ExecResult`` that says so and the sandbox
    swaps in a fresh container: the model sees the consequence of its code, the episode goes on.
    Any other failure raises ``SandboxCrashedError`` and marks the sandbox closed.
    """

    def __init__(self, backend: DockerBackend, labels: Mapping[str, str]):
        self.backend = backend
        self.config = backend.config
        self.labels = dict(labels)
        self.container_id = ""
        self._chan: RunnerChannel | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.uses = 0
        """Episodes served (the pool counts them to recycle containers)."""

    @property
    def closed(self) -> bool:
        return self._closed or self._chan is None or self._chan.broken

    async def start(self) -> None:
        """Start the container and wait until the runner answers a ping."""
        t0 = time.monotonic()
        cid, sock = await asyncio.wait_for(
            asyncio.to_thread(self.backend.start_container, self.labels),
            self.config.start_timeout_s,
        )
        self.container_id = cid
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
            self._chan = RunnerChannel(reader, writer, f"sandbox {cid[:12]}")
            await self._call({"op": "ping"}, self.config.start_timeout_s)
        except BaseException:
            await self._destroy()
            raise
        logger.debug("sandbox %s ready in %.3f s", cid[:12], time.monotonic() - t0)

    async def _call(self, request: dict[str, Any], host_timeout: float) -> dict[str, Any]:
        """One serialized round trip; ``_HostDeadline``/``ChannelBroken`` leave it broken."""
        if self._closed or self._chan is None:
            raise SandboxCrashedError("the sandbox is closed")
        async with self._lock:
            try:
                return await asyncio.wait_for(self._chan.call(request), host_timeout)
            except TimeoutError as e:
                raise _HostDeadline(f"no answer within {host_timeout:.3g} s") from e

    async def _control(self, request: dict[str, Any], what: str) -> dict[str, Any]:
        """A non-code call (files, reset, ping): any failure is the sandbox's fault."""
        try:
            answer = await self._call(request, self.config.start_timeout_s)
        except (ChannelBroken, _HostDeadline) as e:
            await self._destroy()
            raise SandboxCrashedError(f"sandbox {self.container_id[:12]} failed ({e})") from e
        if not answer.get("ok"):
            _raise_runner_error(answer, what)
        return answer

    async def _run(
        self, request: dict[str, Any], timeout: float
    ) -> tuple[ExecResult, dict[str, Any]]:
        """A code call: a runner that dies or hangs is a result, and the container is replaced.
        Returns the result and the runner's raw answer (empty if the runner was lost)."""
        request["timeout"] = timeout
        host_deadline = timeout + self.config.interrupt_grace_s + _KILL_SLACK_S
        host_deadline += self.config.host_grace_s
        t0 = time.monotonic()
        try:
            answer = await self._call(request, host_deadline)
        except (ChannelBroken, _HostDeadline) as e:
            hung = isinstance(e, _HostDeadline)
            logger.warning("sandbox %s lost during a call (%s); replacing it",
                           self.container_id[:12], e)
            await self._replace()
            why = "it stopped responding" if hung else "its runner died"
            lost = ExecResult(
                stdout="",
                stderr=f"[agentgym: the sandbox was lost during this call ({why}); it was "
                "replaced and all files and interpreter state are gone]\n",
                exit_code=-9,
                timed_out=hung,
                duration_s=time.monotonic() - t0,
                restarted=True,
            )
            return lost, {}
        if not answer.get("ok"):
            _raise_runner_error(answer, request["op"])
        return ExecResult.from_wire(answer), answer

    async def _replace(self) -> None:
        """Swap in a fresh container after the old one broke (raises SandboxCrashedError)."""
        await self._destroy(keep_open=True)
        try:
            await self.start()
        except (SandboxError, OSError, TimeoutError, ChannelBroken) as e:
            self._closed = True
            raise SandboxCrashedError(f"could not replace a broken sandbox: {e}") from e

    # -- the Sandbox API ---------------------------------------------------------------------

    async def run_python(
        self, code: str, timeout: float | None = None, *, fresh: bool = False
    ) -> ExecResult:
        t = self.config.clamp_timeout(timeout)
        if fresh:
            request = {"op": "exec", "argv": ["python3", "-I", "-"], "stdin": code}
        else:
            request = {"op": "python", "code": code}
        return (await self._run(request, t))[0]

    async def run_shell(self, command: str, timeout: float | None = None) -> ExecResult:
        t = self.config.clamp_timeout(timeout)
        return (await self._run({"op": "exec", "argv": ["/bin/sh", "-c", command]}, t))[0]

    async def write_file(self, path: str, content: str | bytes) -> None:
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        if len(data) > self.config.max_file_bytes:
            limit = self.config.max_file_bytes
            raise ValueError(f"{len(data)} bytes exceed max_file_bytes={limit}")
        await self._control(
            {"op": "write", "path": path, "data": base64.b64encode(data).decode()}, "write_file"
        )

    async def read_file_bytes(self, path: str) -> bytes:
        answer = await self._control({"op": "read", "path": path}, "read_file")
        return base64.b64decode(answer["data"])

    async def grade(self, test_code: str, timeout: float | None = None, *,
                    candidate: Candidate | None = None) -> GradeResult:
        """Run trusted ``test_*`` functions against the episode's files, in a fresh interpreter.

        Guarantees: every process of the episode is killed first (no background process can
        interfere); the test code travels in the request, so edits to test files on disk do not
        matter; results return on a private pipe, so printing "passed" or exiting 0 early counts
        for nothing; the set of tests comes from parsing ``test_code`` on the host, so a test
        that never reports is failed. The live interpreter is restarted afterwards.

        Without ``candidate`` the tests import the solution themselves (``/work`` is appended
        *after* the stdlib on ``sys.path``), so its code runs in the grader's process and could,
        with deliberate effort (e.g. walking ``gc`` objects), forge that process's report. With
        ``candidate`` the solution never runs there: the tests call ``candidate``, a proxy to
        the function in another process, and see only exact built-in values (``grader.py``).
        """
        t = self.config.clamp_timeout(timeout)
        expected_tests(test_code)  # a syntax error is the caller's bug: raise before running
        request: dict[str, Any] = {"op": "grade", "code": test_code}
        if candidate is not None:
            request.update(candidate=f"{candidate.module}:{candidate.function}",
                           budget_s=candidate.budget_s)
        result, answer = await self._run(request, t)
        report = answer.get("report")
        return grade_from_report(test_code, result, report if isinstance(report, dict) else None)

    async def reset(self) -> None:
        await self._control({"op": "reset"}, "reset")

    async def ping(self) -> None:
        await self._control({"op": "ping"}, "ping")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._destroy()

    async def _destroy(self, keep_open: bool = False) -> None:
        """Close the channel and force-remove the container (never raises)."""
        chan, self._chan = self._chan, None
        if chan is not None:
            chan.close()
        if not keep_open:
            self._closed = True
        if self.container_id:
            cid, self.container_id = self.container_id, ""
            try:
                await asyncio.shield(asyncio.to_thread(self.backend.remove, cid))
            except Exception as e:  # noqa: BLE001 - cleanup must not mask the real error
                logger.warning("removing sandbox container %s failed: %s", cid[:12], e)


def _raise_runner_error(answer: Mapping[str, Any], what: str) -> None:
    """Map the runner's error answer to the matching Python exception."""
    err = str(answer.get("error", "unknown error"))
    kind, _, msg = err.partition(": ")
    exc: type[Exception] = {
        "FileNotFoundError": FileNotFoundError,
        "IsADirectoryError": IsADirectoryError,
        "NotADirectoryError": NotADirectoryError,
        "PermissionError": PermissionError,
        "ValueError": ValueError,
    }.get(kind, SandboxError)
    raise exc(f"{what}: {msg or err}")
