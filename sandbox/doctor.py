"""``doctor()``: what the sandbox needs on this machine, what is missing, and how to fix it."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from typing import Any

from ..errors import SandboxError
from .image import default_image, image_exists
from .pool import SandboxPool

__all__ = ["Check", "doctor"]


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report.

    Attributes:
        name: what was checked.
        ok: whether it is fine.
        detail: what was found.
        fix: the command or step that fixes it (empty when ok).
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""


def doctor(*, smoke_test: bool = True) -> list[Check]:
    """Check the Docker SDK, the engine, permissions, the image and (optionally) a real run.

    Stops at the first failure that makes later checks meaningless.
    """
    checks: list[Check] = []
    try:
        import docker
    except ImportError:
        return [Check("docker SDK", False, "not installed", "pip install 'agentgym[docker]'")]
    checks.append(Check("docker SDK", True, f"docker-py {docker.__version__}"))

    client, engine = _engine_check()
    checks.append(engine)
    if client is None:
        return checks


    tag = default_image()
    have = image_exists(client, tag)
    fix = "agentgym sandbox build"
    if not have and shutil.which("debootstrap") is None:
        fix = "apt-get install debootstrap (offline build), then agentgym sandbox build"
    detail = tag if have else f"{tag} missing"
    checks.append(Check("sandbox image", have, detail, "" if have else fix))
    if have and smoke_test:
        checks.append(_smoke_test())
    return checks


def _engine_check() -> tuple[Any, Check]:
    """Connect to the engine; classify the failure (not installed, not running, permission)."""
    import docker

    try:
        client = docker.from_env(timeout=10)
        version = client.version().get("Version", "?")
    except docker.errors.DockerException as e:
        msg = str(e)
        if "ermission denied" in msg:
            fix = "sudo usermod -aG docker $USER, then log in again (or run as root)"
            what = "permission denied on the Docker socket"
        elif shutil.which("dockerd") is None:
            fix = "apt-get install docker.io, then start dockerd"
            what = "no Docker engine installed"
        else:
            fix = (
                "sudo systemctl start docker, or (no systemd) "
                "sudo nohup dockerd >/var/log/dockerd.log 2>&1 &"
            )
            what = "the Docker engine is not running"
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return None, Check("docker engine", False, f"{what} ({host}): {msg[:200]}", fix)
    return client, Check("docker engine", True, f"engine {version}")


def _smoke_test() -> Check:
    """Start one sandbox and run ``print(1+1)`` in it."""
    async def run() -> str:
        async with SandboxPool(size=1) as pool, pool.acquire() as sb:
            r = await sb.run_python("print(1 + 1)", timeout=10)
            return r.stdout.strip()

    try:
        out = asyncio.run(run())
    except (SandboxError, OSError) as e:
        return Check("smoke test", False, f"{type(e).__name__}: {e}", "see the error above")
    ok = out == "2"
    return Check("smoke test", ok, f"print(1 + 1) -> {out!r}", "" if ok else "report a bug")
