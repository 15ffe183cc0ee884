"""Marathon JSON → model: every network mode, legacy shapes, nulls, health, error isolation."""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import pytest

from servicerouter.marathon.appsdecode import decode_apps
from servicerouter.marathon.parse import (
    PayloadError,
    parse_app,
    parse_apps,
    refuse_empty,
)
from servicerouter.marathon.parsecache import ParseCache
from servicerouter.marathon.tasks import task_from_event, task_health
from servicerouter.model import (
    Endpoint,
    EndpointState,
    Health,
    NetworkMode,
    endpoints,
)

from .payloads import APP_FIXTURES, load, resolve


def _apps(name: str) -> dict[str, Any]:
    result = parse_apps(load(name), name, resolve)
    return {a.id: a for a in result.apps}


def _routes(name: str, app_id: str, index: int, health_check: bool = True) -> set[tuple]:
    app = _apps(name)[app_id]
    service = app.services[index]
    return {(e.ip, e.port, e.state) for e in endpoints(app, service, health_check)}


R, D = EndpointState.READY, EndpointState.DRAIN


@pytest.mark.parametrize("name", APP_FIXTURES)
def test_every_fixture_parses_without_exceptions(name: str) -> None:
    result = parse_apps(load(name), name, resolve)
    assert result.apps, name
    for app in result.apps:
        for task in app.tasks:
            assert task.app_id == app.id


@pytest.mark.parametrize(
    ("name", "app_id", "network", "service_ports"),
    [
        ("apps_host_2ports.json", "/shop/frontend", NetworkMode.HOST, [10101, 10102]),
        ("apps_docker_bridge.json", "/nginx-bridge", NetworkMode.BRIDGE, [10200, 10201]),
        ("apps_ip_per_task.json", "/payments/api", NetworkMode.CONTAINER, [10300, 10301]),
        ("apps_legacy_host.json", "/legacy/web", NetworkMode.HOST, [10001, 10002]),
        ("apps_legacy_host.json", "/legacy/worker", NetworkMode.HOST, [10010]),
        ("apps_legacy_bridge.json", "/legacy/nginx", NetworkMode.BRIDGE, [10210, 10211]),
        # legacy IP-per-task has no service ports: 0 unless HAPROXY_{n}_PORT says
        ("apps_legacy_ip_per_task.json", "/legacy/ipt-docker", NetworkMode.CONTAINER, [10400, 0]),
        ("apps_legacy_ip_per_task.json", "/legacy/ipt-mesos", NetworkMode.CONTAINER, [0]),
    ],
)
def test_network_mode_and_service_ports(name, app_id, network, service_ports) -> None:
    app = _apps(name)[app_id]
    assert app.network is network
    assert [s.port for s in app.services] == service_ports
    assert [s.index for s in app.services] == list(range(len(service_ports)))


@pytest.mark.parametrize(
    ("name", "app_id", "index", "health_check", "expected"),
    [
        # host: task.host + task.ports[i]; the unhealthy task is not routed
        ("apps_host_2ports.json", "/shop/frontend", 0, True, {("10.0.1.11", 31822, R)}),
        ("apps_host_2ports.json", "/shop/frontend", 1, True, {("10.0.1.11", 31823, R)}),
        # health checking off: every RUNNING task is routed
        ("apps_host_2ports.json", "/shop/frontend", 0, False,
         {("10.0.1.11", 31822, R), ("10.0.1.12", 31455, R)}),
        # bridge: task.host (not the docker IP) + host port of mapping i; STAGING not routed
        ("apps_docker_bridge.json", "/nginx-bridge", 0, True,
         {("10.0.6.25", 16916, R), ("10.0.6.26", 31184, R)}),
        ("apps_docker_bridge.json", "/nginx-bridge", 1, True,
         {("10.0.6.25", 16917, R), ("10.0.6.26", 31185, R)}),
        # IP per task: ipAddresses[0] + containerPort i (not task.host, task.ports empty)
        ("apps_ip_per_task.json", "/payments/api", 0, True,
         {("9.0.2.130", 8080, R), ("9.0.3.7", 8080, R)}),
        ("apps_ip_per_task.json", "/payments/api", 1, True,
         {("9.0.2.130", 9090, R), ("9.0.3.7", 9090, R)}),
        # legacy host: health from lastSuccess/lastFailure; a host name resolved;
        # the unresolvable host is never routed, even with health checking off
        ("apps_legacy_host.json", "/legacy/web", 0, True, {("10.0.1.21", 31001, R)}),
        ("apps_legacy_host.json", "/legacy/web", 1, False,
         {("10.0.1.21", 31002, R), ("10.0.1.22", 31102, R), ("10.0.9.7", 31202, R)}),
        ("apps_legacy_host.json", "/legacy/worker", 0, True, {("10.0.1.23", 31401, R)}),
        # legacy docker BRIDGE: host + host port; TASK_KILLING stays, draining
        ("apps_legacy_bridge.json", "/legacy/nginx", 0, True,
         {("10.0.7.5", 31500, R), ("10.0.7.6", 31600, D)}),
        # legacy IP per task: IPv4 preferred over an IPv6 listed first,
        # discovery port numbers; no address → not routed; STAGING not routed
        ("apps_legacy_ip_per_task.json", "/legacy/ipt-docker", 0, True, {("9.0.4.10", 8080, R)}),
        ("apps_legacy_ip_per_task.json", "/legacy/ipt-docker", 1, True, {("9.0.4.10", 9000, R)}),
        ("apps_legacy_ip_per_task.json", "/legacy/ipt-mesos", 0, True, {("9.0.4.20", 7000, R)}),
    ],
)
def test_address_and_port_per_network_mode(name, app_id, index, health_check, expected) -> None:
    assert _routes(name, app_id, index, health_check) == expected


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        (None, Health.NONE),
        ([], Health.NONE),
        ([{"alive": True}], Health.HEALTHY),
        ([{"alive": True}, {"alive": False}], Health.UNHEALTHY),
        ([{"alive": False}], Health.UNHEALTHY),
        # ≤1.3: taskId, no alive; compare timestamps
        ([{"taskId": "t", "lastSuccess": "2016-01-01T00:00:02Z",
           "lastFailure": "2016-01-01T00:00:01Z"}], Health.HEALTHY),
        ([{"taskId": "t", "lastSuccess": "2016-01-01T00:00:01Z",
           "lastFailure": "2016-01-01T00:00:02Z"}], Health.UNHEALTHY),
        ([{"taskId": "t", "lastSuccess": "2016-01-01T00:00:01Z", "lastFailure": None}],
         Health.HEALTHY),
        ([{"taskId": "t", "lastSuccess": None, "lastFailure": None}], Health.UNHEALTHY),
        ([{"alive": None, "lastSuccess": "2016-01-01T00:00:01Z"}], Health.HEALTHY),
    ],
)
def test_task_health(results, expected) -> None:
    assert task_health({"healthCheckResults": results}, True) is expected


def test_task_health_without_health_checks_is_none() -> None:
    assert task_health({"healthCheckResults": [{"alive": False}]}, False) is Health.NONE


def _host_app(**over: Any) -> dict[str, Any]:
    app: dict[str, Any] = {
        "id": "/t/app",
        "portDefinitions": [{"port": 10900}],
        "healthChecks": [{"protocol": "HTTP", "path": "/h", "portIndex": 0}],
        "tasks": [],
    }
    app.update(over)
    return app


def _task(state: str, results: Any = None, host: str = "10.1.1.1") -> dict[str, Any]:
    return {"id": "t.1", "host": host, "ports": [31000], "state": state,
            "healthCheckResults": results}


ALIVE, DEAD = [{"alive": True}], [{"alive": False}]
COMMAND = [{"protocol": "COMMAND", "command": {"value": "true"}}]


@pytest.mark.parametrize(
    ("health_checks", "task", "health_check", "expected"),
    [
        ([], _task("TASK_RUNNING"), True, R),
        (None, _task("TASK_RUNNING"), True, R),
        ("hc", _task("TASK_RUNNING", ALIVE), True, R),
        ("hc", _task("TASK_RUNNING", [*ALIVE, *DEAD]), True, None),
        ("hc", _task("TASK_RUNNING", DEAD), True, None),
        ("hc", _task("TASK_RUNNING", None), True, None),  # no results yet (grace period)
        ("hc", _task("TASK_RUNNING", DEAD), False, R),  # --no-health-check
        ("hc", _task("TASK_KILLING", ALIVE), True, D),
        ("hc", _task("TASK_KILLING", DEAD), True, D),
        ([], _task("TASK_KILLING"), True, D),
        ([], _task("TASK_STAGING"), True, None),
        ([], _task("TASK_STARTING"), True, None),
        ([], _task("TASK_UNREACHABLE"), True, None),
        ([], _task("TASK_FINISHED"), True, None),
        ([], _task("TASK_RUNNING", host="nowhere.invalid"), True, None),
        ([], _task("TASK_KILLING", host="nowhere.invalid"), True, None),
        ([], _task("TASK_RUNNING", host=""), True, None),
        # COMMAND checks: HAProxy cannot run them, but Marathon's results decide routing
        # as for any check (they were ignored: a task failing its check was routed).
        (COMMAND, _task("TASK_RUNNING", DEAD), True, None),
        (COMMAND, _task("TASK_RUNNING", None), True, None),
        (COMMAND, _task("TASK_RUNNING", ALIVE), True, R),
    ],
)
def test_routable_rule(health_checks, task, health_check, expected) -> None:
    hcs = _host_app()["healthChecks"] if health_checks == "hc" else health_checks
    app, _ = parse_app(_host_app(healthChecks=hcs, tasks=[task]), resolve)
    got = endpoints(app, app.services[0], health_check)
    assert [e.state for e in got] == ([] if expected is None else [expected])


def test_service_port_zero_warns_and_label_port_overrides() -> None:
    app, warnings = parse_app(_host_app(portDefinitions=[{"port": 0}, {"port": 0}],
                                        labels={"HAPROXY_1_PORT": "10950"}), resolve)
    assert [s.port for s in app.services] == [0, 10950]
    assert len(warnings) == 1
    assert "/t/app" in warnings[0] and "index 0" in warnings[0]
    assert "HAPROXY_0_PORT" in warnings[0]


BAD_APPS = [
    ({"portDefinitions": [{"port": "http"}]}, "portDefinitions[0].port"),
    ({"portDefinitions": [{"port": True}]}, "portDefinitions[0].port"),
    ({"portDefinitions": {"port": 1}}, "portDefinitions"),
    ({"labels": {"HAPROXY_GROUP": "a b"}}, "HAPROXY_GROUP"),  # app-wide: the whole app
    ({"labels": ["HAPROXY_0_PORT"]}, "labels"),
    ({"tasks": {"id": "x"}}, "tasks"),
    ({"tasks": "x"}, "tasks"),
    ({"tasks": [{"host": "10.0.0.1"}]}, "tasks[0].id"),
    ({"tasks": [{"id": "t.1", "ports": "31000"}]}, "tasks[0].ports"),
    # Not dropped (port 1 would then serve service port 0: another port of the task).
    ({"tasks": [{"id": "t.1", "ports": ["31000", 31001]}]}, "tasks[0].ports[0]"),
    ({"tasks": [{"id": "t.1", "ports": [31000.0, 31001]}]}, "tasks[0].ports[0]"),
    ({"tasks": [{"id": "t.1", "ports": [True, 31001]}]}, "tasks[0].ports[0]"),
    ({"tasks": [{"id": "t.1", "ports": [None, 31001]}]}, "tasks[0].ports[0]"),
    ({"tasks": [{"id": "t.1", "ipAddresses": {}}]}, "tasks[0].ipAddresses"),
    ({"networks": [{"mode": "overlay"}]}, "networks[0].mode"),
    ({"networks": "host"}, "networks"),
    ({"ports": ["10001"], "portDefinitions": None}, "ports[0]"),
    ({"healthChecks": {"protocol": "HTTP"}}, "healthChecks"),
    ({"networks": [{"mode": "container"}],
      "container": {"portMappings": [{"containerPort": "8080", "servicePort": 10001}]}},
     "container.portMappings[0].containerPort"),
    ({"container": {"docker": {"network": "BRIDGE",
                               "portMappings": [{"containerPort": 80, "servicePort": "x"}]}}},
     "container.docker.portMappings[0].servicePort"),
    ({"ipAddress": {"discovery": {"ports": [{"number": "8080"}]}}},
     "ipAddress.discovery.ports[0].number"),
]


@pytest.mark.parametrize(("override", "field"), BAD_APPS)
def test_bad_app_is_an_error_naming_app_and_field_others_still_parse(override, field) -> None:
    good_a = _host_app(id="/good/a", portDefinitions=[{"port": 10801}])
    good_b = _host_app(id="/good/b", portDefinitions=[{"port": 10802}])
    bad = _host_app(id="/bad/app")
    bad.update(override)
    result = parse_apps({"apps": [good_a, bad, good_b]}, "http://m/v2/apps", resolve)
    assert [a.id for a in result.apps] == ["/good/a", "/good/b"]
    assert len(result.errors) == 1
    message = str(result.errors[0])
    assert result.errors[0].app_id == "/bad/app"
    assert "/bad/app" in message and field in message


def test_mixed_fixture_isolates_each_bad_app() -> None:
    result = parse_apps(load("apps_mixed_malformed.json"), "mixed", resolve)
    assert [a.id for a in result.apps] == ["/good/one", "/bad/label-port", "/good/two"]
    errors = {e.app_id: str(e) for e in result.errors}
    assert set(errors) == {"/bad/port-string", "/bad/tasks", "/bad/network"}
    assert "portDefinitions[0].port" in errors["/bad/port-string"]
    label_port = result.apps[1]  # a bad label value leaves out that port only
    assert label_port.services == ()
    assert [(p.label, p.value) for p in label_port.problems] == [("HAPROXY_0_PORT", "http")]
    assert "tasks" in errors["/bad/tasks"]
    assert "networks[0].mode" in errors["/bad/network"]


@pytest.mark.parametrize(
    ("bad", "app_id"),
    [
        (None, "<apps[1]>"),
        ("not an app", "<apps[1]>"),
        ({"id": None}, "<apps[1]>"),
        ({"id": "relative/id"}, "relative/id"),
        ({"id": "/"}, "/"),
        ({"id": 42}, "42"),
    ],
)
def test_app_without_a_usable_id_is_an_error(bad, app_id) -> None:
    result = parse_apps({"apps": [_host_app(id="/ok"), bad]}, "src", resolve)
    assert [a.id for a in result.apps] == ["/ok"]
    assert [e.app_id for e in result.errors] == [app_id]
    assert "id" in result.errors[0].message


@pytest.mark.parametrize("where", ["id", "label", "task id", "host", "label key"])
def test_an_app_holding_an_unpaired_surrogate_is_skipped_and_the_others_applied(
        where: str) -> None:
    """json.loads takes "\\ud800" (msgspec refuses the whole body, so json.loads decodes
    it), and UTF-8 cannot encode it: an app id holding one failed the render of every
    app, a task id /status for everyone. Only that app is left out."""
    bad = _host_app(id="/bad")
    if where == "id":
        bad["id"] = "/bad\ud800"
    elif where == "label":
        bad["labels"] = {"HAPROXY_0_VHOST": "a\ud800.example.com"}
    elif where == "label key":
        bad["labels"] = {"note\udfff": "x"}
    else:
        bad["tasks"] = [{"id": "bad.1", "host": "127.0.0.1", "ports": [31001],
                         "state": "TASK_RUNNING"}]
        bad["tasks"][0]["id" if where == "task id" else "host"] += "\ud800"
    body = json.dumps({"apps": [_host_app(id="/ok"), bad]}).encode()
    for payload in (decode_apps(body), json.loads(body)):
        result = parse_apps(payload, "src", resolve)
        assert [a.id for a in result.apps] == ["/ok"]
        (error,) = result.errors
        assert error.app_id == ("/bad\\ud800" if where == "id" else "/bad")
        assert "unpaired UTF-16 surrogate" in error.message
        str(error).encode("utf-8")  # the report itself can be written anywhere


def test_a_surrogate_pair_is_text_like_any_other() -> None:
    app = _host_app(id="/ok", labels={"note": "\U0001f600"})
    body = json.dumps({"apps": [app]}).encode()  # escaped as "\\ud83d\\ude00"
    result = parse_apps(decode_apps(body), "src", resolve)
    assert result.errors == [] and result.apps[0].labels["note"] == "\U0001f600"


def test_duplicate_app_is_an_error_and_first_copy_wins() -> None:
    first = _host_app(portDefinitions=[{"port": 10001}])
    second = _host_app(portDefinitions=[{"port": 10002}])
    result = parse_apps({"apps": [first, second]}, "src", resolve)
    assert [s.port for a in result.apps for s in a.services] == [10001]
    assert result.errors[0].app_id == "/t/app"


@pytest.mark.parametrize(
    "payload",
    [None, [], "apps", 42, {}, {"apps": None}, {"apps": {}}, {"app": {"id": "/x"}},
     {"message": "App '/x' does not exist"}],
)
def test_unusable_payload_raises_payload_error_naming_source(payload) -> None:
    with pytest.raises(PayloadError, match="http://marathon-1:8080/v2/apps"):
        parse_apps(payload, "http://marathon-1:8080/v2/apps", resolve)


def test_empty_apps_list_is_fine() -> None:
    result = parse_apps({"apps": []}, "src", resolve)
    assert (result.apps, result.errors, result.warnings) == ([], [], [])


def _nullify(obj: Any, keep: frozenset[str]) -> Any:
    """Every optional key explicitly null (Marathon ≤1.4 wrote many)."""
    if isinstance(obj, dict):
        return {k: (_nullify(v, keep) if k in keep else None) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nullify(v, keep) for v in obj]
    return obj


def test_explicit_nulls_everywhere_are_absent() -> None:
    keep = frozenset({"apps", "id", "portDefinitions", "port", "tasks", "host", "ports",
                      "state"})
    raw = _nullify(load("apps_host_2ports.json"), keep)
    result = parse_apps(raw, "src", resolve)
    assert result.errors == []
    (app,) = result.apps
    assert app.network is NetworkMode.HOST and not app.has_health_checks
    assert [s.port for s in app.services] == [10101, 10102]
    assert {e.ip for e in endpoints(app, app.services[0])} == {"10.0.1.11", "10.0.1.12"}


@pytest.mark.parametrize("name", APP_FIXTURES)
def test_parsing_does_not_mutate_the_payload(name: str) -> None:
    raw = load(name)
    before = copy.deepcopy(raw)
    parse_apps(raw, name, resolve)
    assert raw == before


@pytest.mark.parametrize(
    ("ip_addresses", "expected"),
    [
        ([{"ipAddress": "9.0.0.1", "protocol": "IPv4"}], "9.0.0.1"),
        ([{"ipAddress": "fd00::1", "protocol": "IPv6"},
          {"ipAddress": "9.0.0.1", "protocol": "IPv4"}], "9.0.0.1"),
        ([{"ipAddress": "fd00::1", "protocol": "IPv6"}], "fd00::1"),
        ([], None),
        (None, None),
        ([{"ipAddress": None}], None),
        # not an address: never reaches haproxy.cfg
        ([{"ipAddress": "9.0.0.1 backup", "protocol": "IPv4"}], None),
        ([{"ipAddress": "fe80::1%eth0\n  mode http", "protocol": "IPv6"}], None),
        ([{"ipAddress": "bogus"}, {"ipAddress": "9.0.0.2"}], "9.0.0.2"),
    ],
)
def test_ip_per_task_address(ip_addresses, expected) -> None:
    raw = {"id": "/c", "networks": [{"mode": "container", "name": "dcos"}],
           "container": {"portMappings": [{"containerPort": 8080, "servicePort": 10001}]},
           "tasks": [{"id": "c.1", "host": "10.0.0.9", "ports": [], "state": "TASK_RUNNING",
                      "ipAddresses": ip_addresses}]}
    app, _ = parse_app(raw, resolve)
    assert app.tasks[0].ip == expected
    eps = endpoints(app, app.services[0])
    assert eps == (() if expected is None else (Endpoint("c.1", expected, 8080),))


@pytest.mark.parametrize(
    ("hc", "expected"),
    [
        ({"protocol": "HTTP", "path": "/ping", "intervalSeconds": 5}, (True, "/ping", 5000)),
        ({"protocol": "MESOS_HTTP", "path": None}, (True, "/", 2000)),
        # a path HAProxy cannot send: a connect check, never another URL (/ may be a 404)
        ({"protocol": "HTTP", "path": "/x y\n  option"}, (True, None, 2000)),
        ({"protocol": "HTTP", "path": "/x#y"}, (True, None, 2000)),
        # a query string is sent as Marathon sends it (it was replaced by /)
        ({"protocol": "HTTP", "path": "/health?ready=1&deep=(db,cache)"},
         (True, "/health?ready=1&deep=(db,cache)", 2000)),
        ({"protocol": "TCP", "intervalSeconds": 30}, (True, None, 30000)),
        ({"protocol": "MESOS_TCP"}, (True, None, 2000)),
        ({"protocol": "TCP", "intervalSeconds": 0.5}, (True, None, 500)),  # never "inter 0"
        ({"protocol": "TCP", "intervalSeconds": 0}, (True, None, 2000)),
        # a tenant's 1 ms would have every slot checked 1,000 times a second
        ({"protocol": "TCP", "intervalSeconds": 0.001}, (True, None, 100)),
        ({"protocol": "TCP", "intervalSeconds": 0.1}, (True, None, 100)),
        ({"protocol": "COMMAND", "command": {"value": "true"}}, (False, None, 2000)),
        ({"protocol": "HTTP", "portIndex": 1}, (False, None, 2000)),
        # an explicit port applies to every service port, as in marathon-lb
        ({"protocol": "HTTP", "port": 8080}, (True, "/", 2000)),
    ],
)
def test_health_check_mirrored_for_its_port_index(hc, expected) -> None:
    app, _ = parse_app(_host_app(healthChecks=[hc]), resolve)
    o = app.services[0].options
    assert (o.health_check, o.health_check_path, o.health_check_interval_ms) == expected


def test_status_update_event_fast_path() -> None:
    app = _apps("apps_docker_bridge.json")["/nginx-bridge"]
    previous = app.tasks[0]
    event = {"eventType": "status_update_event", "taskId": previous.id,
             "taskStatus": "TASK_KILLING", "appId": app.id, "host": "10.0.6.25",
             "ports": [16916, 16917], "ipAddresses": [{"ipAddress": "172.17.0.4"}]}
    task = task_from_event(app, event, resolve, previous)
    assert (task.ip, task.ports, task.state, task.health) == (
        "10.0.6.25", (16916, 16917), "TASK_KILLING", Health.HEALTHY)
    new = task_from_event(app, {**event, "taskId": "nginx-bridge.new._app.1",
                                "taskStatus": "TASK_RUNNING"}, resolve, None)
    assert new.health is Health.NONE  # health-checked app: not routable until results


def test_two_service_ports_of_one_app_on_the_same_port_is_an_app_error() -> None:
    from servicerouter.marathon.parse import parse_apps as _parse

    raw = {"apps": [{"id": "/dup", "portDefinitions": [{"port": 10000}, {"port": 10001}],
                     "labels": {"HAPROXY_1_PORT": "10000"}},
                    {"id": "/fine", "portDefinitions": [{"port": 10002}]}]}
    result = _parse(raw, "test", lambda h: h)
    assert [a.id for a in result.apps] == ["/fine"]
    (err,) = result.errors
    assert err.app_id == "/dup" and "port 10000" in err.message


_BAD_INTERVALS = [(float("inf"), "inf"), (float("nan"), "nan"), (1e308, "1e+308"),
                  (2147484, "2147484"), (-1, "-1"), ("often", "often")]
_BAD_VALUES = [
    ({"portDefinitions": [{"port": 10901}, {"port": -5}]}, "portDefinitions[1].port", "-5"),
    ({"portDefinitions": [{"port": 10901}, {"port": 65536}]}, "portDefinitions[1].port",
     "65536"),
    ({"portDefinitions": [{"port": 10901}, {"port": 1e20}]}, "portDefinitions[1].port",
     "1e+20"),
    *[({"portDefinitions": [{"port": 10901}, {"port": 10902}],
        "healthChecks": [{"protocol": "TCP", "portIndex": 1, "intervalSeconds": v}]},
       "healthChecks[0].intervalSeconds", text) for v, text in _BAD_INTERVALS],
    # A bad per-port label value costs that port, not the app (issue #8).
    ({"portDefinitions": [{"port": 10901}, {"port": 10902}],
      "labels": {"HAPROXY_1_PORT": "http"}}, "HAPROXY_1_PORT", "http"),
    ({"portDefinitions": [{"port": 10901}, {"port": 10902}],
      "labels": {"HAPROXY_1_PORT": "70000"}}, "HAPROXY_1_PORT", "70000"),
    ({"portDefinitions": [{"port": 10901}, {"port": 10902}],
      "labels": {"HAPROXY_1_VHOST": "a.com\n  bind :1"}}, "HAPROXY_1_VHOST", "a.com\n  bind :1"),
]


@pytest.mark.parametrize(("override", "field", "value"), _BAD_VALUES)
def test_a_value_that_cannot_work_leaves_out_that_service_only(override, field, value) -> None:
    raw = _host_app(id="/bad/ports")
    raw.update(override)
    result = parse_apps({"apps": [raw, _host_app(id="/good", portDefinitions=[{"port": 10903}])]},
                        "test", resolve)
    assert result.errors == []
    bad, good = result.apps
    assert [s.port for s in bad.services] == [10901]  # the app's other port goes on
    assert [s.port for s in good.services] == [10903]
    (problem,) = bad.problems
    assert (problem.app_id, problem.index, problem.label, problem.value) == (
        "/bad/ports", 1, field, value)
    assert "service left out" in problem.message


def test_largest_health_check_interval_haproxy_holds_is_kept() -> None:
    app, _ = parse_app(_host_app(healthChecks=[{"protocol": "TCP",
                                                "intervalSeconds": 2147483}]), resolve)
    assert app.services[0].options.health_check_interval_ms == 2147483000 <= 2**31 - 1
    assert app.problems == ()


# -- one app's bytes that cannot be decoded: only that app is lost --------------------

_GOOD = (b'{"id": "/good", "portDefinitions": [{"port": 10000}], "tasks": [{"id": "g1", '
         b'"host": "10.0.0.1", "ports": [31000], "state": "TASK_RUNNING"}]}')


@pytest.mark.parametrize("bad", [
    b'{"id": "/bad\xff\xfe", "tasks": []}',  # invalid UTF-8 in one app
    b'{"id": "/bad", "labels": {"HAPROXY_GROUP": "ext\xc3"}}',
])
def test_an_app_that_cannot_be_decoded_is_skipped_and_the_others_applied(bad: bytes) -> None:
    body = b'{"apps": [' + _GOOD + b", " + bad + b"]}"
    result = parse_apps(decode_apps(body), "m", resolve, consume=True)
    assert [a.id for a in result.apps] == ["/good"]
    assert [e.app_id for e in result.errors] == ["<apps[1]>"]
    assert "cannot be decoded" in str(result.errors[0])
    assert "UTF-8" in str(result.errors[0])


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_an_app_nested_too_deep_is_skipped_and_the_others_applied(depth: int) -> None:
    # msgspec scans the body for the apps' extent recursively too: one app nested past
    # the recursion limit failed that scan, so the whole full sync (every app stopped
    # updating), not only the app, as parse_apps' own per-app handling means it to be.
    deep = b'{"id": "/deep", "cmd": ' + b"[" * depth + b"]" * depth + b"}"
    body = b'{"apps": [' + _GOOD + b", " + deep + b', {"id": "/x]\\"[,{", "tasks": []}]}'
    for cache in (None, ParseCache()):
        result = parse_apps(decode_apps(body), "m", resolve, consume=True, cache=cache)
        assert [a.id for a in result.apps] == ["/good", '/x]"[,{']
        assert [e.app_id for e in result.errors] == ["<apps[1]>"]
        assert "cannot be decoded (RecursionError" in str(result.errors[0])


def test_a_body_nested_too_deep_outside_its_apps_is_still_refused() -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000,
                 b'{"other": ' + b"[" * 100_000 + b"]" * 100_000 + b', "apps": []}',
                 b'{"apps": [' + _GOOD + b", " + b"[" * 100_000,  # cut short
                 b'{"apps": [' + b"[" * 100_000 + b"]" * 100_000 + b"]} x"):  # then junk
        with pytest.raises(RecursionError):
            decode_apps(body)


@pytest.mark.parametrize(("task", "kind"), [("null", "NoneType"), ("5", "int"),
                                            ('"t1"', "str"), ("[1]", "list")])
def test_a_task_that_is_not_an_object_is_named_not_a_type_error(task: str, kind: str) -> None:
    app = {"id": "/t", "portDefinitions": [{"port": 10002}],
           "tasks": [{"id": "ok", "host": "10.0.0.1", "ports": [31000]}, json.loads(task)]}
    result = parse_apps({"apps": [app, json.loads(_GOOD)]}, "m", resolve)
    assert [a.id for a in result.apps] == ["/good"]
    assert len(result.errors) == 1
    message = str(result.errors[0])
    assert f"tasks[1]: expected an object, got {kind}" in message, message


@pytest.mark.parametrize("decode", [False, True])
def test_an_answer_without_embedded_tasks_is_refused_not_an_outage(decode: bool) -> None:
    """Without embed=apps.tasks (a proxy dropping the query string) Marathon sends apps
    with no 'tasks' at all: parsed as apps without tasks, every backend was emptied."""
    apps = [_host_app(id=f"/a{i}", portDefinitions=[{"port": 10801 + i}]) for i in range(3)]
    for app in apps:
        del app["tasks"]
        app["tasksRunning"] = 2
    payload: Any = {"apps": apps}
    if decode:
        payload = decode_apps(json.dumps(payload).encode())
    with pytest.raises(PayloadError, match=r"^http://m/v2/apps: no app carries its tasks, "
                       r"yet 3 apps say they have tasks running: not an answer to "
                       r"embed=apps.tasks"):
        parse_apps(payload, "http://m/v2/apps", resolve)
    # With its tasks (even none), or with nothing running, it is Marathon's answer.
    apps[0]["tasks"] = []
    assert len(parse_apps({"apps": apps}, "x", resolve).apps) == 3
    for app in apps:
        app.pop("tasks", None)
        app["tasksRunning"] = 0
    assert len(parse_apps({"apps": apps}, "x", resolve).apps) == 3


def test_an_answer_listing_no_apps_is_refused_while_apps_are_routed() -> None:
    """A Marathon leader on an empty ZooKeeper path answers {"apps": []}: applied, every
    route went at once. Refused while something is routed; nothing routed, or apps in
    the answer (even only failing ones), it is Marathon's answer as before."""
    empty = parse_apps({"apps": []}, "http://m/v2/apps", resolve)
    with pytest.raises(PayloadError, match=r"^http://m/v2/apps: Marathon lists no apps at "
                       r"all, which would unroute all 3 apps routed here .*; nothing "
                       r"applied, HAProxy keeps routing them\. If every app was deleted on "
                       r"purpose: POST it$"):
        refuse_empty(empty, "http://m/v2/apps", 3, "POST it")
    with pytest.raises(PayloadError, match="would unroute the app routed here"):
        refuse_empty(empty, "http://m/v2/apps", 1, "POST it")
    refuse_empty(empty, "http://m/v2/apps", 0, "POST it")  # nothing to lose
    failing = parse_apps({"apps": [{"id": "relative"}]}, "x", resolve)
    assert failing.errors and not failing.apps
    refuse_empty(failing, "x", 3, "POST it")  # it lists an app: its last good state stays
    listed = parse_apps({"apps": [_host_app(id="/a", portDefinitions=[{"port": 10801}])]},
                        "x", resolve)
    refuse_empty(listed, "x", 3, "POST it")


def _work_to_parse(ports: int) -> int:
    """Python lines run to parse one app of ``ports`` port definitions, each with a
    health check of its own and one that applies to none (a count, not a time: the
    same on any machine)."""
    app = _host_app(
        portDefinitions=[{"port": 20000 + i} for i in range(ports)],
        healthChecks=[{"protocol": "TCP", "portIndex": 1000}] * ports
        + [{"protocol": "TCP", "portIndex": i} for i in range(ports)],
        tasks=[{"id": "t.1", "host": "10.1.1.1", "ports": list(range(30000, 30000 + ports)),
                "state": "TASK_RUNNING"}])
    lines = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        lines += event == "line"
        return trace

    sys.settrace(trace)
    try:
        parsed, _ = parse_app(app, resolve)
    finally:
        sys.settrace(None)
    assert len(parsed.services) == ports and all(
        s.options.health_check for s in parsed.services)
    return lines


def test_an_app_twice_as_large_costs_twice_the_work_to_parse_not_four_times() -> None:
    # One app's port definitions and health checks were each compared with all the
    # others: 20,000 ports took 7 s of the daemon's CPU (5,000 ports with 5,000 checks
    # 14 s; 65,535 ports would be minutes) while every other app's change waited.
    small, large = _work_to_parse(400), _work_to_parse(800)
    assert large < 2.4 * small, (small, large)  # linear: 2.0; either scan back: 2.7+


def _pick_by_scanning(checks: list[Any], index: int) -> Any:
    """marathon-lb's choice as the parser made it before, scanning every check for every
    port index: the reference the one-pass choice must agree with."""
    passed_over = None
    for i, hc in enumerate(checks):
        port_index = hc.get("portIndex") or 0
        if isinstance(port_index, bool) or not isinstance(port_index, int) \
                or not 0 <= port_index <= 1000:
            return ("error", f"healthChecks[{i}].portIndex")
        port = hc.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            return ("error", f"healthChecks[{i}].port")
        if port is None and port_index != index:
            continue
        protocol = str(hc.get("protocol") or "HTTP")
        if protocol == "COMMAND" or protocol not in ("HTTP", "MESOS_HTTP", "HTTPS",
                                                     "MESOS_HTTPS", "TCP", "MESOS_TCP"):
            passed_over = passed_over or f"healthChecks[{i}] is a {protocol} check"
            continue
        return (i, protocol)
    return passed_over


@pytest.mark.parametrize("checks", [
    [],
    [{"protocol": "TCP", "portIndex": 1}, {"protocol": "HTTP"}],
    [{"protocol": "COMMAND"}, {"protocol": "TCP", "portIndex": 1}],
    [{"protocol": "COMMAND", "port": 9000}, {"protocol": "HTTP", "portIndex": 1}],
    [{"protocol": "TCP", "portIndex": 2}, {"protocol": "HTTP", "port": 8080},
     {"protocol": "TCP", "portIndex": 1}],
    [{"protocol": "TCP", "portIndex": 0}, {"protocol": "TCP", "portIndex": -1}],
    [{"protocol": "TCP", "portIndex": 1}, {"protocol": "TCP", "port": 70000},
     {"protocol": "TCP", "portIndex": 0}],
    [{"protocol": "UDP", "portIndex": 0}, {"protocol": "MESOS_TCP", "portIndex": True}],
    [{"protocol": "HTTPS", "portIndex": None}, {"protocol": "TCP", "portIndex": 2}],
])
def test_the_one_pass_health_check_choice_is_marathon_lbs(checks: list[Any]) -> None:
    from servicerouter.marathon.healthchecks import BadHealthCheck, Checks

    once = Checks(checks)
    for index in range(4):
        try:
            picked = once.pick(index)
            got = (picked[0], picked[2]) if isinstance(picked, tuple) else picked
        except BadHealthCheck as bad:
            got = ("error", bad.where)
        assert got == _pick_by_scanning(checks, index), (checks, index)


def test_an_error_quotes_at_most_a_short_piece_of_the_tenants_value() -> None:
    # The whole value went into the message (and, for an id, the key) of app_errors:
    # a 2 MB id or port was a 2 MB log line and /status entry at every change.
    huge = "9" * 2_000_000
    apps = [{"id": huge}, {"id": ["x" * 1000]},
            {"id": "/p", "portDefinitions": [{"port": huge}]},
            {"id": "/n", "networks": [{"mode": huge}]},
            {"id": "/c", "networks": [{"mode": "container"}],
             "container": {"portMappings": [{"containerPort": huge}]}},
            json.loads(_GOOD)]
    result = parse_apps({"apps": apps}, "m", resolve)
    assert [a.id for a in result.apps] == ["/good"]
    assert len(result.errors) == 5
    for error in result.errors:
        assert len(error.app_id) <= 300 and len(error.message) <= 500, str(error)[:300]
