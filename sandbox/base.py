"""The backend contract: what a sandbox does, and the results it returns.

A sandbox runs code and returns results, never rewards: turning a ``GradeResult`` into a reward
is the job of a reward function. What the *code* did (crashed, timed out, ran out of memory) is
an ``ExecResult``; an ``agentgym.errors.SandboxError`` means the sandbox itself failed.
"""

from __future__ import annotations

import abc
import ast
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["Candidate", "ExecResult", "GradeResult", "Sandbox", "SandboxBackend", "TestOutcome"]


@dataclass(frozen=True)
class ExecResult:
    """The outcome of running code once.

    Attributes:
        stdout: captured standard output, decoded as UTF-8 (bad bytes replaced), capped at
            ``SandboxConfig.output_limit_bytes`` with a ``[agentgym: output truncated ...]``
            marker.
        stderr: the same for standard error; agentgym's own notes (timeout, restart, OOM) are
            appended here as ``[agentgym: ...]`` lines so the model sees them.
        exit_code: 0 on success; for Python cells 1 on an exception or the ``SystemExit`` code;
            for processes the exit status, negative for a signal (-9 when killed).
        timed_out: the deadline passed.
        oom_killed: the kernel's OOM killer fired in the container during the call.
        stdout_truncated: stdout was longer than the cap.
        stderr_truncated: stderr was longer than the cap.
        duration_s: wall-clock time of the call inside the container.
        restarted: the interpreter (or whole container) was restarted, so Python state from
            earlier calls in this episode is gone.
    """

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    oom_killed: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_s: float = 0.0
    restarted: bool = False

    @property
    def ok(self) -> bool:
        """Exit code 0 and no timeout."""
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ExecResult:
        """Build from the runner's JSON answer (unknown keys ignored)."""
        return cls(
            stdout=str(d.get("stdout", "")),
            stderr=str(d.get("stderr", "")),
            exit_code=int(d.get("exit_code", -1)),
            timed_out=bool(d.get("timed_out", False)),
            oom_killed=bool(d.get("oom_killed", False)),
            stdout_truncated=bool(d.get("stdout_truncated", False)),
            stderr_truncated=bool(d.get("stderr_truncated", False)),
            duration_s=float(d.get("duration_s", 0.0)),
            restarted=bool(d.get("restarted", False)),
        )


@dataclass(frozen=True)
class Candidate:
    """The function under test for an isolated ``grade``: it runs in its own process and the
    tests reach it only through the proxy ``candidate`` (arguments and results cross as exact
    built-in values; see ``grader.py``).

    Attributes:
        module: the module to import from the work dir (e.g. ``"solution"``).
        function: the function's name in it.
        budget_s: wall-clock budget of the solution, from its process's start (imports
            included) to its last answer; calls past it raise ``TimeoutError`` in the tests.
    """

    module: str
    function: str
    budget_s: float = 3.0


@dataclass(frozen=True)
class TestOutcome:
    """One ``test_*`` function of a grading run."""

    __test__ = False  # not a pytest test class

    name: str
    passed: bool
    error: str | None = None


@dataclass(frozen=True)
class GradeResult:
    """The outcome of ``Sandbox.grade``: per-test outcomes from the grader's private channel.

    Attributes:
        tests: one outcome per ``test_*`` function defined at the top level of the test code,
            in definition order. A test missing from the report (the process died first) is
            failed with ``error="not reported"``.
        exec: the grading process's own ``ExecResult`` (its stdout is for humans only; a
            solution can print anything there).
        setup_error: traceback if the test code itself failed to run (e.g. the solution did not
            import), else ``None``.
    """

    tests: tuple[TestOutcome, ...]
    exec: ExecResult
    setup_error: str | None = None

    @property
    def passed(self) -> int:
        """Number of tests that passed."""
        return sum(t.passed for t in self.tests)

    @property
    def total(self) -> int:
        """Number of tests expected from the test code."""
        return len(self.tests)

    @property
    def all_passed(self) -> bool:
        """Every expected test passed (``False`` when there are no tests)."""
        return self.total > 0 and self.passed == self.total


def expected_tests(test_code: str) -> list[str]:
    """Names of the top-level ``test_*`` functions in test code (parsed on the host, so the
    sandboxed side cannot shrink the set of tests it is graded on)."""
    try:
        tree = ast.parse(test_code)
    except SyntaxError as e:
        raise ValueError(f"test code does not parse: {e}") from e
    names = [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
    ]
    return list(dict.fromkeys(names))


def grade_from_report(
    test_code: str, exec_result: ExecResult, report: Mapping[str, Any] | None
) -> GradeResult:
    """Combine the host's list of expected tests with the grader's report."""
    reported: dict[str, Mapping[str, Any]] = {}
    setup_error = None
    if report is not None:
        setup_error = report.get("setup_error")
        for t in report.get("tests") or []:
            if isinstance(t, Mapping) and isinstance(t.get("name"), str):
                reported.setdefault(t["name"], t)
    elif exec_result.timed_out:
        setup_error = "the grader timed out before reporting"
    else:
        setup_error = f"the grader exited before reporting (code {exec_result.exit_code})"
    outcomes = []
    for name in expected_tests(test_code):
        t = reported.get(name)
        if t is None:
            outcomes.append(TestOutcome(name, False, "not reported"))
        else:
            outcomes.append(TestOutcome(name, t.get("passed") is True, t.get("error")))
    return GradeResult(tuple(outcomes), exec_result, setup_error)


class Sandbox(abc.ABC):
    """One isolated machine for one episode. Use ``async with``; ``close`` is idempotent.

    Calls on one sandbox are serialized. Limits come from the backend's ``SandboxConfig``;
    ``timeout`` arguments are clamped to ``max_timeout_s``.
    """

    @abc.abstractmethod
    async def run_python(
        self, code: str, timeout: float | None = None, *, fresh: bool = False
    ) -> ExecResult:
        """Run Python source. By default in the episode's live interpreter (globals persist
        between calls, like a notebook); with ``fresh=True`` in a new ``python3 -I`` process
        that shares only the files."""

    @abc.abstractmethod
    async def run_shell(self, command: str, timeout: float | None = None) -> ExecResult:
        """Run ``/bin/sh -c command`` in the work dir."""

    @abc.abstractmethod
    async def write_file(self, path: str, content: str | bytes) -> None:
        """Create or replace a file below the work dir (``path`` is relative to it)."""

    @abc.abstractmethod
    async def read_file_bytes(self, path: str) -> bytes:
        """Read a file below the work dir (capped at ``max_file_bytes``)."""

    async def read_file(self, path: str) -> str:
        """Read a text file below the work dir (UTF-8, bad bytes replaced)."""
        return (await self.read_file_bytes(path)).decode("utf-8", "replace")

    @abc.abstractmethod
    async def grade(self, test_code: str, timeout: float | None = None, *,
                    candidate: Candidate | None = None) -> GradeResult:
        """Run trusted test code against the episode's files; see the backend for guarantees.
        With ``candidate``, the tests call the solution only through a proxy named
        ``candidate`` and never import it."""

    @abc.abstractmethod
    async def reset(self) -> None:
        """Return to a pristine state: no file, process or interpreter state survives."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Health check; raises ``SandboxError`` if the sandbox cannot serve calls."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Destroy the sandbox. Idempotent; never raises for an already dead sandbox."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """Whether ``close`` ran or the sandbox is known to be unusable."""

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class SandboxBackend(abc.ABC):
    """Makes sandboxes (e.g. Docker containers) and cleans up after crashed runs."""

    @abc.abstractmethod
    async def create(self, labels: Mapping[str, str]) -> Sandbox:
        """Start one sandbox, ready to serve calls. Raises ``SandboxUnavailableError`` when the
        backend cannot run at all."""

    @abc.abstractmethod
    async def sweep(self, labels: Mapping[str, str] | None = None) -> int:
        """Remove sandboxes left behind: with ``labels``, those carrying them; without, those
        whose owning process is gone. Returns how many were removed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources (connections). Idempotent."""

