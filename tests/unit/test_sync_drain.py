"""--drain-seconds through the event handler: departing tasks drain, then go."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from servicerouter.layout import Settings
from servicerouter.marathon.events import DEFAULT_EVENT_TYPES, MarathonEvent
from servicerouter.metrics import Metrics
from servicerouter.model import App, EndpointState, Service, Task
from servicerouter.state import ClusterState
from servicerouter.sync import EventHandler


@dataclass
class Config:
    drain_seconds: float
    max_event_bytes: int = 1024 * 1024
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES


@dataclass
class FakeEngine:
    """The parts of Engine the handler uses; no I/O."""

    config: Config
    state: ClusterState = field(default_factory=lambda: ClusterState(Settings()))
    metrics: Metrics = field(default_factory=Metrics)
    dirty: set[str] = field(default_factory=set)
    spawned: list[Any] = field(default_factory=list)
    refetches: list[str] = field(default_factory=list)
    full_syncs: int = 0

    def request_refetch(self, app_id: str, event_time: float | None = None) -> None:
        self.refetches.append(app_id)

    def request_full_sync(self) -> None:
        self.full_syncs += 1

    def mark(self, dirty: set[str], event_time: float | None = None) -> None:
        self.dirty |= dirty

    def spawn(self, coro: Any) -> None:
        coro.close()
        self.spawned.append(coro)

    @staticmethod
    def resolve(host: str) -> str:
        return host

    async def refetch_app(self, app_id: str, event_time: float | None = None) -> None:
        pass

    async def full_sync(self) -> bool:
        return True


def status(task: str, state: str) -> MarathonEvent:
    return MarathonEvent("status_update_event", {
        "appId": "/web", "taskId": task, "taskStatus": state, "host": "127.0.0.1",
        "ports": [31001], "ipAddresses": []}, time.monotonic())


def handler(drain: float) -> tuple[FakeEngine, EventHandler]:
    engine = FakeEngine(Config(drain))
    engine.state.set_app(App("/web", services=(Service("/web", 0, 10000),)))
    return engine, EventHandler(engine)  # type: ignore[arg-type]


def states(engine: FakeEngine) -> list[EndpointState]:
    return [e.state for e in engine.state.desired["web_10000"].endpoints]


def test_without_drain_seconds_killing_drains_and_killed_frees_the_slot() -> None:
    engine, h = handler(0)
    h.handle(status("t1", "TASK_RUNNING"))
    h.handle(status("t1", "TASK_KILLING"))
    assert states(engine) == [EndpointState.DRAIN]
    h.handle(status("t1", "TASK_KILLED"))
    assert states(engine) == []


def test_drain_seconds_keep_a_killed_task_draining_until_the_deadline() -> None:
    engine, h = handler(60)
    h.handle(status("t1", "TASK_RUNNING"))
    h.handle(status("t1", "TASK_KILLING"))
    h.handle(status("t1", "TASK_KILLED"))
    assert states(engine) == [EndpointState.DRAIN]  # still draining
    h.expire_drains()
    assert states(engine) == [EndpointState.DRAIN]  # the deadline is a minute away
    for task_id, (task, _) in list(h._draining.items()):
        h._draining[task_id] = (task, time.monotonic() - 1)
    h.expire_drains()
    assert states(engine) == []


def test_drain_seconds_apply_to_a_task_that_vanishes_without_killing() -> None:
    engine, h = handler(60)
    h.handle(status("t1", "TASK_RUNNING"))
    h.handle(status("t1", "TASK_LOST"))
    assert states(engine) == [EndpointState.DRAIN]



def expire_all(h: EventHandler) -> None:
    """Every drain deadline reached."""
    for task_id, (task, _) in list(h._draining.items()):
        h._draining[task_id] = (task, time.monotonic() - 1)
    h.expire_drains()


def test_a_task_running_again_after_it_began_to_leave_stays_routed() -> None:
    """A task unreachable for a while (an agent partitioned, then back) or killed and
    then reported running again drains meanwhile; once it runs again, its drain deadline
    must not take it out of rotation (until the next full sync) while it serves."""
    for leaving in ("TASK_UNREACHABLE", "TASK_KILLING"):
        engine, h = handler(60)
        h.handle(status("t1", "TASK_RUNNING"))
        h.handle(status("t1", leaving))
        assert states(engine) == [EndpointState.DRAIN]
        h.handle(status("t1", "TASK_RUNNING"))
        assert states(engine) == [EndpointState.READY]
        expire_all(h)
        assert states(engine) == [EndpointState.READY], leaving
    # The same when a full sync, not an event, finds it running again.
    engine, h = handler(60)
    h.handle(status("t1", "TASK_RUNNING"))
    h.handle(status("t1", "TASK_UNREACHABLE"))
    engine.state.set_app(App("/web", services=(Service("/web", 0, 10000),), tasks=(
        Task("t1", "/web", "127.0.0.1", (31001,), "TASK_RUNNING"),)))
    h.after_full_sync()
    expire_all(h)
    assert states(engine) == [EndpointState.READY]


def test_status_update_for_an_unknown_app_refetches_it() -> None:
    engine, h = handler(0)
    h.handle(MarathonEvent("status_update_event", {
        "appId": "/new", "taskId": "n1", "taskStatus": "TASK_RUNNING", "host": "127.0.0.1",
        "ports": [1]}, time.monotonic()))
    assert engine.refetches == ["/new"]


def test_malformed_event_is_ignored_not_fatal() -> None:
    engine, h = handler(0)
    h.handle(MarathonEvent("status_update_event", {"taskId": "x"}, time.monotonic()))
    assert engine.dirty == set()
    assert engine.full_syncs == 1  # it names no app: only a full sync can repair
