"""Code-execution sandboxes: hardened Docker containers with live Python interpreters.

    from agentgym.sandbox import SandboxPool

    async with SandboxPool(size=4) as pool:            # Docker backend by default
        async with pool.acquire() as sb:               # a clean sandbox for one episode
            r = await sb.run_python("x = 1 + 1; print(x)", timeout=5.0)   # r.stdout == "2\\n"
            r = await sb.run_python("print(x)")        # globals persist within the episode
            r = await sb.run_shell("ls -la")
            await sb.write_file("solution.py", code)
            grade = await sb.grade(test_code)          # trusted tests, private result channel
            grade = await sb.grade(tests, candidate=Candidate("solution", "add"))  # isolated

Pieces (one module each): ``config`` (``SandboxConfig``, every limit), ``base`` (the backend
contract, ``ExecResult``, ``GradeResult``), ``runner`` (PID 1 in each container, stdlib only),
``grader`` (the in-container test harness and its value codec), ``protocol`` (host side of
the framed protocol), ``docker_backend`` (containers and their hardening), ``pool`` (warm pool,
reset, health checks, sweeping), ``image`` (``build_image``), ``doctor`` (what is missing and
how to fix it), ``cli`` (``agentgym sandbox build|doctor``).

Nothing here imports ``docker`` at import time; the SDK is loaded when a sandbox starts.

Threat model: the code is hostile. It may exhaust any resource (bounded by the config's limits
and the call deadline), try to reach the network, the host, the Docker socket or other
episodes (nothing is mounted or shared; every episode starts from a wiped, process-free
container), attack the runner (it is an unkillable, non-dumpable PID 1; a broken interpreter is
restarted, a lost container replaced), or tamper with its reward (``grade`` reads results from a
private pipe, with test code sent from the host; with ``candidate=`` the solution runs in its own
process and the tests, in a non-dumpable one, see only exact built-in values from it; see
``grader.py``). The outcome of the code is data (``ExecResult``);
``agentgym.errors.SandboxError`` only means our machinery failed.
"""

from .base import Candidate, ExecResult, GradeResult, Sandbox, SandboxBackend, TestOutcome
from .config import SandboxConfig
from .docker_backend import DockerBackend, DockerSandbox
from .doctor import Check, doctor
from .image import build_image, default_image
from .pool import SandboxPool

__all__ = [
    "Candidate",
    "Check",
    "DockerBackend",
    "DockerSandbox",
    "ExecResult",
    "GradeResult",
    "Sandbox",
    "SandboxBackend",
    "SandboxConfig",
    "SandboxPool",
    "TestOutcome",
    "build_image",
    "default_image",
    "doctor",
]
