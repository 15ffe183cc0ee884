"""Bounded refetches: per-app de-duplication, in-flight cap, single-flight full syncs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from servicerouter.refetch import AppRefetcher, SingleFlight


class Spawner:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def __call__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def drain(self) -> None:
        """Wait until every spawned task (and those they spawn) is done."""
        for _ in range(1000):
            pending = [t for t in self.tasks if not t.done()]
            if not pending:
                return
            await asyncio.gather(*pending)
        raise AssertionError("tasks kept spawning")


class Fetches:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.in_flight = 0
        self.peak = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, app_id: str, event_time: float | None) -> None:
        self.calls.append(app_id)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1


def refetcher(**kw: Any) -> tuple[AppRefetcher, Fetches, Spawner, list[str]]:
    fetches, spawn, overflows = Fetches(), Spawner(), []
    kw.setdefault("debounce", 0)
    r = AppRefetcher(fetches, spawn, lambda: overflows.append("full"), **kw)
    return r, fetches, spawn, overflows


async def test_a_thousand_events_for_one_app_make_one_refetch() -> None:
    r, fetches, spawn, overflows = refetcher()
    for _ in range(1000):
        r.request("/new", 1.0)
    await spawn.drain()
    assert fetches.calls == ["/new"]
    assert r.requested == 1000 and r.fetched == 1 and overflows == []


async def test_the_debounce_gathers_a_burst_spread_over_time() -> None:
    r, fetches, spawn, _ = refetcher(debounce=0.05)
    r.request("/new")
    for _ in range(10):
        await asyncio.sleep(0)  # the refetch task is running its debounce
        r.request("/new")
    await spawn.drain()
    assert fetches.calls == ["/new"]


async def test_an_event_during_the_request_gets_exactly_one_more_refetch() -> None:
    r, fetches, spawn, _ = refetcher()
    fetches.gate.clear()
    r.request("/a")
    for _ in range(50):
        await asyncio.sleep(0)
    assert fetches.calls == ["/a"]  # in flight
    for _ in range(500):
        r.request("/a")  # may be newer than what the request will see
    fetches.gate.set()
    await spawn.drain()
    assert fetches.calls == ["/a", "/a"]


async def test_requests_in_flight_are_bounded_and_every_app_is_fetched() -> None:
    r, fetches, spawn, _ = refetcher(max_in_flight=3)
    fetches.gate.clear()
    apps = [f"/app{i}" for i in range(20)]
    for app in apps:
        r.request(app)
    for _ in range(50):
        await asyncio.sleep(0)
    assert fetches.in_flight == 3
    fetches.gate.set()
    await spawn.drain()
    assert sorted(fetches.calls) == sorted(apps) and fetches.peak == 3


async def test_too_many_apps_waiting_become_one_full_sync() -> None:
    r, fetches, spawn, overflows = refetcher(max_in_flight=1, max_queued=5)
    fetches.gate.clear()
    for i in range(10):
        r.request(f"/app{i}")
    assert overflows == ["full"]
    fetches.gate.set()
    await spawn.drain()
    assert len(fetches.calls) <= 6


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AppRefetcher(Fetches(), Spawner(), lambda: None, max_in_flight=0)


async def test_full_syncs_one_in_flight_and_one_queued() -> None:
    gate, runs = asyncio.Event(), []

    async def sync() -> bool:
        runs.append(1)
        await gate.wait()
        return True

    spawn = Spawner()
    single = SingleFlight(sync, spawn)
    for _ in range(1000):
        single.request()  # before it starts: all covered by the first run
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(runs) == 1 and single.running and not single.queued
    for _ in range(1000):
        single.request()  # while it runs: one more run, queued
    assert single.queued
    assert len(spawn.tasks) == 1
    gate.set()
    await spawn.drain()
    assert len(runs) == 2 and not single.running and not single.queued
    single.request()
    await spawn.drain()
    assert len(runs) == 3
