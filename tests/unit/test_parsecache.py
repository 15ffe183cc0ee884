"""A full sync reuses the apps whose JSON did not change (marathon/parsecache.py):
the same App object, with no decode or parse; any change parses that app again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from servicerouter.layout import Settings
from servicerouter.marathon.appsdecode import decode_apps
from servicerouter.marathon.parse import ParseResult, parse_apps
from servicerouter.marathon.parsecache import ParseCache
from servicerouter.state import ClusterState

from .payloads import FIXTURES, resolve


def app(n: int, labels: dict[str, str] | None = None, host: str = "10.0.0.1",
        state: str = "TASK_RUNNING") -> dict[str, Any]:
    return {"id": f"/app{n}", "version": "2026-01-01T00:00:00.000Z",
            "portDefinitions": [{"port": 10000 + n}], "labels": labels or {},
            "tasks": [{"id": f"app{n}.t{k}", "host": host, "ports": [31000 + k],
                       "state": state} for k in range(3)]}


def body(*apps: Any) -> bytes:
    return json.dumps({"apps": list(apps)}).encode()


def parse(content: bytes, cache: ParseCache, resolver: Any = resolve,
          allow_templates: bool = False) -> ParseResult:
    return parse_apps(decode_apps(content), "http://m", resolver, allow_templates,
                      consume=True, cache=cache)


def test_unchanged_app_is_reused_changed_labels_are_parsed_again() -> None:
    cache = ParseCache()
    first = parse(body(app(1), app(2), app(3)), cache)
    assert (cache.parsed, cache.reused) == (3, 0)
    second = parse(body(app(1), app(2, {"HAPROXY_0_MODE": "http"}), app(3)), cache)
    assert (cache.parsed, cache.reused) == (1, 2)
    assert second.apps[0] is first.apps[0] and second.apps[2] is first.apps[2]
    assert second.apps[1] is not first.apps[1]
    assert second.apps[1].labels == {"HAPROXY_0_MODE": "http"}
    assert second.apps[1].services[0].options.mode.value == "http"
    assert second == parse_apps(decode_apps(body(app(1), app(2, {"HAPROXY_0_MODE": "http"}),
                                                  app(3))), "http://m", resolve)


def test_a_task_change_parses_that_app_again() -> None:
    cache = ParseCache()
    parse(body(app(1), app(2)), cache)
    again = parse(body(app(1), app(2, state="TASK_KILLING")), cache)
    assert (cache.parsed, cache.reused) == (1, 1)
    assert {t.state for t in again.apps[1].tasks} == {"TASK_KILLING"}


def test_a_malformed_app_still_parses_the_others_and_is_reported_each_time() -> None:
    bad = {**app(2), "portDefinitions": "nope"}
    cache = ParseCache()
    for _ in range(2):
        result = parse(body(app(1), bad, app(3)), cache)
        assert [a.id for a in result.apps] == ["/app1", "/app3"]
        assert [str(e) for e in result.errors] == [
            "app /app2: field portDefinitions: expected a list, got str; app skipped, "
            "others applied"]
    assert (cache.parsed, cache.reused) == (0, 2)  # the bad one is never kept


def test_an_agent_that_resolves_elsewhere_now_parses_its_apps_again() -> None:
    ips = {"agent-a": "10.0.0.7"}
    cache = ParseCache()
    first = parse(body(app(1, host="agent-a"), app(2)), cache, ips.get)
    assert {t.ip for t in first.apps[0].tasks} == {"10.0.0.7"}
    ips["agent-a"] = "10.0.0.8"
    second = parse(body(app(1, host="agent-a"), app(2)), cache, ips.get)
    assert (cache.parsed, cache.reused) == (1, 1)
    assert {t.ip for t in second.apps[0].tasks} == {"10.0.0.8"}


def test_allow_templates_is_part_of_what_was_parsed() -> None:
    labelled = app(1, {"HAPROXY_0_BACKEND_HEAD": "backend {backend}\n"})
    cache = ParseCache()
    off = parse(body(labelled), cache)
    on = parse(body(labelled), cache, allow_templates=True)
    assert cache.reused == 0
    assert off.apps[0].services[0].options.raw_templates == ()
    assert on.apps[0].services[0].options.raw_templates != ()


def test_only_the_last_parse_is_kept_and_duplicates_are_still_refused() -> None:
    cache = ParseCache()
    parse(body(app(1), app(2)), cache)
    parse(body(app(2)), cache)
    assert len(cache) == 1
    twice = parse(body(app(2), app(2)), cache)
    assert [a.id for a in twice.apps] == ["/app2"]
    assert [str(e) for e in twice.errors] == ["app /app2: listed twice; second copy skipped"]


def test_every_fixture_parses_the_same_reused_as_fresh() -> None:
    for path in sorted(FIXTURES.glob("apps_*.json")):
        content: bytes = Path(path).read_bytes()
        cache = ParseCache()
        fresh = parse(content, cache)
        assert parse(content, cache) == fresh, path.name


def test_a_resync_of_reused_apps_changes_nothing_in_the_state() -> None:
    state = ClusterState(Settings(stats_port=0, http_port=0, https_port=0))
    cache = ParseCache()
    content = body(app(1), app(2), app(3))
    assert state.replace_all(parse(content, cache).apps)
    assert state.replace_all(parse(content, cache).apps) == set()
    assert cache.reused == 3
    dirty = state.replace_all(parse(body(app(1), app(2), app(3, state="TASK_KILLING")),
                                    cache).apps)
    assert dirty == set(state._backends["/app3"])
