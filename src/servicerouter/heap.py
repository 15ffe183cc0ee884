"""Keeping Python's cyclic garbage collector out of the full sync's way.

A full sync at 10,000 apps allocates millions of objects (decoded JSON, parsed
apps and tasks, the new desired state). Each 700 allocations start a young
collection, and the survivors pile up until a full collection scans the whole
heap: 0.55-0.75 s of a 1.7-2.2 s sync went to the collector (issue #11). The
model is frozen dataclasses and tuples without reference cycles, so reference
counting frees it; the collector finds nothing there.

:func:`quiet_gc` pauses the collector while a full sync runs. At the end it
collects once, then moves every object that survived into the permanent
generation (:func:`gc.freeze`): later collections, which run during event
handling, no longer scan the ~1 million long-lived objects of the cluster state,
so they stay short. An object frozen there is still freed by reference counting
when the state drops it; only a reference cycle among frozen objects would
outlive its use, and the state holds none.

The collection before the freeze is what keeps that true: whatever cyclic garbage
the sync made (an HTTP response and its stream, futures, tracebacks) would
otherwise be frozen too and never freed, a leak of every full sync (measured: the
size of the ``/v2/apps`` body, ~30 MB at 10,000 apps, every ``--resync-interval``).
Everything older is already frozen, so it scans only what was made since the last
sync: ~60-100 ms at 10,000 apps, once per full sync.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_paused = 0  # how many quiet_gc calls are running (full syncs never overlap; refetches may)


def quiet_gc(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run the coroutine function ``fn`` with the cyclic collector paused, then freeze."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        global _paused
        if _paused == 0:
            gc.disable()
        _paused += 1
        try:
            return await fn(*args, **kwargs)
        finally:
            _paused -= 1
            if _paused == 0:
                gc.collect()  # the frozen generation is not scanned (see above)
                gc.freeze()
                gc.enable()

    return wrapper
