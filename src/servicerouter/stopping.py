"""Start-up steps that a stop request must not wait out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def unless_stopped(step: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Run ``step`` until it ends or ``stop`` is set; then cancel it and return None.

    The first full sync and the start-up check of a config left on disk can take a
    --marathon-timeout (30 s) per attempt or haproxy -c's 60 s: a SIGTERM meanwhile
    stopped the daemon only after them, while a supervisor waited (systemd: 90 s)."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()
