"""No container is left behind after Ctrl-C, an exception, or a killed host process.

Each test runs a real pool in a child Python process and checks the engine afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.docker

CHILD = """
import asyncio, faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's stack dump on a hang
# Ctrl-C as a terminal delivers it: a test run started in the background (`nohup ... &`, a CI
# runner) passes SIGINT down ignored, and then asyncio.run never installs its handler.
signal.signal(signal.SIGINT, signal.default_int_handler)
from agentgym.sandbox import SandboxConfig, SandboxPool

async def main():
    async with SandboxPool(size=2, config=SandboxConfig(memory_mb=128)) as pool:
        async with pool.acquire() as sb:
            await sb.run_python("x = 1")
            print(pool.pool_id, flush=True)
            {action}

asyncio.run(main())
"""


def _pool_containers(docker_client, pool_id: str) -> list[str]:
    flt = {"label": [f"agentgym.pool={pool_id}"]}
    return [c["Id"] for c in docker_client.api.containers(all=True, filters=flt)]


def _start_child(action: str) -> tuple[subprocess.Popen[str], str]:
    code = textwrap.dedent(CHILD).replace("{action}", action)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    pool_id = proc.stdout.readline().strip()
    assert pool_id, "child did not start its pool"
    return proc, pool_id


def _wait_or_dump(proc: subprocess.Popen[str], timeout: float) -> int:
    """The child's exit status; if it has not exited in ``timeout`` s, fail with every thread's
    stack (faulthandler, SIGUSR1) and kill it, so a hang says where it is and leaks no process."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the child did not exit {timeout:.0f} s after the signal; its threads:\n{err}")


def _wait_gone(docker_client, pool_id: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _pool_containers(docker_client, pool_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_ctrl_c_leaves_nothing(docker_client) -> None:
    proc, pool_id = _start_child("await asyncio.sleep(3600)")
    assert len(_pool_containers(docker_client, pool_id)) == 2
    proc.send_signal(signal.SIGINT)
    _wait_or_dump(proc, 180)  # a failure detector, not a speed target: a busy machine is slow
    assert _pool_containers(docker_client, pool_id) == []


def test_exception_leaves_nothing(docker_client) -> None:
    proc, pool_id = _start_child("raise RuntimeError('boom')")
    assert _wait_or_dump(proc, 180) != 0
    assert _pool_containers(docker_client, pool_id) == []


def test_killed_host_process_leaves_nothing(docker_client) -> None:
    proc, pool_id = _start_child("await asyncio.sleep(3600)")
    proc.kill()  # SIGKILL: no cleanup code runs in the host process
    proc.wait(timeout=60)
    # the attach sockets close, each runner reads EOF and exits, the engine removes it
    assert _wait_gone(docker_client, pool_id, timeout=120) == []
