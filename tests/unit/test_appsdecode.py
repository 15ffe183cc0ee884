"""The msgspec decoder of /v2/apps gives the parser exactly what json.loads gave it:
the same apps, errors (each naming the app and the field) and warnings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from servicerouter.marathon.appsdecode import TaskJSON, decode_apps
from servicerouter.marathon.parse import ParseResult, PayloadError, parse_apps

from .payloads import FIXTURES, resolve

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "marathon-samples"
PAYLOADS = sorted(FIXTURES.glob("apps_*.json")) + sorted(SAMPLES.glob("apps_*.json"))
ODD = [None, True, 0, 7, -1, 1.5, "", "x", [], [None], [1, "a"], {}, {"x": None}]


def both(body: bytes) -> tuple[ParseResult | str, ParseResult | str]:
    def run(decode: Any) -> ParseResult | str:
        try:
            return parse_apps(decode(body), "http://m", resolve)
        except (PayloadError, ValueError) as exc:
            return f"{type(exc).__name__}"
    return run(json.loads), run(decode_apps)


def test_there_are_payloads_to_compare() -> None:
    assert len(PAYLOADS) >= 7


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fixture_and_sample_parses_the_same(path: Path) -> None:
    old, new = both(path.read_bytes())
    assert isinstance(old, ParseResult) and old.apps
    assert new == old


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_odd_values_in_any_app_or_task_field_give_the_same_errors(path: Path) -> None:
    payload = json.loads(path.read_bytes())
    compared = 0
    for i, app in enumerate(payload["apps"]):
        targets: list[tuple[str, ...]] = [(k,) for k in app]
        targets += [("tasks", str(t), k) for t, task in enumerate(app.get("tasks") or [])
                    if isinstance(task, dict) for k in task]
        for target in targets:
            # Changed in place and put back (a deep copy of the payload for each odd value
            # cost a sixth of the test): only the dumped bytes are parsed.
            node = payload["apps"][i]
            for step in target[:-1]:
                node = node[int(step)] if isinstance(node, list) else node[step]
            kept = node[target[-1]]
            for value in ODD:
                node[target[-1]] = value
                old, new = both(json.dumps(payload).encode())
                assert new == old, (target, value)
                compared += 1
            node[target[-1]] = kept
    assert compared > 50


@pytest.mark.parametrize("body", [
    b"", b"nope", b"[]", b"{}", b'{"apps": null}', b'{"apps": {}}', b'{"apps": []}',
    b'{"apps": [null]}', b'{"apps": [1, {"id": "/a"}]}', b'{"apps": [{"id": "/a", "tasks": 3}]}',
    b'{"apps": [{"id": "/a", "tasks": [null]}]}', b'{"apps": [{"id": "/a", "x": NaN}]}',
    b'{"apps": [{"id": "/a", "id": "/b"}]}', b'{"apps": [{"id": "/a"}], "apps": []}',
])
def test_bodies_of_another_shape_are_reported_the_same(body: bytes) -> None:
    old, new = both(body)
    assert new == old


def test_unread_fields_are_dropped() -> None:
    body = json.dumps({"apps": [{"id": "/a", "cmd": "sleep", "env": {"A": "1"},
                                 "tasks": [{"id": "t", "slaveId": "s", "host": "h"}]}]})
    assert decode_apps(body.encode()) == {"apps": [{"id": "/a", "tasks": [
        TaskJSON(id="t", host="h")]}]}


def test_a_task_field_of_another_type_decodes_that_app_as_json_loads_does() -> None:
    odd = {"id": "/b", "tasks": [{"id": "t", "ports": [1, "2"], "host": "h"}]}
    apps = decode_apps(json.dumps({"apps": [{"id": "/a", "tasks": [{"id": "t"}]}, odd]})
                       .encode())["apps"]
    assert apps[0]["tasks"] == [TaskJSON(id="t")] and apps[1] == odd


def test_apps_are_decoded_one_at_a_time_and_released_behind_the_parser() -> None:
    body = json.dumps({"apps": [
        {"id": "/a", "portDefinitions": [{"port": 10000}], "tasks": []},
        {"id": "/b", "tasks": 3},  # not Marathon's shape: json.loads, this app only
        {"id": "/c", "portDefinitions": [{"port": 10002}], "tasks": []},
    ]}).encode()
    payload = decode_apps(body)
    apps = payload["apps"]
    assert len(apps) == 3 and apps[1] == {"id": "/b", "tasks": 3}
    assert apps[0] == {"id": "/a", "portDefinitions": [{"port": 10000}], "tasks": []}
    result = parse_apps(payload, "http://m", resolve, consume=True)
    assert [a.id for a in result.apps] == ["/a", "/c"]
    assert [e.app_id for e in result.errors] == ["/b"]  # reported, the others applied
    with pytest.raises(LookupError):
        apps[0]  # read once, then released: the decoded payload is never whole
