"""Several policy servers behind one client: least-loaded, sticky per episode, with failover.

:class:`ReplicaRouter` implements the :class:`~agentgym.policy.Policy` protocol over N
replicas (each an :class:`~agentgym.policies.openai_client.OpenAIPolicy` pointed at one
OpenAI-compatible server serving the same weights):

* **least-loaded**: a new episode goes to the live replica with the fewest requests in flight
  (ties: the lowest index, so a run with one episode at a time is deterministic);
* **sticky**: every later turn of that episode goes to the same replica, so the server's prefix
  cache holds the chat so far. The episode is the asyncio task that calls :meth:`generate`
  (the rollout engine plays each episode in its own task); the choice lives in a
  :class:`contextvars.ContextVar`, so nothing has to be passed along;
* **failover**: a replica that cannot be reached (:class:`~agentgym.errors.PolicyConnectionError`)
  or answers 5xx after its own retries is taken out, and the turn is sent to another live
  replica at once. The caller's turn deadline (``asyncio.timeout`` around ``generate``) bounds
  the whole thing; a 4xx (the request's fault) is raised without failover. When no replica is
  left the turn fails with :class:`~agentgym.errors.PolicyConnectionError`: an infra error on the
  trajectory, never a hang.

A removed replica stays out for ``revive_after_s`` and is then tried again by the next new
episode (a restarted server comes back into rotation).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agentgym.errors import PolicyConnectionError, PolicyError, PolicyHTTPError
from agentgym.policies.openai_client import OpenAIPolicy
from agentgym.policy import Completion, SamplingParams

__all__ = ["ReplicaRouter"]

logger = logging.getLogger(__name__)

# The replica of the episode running in this task (one router instance: keyed by its id).
_sticky: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "agentgym_replica", default=None)


def _replica_failed(exc: PolicyError) -> bool:
    """Whether ``exc`` says the replica is unusable (not the request's fault)."""
    if isinstance(exc, PolicyConnectionError):
        return True
    return isinstance(exc, PolicyHTTPError) and (exc.status_code or 0) >= 500


class ReplicaRouter:
    """A policy over several replicas of one model.

    Args:
        replicas: one client per server, all serving the same model.
        revive_after_s: how long a failed replica stays out before new episodes try it again.

    Attributes:
        in_flight: requests in flight per replica.
        served: requests answered per replica.
        dead_since: replica index -> monotonic time it was taken out.
    """

    def __init__(self, replicas: Sequence[OpenAIPolicy], *, revive_after_s: float = 30.0):
        if not replicas:
            raise ValueError("ReplicaRouter needs at least one replica")
        self.replicas = list(replicas)
        self.revive_after_s = revive_after_s
        self.in_flight = [0] * len(self.replicas)
        self.served = [0] * len(self.replicas)
        self.dead_since: dict[int, float] = {}

    @classmethod
    def from_urls(cls, base_urls: Sequence[str], model: str, *, revive_after_s: float = 30.0,
                  **client_kwargs: Any) -> ReplicaRouter:
        """One :class:`OpenAIPolicy` per URL (``client_kwargs`` go to each)."""
        client_kwargs.setdefault("max_retries", 1)  # a dead replica: fail over, do not back off
        return cls([OpenAIPolicy(url, model, **client_kwargs) for url in base_urls],
                   revive_after_s=revive_after_s)

    # --- the Policy protocol ---------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model name requested from every replica."""
        return self.replicas[0].model

    @property
    def weight_version(self) -> str | int | None:
        """The weight version recorded on completions."""
        return self.replicas[0].weight_version

    @property
    def accepts_prefix_ids(self) -> bool:
        """Token continuation, when every replica offers it."""
        return all(r.accepts_prefix_ids for r in self.replicas)

    def set_model(self, model: str, weight_version: str | int | None = None) -> None:
        """Switch every replica to ``model`` (after a weight sync to all of them)."""
        for replica in self.replicas:
            replica.set_model(model, weight_version)

    async def generate(self, messages: Sequence[Mapping[str, Any]],
                       tools: Sequence[Mapping[str, Any]] | None,
                       sampling: SamplingParams, **kwargs: Any) -> list[Completion]:
        """Sample from this episode's replica, failing over to others if it dies.

        Raises:
            PolicyConnectionError: no live replica is left.
            PolicyHTTPError: a replica answered 4xx (the request's fault).
        """
        while True:
            index = self._episode_replica()
            self.in_flight[index] += 1
            try:
                completions = await self.replicas[index].generate(messages, tools, sampling,
                                                                  **kwargs)
            except PolicyError as exc:
                if not _replica_failed(exc):
                    raise
                self._take_out(index, exc)
                continue
            finally:
                self.in_flight[index] -= 1
            self.served[index] += 1
            return completions

    async def aclose(self) -> None:
        """Close every replica's connection pool."""
        for replica in self.replicas:
            await replica.aclose()

    # --- routing ---------------------------------------------------------------------------

    def live(self) -> list[int]:
        """Indices of the replicas in rotation (revived ones included)."""
        now = time.monotonic()
        for index, since in list(self.dead_since.items()):
            if now - since >= self.revive_after_s:
                del self.dead_since[index]
        return [i for i in range(len(self.replicas)) if i not in self.dead_since]

    def _episode_replica(self) -> int:
        """This episode's replica: the sticky one while it lives, else the least loaded."""
        sticky = _sticky.get()
        if sticky is not None and sticky[0] == id(self) and sticky[1] not in self.dead_since:
            return sticky[1]
        live = self.live()
        if not live:
            raise PolicyConnectionError(
                f"every policy replica is down ({', '.join(r.base_url for r in self.replicas)})")
        index = min(live, key=lambda i: (self.in_flight[i], i))
        _sticky.set((id(self), index))
        return index

    def _take_out(self, index: int, exc: PolicyError) -> None:
        if index not in self.dead_since:
            logger.warning("policy replica %s taken out: %s", self.replicas[index].base_url, exc)
            self.dead_since[index] = time.monotonic()
