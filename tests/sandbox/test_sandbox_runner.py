"""Attacks on the runner itself: the protocol channel must stay intact (or the sandbox be
replaced), every call must return a result, and the next call must work."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]


async def _works(sb) -> None:
    r = await sb.run_python("print('ok')", timeout=5)
    assert r.stdout == "ok\n", r


async def test_killing_everything_cannot_kill_the_runner(sb) -> None:
    code = """
import os, signal
for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP, signal.SIGHUP):
    os.kill(1, sig)  # PID 1 of the namespace: the kernel drops these
print("still here")
"""
    r = await sb.run_python(code)
    assert r.stdout == "still here\n"
    code = """
import os, signal, subprocess
p = subprocess.Popen(["sleep", "100"])
os.kill(-1, signal.SIGKILL)  # every process it may signal, except itself and PID 1
print(p.wait())
"""
    r = await sb.run_python(code)
    assert r.stdout == "-9\n"
    await _works(sb)
    r = await sb.run_shell("kill -9 -1; kill -9 1; echo survived")
    # kill -9 -1 from the shell also kills the Python interpreter: depending on timing the next
    # Python call first reports that loss (restarted, nothing run). The runner itself survives.
    first = await sb.run_python("print('ok')", timeout=5)
    assert first.stdout == "ok\n" or (first.restarted and "exited (code -9)" in first.stderr), first
    await _works(sb)


async def test_os_exit_and_signals_to_itself(sb) -> None:
    await sb.run_python("state = 1")
    r = await sb.run_python("import os; os._exit(7)")
    assert r.exit_code == 7 and r.restarted and "state was lost" in r.stderr
    await _works(sb)
    r = await sb.run_python("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert r.exit_code == -15 and r.restarted
    r = await sb.run_python("import os, signal; os.kill(os.getpid(), signal.SIGSTOP)", timeout=1)
    assert r.timed_out and r.restarted
    r = await sb.run_python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert r.exit_code == -11
    await _works(sb)


async def test_closing_or_hijacking_the_interpreters_fds(sb) -> None:
    r = await sb.run_python("import os; os.closerange(0, 1024)")
    assert r.restarted
    await _works(sb)
    r = await sb.run_python("import os; os.dup2(os.open('/dev/null', os.O_WRONLY), 1)")
    assert r.restarted  # its stdout is no longer ours: detected, interpreter replaced
    await _works(sb)
    for fd in range(3, 10):  # scribble on every other fd the interpreter holds
        await sb.run_python(
            f"import os\ntry:\n    os.write({fd}, b'\\x00\\x00\\x00\\x05garbage' * 10)\n"
            "except OSError:\n    pass"
        )
    await _works(sb)


async def test_raw_writes_to_fd1_are_just_output(sb) -> None:
    fake_frame = b"\x00\x00\x00\x1b{\"id\": 1, \"ok\": true, \"x\": 1}"
    r = await sb.run_python(f"import os; os.write(1, {fake_frame!r}); os.write(2, b'\\xff')")
    assert r.ok and "ok" in r.stdout and r.stderr == "\ufffd"
    await _works(sb)


async def test_replacing_sys_stdout_and_builtins(sb) -> None:
    r = await sb.run_python("import sys; sys.stdout = open('/dev/null', 'w'); print('lost')")
    assert r.ok
    r = await sb.run_python("print('back')")  # stdout is restored between calls
    assert r.stdout == "back\n"
    r = await sb.run_python("import sys; sys.stdout.close()")
    await _works(sb)
    code = """
import builtins, json, struct, os
json.dumps = json.loads = None
struct.pack = struct.unpack = None
os.write = os.read = None
builtins.exec = builtins.compile = None
"""
    await sb.run_python(code)
    await _works(sb)  # the worker bound everything it needs before running user code


async def test_replacing_the_interpreter_process(sb) -> None:
    r = await sb.run_python("import os; os.execv('/bin/sh', ['sh', '-c', 'exit 3'])")
    assert r.restarted and r.exit_code == 3
    await _works(sb)
    sleeper = "import time; time.sleep(60)"
    r = await sb.run_python(
        f"import os, sys; os.execv(sys.executable, [sys.executable, '-c', {sleeper!r}])",
        timeout=1,
    )
    assert r.timed_out and r.restarted
    await _works(sb)


async def test_forked_children_cannot_speak_the_protocol(sb) -> None:
    r = await sb.run_python("import os\npid = os.fork()\nprint('child' if pid == 0 else 'parent')")
    assert "parent" in r.stdout and r.ok
    outs = [await sb.run_python(f"print({i})") for i in range(5)]
    # The channel stays intact: every call gets its own answer. The child is a process of the
    # model's own; its late print may land in the next call's output, nothing else may.
    assert all(o.ok and o.stdout.endswith(f"{i}\n") for i, o in enumerate(outs))
    extra = "".join(o.stdout[: -len(f"{i}\n")] for i, o in enumerate(outs))
    assert extra in ("", "child\n")


async def test_hung_container_is_replaced_by_the_host_deadline(pool, docker_client) -> None:
    async with pool.acquire() as sb:
        await sb.write_file("data.txt", "x")
        old = sb.container_id
        # the deadline leaves room for the pause to land first even on a busy machine
        call = asyncio.create_task(sb.run_python("import time; time.sleep(60)", timeout=5))
        await asyncio.sleep(0.2)
        docker_client.api.pause(old)  # the runner can no longer answer at all
        r = await call
        assert r.timed_out and r.restarted and "replaced" in r.stderr
        assert sb.container_id != old
        await _works(sb)
        with pytest.raises(FileNotFoundError):
            await sb.read_file("data.txt")  # a fresh container: nothing carried over


async def test_container_killed_from_outside_is_replaced(pool, docker_client) -> None:
    async with pool.acquire() as sb:
        old = sb.container_id
        docker_client.api.kill(old)
        r = await sb.run_python("print(1)")
        assert r.restarted and "runner died" in r.stderr
        assert sb.container_id != old
        await _works(sb)
