"""quiet_gc: the collector is paused while a full sync runs and its result is frozen."""

from __future__ import annotations

import asyncio
import gc

import pytest

from servicerouter.heap import quiet_gc


async def test_collector_paused_inside_resumed_after_and_survivors_frozen() -> None:
    seen: list[bool] = []

    @quiet_gc
    async def sync(delay: float) -> list[object]:
        seen.append(gc.isenabled())
        await asyncio.sleep(delay)
        seen.append(gc.isenabled())
        return [object() for _ in range(10)]

    gc.unfreeze()
    assert gc.isenabled()
    kept, _ = await asyncio.gather(sync(0.02), sync(0.01))  # overlapping calls
    assert seen == [False, False, False, False]
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0 and len(kept) == 10
    gc.unfreeze()


async def test_an_error_inside_still_resumes_the_collector() -> None:
    @quiet_gc
    async def broken() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await broken()
    assert gc.isenabled()
    gc.unfreeze()
