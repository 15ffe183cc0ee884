"""contrib/marathon/servicerouter.json: servicerouter as a Marathon app, posted to the
simulator, which validates it as Marathon does (constraints, health checks, ports)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servicerouter import cli
from servicerouter.layout import Settings, desired_state
from servicerouter.marathon.parse import parse_apps
from servicerouter.resolve import CachingResolver

from .harness import Simulator

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "contrib" / "marathon" / "servicerouter.json"
pytestmark = [pytest.mark.integration]


@pytest.fixture
def marathon(tmp_path: Path) -> Iterator[Simulator]:
    # No executor: the app names a Docker image, which is not run here.
    sim = Simulator(tmp_path, extra=["--executor", "none"]).start()
    try:
        yield sim
    finally:
        sim.stop()


def definition() -> dict[str, Any]:
    return dict(json.loads(APP.read_text()))


def test_marathon_accepts_the_app_as_shipped(marathon: Simulator) -> None:
    r = marathon.http.post("/v2/apps", json=definition())
    assert r.status_code == 201, r.text
    app = marathon.app("/servicerouter")
    assert app["constraints"] == [["hostname", "UNIQUE"], ["node", "CLUSTER", "lb"]]
    assert app["networks"] == [{"mode": "host"}] and app["requirePorts"] is True
    (check,) = app["healthChecks"]
    assert (check["protocol"], check["path"], check["portIndex"]) == ("MESOS_HTTP", "/livez",
                                                                       0)
    # One instance per LB host: a rolling upgrade cannot start an extra one first.
    assert app["upgradeStrategy"] == {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}


def test_the_health_check_asks_the_port_servicerouter_listens_on() -> None:
    d = definition()
    port = d["portDefinitions"][d["healthChecks"][0]["portIndex"]]["port"]
    assert d["env"]["SERVICEROUTER_LISTEN"].endswith(f":{port}")
    run = cli.build_parser(d["env"]).parse_args(["run"])
    assert run.listen[1] == port and run.marathon and run.group == ["external"]


def test_servicerouter_does_not_route_its_own_port() -> None:
    payload = {"apps": [{**definition(), "version": "2026-01-01T00:00:00.000Z", "tasks": []}]}
    result = parse_apps(payload, "contrib", CachingResolver())
    assert not result.errors, result.errors
    (app,) = result.apps
    assert app.services, "the admin port is parsed"
    assert desired_state(result.apps, Settings()) == {}, "but not routed, in any group"
    assert desired_state(result.apps, Settings(groups=("external",))) == {}


@pytest.mark.parametrize(("constraint", "message"), [
    (["hostname", "UNIQUE", "x"], "Value specified but not used"),
    (["node", "CLUSTER"], "Missing value"),
    (["node", "CLUSTER", ""], "Missing value"),
    (["hostname"], "Each constraint must have either 2 or 3 fields"),
    (["hostname", "SPREAD"], "Constraint operator must be one of the following"),
    (["hostname", "GROUP_BY", "two"], "Value was specified but is not a number"),
    (["rack", "LIKE", "("], "'(' is not a valid regular expression"),
])
def test_marathon_refuses_a_bad_constraint(marathon: Simulator, constraint: list[str],
                                           message: str) -> None:
    d = definition()
    d["constraints"] = [["hostname", "UNIQUE"], constraint]
    r = marathon.http.post("/v2/apps", json=d)
    assert r.status_code == 422, r.text
    details = r.json()["details"]
    assert details[0]["path"] == "/constraints(1)"
    assert details[0]["errors"][0].startswith(message), details


def test_marathon_refuses_a_health_check_on_a_missing_port(marathon: Simulator) -> None:
    d = definition()
    d["healthChecks"][0]["portIndex"] = 1
    r = marathon.http.post("/v2/apps", json=d)
    assert r.status_code == 422, r.text
    assert r.json()["details"][0]["path"] == "/healthChecks(0)/portIndex"
