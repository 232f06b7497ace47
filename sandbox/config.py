"""``SandboxConfig``: every limit a sandbox runs under, in one frozen dataclass.

Limits come from here only -- an environment builds one config and hands it to its pool -- never
from tool-call arguments, so a model cannot talk its way into more memory or a longer deadline.
The one per-call knob, ``timeout``, is clamped to ``max_timeout_s``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["SandboxConfig"]


@dataclass(frozen=True)
class SandboxConfig:
    """Resource limits and behaviour of every sandbox in a pool."""

    image: str | None = None
    """Docker image to run; ``None`` means the image ``build_image()`` makes (a fixed tag
    derived from the recipe, see ``agentgym.sandbox.image.default_image``)."""

    memory_mb: int = 512
    """Memory limit of the whole container (RAM; swap is disabled: memory == memory+swap)."""

    cpus: float = 1.0
    """CPU quota in cores (Docker ``NanoCpus``)."""

    pids_limit: int = 128
    """Most processes/threads alive at once in the container (stops fork bombs)."""

    work_dir_mb: int = 64
    """Size of the writable tmpfs work dir ``/work`` (the only place code can write, with
    ``/tmp`` and ``/dev/shm``)."""

    tmp_mb: int = 16
    """Size of the ``/tmp`` tmpfs and of ``/dev/shm``."""

    max_file_size_mb: int = 64
    """``RLIMIT_FSIZE``: the largest file any process may write."""

    max_open_files: int = 256
    """``RLIMIT_NOFILE``: open file descriptors per process."""

    default_timeout_s: float = 10.0
    """Deadline of a call that does not pass ``timeout``."""

    max_timeout_s: float = 60.0
    """Upper bound for any per-call ``timeout`` (enforced in the container and on the host)."""

    host_grace_s: float = 3.0
    """How long after the in-container deadline the host waits before it declares the sandbox
    hung, kills it and replaces the container."""

    interrupt_grace_s: float = 0.5
    """At the deadline a Python cell gets ``KeyboardInterrupt``; if it has not returned after
    this long, every process in the container is killed and the interpreter restarted."""

    output_limit_bytes: int = 64 * 1024
    """Bytes of stdout (and, separately, of stderr) kept per call; the rest is dropped and a
    truncation marker appended."""

    max_file_bytes: int = 8 * 2**20
    """Largest file ``read_file``/``write_file`` transfer."""

    uid: int = 1000
    """Unprivileged uid (and gid) all code in the container runs as."""

    idle_timeout_s: float = 3600.0
    """A container that gets no request for this long exits and is removed by the engine (a
    last line of defence against leaks; normally the pool removes it)."""

    max_uses: int = 100
    """Episodes a container serves (reset in between) before the pool replaces it."""

    acquire_timeout_s: float = 60.0
    """How long ``SandboxPool.acquire`` waits for a free sandbox before
    ``AcquireTimeoutError``."""

    start_timeout_s: float = 60.0
    """How long creating and starting one container may take."""

    env: dict[str, str] = field(
        default_factory=lambda: {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/work",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    """The complete environment of code in the sandbox (nothing from the host leaks in)."""

    def __post_init__(self) -> None:
        positive = [
            f.name
            for f in dataclasses.fields(self)
            if f.type in ("int", "float") and getattr(self, f.name) <= 0
        ]
        if positive:
            raise ValueError(f"SandboxConfig fields must be > 0: {', '.join(positive)}")
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("SandboxConfig.default_timeout_s must be <= max_timeout_s")

    def clamp_timeout(self, timeout: float | None) -> float:
        """The deadline a call actually gets: ``timeout`` (or the default) capped by the max."""
        t = self.default_timeout_s if timeout is None else float(timeout)
        if t <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        return min(t, self.max_timeout_s)

    def runner_config(self) -> dict[str, object]:
        """The subset of limits the in-container runner enforces itself."""
        return {
            "output_cap": self.output_limit_bytes,
            "max_timeout_s": self.max_timeout_s,
            "interrupt_grace_s": self.interrupt_grace_s,
            "idle_timeout_s": self.idle_timeout_s,
            "max_file_bytes": self.max_file_bytes,
            "work_dir": "/work",
            "wipe_dirs": ["/work", "/tmp", "/dev/shm", "/dev/mqueue"],
            "env": dict(self.env),
        }
