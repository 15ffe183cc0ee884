"""EventHandler against storms, bad events, oversized events and out-of-order states."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from servicerouter.marathon import eventdata as ev
from servicerouter.marathon.events import MarathonEvent
from servicerouter.metrics import Metrics
from servicerouter.model import App, Health, Service, Task
from servicerouter.sync import TERMINATED_MEMORY, EventHandler

from .test_sync_drain import FakeEngine, handler


def status(task: str, state: str, app: str = "/web", **over: Any) -> MarathonEvent:
    data = {"appId": app, "taskId": task, "taskStatus": state, "host": "127.0.0.1",
            "ports": [31001], "ipAddresses": []}
    data.update(over)
    return MarathonEvent("status_update_event", data, time.monotonic())


def tasks(engine: FakeEngine, app: str = "/web") -> list[tuple[str, tuple[int, ...]]]:
    return [(t.id, t.ports) for t in engine.state.apps[app].tasks]


def with_api(engine: FakeEngine) -> EventHandler:
    engine.state.set_app(App("/api", services=(Service("/api", 0, 10001),)))
    return EventHandler(engine)  # type: ignore[arg-type]


def test_a_storm_for_an_unknown_app_asks_for_its_refetch_each_time() -> None:
    # The engine's AppRefetcher turns these 1,000 asks into one request
    # (tests/unit/test_refetch.py); the handler never fetches by itself.
    engine, h = handler(0)
    for i in range(1000):
        h.handle(status(f"n{i}", "TASK_RUNNING", app="/new"))
    assert set(engine.refetches) == {"/new"} and engine.full_syncs == 0
    assert engine.spawned == []


def test_group_change_success_fetches_nothing() -> None:
    engine, h = handler(0)
    for _ in range(5):
        h.handle(MarathonEvent("group_change_success", {"groupId": "/", "version": "v"}, 0.0))
    assert engine.refetches == [] and engine.full_syncs == 0


def test_deployment_events_refetch_the_apps_of_their_plan() -> None:
    plan = {"steps": [{"actions": [{"action": "ScaleApplication", "app": "/web"},
                                   {"action": "RestartApplication", "app": "/api"}]}]}
    engine, h = handler(0)
    h.handle(MarathonEvent("deployment_info", {"plan": plan}, 0.0))
    h.handle(MarathonEvent("deployment_success", {"plan": plan}, 0.0))
    assert engine.refetches == ["/api", "/web", "/api", "/web"]


@pytest.mark.parametrize(("over", "problem"), [
    ({"ports": [99999]}, "99999 is not a port"),
    ({"ports": [0]}, "0 is not a port"),
    ({"ports": ["31001"]}, "'31001' is not a port"),
    ({"ports": [True]}, "True is not a port"),
    ({"ports": "31001"}, "is not a list"),
    ({"host": 5}, "host 5 is not a string"),
    ({"taskStatus": 7}, "taskStatus 7"),
    ({"taskStatus": "RUNNING"}, "not a Mesos task state"),
    ({"taskId": ""}, "taskId ''"),
    ({"ipAddresses": [{"ipAddress": 1}]}, "ipAddresses"),
])
def test_a_bad_event_is_not_applied_its_app_is_refetched_and_neighbours_apply(
        over: dict[str, Any], problem: str, caplog: pytest.LogCaptureFixture) -> None:
    engine, h = handler(0)
    h = with_api(engine)
    h.handle(status("t1", "TASK_RUNNING"))
    with caplog.at_level(logging.WARNING, logger="servicerouter.events"):
        h.handle(status("t2", "TASK_RUNNING", **over))  # one bad event in a batch
    h.handle(status("a1", "TASK_RUNNING", app="/api"))  # the event right after it
    h.handle(status("t1", "TASK_KILLED"))
    assert tasks(engine) == []  # the bad task never entered
    assert tasks(engine, "/api") == [("a1", (31001,))]
    assert engine.refetches == ["/web"]
    message = caplog.records[0].getMessage()
    assert "app /web" in message and problem in message and "refetching the app" in message


def test_status_update_problem_accepts_marathon_shapes() -> None:
    good = status("t1", "TASK_STAGING", ports=[], ipAddresses=[
        {"ipAddress": "10.0.0.1", "protocol": "IPv4"}])
    assert ev.status_update_problem(good) is None
    no_ports = MarathonEvent("status_update_event", {
        "appId": "/a", "taskId": "t", "taskStatus": "TASK_KILLED"}, 0.0)
    assert ev.status_update_problem(no_ports) is None


def test_an_event_that_raises_costs_only_its_app() -> None:
    from servicerouter.engine import Engine, EngineConfig
    from servicerouter.layout import Settings

    engine = Engine(EngineConfig(settings=Settings()), None, None, None, None,  # type: ignore
                    Metrics(), lambda host: host)
    asked: list[str] = []
    engine.request_refetch = lambda app_id, t=None: asked.append(app_id)  # type: ignore
    engine.events._status_update = lambda e: 1 / 0  # type: ignore
    engine.on_event(status("t1", "TASK_RUNNING", app="/boom"))
    assert asked == ["/boom"]


def test_an_oversized_event_asks_for_a_full_resync(caplog: pytest.LogCaptureFixture) -> None:
    engine, h = handler(0)
    with caplog.at_level(logging.WARNING, logger="servicerouter.events"):
        h.handle(MarathonEvent("status_update_event", {}, 0.0, skipped_bytes=52_428_800))
    assert engine.full_syncs == 1
    assert "52428800 bytes" in caplog.text and "--max-event-bytes 1048576" in caplog.text


def test_an_unreadable_event_asks_for_a_full_resync(caplog: pytest.LogCaptureFixture) -> None:
    engine, h = handler(0)
    with caplog.at_level(logging.WARNING, logger="servicerouter.events"):
        h.handle(MarathonEvent("status_update_event", {}, 0.0, unreadable=True))
    assert engine.full_syncs == 1 and engine.refetches == []
    assert "could not be read" in caplog.text


@pytest.mark.parametrize("dead", ["TASK_KILLED", "TASK_FAILED", "TASK_GONE"])
def test_a_late_running_after_the_task_died_is_ignored(dead: str) -> None:
    engine, h = handler(0)
    h.handle(status("t1", "TASK_RUNNING"))
    h.handle(status("t1", dead))
    h.handle(status("t1", "TASK_RUNNING"))  # arrives late
    assert tasks(engine) == [] and h.late_ignored == 1
    h.handle(status("t2", "TASK_RUNNING"))
    assert tasks(engine) == [("t2", (31001,))]


def test_killed_before_running_never_routes_the_task() -> None:
    engine, h = handler(0)
    h.handle(status("t1", "TASK_KILLED"))
    h.handle(status("t1", "TASK_RUNNING"))
    assert tasks(engine) == []


def test_unreachable_may_come_back() -> None:
    engine, h = handler(0)
    h.handle(status("t1", "TASK_UNREACHABLE"))
    h.handle(status("t1", "TASK_RUNNING"))
    assert tasks(engine) == [("t1", (31001,))]


def test_the_memory_of_dead_tasks_is_bounded() -> None:
    _, h = handler(0)
    for i in range(TERMINATED_MEMORY + 10):
        h.handle(status(f"d{i}", "TASK_KILLED"))
    assert len(h._terminated) == TERMINATED_MEMORY
    assert "d0" not in h._terminated and f"d{TERMINATED_MEMORY + 9}" in h._terminated


# -- a fetch answered before events that are applied before its answer ----------------


def fetched(*tasks: tuple[str, str]) -> App:
    from servicerouter.model import Task

    return App("/web", services=(Service("/web", 0, 10000),), tasks=tuple(
        Task(t, "/web", "127.0.0.1", (31001,), state) for t, state in tasks))


def test_events_during_a_fetch_win_over_its_older_answer() -> None:
    _engine, h = handler(0)
    h.handle(status("t1", "TASK_STARTING"))
    h.handle(status("t2", "TASK_RUNNING"))
    touched = h.watch("/web")
    # While the request is in flight: t1 runs, t2 dies, t3 appears.
    h.handle(status("t1", "TASK_RUNNING"))
    h.handle(status("t2", "TASK_KILLED"))
    h.handle(status("t3", "TASK_RUNNING"))
    h.handle(status("x1", "TASK_RUNNING", app="/other"))
    h.unwatch(touched)
    h.handle(status("t4", "TASK_RUNNING"))  # after the fetch: not the fetch's business
    answer = fetched(("t1", "TASK_STARTING"), ("t2", "TASK_RUNNING"), ("t5", "TASK_RUNNING"))
    merged = h.newer_tasks(answer, touched)
    assert sorted((t.id, t.state) for t in merged.tasks) == [
        ("t1", "TASK_RUNNING"), ("t3", "TASK_RUNNING"), ("t5", "TASK_RUNNING")]
    assert touched == {("/web", "t1"), ("/web", "t2"), ("/web", "t3")}


def test_a_fetch_of_everything_watches_every_app_and_untouched_answers_pass() -> None:
    _engine, h = handler(0)
    touched = h.watch(None)
    h.handle(status("t1", "TASK_RUNNING"))
    h.unwatch(touched)
    answer = fetched(("t1", "TASK_STAGING"))
    assert [t.state for t in h.newer_tasks(answer, touched).tasks] == ["TASK_RUNNING"]
    assert h.newer_tasks(answer, set()) is answer


def test_a_full_syncs_answer_takes_each_apps_own_event_changes() -> None:
    """newer_tasks_all (the full sync's, touched grouped by app once) merges as
    newer_tasks does app by app, and hands back untouched apps as they were."""
    _engine, h = handler(0)
    h.handle(status("t1", "TASK_STARTING"))
    h.handle(status("x1", "TASK_STARTING", app="/other"))
    touched = h.watch(None)
    h.handle(status("t1", "TASK_RUNNING"))
    h.handle(status("x1", "TASK_KILLED", app="/other"))
    h.unwatch(touched)
    other = App("/other", services=(Service("/other", 0, 10001),), tasks=(
        Task("x1", "/other", "127.0.0.1", (31001,), "TASK_RUNNING"),))
    quiet = App("/quiet", services=(Service("/quiet", 0, 10002),))
    web = fetched(("t1", "TASK_STARTING"))
    merged = h.newer_tasks_all([web, other, quiet], touched)
    assert [(t.id, t.state) for t in merged[0].tasks] == [("t1", "TASK_RUNNING")]
    assert merged[1].tasks == ()  # x1 died while the answer was in flight
    assert merged[2] is quiet
    assert merged == [h.newer_tasks(a, touched) for a in (web, other, quiet)]
    assert h.newer_tasks_all([web], set()) == [web]


async def test_a_refetch_keeps_a_task_that_started_while_it_was_in_flight() -> None:
    import asyncio

    from servicerouter.engine import Engine, EngineConfig
    from servicerouter.layout import Settings

    gate = asyncio.Event()

    class SlowMarathon:
        async def get_app(self, app_id: str) -> dict[str, Any]:
            await gate.wait()  # sampled now: t1 still STARTING
            return {"id": "/web", "portDefinitions": [{"port": 10000}], "tasks": [
                {"id": "t1", "host": "127.0.0.1", "ports": [31001], "state": "TASK_STARTING"}]}

    engine = Engine(EngineConfig(settings=Settings()), SlowMarathon(),  # type: ignore
                    None, None, None, Metrics(), lambda host: host)  # type: ignore
    engine.state.set_app(App("/web", services=(Service("/web", 0, 10000),)))
    fetch = asyncio.ensure_future(engine.intake.refetch_app("/web"))
    await asyncio.sleep(0)
    engine.on_event(status("t1", "TASK_RUNNING"))  # applied before the answer lands
    gate.set()
    await fetch
    assert [(t.id, t.state) for t in engine.state.apps["/web"].tasks] == [
        ("t1", "TASK_RUNNING")]


def test_a_task_starting_up_is_recorded_only_once_it_matters() -> None:
    """STAGING/STARTING of a task not seen before change no endpoint (2 of the 5 events of
    a replacement): skipped, unless the app has health checks (health events may come
    before TASK_RUNNING). Routing is the same either way."""
    engine, h = handler(0)
    h.handle(status("t1", "TASK_STAGING"))
    h.handle(status("t1", "TASK_STARTING"))
    assert tasks(engine) == []
    h.handle(status("t1", "TASK_RUNNING"))
    assert tasks(engine) == [("t1", (31001,))]
    assert [e.task_id for e in engine.state.desired["web_10000"].endpoints] == ["t1"]
    h.handle(status("t1", "TASK_STARTING"))  # a known task: applied as before (unrouted)
    assert engine.state.desired["web_10000"].endpoints == ()
    engine.state.set_app(App("/hc", services=(Service("/hc", 0, 10002),),
                             has_health_checks=True))
    h.handle(status("h1", "TASK_STARTING", app="/hc"))
    assert tasks(engine, "/hc") == [("h1", (31001,))]


def test_status_update_fields_reads_what_the_checks_passed_in_one_go() -> None:
    assert ev.status_update_fields(status("t1", "TASK_RUNNING")) == (
        "/web", "t1", "TASK_RUNNING")
    legacy = MarathonEvent("status_update_event", {  # no appId: runSpecId, as app_id reads
        "runSpecId": "/a", "taskId": "t", "taskStatus": "TASK_KILLED"}, 0.0)
    assert ev.status_update_fields(legacy) == ("/a", "t", "TASK_KILLED")
    for data, problem in [({"appId": 5, "taskId": "t", "taskStatus": "TASK_RUNNING"},
                           "appId 5 is not an app id"),
                          ({"appId": "/a", "taskStatus": "TASK_RUNNING"}, "taskId None"),
                          ({"appId": "/a", "taskId": "t", "taskStatus": "TASK_RUNNING",
                            "ports": [31000, 70000]}, "70000 is not a port")]:
        event = MarathonEvent("status_update_event", data, 0.0)
        assert problem in str(ev.status_update_fields(event))
        assert ev.status_update_problem(event) == ev.status_update_fields(event)


def test_event_types_not_asked_for_share_one_series_and_memory_stays_bounded() -> None:
    """Each name the stream sent became a series and a kept counter: /metrics and the
    daemon grew with every new name."""
    engine, h = handler(0)
    for i in range(5000):
        h.handle(MarathonEvent(f"made_up_{i}", {}, time.monotonic()))
    h.handle(status("t1", "TASK_RUNNING"))
    registry = engine.metrics.registry
    assert registry.get_sample_value("servicerouter_marathon_events_total",
                                     {"event_type": "other"}) == 5000
    assert registry.get_sample_value("servicerouter_marathon_events_total",
                                     {"event_type": "status_update_event"}) == 1
    assert len(h._counters) <= 101


def test_a_health_event_it_cannot_apply_refetches_its_app_not_dropped() -> None:
    # Silently dropped, a health flip stayed unapplied until the next full resync (5
    # minutes by default): a task gone unhealthy kept its traffic all that time. Marathon
    # 1.3 names the task (taskId), not the instance; anything else unusable refetches.
    engine, h = handler(0)
    engine.state.set_app(App("/hc", services=(Service("/hc", 0, 10002),),
                             has_health_checks=True))
    engine.state.update_task(Task("hc.t1", "/hc", "127.0.0.1", (31001,), "TASK_RUNNING",
                                  Health.HEALTHY))
    assert [e.task_id for e in engine.state.desired["hc_10002"].endpoints] == ["hc.t1"]
    h.handle(MarathonEvent("health_status_changed_event",
                           {"appId": "/hc", "taskId": "hc.t1", "alive": False}, 0.0))
    assert [t.health for t in engine.state.apps["/hc"].tasks] == [Health.UNHEALTHY]
    assert engine.refetches == []
    for data in [{"appId": "/hc", "alive": True},  # names no task or instance
                 {"appId": "/hc", "instanceId": 5, "alive": True},
                 {"appId": "/hc", "instanceId": "hc", "alive": "yes"}]:
        h.handle(MarathonEvent("health_status_changed_event", data, 0.0))
    assert engine.refetches == ["/hc"] * 3 and engine.full_syncs == 0
    # instance_health_changed_event says healthy: null while an instance has no result yet
    h.handle(MarathonEvent("instance_health_changed_event",
                           {"runSpecId": "/hc", "instanceId": "hc", "healthy": None}, 0.0))
    assert engine.refetches == ["/hc"] * 3
