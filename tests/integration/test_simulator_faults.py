"""The simulator's fault switches (/_sim/faults, /_sim/events/inject) over HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from servicerouter.simulator import SimulatorServer

from .harness import TLS
from .test_simulator_http import SSE, open_stream, sim, wait_until  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def client(sim: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    async with httpx.AsyncClient(base_url=sim.url, timeout=5, verify=TLS) as c:
        yield c


async def test_faults_are_shown_set_validated_and_cleared(client: httpx.AsyncClient) -> None:
    assert (await client.get("/_sim/faults")).json() == {
        "slow_bytes_per_second": None, "apps_redirect": None, "events_redirect": None,
        "malformed_status": 0, "late_running": False, "events_close_after": None,
        "empty_store": False, "apps_bad_gzip": False}
    r = await client.post("/_sim/faults", json={"late_running": True, "malformed_status": 2})
    assert r.json()["late_running"] is True and r.json()["malformed_status"] == 2
    for bad, says in [({"nope": 1}, "unknown fault 'nope'"),
                      ({"slow_bytes_per_second": 0}, "slow_bytes_per_second"),
                      ({"apps_redirect": "ftp://x"}, "apps_redirect"),
                      ({"events_close_after": -1}, "events_close_after"),
                      ({"empty_store": 1}, "empty_store must be true or false"),
                      ({"apps_bad_gzip": "yes"}, "apps_bad_gzip must be true or false"),
                      ([1], "JSON object")]:
        r = await client.post("/_sim/faults", json=bad)
        assert r.status_code == 400 and says in r.json()["message"]
    assert (await client.delete("/_sim/faults")).json()["late_running"] is False


async def test_redirect_switches_answer_302_with_the_same_path_and_query(
        client: httpx.AsyncClient) -> None:
    await client.post("/_sim/faults", json={"apps_redirect": "http://127.0.0.1:9/",
                                            "events_redirect": "http://127.0.0.1:8"})
    r = await client.get("/v2/apps", params={"embed": "apps.tasks"})
    assert r.status_code == 302
    assert r.headers["location"] == "http://127.0.0.1:9/v2/apps?embed=apps.tasks"
    r = await client.get("/v2/apps/shop/web")
    assert r.headers["location"] == "http://127.0.0.1:9/v2/apps/shop/web"
    r = await client.get("/v2/events", params={"event_type": "x"}, headers=SSE)
    assert r.status_code == 302
    assert r.headers["location"] == "http://127.0.0.1:8/v2/events?event_type=x"
    assert (await client.get("/_sim/status")).status_code == 200  # controls are exempt
    assert (await client.post("/v2/apps", json={"id": "/w"})).status_code == 201


async def test_slow_responses_trickle_but_controls_do_not(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/faults", json={"slow_bytes_per_second": 100})
    start = time.monotonic()
    r = await client.get("/v2/leader")
    took = time.monotonic() - start
    assert r.status_code == 200 and r.json()["leader"]
    assert took >= 0.9 * (len(r.content) - 1) / 100  # a lower bound: it cannot be faster
    assert (await client.get("/_sim/faults")).json()["slow_bytes_per_second"] == 100


async def test_malformed_and_late_running_status_updates(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:  # noqa: F811
    stream = await open_stream(client, {"event_type": "status_update_event"})
    await client.post("/v2/apps", json={"id": "/f", "instances": 1})
    await stream.wait_for(lambda d: b"TASK_RUNNING" in d)
    (task,) = sim.state.get_app("/f").tasks
    await client.post("/_sim/faults", json={"late_running": True, "malformed_status": 1})
    r = await client.delete(f"/v2/apps/f/tasks/{task}", params={"scale": "false"})
    assert r.status_code == 200

    def about(data: bytes) -> list[tuple[str, object]]:
        return [(e["taskStatus"], e["ports"]) for _, e in stream.events()
                if e["taskId"] == task]

    await stream.wait_for(lambda d: [s for s, _ in about(d)][-2:] == ["TASK_KILLED",
                                                                      "TASK_RUNNING"])
    seen = about(stream.data)
    assert [s for s, _ in seen[:-2]] == ["TASK_STAGING", "TASK_STARTING", "TASK_RUNNING",
                                         "TASK_KILLING"]
    assert seen[3][1] == [99999]  # the first update after the switch: malformed
    assert seen[-1][1] == seen[-2][1] != [99999]  # then a stale RUNNING after the kill
    assert all(t.ports != [99999] for t in sim.state.tasks.values())  # the truth stays
    await stream.close()


async def test_inject_publishes_payloads_padded_on_request(client: httpx.AsyncClient) -> None:
    stream = await open_stream(client)
    await stream.wait_for(lambda d: b"event_stream_attached" in d)
    r = await client.post("/_sim/events/inject", json={"pad_bytes": 100_000, "events": [
        {"eventType": "app_terminated_event", "appId": "/big"}]})
    assert r.json()["published"] == 1
    await stream.wait_for(lambda d: b'"appId":"/big"' in d)
    (event,) = [e for name, e in stream.events() if name == "app_terminated_event"]
    assert len(str(event["padding"])) == 100_000
    r = await client.post("/_sim/events/inject", json={"events": [{"no": "type"}]})
    assert r.status_code == 400
    await stream.close()


async def test_inject_raw_writes_the_text_verbatim_to_every_stream(
        client: httpx.AsyncClient) -> None:
    stream = await open_stream(client)
    await stream.wait_for(lambda d: b"event_stream_attached" in d)
    r = await client.post("/_sim/events/inject", json={"raw": "data: {not json\r\n",
                                                        "repeat": 2})
    assert r.json() == {"streams": 1, "bytes": 34}
    await stream.wait_for(lambda d: b"data: {not json\r\n" * 2 in d)
    for bad in ({"raw": 1}, {"raw": "x", "repeat": 0}, {"raw": "x", "repeat": 10**12}):
        assert (await client.post("/_sim/events/inject", json=bad)).status_code == 400
    await stream.close()


async def test_apps_bad_gzip_says_gzip_over_a_body_that_is_not(
        client: httpx.AsyncClient) -> None:
    await client.post("/_sim/faults", json={"apps_bad_gzip": True})
    with pytest.raises(httpx.DecodingError):
        await client.get("/v2/apps")
    assert (await client.get("/ping")).status_code == 200
    await client.delete("/_sim/faults")
    assert "apps" in (await client.get("/v2/apps")).json()


async def test_an_empty_store_lists_nothing_and_loses_nothing(
        client: httpx.AsyncClient) -> None:
    await client.post("/v2/apps", json={"id": "/kept", "instances": 1})
    await client.post("/_sim/faults", json={"empty_store": True})
    assert (await client.get("/v2/apps", params={"embed": "apps.tasks"})).json() == {"apps": []}
    assert (await client.get("/v2/tasks")).json() == {"tasks": []}
    for path in ("/v2/apps/kept", "/v2/apps/kept/tasks"):
        r = await client.get(path)
        assert (r.status_code, r.json()) == (404, {"message": "App '/kept' does not exist"})
    assert (await client.get("/_sim/status")).status_code == 200  # controls are exempt
    await client.delete("/_sim/faults")
    # The store was only hidden: the app and its task are there again.
    apps = (await client.get("/v2/apps", params={"embed": "apps.tasks"})).json()["apps"]
    assert [(a["id"], len(a["tasks"])) for a in apps] == [("/kept", 1)]


async def test_events_close_after_ends_each_stream_after_that_many_chunks(
        client: httpx.AsyncClient) -> None:
    """A proxy with a short timeout, or a flapping leader: each stream ends after N
    chunks of events (heartbeats not counted), and a new stream gets the next ones."""
    await client.post("/_sim/faults", json={"events_close_after": 1})
    first = await open_stream(client, {"event_type": "api_post_event"})
    await client.post("/v2/apps", json={"id": "/one", "instances": 0})
    await first.wait_for(lambda d: b"/one" in d)
    await wait_until(lambda: first.ended)
    assert [e["appDefinition"]["id"] for _, e in first.events()] == ["/one"]  # type: ignore[index]
    second = await open_stream(client, {"event_type": "api_post_event"})
    await client.post("/v2/apps", json={"id": "/two", "instances": 0})
    await second.wait_for(lambda d: b"/two" in d)
    await wait_until(lambda: second.ended)
    assert b"/one" not in second.data and first.data.count(b"event: ") == 1
