"""The connection to the Docker engine, shared by the backend and the image builder.

``import docker`` happens inside :func:`docker_client`, never when this module is imported.
"""

from __future__ import annotations

from typing import Any

from ..errors import SandboxUnavailableError

__all__ = ["docker_client"]


def docker_client(timeout: float = 60.0) -> Any:
    """A ``docker.DockerClient`` from the environment, or ``SandboxUnavailableError`` that says
    how to fix it."""
    try:
        import docker
    except ImportError as e:
        raise SandboxUnavailableError(
            "the Docker SDK is not installed: pip install 'agentgym[docker]'"
        ) from e
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as e:
        hint = (
            "add your user to the docker group (sudo usermod -aG docker $USER, then log in again)"
            if "ermission denied" in str(e)
            else "start the engine (sudo dockerd &, or systemctl start docker)"
        )
        raise SandboxUnavailableError(
            f"cannot reach the Docker engine ({e}); {hint}; `agentgym sandbox doctor` checks it"
        ) from e
    return client
