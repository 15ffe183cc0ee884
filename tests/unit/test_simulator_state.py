"""The simulator's state, validation and serialisation, without a server."""

from __future__ import annotations

import json
import re
import time

import pytest

from servicerouter.simulator import events as ev
from servicerouter.simulator.executor import FakeExecutor
from servicerouter.simulator.model import iso_ms
from servicerouter.simulator.scheduler import Scheduler
from servicerouter.simulator.serialize import (
    Embed,
    SelectorError,
    app_bytes,
    apps_bytes,
    parse_embed,
    parse_selector,
    tasks_json_bytes,
    tasks_text,
)
from servicerouter.simulator.state import ApiError, MarathonState
from servicerouter.simulator.validation import ValidationError, normalize_app

TASK_ID = re.compile(r"^([a-z0-9_.-]+)\.instance-[0-9a-f-]{36}\._app\.1$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# Key order of Marathon 1.10 payloads (from the reference samples).
STATUS_UPDATE_KEYS = [
    "slaveId", "taskId", "taskStatus", "message", "appId", "host", "ipAddresses",
    "ports", "version", "eventType", "timestamp",
]  # fmt: skip
INSTANCE_CHANGED_KEYS = [
    "instanceId", "condition", "runSpecId", "agentId", "host", "runSpecVersion",
    "timestamp", "eventType",
]  # fmt: skip
HEALTH_CHANGED_KEYS = ["appId", "instanceId", "version", "alive", "eventType", "timestamp"]
DEPLOYMENT_SUCCESS_KEYS = ["id", "plan", "eventType", "timestamp"]


def sync_sim() -> tuple[MarathonState, Scheduler, list[dict[str, object]]]:
    """A state + scheduler that act synchronously (no event loop), recording events."""
    state = MarathonState()
    sched = Scheduler(state, FakeExecutor(kill_grace=0.0))
    seen: list[dict[str, object]] = []
    publish = state.bus.publish

    def record(payload: dict[str, object]) -> None:
        seen.append(payload)
        publish(payload)

    state.bus.publish = record  # type: ignore[method-assign]
    return state, sched, seen


def test_port_zero_gets_unique_service_ports_from_10000() -> None:
    _, sched, _ = sync_sim()
    a = sched.create_app({"id": "/a", "portDefinitions": [{"port": 0}, {"port": 0}]})
    b = sched.create_app(
        {
            "id": "/b",
            "networks": [{"mode": "container/bridge"}],
            "container": {"type": "DOCKER", "portMappings": [{"containerPort": 80}]},
        }
    )
    c = sched.create_app({"id": "/c"})  # default: one port definition with port 0
    ports = a.service_ports + b.service_ports + c.service_ports
    assert ports == [10000, 10001, 10002, 10003]
    assert b.port_mappings[0]["hostPort"] == 0 and b.port_mappings[0]["servicePort"] == 10002
    # Explicit ports are kept; a port another app owns is a 422.
    d = sched.create_app({"id": "/d", "portDefinitions": [{"port": 10500}]})
    assert d.service_ports == [10500]
    with pytest.raises(ValidationError) as err:
        sched.create_app({"id": "/e", "portDefinitions": [{"port": 10500}]})
    assert "conflicts with a service port in app /d" in json.dumps(err.value.body())
    # Deleting an app frees its ports; the allocator never hands out a used one.
    sched.delete_app("/a", force=True)
    f = sched.create_app({"id": "/f", "portDefinitions": [{"port": 0}] * 2})
    assert set(f.service_ports).isdisjoint(b.service_ports + c.service_ports + [10500])
    assert all(10000 <= p <= 20000 for p in f.service_ports)


@pytest.mark.parametrize(
    ("definition", "path"),
    [
        ({"id": "/Bad_Id"}, "/id"),
        ({"id": "/ok", "instances": -1}, "/instances"),
        ({}, "/id"),
        ({"id": "/ok", "networks": [{"mode": "host"}, {"mode": "container/bridge"}]}, "/networks"),
        ({"id": "/ok", "portDefinitions": [{"port": 80}] * 2}, "/portDefinitions(1)/port"),
        ({"id": "/ok", "healthChecks": [{"protocol": "HTTP", "portIndex": 3}]}, None),
        ({"id": "/ok", "labels": {"a": 1}}, "/labels"),
    ],
)
def test_invalid_definitions_give_marathon_422_details(
    definition: dict[str, object], path: str | None
) -> None:
    with pytest.raises(ValidationError) as err:
        normalize_app(definition)
    body = err.value.body()
    assert body["message"] == "Object is not valid"
    assert all(set(d) == {"path", "errors"} for d in body["details"])
    if path is not None:
        assert path in [d["path"] for d in body["details"]]


def test_normalize_fills_defaults_and_accepts_legacy_shapes() -> None:
    app = normalize_app({"id": "shop/frontend", "cmd": "x", "ports": [0, 0]})
    assert app["id"] == "/shop/frontend"
    assert app["networks"] == [{"mode": "host"}]
    assert app["portDefinitions"] == [{"port": 0, "protocol": "tcp"}] * 2
    assert "ports" not in app and app["instances"] == 1
    assert normalize_app(app) == app  # idempotent
    legacy_bridge = normalize_app(
        {
            "id": "/web",
            "container": {
                "type": "DOCKER",
                "docker": {
                    "image": "nginx",
                    "network": "BRIDGE",
                    "portMappings": [{"containerPort": 80, "hostPort": 0, "servicePort": 0}],
                },
            },
        }
    )
    assert legacy_bridge["networks"] == [{"mode": "container/bridge"}]
    assert legacy_bridge["container"]["portMappings"][0]["containerPort"] == 80
    assert "portDefinitions" not in legacy_bridge


def test_duplicate_app_is_409_and_missing_app_404() -> None:
    _, sched, _ = sync_sim()
    sched.create_app({"id": "/a"})
    with pytest.raises(ApiError) as err:
        sched.create_app({"id": "/a"})
    assert err.value.status == 409
    with pytest.raises(ApiError) as err:
        sched.state.get_app("/x/y")
    assert err.value.status == 404
    assert err.value.body == {"message": "App '/x/y' does not exist"}


def test_task_shape_and_event_payload_shapes() -> None:
    state, sched, seen = sync_sim()
    app = sched.create_app(
        {"id": "/shop/frontend", "instances": 2, "healthChecks": [{"protocol": "HTTP"}]}
    )
    assert len(app.tasks) == 2
    task = next(iter(app.tasks.values()))
    assert TASK_ID.match(task.id) and task.id.startswith("shop_frontend.instance-")
    doc = json.loads(app_bytes(app, Embed(tasks=True, counts=True, deployments=True)))
    assert (doc["tasksRunning"], doc["tasksHealthy"], doc["tasksStaged"]) == (2, 2, 0)
    assert doc["deployments"] == []  # converged: deployment_success was sent
    t = doc["tasks"][0]
    assert t["servicePorts"] == [] and t["state"] == "TASK_RUNNING"
    assert t["host"] == "127.0.0.1" and len(t["ports"]) == 1
    assert t["healthCheckResults"][0]["alive"] is True
    assert TIMESTAMP.match(t["stagedAt"]) and TIMESTAMP.match(t["startedAt"])
    in_tasks = json.loads(tasks_json_bytes(state.iter_apps()))["tasks"][0]
    assert in_tasks["servicePorts"] == app.service_ports

    types = [e["eventType"] for e in seen]
    assert types[:3] == ["api_post_event", "group_change_success", "add_health_check_event"]
    assert types[3] == "deployment_info" and types[-1] == "deployment_success"
    statuses = [e["taskStatus"] for e in seen if e["eventType"] == "status_update_event"]
    assert statuses.count("TASK_STAGING") == 2 and statuses.count("TASK_RUNNING") >= 2
    by_type = {e["eventType"]: e for e in seen}
    assert list(by_type["status_update_event"]) == STATUS_UPDATE_KEYS
    assert list(by_type["instance_changed_event"]) == INSTANCE_CHANGED_KEYS
    assert list(by_type["health_status_changed_event"]) == HEALTH_CHANGED_KEYS
    assert list(by_type["deployment_success"]) == DEPLOYMENT_SUCCESS_KEYS
    assert all(TIMESTAMP.match(str(e["timestamp"])) for e in seen)


def test_scale_kill_and_delete_events() -> None:
    state, sched, seen = sync_sim()
    app = sched.create_app({"id": "/a", "instances": 3})
    seen.clear()
    sched.update_app("/a", {"instances": 1})
    assert len(app.tasks) == 1 and app.instances == 1
    killed = [e for e in seen if e.get("taskStatus") in ("TASK_KILLING", "TASK_KILLED")]
    assert [e["taskStatus"] for e in killed] == ["TASK_KILLING", "TASK_KILLED"] * 2
    task = next(iter(app.tasks.values()))
    sched.kill_task("/a", task.id, scale=False)  # replaced by a new task
    assert len(app.tasks) == 1 and task.id not in app.tasks
    seen.clear()
    sched.delete_app("/a")
    assert "/a" not in state.apps and not state.tasks
    types = [e["eventType"] for e in seen]
    assert types.index("app_terminated_event") < types.index("deployment_success")


def test_deployment_in_progress_locks_the_app() -> None:
    state = MarathonState()
    sched = Scheduler(state, FakeExecutor(kill_grace=0.0, task_start_delay=60))
    # Without a loop the fake executor starts at once; make it hang in STAGING instead.
    sched.executor.launch = lambda task: None  # type: ignore[method-assign]
    app = sched.create_app({"id": "/a", "instances": 2})
    assert app.deployment_ids
    with pytest.raises(ApiError) as err:
        sched.update_app("/a", {"instances": 3})
    assert err.value.status == 409 and err.value.body["deployments"]
    sched.update_app("/a", {"instances": 3}, force=True)
    assert len(app.deployment_ids) == 1


def test_text_plain_task_list_format() -> None:
    state, sched, _ = sync_sim()
    sched.create_app({"id": "/shop/frontend", "instances": 2, "portDefinitions": [{"port": 0}] * 2})
    sched.create_app({"id": "/worker", "instances": 1, "portDefinitions": []})
    app = state.get_app("/shop/frontend")
    t1, t2 = app.tasks.values()
    text = tasks_text(state.iter_apps())
    assert text == (
        f"shop_frontend\t10000\t127.0.0.1:{t1.ports[0]}\t127.0.0.1:{t2.ports[0]}\t\n"
        f"shop_frontend\t10001\t127.0.0.1:{t1.ports[1]}\t127.0.0.1:{t2.ports[1]}\t\n"
        "worker\t \t127.0.0.1\t\n"
    )


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("HAPROXY_GROUP", {"/a", "/b"}),
        ("HAPROXY_GROUP==external", {"/a"}),
        ("HAPROXY_GROUP!=external", {"/b"}),  # only apps that have the label
        ("HAPROXY_GROUP in (external, internal)", {"/a", "/b"}),
        ("HAPROXY_GROUP notin (external)", {"/b"}),
        ("HAPROXY_GROUP==external,tier==web", {"/a"}),
        ("HAPROXY_GROUP==internal,tier==web", set()),
    ],
)
def test_label_selectors(selector: str, expected: set[str]) -> None:
    labels = {
        "/a": {"HAPROXY_GROUP": "external", "tier": "web"},
        "/b": {"HAPROXY_GROUP": "internal"},
        "/c": {"tier": "web"},
    }
    match = parse_selector(selector)
    assert {k for k, v in labels.items() if match(v)} == expected


def test_bad_selector_and_embed_prefixes() -> None:
    with pytest.raises(SelectorError):
        parse_selector("a b")
    assert parse_embed(["apps.tasks"]).deployments
    assert parse_embed(["app.tasks"]).tasks and parse_embed(["tasks"]).tasks
    assert parse_embed(["apps.counts"]) == Embed(counts=True)


def test_event_bus_drop_log_and_slow_consumer() -> None:
    bus = ev.EventBus()
    sub = bus.subscribe("127.0.0.1")
    assert sub.queue[0].startswith(b"event: event_stream_attached\r\ndata: {")
    bus.drop_remaining = 2
    for _ in range(3):
        bus.publish(ev.app_terminated("/x"))
    assert len(sub.queue) == 2  # attached + the one not dropped
    log = bus.log_since(1)
    assert [e.get("dropped", False) for e in log] == [True, True, False]
    for _ in range(ev.MAX_OUTSTANDING):
        bus.publish(ev.app_terminated("/x"))
    assert sub.closed and sub.close_reason == "slow consumer"


def test_iso_ms() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1614676300.0049) == "2021-03-02T09:11:40.004Z"


def test_ten_thousand_apps_render_fast_and_changes_are_o_changed() -> None:
    state = MarathonState()
    sched = Scheduler(state, FakeExecutor(kill_grace=0.0))
    for i in range(10_000):
        sched.create_app(
            {
                "id": f"/g{i % 100}/app{i}",
                "instances": 5,
                "labels": {"HAPROXY_GROUP": "external"},
                "healthChecks": [{"protocol": "HTTP"}],
            }
        )
    assert len(state.tasks) == 50_000
    embed = Embed(tasks=True, counts=True, deployments=True)
    first = apps_bytes(state.iter_apps(), embed)
    start = time.perf_counter()
    again = apps_bytes(state.iter_apps(), embed)
    cached = time.perf_counter() - start
    assert again == first
    sched.update_app("/g0/app0", {"instances": 4})  # one app changes
    start = time.perf_counter()
    changed = apps_bytes(state.iter_apps(), embed)
    one_change = time.perf_counter() - start
    assert changed != first and changed.startswith(b'{"apps":[') and changed.endswith(b"]}")
    assert cached < 1.5 and one_change < 1.5, (cached, one_change)
