"""The environment registry: a dict of :class:`EnvSpec` and four functions.

Ids are versioned, ``agentgym/Name-vN`` (any ``namespace/Name-vN`` for third parties); the
version is part of the contract and is bumped whenever reward or termination semantics change.
Entry points are lazy ``"module:attr"`` strings, imported only by :func:`make` (and by
:func:`env_class` for listings), so registering costs nothing.

Third-party packages register through the ``agentgym.envs`` entry-point group: each entry point
names a function that calls :func:`register`. They are loaded on first use of the registry, and a
plugin that fails to load is logged, not fatal.

Every id is mirrored into gymnasium's registry, so ``gymnasium.make("agentgym/Calculator-v0")``
works once ``agentgym`` is imported.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium

from agentgym.errors import EntryPointError, RegistryError, UnknownEnvError
from agentgym.rewards.config import attach_rewards
from agentgym.world_model.simulator import simulate_tools

__all__ = ["EnvSpec", "env_class", "list_envs", "make", "register", "registry", "spec"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "agentgym.envs"
_ID = re.compile(r"^(?:(?P<ns>[\w.-]+)/)?(?P<name>[\w.:-]+?)-v(?P<version>\d+)$")


@dataclass(frozen=True)
class EnvSpec:
    """How to build one registered environment.

    Attributes:
        id: the versioned id, e.g. ``agentgym/Calculator-v0``.
        entry_point: ``"module:attr"`` (or a callable) that returns the env.
        kwargs: defaults passed to the entry point; ``make(**kwargs)`` overrides them.
    """

    id: str
    entry_point: str | Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The id without namespace and version (``Calculator``)."""
        return _ID.match(self.id).group("name")  # type: ignore[union-attr]

    @property
    def version(self) -> int:
        """The id's version number."""
        return int(_ID.match(self.id).group("version"))  # type: ignore[union-attr]


registry: dict[str, EnvSpec] = {}
"""Every registered environment, by id."""

_plugins_loaded = False


def register(id: str, entry_point: str | Callable[..., Any], **kwargs: Any) -> EnvSpec:
    """Register an environment under a versioned id.

    Args:
        id: ``namespace/Name-vN``.
        entry_point: ``"module:Class"`` (imported lazily) or a callable returning the env.
        **kwargs: default constructor arguments.

    Raises:
        RegistryError: the id is not versioned, or is taken by a different entry point.
    """
    if not _ID.match(id):
        raise RegistryError(f"env id {id!r} must look like 'namespace/Name-vN'")
    new = EnvSpec(id=id, entry_point=entry_point, kwargs=dict(kwargs))
    old = registry.get(id)
    if old is not None and old.entry_point != entry_point:
        raise RegistryError(f"{id!r} is already registered to {old.entry_point!r}; "
                            "bump the version instead of replacing an id")
    if old is not None:
        return old
    registry[id] = new
    gymnasium.register(id=id, entry_point=functools.partial(_make_for_gymnasium, id),
                       disable_env_checker=False)
    return new


def _make_for_gymnasium(env_id: str, **kwargs: Any) -> Any:
    return make(env_id, **kwargs)


def load_plugins() -> None:
    """Run every ``agentgym.envs`` entry point once (built-in tasks included)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()()
        except Exception as exc:  # one broken plugin must not break the registry
            logger.warning("agentgym.envs plugin %r (%s) failed to load: %s: %s",
                           ep.name, ep.value, type(exc).__name__, exc)


def spec(id: str) -> EnvSpec:
    """The spec registered under ``id``.

    Raises:
        UnknownEnvError: nothing is registered under ``id``; the error names the closest ids.
    """
    load_plugins()
    try:
        return registry[id]
    except KeyError:
        raise UnknownEnvError(id, _suggest(id)) from None


def _suggest(id: str) -> list[str]:
    """Registered ids close to ``id``: other versions of the same name first, then ids whose
    name looks alike (compared without namespace and version, case-insensitively)."""
    match = _ID.match(id)
    wanted = (match.group("name") if match else id.rsplit("/", 1)[-1]).lower()
    same_name = [s.id for s in registry.values() if s.name.lower() == wanted]
    by_name: dict[str, list[str]] = {}
    for env_spec in registry.values():
        by_name.setdefault(env_spec.name.lower(), []).append(env_spec.id)
    close = difflib.get_close_matches(wanted, list(by_name), n=3, cutoff=0.6)
    ordered = same_name + [i for name in close for i in sorted(by_name[name])]
    return list(dict.fromkeys(ordered))[:5]


def list_envs() -> list[str]:
    """Every registered id, sorted."""
    load_plugins()
    return sorted(registry)


def _load(entry_point: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(entry_point):
        return entry_point
    module_name, _, attr = entry_point.partition(":")
    if not attr:
        raise EntryPointError(f"entry point {entry_point!r} must look like 'module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EntryPointError(f"cannot import {module_name!r} for {entry_point!r}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise EntryPointError(f"module {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise EntryPointError(f"entry point {entry_point!r} is not callable")
    return target


def env_class(id: str) -> Callable[..., Any]:
    """The class (or factory) behind ``id``, imported but not instantiated."""
    return _load(spec(id).entry_point)


def make(id: str, **kwargs: Any) -> Any:
    """Build the environment registered under ``id``.

    Args:
        id: a registered id, e.g. ``agentgym/Calculator-v0``.
        **kwargs: constructor arguments; they override the registered defaults. ``rewards``
            (a list of reward terms, see :mod:`agentgym.rewards.config`) is not passed on: it
            adds, reweights or replaces terms of the env's rubric. ``simulate_tools`` (an
            endpoint, see :mod:`agentgym.world_model.simulator`) is not passed on either: a
            model predicts the tool results instead of running the tools.

    Raises:
        UnknownEnvError: no such id (the message suggests close ones).
        EntryPointError: the entry point does not import.
        ValueError: an invalid ``rewards`` list.
    """
    env_spec = spec(id)
    factory = _load(env_spec.entry_point)
    arguments = {**env_spec.kwargs, **kwargs}
    rewards = arguments.pop("rewards", None)
    simulator = arguments.pop("simulate_tools", None)
    if _accepts_env_id(factory):
        arguments.setdefault("env_id", id)
    env = factory(**arguments)
    if simulator is not None:
        env = simulate_tools(env, simulator)
    return env if rewards is None else attach_rewards(env, rewards)


def _accepts_env_id(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "env_id" or p.kind is p.VAR_KEYWORD for p in parameters)
