"""stop_batching: closing an in-process engine cancels its loop and fails every queued request."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace

import pytest

from agentgym.errors import PolicyError
from agentgym.policies.batching import stop_batching


async def test_cancels_the_loop_and_fails_queued_requests() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(asyncio.sleep(3600))
    done = loop.create_future()
    done.set_result("kept")
    pending = deque([SimpleNamespace(future=loop.create_future()), SimpleNamespace(future=done)])
    waiting = pending[0].future
    await stop_batching(task, pending, "engine closed")
    assert task.cancelled()
    assert not pending
    with pytest.raises(PolicyError, match="engine closed"):
        waiting.result()
    assert done.result() == "kept"
    await stop_batching(task, pending, "engine closed")  # idempotent
