"""Refetches from Marathon, bounded however many events ask for them.

- :class:`AppRefetcher`: one ``GET /v2/apps/{id}`` per app however many events
  ask for it while it waits (a short debounce gathers a burst), at most
  ``max_in_flight`` requests at once, at most ``max_queued`` apps waiting; past
  that, one full sync replaces them all.
- :class:`SingleFlight`: at most one full sync in flight and at most one
  queued behind it, however many callers ask.

No I/O here: the fetch itself is a callable the engine passes in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("servicerouter.refetch")

Spawn = Callable[[Coroutine[Any, Any, Any]], object]  # runs it beside the caller

REFETCH_DEBOUNCE = 0.05
"""Seconds a refetch waits before its request, so a burst of events for one app
(1,000 TASK_RUNNING of a new app) becomes one request."""


class SingleFlight:
    """Run ``job`` on request: never two at once, and at most one more queued."""

    def __init__(self, job: Callable[[], Awaitable[Any]], spawn: Spawn) -> None:
        self._job = job
        self._spawn = spawn
        self.running = False
        self.queued = False
        self.runs = 0

    def request(self) -> None:
        if self.running:
            self.queued = True
            return
        self.running = True
        self._spawn(self._loop())

    async def _loop(self) -> None:
        try:
            while True:
                self.queued = False
                self.runs += 1
                await self._job()
                if not self.queued:
                    return
        finally:
            self.running = False


class AppRefetcher:
    """De-duplicated, bounded single-app refetches."""

    def __init__(
        self,
        fetch: Callable[[str, float | None], Awaitable[Any]],
        spawn: Spawn,
        on_overflow: Callable[[], None],
        *,
        max_in_flight: int = 8,
        max_queued: int = 100,
        debounce: float = REFETCH_DEBOUNCE,
    ) -> None:
        if max_in_flight < 1 or max_queued < 1:
            raise ValueError("max_in_flight and max_queued must be >= 1")
        self._fetch = fetch
        self._spawn = spawn
        self._overflow = on_overflow
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.debounce = debounce
        self._queue: dict[str, float | None] = {}  # app id -> earliest event time, in order
        self._running: dict[str, bool] = {}  # app id -> request sent (False: still gathering)
        self.requested = 0
        self.fetched = 0

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._running)

    def request(self, app_id: str, event_time: float | None = None) -> None:
        """Refetch ``app_id`` soon; a no-op if that refetch is already waiting."""
        self.requested += 1
        if app_id in self._queue or self._running.get(app_id) is False:
            return  # the waiting refetch covers this event too
        if len(self._queue) >= self.max_queued:
            log.warning("more than %d apps wait for a refetch; one full sync instead",
                        self.max_queued)
            self._queue.clear()
            self._overflow()
            return
        self._queue[app_id] = event_time
        self._start()

    def _start(self) -> None:
        while len(self._running) < self.max_in_flight:
            # An app whose request is in flight waits for it: one request per app at a time.
            app_id = next((a for a in self._queue if a not in self._running), None)
            if app_id is None:
                return
            event_time = self._queue.pop(app_id)
            self._running[app_id] = False
            self._spawn(self._run(app_id, event_time))

    async def _run(self, app_id: str, event_time: float | None) -> None:
        try:
            if self.debounce > 0:
                await asyncio.sleep(self.debounce)
            self._running[app_id] = True
            self.fetched += 1
            await self._fetch(app_id, event_time)
        finally:
            self._running.pop(app_id, None)
            self._start()
