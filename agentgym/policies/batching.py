"""Shutdown of the in-process engines' batching loop (the embedded engine and colocated vLLM).

Both engines queue requests (each with an ``asyncio.Future``) and drain the queue from one
background task; closing one must stop that task and fail every queued request, so that no caller
waits forever on a closed engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import MutableSequence
from typing import Any

from agentgym.errors import PolicyError

__all__ = ["stop_batching"]


async def stop_batching(task: asyncio.Task[Any] | None, pending: MutableSequence[Any],
                        reason: str) -> None:
    """Cancel the batching ``task`` (and wait for it), then fail each queued request's future
    with ``PolicyError(reason)`` and empty ``pending``. Idempotent."""
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await task
    for request in pending:
        if not request.future.done():
            request.future.set_exception(PolicyError(reason))
    pending.clear()
