"""Resource exhaustion: each attack is contained by a limit, the call returns a result in
bounded time, and the sandbox (or its replacement) keeps serving."""

from __future__ import annotations

import time

import pytest

from agentgym.sandbox import SandboxConfig

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]


async def _still_works(sb) -> None:
    r = await sb.run_python("print('alive')", timeout=5)
    assert r.stdout == "alive\n", r


async def test_fork_bomb_is_capped_by_the_pids_limit(sb, config: SandboxConfig) -> None:
    code = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    t0 = time.monotonic()
    r = await sb.run_python(code, timeout=2)
    assert r.timed_out  # and every forked process is gone, whether or not the cell survived
    # the deadline held (without it the bomb runs forever); headroom for a busy machine
    assert time.monotonic() - t0 < 2 + config.interrupt_grace_s + 30
    await _still_works(sb)
    r = await sb.run_shell("ls /proc | grep -c '^[0-9]'")
    assert int(r.stdout) <= 5  # runner, worker, sh, ls, grep: the bomb is gone


async def test_shell_fork_bomb(sb) -> None:
    r = await sb.run_shell(":(){ :|:& };:", timeout=2)
    assert r.timed_out or r.exit_code != 0
    await sb.reset()  # what the pool does between episodes: kills every stray process
    await _still_works(sb)


async def test_memory_bomb_is_oom_killed(sb) -> None:
    await sb.run_python("kept = 1")
    r = await sb.run_python("blob = b'x' * (2 * 1024**3)", timeout=10)
    assert r.exit_code != 0 and not r.timed_out
    assert "MemoryError" in r.stderr or r.oom_killed
    r = await sb.run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(2**24))",
                            timeout=10)
    assert r.oom_killed and r.restarted and "out of memory" in r.stderr
    await _still_works(sb)


async def test_disk_fill_is_capped(sb, config: SandboxConfig) -> None:
    code = """
import os
written = 0
try:
    with open("fill.bin", "wb") as f:
        while True:
            f.write(b"x" * 2**20)
            f.flush()
            written += 2**20
except OSError as e:
    print(type(e).__name__, e.errno)
print(written // 2**20)
"""
    r = await sb.run_python(code, timeout=10)
    kind, mb = r.stdout.splitlines()
    assert kind.startswith("OSError")
    assert int(mb) <= max(config.work_dir_mb, config.max_file_size_mb)
    r = await sb.run_shell(f"dd if=/dev/zero of=/tmp/f bs=1M count={config.tmp_mb * 4}")
    assert r.exit_code != 0
    await sb.run_shell("rm -f fill.bin /tmp/f")
    await _still_works(sb)


async def test_cpu_spin_ignoring_interrupts_is_killed(sb) -> None:
    code = """
import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    pass
"""
    t0 = time.monotonic()
    r = await sb.run_python(code, timeout=1)
    assert r.timed_out and r.restarted and r.exit_code == -9
    assert time.monotonic() - t0 < 1 + 30  # killed, not spinning forever
    await _still_works(sb)


async def test_background_cpu_hogs_are_killed_at_reset(sb) -> None:
    await sb.run_shell("for i in 1 2 3; do (while :; do :; done) & done")
    r = await sb.run_shell("ls /proc | grep -c '^[0-9]'")
    assert int(r.stdout) >= 5
    await sb.reset()
    r = await sb.run_shell("ls /proc | grep -c '^[0-9]'")
    assert int(r.stdout) <= 5  # runner, worker, sh, ls, grep


async def test_output_flood_is_truncated_and_bounded(sb, config: SandboxConfig) -> None:
    r = await sb.run_python("while True:\n    print('z' * 4096)", timeout=1)
    assert r.timed_out and r.stdout_truncated
    assert len(r.stdout.encode()) <= config.output_limit_bytes + 200
    r = await sb.run_shell("yes flood | head -c 50000000; yes err | head -c 5000000 >&2")
    assert r.stdout_truncated and r.stderr_truncated and r.exit_code == 0
    await _still_works(sb)


async def test_open_files_are_capped(sb, config: SandboxConfig) -> None:
    code = """
import os
fds = []
try:
    while True:
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    print(len(fds), e.errno)
for fd in fds:
    os.close(fd)
"""
    r = await sb.run_python(code)
    n, errno = r.stdout.split()
    assert int(n) < config.max_open_files and errno == "24"  # EMFILE
    await _still_works(sb)


async def test_ipc_objects_do_not_survive_reset(sb) -> None:
    """System V segments and POSIX message queues outlive processes: reset removes them."""
    code = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print(libc.mq_open(b"/leak", os.O_CREAT | os.O_RDWR, 0o600, None) >= 0,
      libc.shmget(0, 4096, 0o1000 | 0o600) >= 0)
"""
    r = await sb.run_python(code)
    assert r.stdout.split() == ["True", "True"], r
    listing = "ls /dev/mqueue; tail -n +2 /proc/sysvipc/shm | wc -l"
    r = await sb.run_shell(listing)
    assert r.stdout.split() == ["leak", "1"], r
    await sb.reset()
    r = await sb.run_shell(listing)
    assert r.stdout.split() == ["0"], r
