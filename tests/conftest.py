"""Suite-wide set-up: the Docker gate (see gates.py), one torch thread, a shared Ray cluster.

torch's OpenMP threads spin while they wait: on a 2-core machine that also runs a vLLM server or
the Docker engine, two threads made small-model steps 10-100x slower than one, and the thread
count changes float results (which the resume tests compare). So every test uses one thread.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest
from gates import IN_CI, docker_problem, require_docker

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses the tests start


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A real local Ray cluster with this machine's CPUs, started once for the whole session
    (ask for it from a module gated with ``require_module("ray", ...)``)."""
    import ray

    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
             logging_level="WARNING", log_to_driver=False)  # never a `ray start` cluster
    yield
    ray.shutdown()


def pytest_report_header(config: pytest.Config) -> str | None:
    problem = docker_problem()
    if problem is None:
        return None
    fate = "FAIL (CI=true)" if IN_CI else "be SKIPPED"
    return f"agentgym: Docker tests will {fate}: {problem}"


@pytest.fixture(autouse=True)
def _docker_gate(request: pytest.FixtureRequest) -> None:
    """Every test marked ``docker`` needs the engine and the image (skip, or fail in CI)."""
    if request.node.get_closest_marker("docker"):
        require_docker()


@pytest.fixture(autouse=True)
def _registry_restored() -> Iterator[None]:
    """Ids a test registers are removed after it, so no test sees another test's envs (the
    built-in plugins are loaded first, so they stay)."""
    import gymnasium

    from agentgym import registry

    registry.load_plugins()
    before = set(registry.registry)
    yield
    for env_id in set(registry.registry) - before:
        del registry.registry[env_id]
        gymnasium.registry.pop(env_id, None)
