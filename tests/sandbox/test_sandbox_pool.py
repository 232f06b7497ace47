"""The warm pool: clean episodes, fast acquire, replacement of broken sandboxes, and no
container left behind after Ctrl-C, an exception, or a killed host process."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentgym.errors import AcquireTimeoutError, SandboxCrashedError
from agentgym.sandbox import SandboxConfig, SandboxPool
from agentgym.sandbox.docker_backend import DockerBackend, owner_labels

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]

EPISODE_1 = """
import os, subprocess, multiprocessing.shared_memory as shm
SECRET = "episode-1"
open("/work/secret.txt", "w").write(SECRET)
os.makedirs("/work/locked/deep")
open("/work/locked/deep/f", "w").write("x")
os.chmod("/work/locked/deep", 0); os.chmod("/work/locked", 0)
open("/tmp/secret.txt", "w").write(SECRET)
open("/dev/shm/secret", "w").write(SECRET)
seg = shm.SharedMemory(name="leak", create=True, size=64)
seg.buf[:9] = b"episode-1"
subprocess.Popen(["sleep", "1000"])
subprocess.Popen(["sh", "-c", "setsid sleep 1000 &"])
"""

EPISODE_2 = """
import os
print(sorted(os.listdir("/work")), sorted(os.listdir("/tmp")), sorted(os.listdir("/dev/shm")))
print("SECRET" in globals())
print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
"""


async def test_nothing_leaks_between_episodes(config: SandboxConfig) -> None:
    async with SandboxPool(size=1, config=config) as pool:
        async with pool.acquire() as sb:
            first = sb.container_id
            r = await sb.run_python(EPISODE_1)
            assert r.ok, r.stderr
        async with pool.acquire() as sb:
            assert sb.container_id == first  # same container, reset in place
            r = await sb.run_python(EPISODE_2)
    files, has_global, pids = r.stdout.splitlines()
    assert files == "[] [] []"
    assert has_global == "False"
    assert len(eval(pids)) == 2  # the runner and this interpreter: no sleepers survived


async def test_acquire_is_fast_and_times_out_clearly(pool: SandboxPool) -> None:
    await pool.wait_idle()
    warm = {sb.container_id for sb in list(pool._idle._queue)}  # noqa: SLF001 - white-box
    async with pool.acquire() as first:
        assert first.container_id in warm  # a warm container, not one created on demand
        async with pool.acquire():
            with pytest.raises(AcquireTimeoutError, match=r"pool size 2: 2 in use"):
                async with pool.acquire(timeout=0.2):
                    pass


async def test_broken_sandbox_is_replaced_not_reused(pool: SandboxPool, docker_client) -> None:
    await pool.wait_idle()
    async with pool.acquire() as sb:
        broken_id = sb.container_id
        await sb.close()  # e.g. its container died and could not be replaced
        with pytest.raises(SandboxCrashedError):
            await sb.run_python("print(1)")
    await pool.wait_idle(timeout=30)
    seen = set()
    for _ in range(4):
        async with pool.acquire() as sb:
            seen.add(sb.container_id)
            assert (await sb.run_python("print(1)")).stdout == "1\n"
    assert broken_id not in seen


async def test_container_dead_while_idle_is_detected_at_acquire(
    pool: SandboxPool, docker_client
) -> None:
    await pool.wait_idle()
    ids = []
    for _ in range(2):  # kill every idle container behind the pool's back
        sb = await pool._take(5)  # noqa: SLF001 - white-box: take without the lease
        ids.append(sb.container_id)
        docker_client.api.kill(sb.container_id)
        pool._idle.put_nowait(sb)  # noqa: SLF001
    for container in ids:  # wait until the engine reports them dead (no fixed sleep)
        await _wait_not_running(docker_client, container)
    async with pool.acquire(timeout=30) as sb:
        assert sb.container_id not in ids
        assert (await sb.run_python("print(2)")).stdout == "2\n"


async def test_containers_are_recycled_after_max_uses(config: SandboxConfig) -> None:
    cfg = SandboxConfig(**{**config.__dict__, "max_uses": 2})
    async with SandboxPool(size=1, config=cfg) as pool:
        ids = []
        for _ in range(3):
            async with pool.acquire(timeout=30) as sb:
                ids.append(sb.container_id)
    assert ids[0] == ids[1] != ids[2]


async def test_sweep_removes_containers_of_dead_owners(docker_client) -> None:
    backend = DockerBackend(SandboxConfig())
    dead = {**owner_labels(), "agentgym.pid": "999999", "agentgym.pid_start": "1"}
    cid, sock = await asyncio.to_thread(backend.start_container, dead)
    alive_cid, alive_sock = await asyncio.to_thread(backend.start_container, owner_labels())
    try:
        assert await backend.sweep() >= 1
        ids = {c["Id"] for c in docker_client.api.containers(all=True)}
        assert cid not in ids and alive_cid in ids  # a live owner's containers are left alone
    finally:
        sock.close()
        alive_sock.close()
        await asyncio.to_thread(backend.remove, alive_cid)
        await backend.close()


async def _wait_not_running(docker_client, container_id: str, timeout: float = 60.0) -> None:
    """Until the engine no longer reports the container running (gone counts as not running)."""
    import docker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not docker_client.api.inspect_container(container_id)["State"]["Running"]:
                return
        except docker.errors.NotFound:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"container {container_id[:12]} still running after {timeout} s")
