"""The sandbox image: ``build_image()`` makes it, ``default_image()`` names it.

Two recipes produce the same image (Debian bookworm, full ``python3`` and ``python3-numpy``
(HumanEval solutions may import numpy, as where the official harness runs), a uid-1000 user, no
setuid/setgid binaries):

* ``docker build`` from ``sandbox/Dockerfile`` when the base image is present or a registry is
  reachable;
* otherwise (air-gapped machines that still reach a Debian mirror): ``debootstrap`` a minbase
  rootfs with ``python3`` from the mirror apt already uses, strip it, and ``docker import`` it.

The tag is fixed by a hash of the recipe, so a build is skipped when that tag exists and a
recipe change produces a new tag.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..errors import SandboxUnavailableError
from .client import docker_client

__all__ = ["IMAGE_REPO", "build_image", "debian_mirror", "default_image", "image_exists"]

logger = logging.getLogger(__name__)

IMAGE_REPO = "agentgym-sandbox"
BASE_IMAGE = "debian:bookworm-slim"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-numpy")
REGISTRY = ("registry-1.docker.io", 443)
DEBOOTSTRAP_CACHE = Path("/var/cache/agentgym/debootstrap")
_RECIPE_VERSION = 1  # bump when _finish_rootfs changes
_IMPORT_CHANGES = (
    "ENV PATH=/usr/local/bin:/usr/bin:/bin",
    "ENV LANG=C.UTF-8",
    "WORKDIR /work",
    "USER 1000:1000",
)


@functools.cache
def recipe_hash() -> str:
    """12 hex digits over everything that defines the image."""
    dockerfile = resources.files(__package__).joinpath("Dockerfile").read_text(encoding="utf-8")
    recipe = {
        "dockerfile": dockerfile,
        "suite": SUITE,
        "packages": PACKAGES,
        "changes": _IMPORT_CHANGES,
        "version": _RECIPE_VERSION,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def default_image() -> str:
    """The tag ``build_image()`` produces and sandboxes run by default."""
    return f"{IMAGE_REPO}:{recipe_hash()}"


def image_exists(client: Any, tag: str) -> bool:
    """Whether the engine has ``tag``."""
    import docker

    try:
        client.api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def debian_mirror() -> str:
    """The Debian archive URL this machine's apt uses (deb822 or one-line sources)."""
    apt = Path("/etc/apt")
    files = sorted(apt.glob("sources.list.d/*.sources"))
    files += [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        uris = re.findall(r"^\s*URIs:\s*(\S+)", text, re.M)
        uris += re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def _registry_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(REGISTRY, timeout=timeout):
            return True
    except OSError:
        return False


def build_image(
    *,
    force: bool = False,
    method: Literal["auto", "dockerfile", "debootstrap"] = "auto",
    mirror: str | None = None,
    tag: str | None = None,
) -> str:
    """Build the sandbox image unless it already exists; return its tag.

    Args:
        force: rebuild even if the tag exists.
        method: ``"dockerfile"``, ``"debootstrap"``, or ``"auto"`` (Dockerfile when the base
            image is local or a registry answers, else debootstrap).
        mirror: Debian mirror for debootstrap (default: the one apt uses).
        tag: image tag (default ``default_image()``).

    Raises:
        SandboxUnavailableError: no engine, or the build cannot run here (says why).
    """
    client = docker_client()
    tag = tag or default_image()
    if not force and image_exists(client, tag):
        logger.info("sandbox image %s already exists", tag)
        return tag
    if method == "auto":
        method = (
            "dockerfile"
            if image_exists(client, BASE_IMAGE) or _registry_reachable()
            else "debootstrap"
        )
    logger.info("building sandbox image %s with %s", tag, method)
    if method == "dockerfile":
        _build_dockerfile(client, tag)
    else:
        _build_debootstrap(client, tag, mirror or debian_mirror())
    logger.info("built sandbox image %s", tag)
    return tag


def _build_dockerfile(client: Any, tag: str) -> None:
    import docker

    context = str(resources.files(__package__))
    try:
        client.images.build(path=context, dockerfile="Dockerfile", tag=tag, rm=True,
                            labels={"agentgym.recipe": recipe_hash()})
    except docker.errors.DockerException as e:
        raise SandboxUnavailableError(f"docker build of the sandbox image failed: {e}") from e


def _build_debootstrap(client: Any, tag: str, mirror: str) -> None:
    """debootstrap -> strip -> tar -> docker import (needs root and the debootstrap package)."""
    if shutil.which("debootstrap") is None:
        raise SandboxUnavailableError(
            "no registry is reachable and debootstrap is missing: apt-get install debootstrap"
        )
    if os.geteuid() != 0:
        raise SandboxUnavailableError(
            "building the image offline runs debootstrap, which needs root: "
            "sudo agentgym sandbox build"
        )
    DEBOOTSTRAP_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agentgym-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = [
            "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            f"--cache-dir={DEBOOTSTRAP_CACHE}", SUITE, str(rootfs), mirror,
        ]
        logger.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise SandboxUnavailableError(f"debootstrap from {mirror} failed:\n{tail}")
        _finish_rootfs(rootfs)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), "."],
            check=True,
        )
        changes = [*_IMPORT_CHANGES, f"LABEL agentgym.recipe={recipe_hash()}"]
        repo, _, version = tag.rpartition(":")
        client.api.import_image_from_file(str(tarball), repository=repo, tag=version,
                                          changes=changes)
    if not image_exists(client, tag):
        raise SandboxUnavailableError(f"docker import did not produce {tag}")


def _finish_rootfs(rootfs: Path) -> None:
    """Strip caches and docs, add the sandbox user, remove every setuid/setgid bit."""
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                "usr/share/info"):
        shutil.rmtree(rootfs / sub, ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    with open(rootfs / "etc/passwd", "a") as f:
        f.write("sandbox:x:1000:1000:agentgym sandbox:/work:/bin/sh\n")
    with open(rootfs / "etc/group", "a") as f:
        f.write("sandbox:x:1000:\n")
    work = rootfs / "work"
    work.mkdir(exist_ok=True)
    os.chown(work, 1000, 1000)
    for dirpath, _dirs, files in os.walk(rootfs):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not os.path.islink(p) and st.st_mode & 0o6000:
                os.chmod(p, st.st_mode & ~0o6000 & 0o7777)
