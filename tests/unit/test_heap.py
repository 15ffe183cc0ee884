"""quiet_gc: the collector is paused while a full sync runs and its result is frozen."""

from __future__ import annotations

import asyncio
import gc
import weakref

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


class _Body:
    """Stands for a response body: weakly referenceable, so we can see it freed."""


async def test_cyclic_garbage_made_during_a_sync_is_freed_not_frozen() -> None:
    # An httpx response and its stream refer to each other: only the collector
    # frees them. Frozen with the sync's survivors, they would never be freed, and
    # every full sync would leak the size of the /v2/apps body.
    bodies: list[weakref.ref[_Body]] = []

    @quiet_gc
    async def sync() -> None:
        body = _Body()
        cycle: dict[str, object] = {"body": body}
        cycle["self"] = cycle
        bodies.append(weakref.ref(body))

    gc.unfreeze()
    for _ in range(3):
        await sync()
    assert [ref() for ref in bodies] == [None, None, None]
    gc.unfreeze()
