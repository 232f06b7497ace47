"""Stdlib helpers of the in-container runner, and everything that runs in its children.

Not imported inside the container: ``runner_source()`` sends this file's source followed by
``runner.py``'s as one ``python3 -c`` script. On the host it is an ordinary module (linted and
importable); it must stay stdlib-only and must not import from the package.

Contents: frame formats between the supervisor and its worker, fd helpers, output capture,
cleanup (``wipe``, System V IPC, the OOM counter), ``child_setup`` for every forked child, the
live-interpreter ``Worker``. The grader's source is ``grader.py``.
"""

import contextlib
import ctypes
import os
import signal
import struct
import sys

WORKER_REQ = struct.Struct(">QI")  # seq, code length
WORKER_DONE = struct.Struct(">QiB")  # seq, exit code, flags (bit 0: worker damaged)
FLAG_DAMAGED = 1

def log(msg):
    """Diagnostics go to fd 2 (the container log, capped by Docker), never to the protocol."""
    with contextlib.suppress(OSError):
        os.write(2, (f"agentgym-runner: {msg}\n").encode("utf-8", "replace"))


# ---- low-level helpers -----------------------------------------------------------------------


def read_exact(fd, n):
    """Read exactly n bytes from a blocking fd; None on EOF."""
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def set_nonblocking(fd):
    os.set_blocking(fd, False)


OOM_PATHS = ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"]


def oom_kills():
    """The container cgroup's OOM-kill counter (v2 or v1); -1 when unreadable."""
    for path in list(OOM_PATHS):
        try:
            with open(path, "rb") as f:
                for line in f.read().splitlines():
                    if line.startswith(b"oom_kill "):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        OOM_PATHS.remove(path)  # not on this host's cgroup version: stop trying it
    return -1


class Capture:
    """Reads one output pipe, keeping the first ``cap`` bytes and counting the rest."""

    def __init__(self, fd, cap):
        self.fd, self.cap, self.buf, self.dropped, self.eof = fd, cap, bytearray(), 0, False

    def pump(self, max_reads=64):
        """Read what is available now (the fd is non-blocking); bounded, so a flood cannot keep
        the supervisor from checking its deadline."""
        for _ in range(max_reads):
            try:
                b = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                self.eof = True
                return
            if not b:
                self.eof = True
                return
            room = self.cap - len(self.buf)
            if room > 0:
                self.buf += b[:room]
            self.dropped += max(0, len(b) - max(room, 0))

    def text(self):
        s = bytes(self.buf).decode("utf-8", "replace")
        if self.dropped:
            s += f"\n[agentgym: output truncated, {self.dropped} more bytes]\n"
        return s


def wipe(root, mode):
    """Delete everything below root (not root itself), fixing permissions that block deletion."""
    with contextlib.suppress(OSError):
        os.chmod(root, mode)
    for dirpath, dirnames, _ in os.walk(root, topdown=True, onerror=lambda e: None):
        for d in dirnames:  # make every directory enterable before the walk descends into it
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o700)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False, onerror=lambda e: None):
        for name in filenames:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            p = os.path.join(dirpath, name)
            try:
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    os.rmdir(p)
            except OSError:
                pass


def child_setup(stdin_fd, out_w, err_w, keep, python, work_dir, env):
    """In a freshly forked child: own session, stdio wired, every other fd closed, default
    signals, cwd = work dir, sandbox env, first in line for the OOM killer."""
    os.setsid()
    os.dup2(stdin_fd if stdin_fd is not None else os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    lo = 3
    for fd in sorted(keep):
        os.set_inheritable(fd, True)
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1
    os.closerange(lo, 65536)
    signal.set_wakeup_fd(-1)
    for sig in range(1, signal.NSIG):
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(sig, signal.SIG_DFL)
    if python:  # what CPython sets at start-up; exec'd programs keep the defaults
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    os.chdir(work_dir)
    os.environ.clear()
    os.environ.update(env)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # dumpable again, like any normal process
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def clean_sysv_ipc():
    """Remove System V shared memory, semaphores and message queues (they outlive processes)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    for kind, fn in (("shm", "shmctl"), ("sem", "semctl"), ("msg", "msgctl")):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            try:
                ipc_id = int(line.split()[1])
                if kind == "sem":
                    libc.semctl(ipc_id, 0, 0)  # IPC_RMID == 0
                else:
                    getattr(libc, fn)(ipc_id, 0, None)
            except (ValueError, IndexError, AttributeError):
                pass


# ---- the worker (runs in a forked child) -------------------------------------------------------


def worker_main(req_fd, done_fd):
    """Become the live interpreter: run cells forever in one ``__main__`` namespace."""
    Worker(req_fd, done_fd).serve()


class Worker:
    """The live interpreter's loop. Every function and constant it needs is bound when it is
    built, so user code that rebinds module attributes (``os.read``, ``struct.pack``,
    ``builtins.exec``, ``sys.stdout``...) cannot break the frame format or the next cell.
    Plain try/except is used instead of ``contextlib`` for the same reason."""

    def __init__(self, req_fd, done_fd):
        import builtins
        import io
        import traceback
        import types

        self.req_fd, self.done_fd = req_fd, done_fd
        self.read, self.write, self.getpid, self.fstat = os.read, os.write, os.getpid, os.fstat
        self.pack, self.unpack, self.exit = WORKER_DONE.pack, WORKER_REQ.unpack, os._exit
        self.sigmask, self.sigpending, self.sigwait = (
            signal.pthread_sigmask, signal.sigpending, signal.sigwait)
        self.SIGINT, self.BLOCK, self.UNBLOCK = signal.SIGINT, signal.SIG_BLOCK, signal.SIG_UNBLOCK
        self.compile, self.exec, self.isinstance = builtins.compile, builtins.exec, isinstance
        self.print_exception, self.print_exc = traceback.print_exception, traceback.print_exc
        self.sys, self.io_wrapper, self.file_io = sys, io.TextIOWrapper, io.FileIO
        self.my_pid = os.getpid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.sigmask(self.BLOCK, {self.SIGINT})
        self.out, self.err = self.stream(1), self.stream(2)
        sys.stdout = sys.__stdout__ = self.out
        sys.stderr = sys.__stderr__ = self.err
        sys.stdin = sys.__stdin__ = open(os.devnull)  # noqa: SIM115 - lives with the worker
        sys.argv = [""]
        main = types.ModuleType("__main__")  # so pickle/multiprocessing find user classes
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main
        self.ns = main.__dict__
        self.fds = (0, 1, 2, req_fd, done_fd)
        self.ident = self.identity()

    def stream(self, fd):
        return self.io_wrapper(self.file_io(fd, "w", closefd=False), "utf-8", "backslashreplace",
                               write_through=True)

    def identity(self):
        """(device, inode) of every fd the protocol relies on; changes mean tampering."""
        try:
            return tuple((self.fstat(fd).st_dev, self.fstat(fd).st_ino) for fd in self.fds)
        except OSError:
            return None

    def read_exact(self, n):
        buf = b""
        while len(buf) < n:
            b = self.read(self.req_fd, n - len(buf))
            if not b:
                self.exit(0)  # the supervisor went away
            buf += b
        return buf

    def serve(self):
        while True:
            seq, n = self.unpack(self.read_exact(WORKER_REQ.size))
            src = self.read_exact(n) if n else b""
            if self.SIGINT in self.sigpending():
                self.sigwait({self.SIGINT})  # a deadline that raced the end of the last cell
            code = self.run_cell(src.decode("utf-8", "replace"))
            self.flush()
            if self.getpid() != self.my_pid:  # a fork of the user's code: never reply
                self.exit(code & 0xFF)
            if self.out.closed:  # the code closed sys.stdout: give it a new one
                self.out = self.stream(1)
            if self.err.closed:
                self.err = self.stream(2)
            sys_ = self.sys
            sys_.stdout = sys_.__stdout__ = self.out
            sys_.stderr = sys_.__stderr__ = self.err
            flags = 0 if self.identity() == self.ident else FLAG_DAMAGED
            try:
                self.write(self.done_fd, self.pack(seq, code, flags))
            except OSError:
                self.exit(70)

    def run_cell(self, src):
        """Execute one cell; return its exit code (0, SystemExit's code, 1 on an exception)."""
        try:
            obj = self.compile(src, "<cell>", "exec")
        except (SyntaxError, ValueError, OverflowError):
            self.print_exc(limit=0)
            return 1
        try:
            self.sigmask(self.UNBLOCK, {self.SIGINT})
            try:
                self.exec(obj, self.ns)
            finally:
                self.sigmask(self.BLOCK, {self.SIGINT})
            return 0
        except SystemExit as e:
            if e.code is None:
                return 0
            if self.isinstance(e.code, int):
                return max(-(2**31), min(e.code, 2**31 - 1))
            print(e.code, file=self.sys.stderr)
            return 1
        except BaseException as e:  # noqa: BLE001 - the user's exception is the cell's result
            try:  # noqa: SIM105 - hide the worker's own frame from the traceback
                self.print_exception(type(e), e, e.__traceback__.tb_next)
            except BaseException:  # noqa: BLE001
                pass
            return 1

    def flush(self):
        for s in (self.sys.stdout, self.sys.stderr, self.out, self.err):
            try:  # noqa: SIM105
                s.flush()
            except BaseException:  # noqa: BLE001 - the code may have closed or replaced it
                pass


# ---- the grader -------------------------------------------------------------------------------

GRADER_SOURCE = ""  # sandbox/grader.py's source; runner_source() defines it before runner.py
