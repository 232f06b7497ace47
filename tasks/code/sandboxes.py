"""One warm sandbox pool per event loop, shared by every code env on that loop.

Sandboxes speak over sockets bound to the loop that opened them, so envs driven by the rollout
engine (one loop) share a pool, while an env used through the sync API (its own loop) gets its
own. The pool closes when the last env using it releases it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentgym.sandbox import SandboxPool

__all__ = ["acquire_pool", "release_pool"]

_pools: dict[asyncio.AbstractEventLoop, list[Any]] = {}  # loop -> [pool, users]


async def acquire_pool(size: int, config: Any = None) -> Any:
    """The running loop's pool (started on first use), with one more user counted."""
    loop = asyncio.get_running_loop()
    entry = _pools.get(loop)
    if entry is None:
        pool = SandboxPool(size=size, config=config)
        await pool.start()  # raises SandboxUnavailableError at once when there is no engine
        entry = _pools.setdefault(loop, [pool, 0])
        if entry[0] is not pool:  # another env on this loop started one meanwhile
            await pool.close()
    entry[1] += 1
    return entry[0]


async def release_pool() -> None:
    """Count one user less on the running loop's pool; close it with the last one."""
    loop = asyncio.get_running_loop()
    entry = _pools.get(loop)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _pools[loop]
        await entry[0].close()
