"""Typed accessors over event payloads (shapes from Marathon 1.5-1.10)."""

from __future__ import annotations

from typing import Any

import pytest

from servicerouter.marathon import eventdata as ed
from servicerouter.marathon.events import MarathonEvent

TASK = "nginx-bridge.instance-1883a887-7b50-11eb-9836-026ee08d9f6f._app.1"
INSTANCE = "nginx-bridge.instance-1883a887-7b50-11eb-9836-026ee08d9f6f"


def ev(kind: str, **data: Any) -> MarathonEvent:
    return MarathonEvent(type=kind, data={"eventType": kind, **data}, received_at=0.0)


RUNNING = ev(
    "status_update_event",
    slaveId="1f09399d-0cb0-4484-afd7-f08e99d2acbb-S1",
    taskId=TASK,
    taskStatus="TASK_RUNNING",
    message="",
    appId="/nginx-bridge",
    host="10.0.6.25",
    ipAddresses=[{"ipAddress": "172.17.0.4", "protocol": "IPv4"}],
    ports=[16916, 16917],
    version="2021-03-02T08:11:40.004Z",
)


def test_status_update_event() -> None:
    assert ed.app_id(RUNNING) == "/nginx-bridge"
    assert ed.task_id(RUNNING) == TASK
    assert ed.task_status(RUNNING) == "TASK_RUNNING"
    assert ed.host(RUNNING) == "10.0.6.25"
    assert ed.ports(RUNNING) == [16916, 16917]
    assert ed.ip_addresses(RUNNING) == ["172.17.0.4"]
    assert ed.version(RUNNING) == "2021-03-02T08:11:40.004Z"
    assert ed.health(RUNNING) is None
    assert "TASK_RUNNING" not in ed.TERMINAL_TASK_STATUSES
    assert "TASK_UNREACHABLE" not in ed.TERMINAL_TASK_STATUSES
    assert "TASK_KILLED" in ed.TERMINAL_TASK_STATUSES


def test_health_events() -> None:
    legacy = ev(
        "health_status_changed_event",
        appId="/shop/frontend",
        instanceId="shop_frontend.instance-6f0b5a56",
        version="2021-03-01T09:59:58.301Z",
        alive=False,
    )
    assert (ed.app_id(legacy), ed.instance_id(legacy), ed.health(legacy)) == (
        "/shop/frontend",
        "shop_frontend.instance-6f0b5a56",
        False,
    )
    current = ev(
        "instance_health_changed_event",
        instanceId=INSTANCE,
        runSpecId="/nginx-bridge",
        healthy=True,
        runSpecVersion="2021-03-02T08:11:40.004Z",
    )
    assert (ed.app_id(current), ed.health(current), ed.version(current)) == (
        "/nginx-bridge",
        True,
        "2021-03-02T08:11:40.004Z",
    )


def test_api_post_and_deployment_events() -> None:
    post = ev("api_post_event", clientIp="10.0.5.31", appDefinition={"id": "/nginx-bridge"})
    assert ed.app_id(post) == "/nginx-bridge"
    plan = {
        "id": "5c4a",
        "steps": [
            {"actions": [{"action": "StartApplication", "app": "/a"}]},
            {"actions": [{"action": "ScaleApplication", "app": "/b"}, {"action": "x"}]},
        ],
    }
    assert ed.deployment_app_ids(ev("deployment_success", id="5c4a", plan=plan)) == {"/a", "/b"}
    assert ed.app_id(ev("app_terminated_event", appId="/gone")) == "/gone"


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"appId": 3, "ports": "80", "ipAddresses": [None, {"ipAddress": 1}], "alive": "yes"},
        {"ports": [True, 80.5, None], "plan": {"steps": [None, {"actions": "x"}]}},
        {"appDefinition": "nope", "plan": []},
    ],
)
def test_missing_or_mistyped_fields_never_raise(data: dict[str, Any]) -> None:
    for kind in ("status_update_event", "api_post_event", "deployment_info"):
        event = MarathonEvent(type=kind, data=data, received_at=0.0)
        assert ed.app_id(event) is None
        assert ed.task_id(event) is None
        assert ed.ports(event) == []
        assert ed.ip_addresses(event) == []
        assert ed.health(event) is None
        assert ed.deployment_app_ids(event) == set()


@pytest.mark.parametrize("value", ["/", "", "  ", "//", 3, None])
def test_an_id_naming_no_app_is_no_app(value: Any) -> None:
    """A refetch of "/" raised ValueError in its task ("app id '/' is empty"), never
    retrieved: an event must name an app to be about one."""
    assert ed.app_id(ev("app_terminated_event", appId=value)) is None
    assert ed.app_id(ev("api_post_event", appDefinition={"id": value})) is None
    plan = {"steps": [{"actions": [{"action": "StartApplication", "app": value}]}]}
    assert ed.deployment_app_ids(ev("deployment_info", plan=plan)) == set()
    problem = ed.status_update_problem(ev("status_update_event", appId=value, taskId=TASK,
                                          taskStatus="TASK_RUNNING"))
    assert problem is not None and "is not an app id" in problem


def test_a_relative_definition_id_is_the_absolute_app() -> None:
    assert ed.app_id(ev("api_post_event", appDefinition={"id": "shop/web"})) == "/shop/web"


@pytest.mark.parametrize("field", ["ports", "ipAddresses"])
@pytest.mark.parametrize("value", [0, False, ""])
def test_a_falsy_non_list_is_refused_not_read_as_none(field: str, value: Any) -> None:
    """0, false or "" passed as "no ports" and then failed where the task was built
    (a TypeError the engine caught): the check and its user disagreed."""
    event = ev("status_update_event", appId="/a", taskId=TASK, taskStatus="TASK_RUNNING",
               **{field: value})
    problem = ed.status_update_problem(event)
    assert problem is not None and field in problem
