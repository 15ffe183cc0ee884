"""The simulator over HTTP (fake executor): endpoints, headers, the event stream's bytes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from servicerouter.simulator import SimulatorServer, SimulatorThread

from .harness import TLS

pytestmark = pytest.mark.timeout(30)

SSE = {"Accept": "text/event-stream"}
CACHE_CONTROL = "no-cache, no-store, must-revalidate"


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(
        executor="none", heartbeat_interval=0.2, kill_grace=0.05, relaunch_backoff=0.05
    ) as server:
        yield server


@pytest.fixture
async def client(sim: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=5, verify=TLS) as c:
        yield c


class RawStream:
    """Collects the raw bytes of an open /v2/events response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.data = b""
        self.ended = False
        self.error: Exception | None = None
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for chunk in self.response.aiter_raw():
                self.data += chunk
        except httpx.HTTPError as exc:
            self.error = exc
        self.ended = True

    async def wait_for(self, pred: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
        for _ in range(int(timeout / 0.02)):
            if pred(self.data) or self.ended:
                break
            await asyncio.sleep(0.02)
        assert pred(self.data), self.data[-2000:]
        return self.data

    def events(self) -> list[tuple[str, dict[str, object]]]:
        out = []
        for frame in self.data.split(b"\r\n\r\n"):
            frame = frame.lstrip(b"\r\n")
            if frame.startswith(b"event: "):
                head, data = frame.split(b"\r\n", 1)
                assert data.startswith(b"data: ") and b"\n" not in data
                out.append((head[7:].decode(), json.loads(data[6:])))
        return out

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def open_stream(client: httpx.AsyncClient, params: object = None) -> RawStream:
    request = client.build_request("GET", "/v2/events", headers=SSE, params=params)  # type: ignore[arg-type]
    response = await client.send(request, stream=True)
    assert response.status_code == 200
    return RawStream(response)


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_event_stream_wire_format_heartbeats_and_headers(
    client: httpx.AsyncClient,
) -> None:
    stream = await open_stream(client)
    headers = stream.response.headers
    assert headers["content-type"] == "text/event-stream;charset=UTF-8"
    assert headers["connection"] == "close"
    assert headers["cache-control"] == CACHE_CONTROL
    data = await stream.wait_for(lambda d: d.count(b"\r\n\r\n\r\n") >= 1)
    # First the attach event, then heartbeats: a bare CRLF after a complete frame.
    assert data.startswith(b'event: event_stream_attached\r\ndata: {"remoteAddress":"127.0.0.1"')
    first_frame_end = data.index(b"\r\n\r\n") + 4
    assert data[first_frame_end:].startswith(b"\r\n")
    assert b"id:" not in data and b"retry:" not in data
    r = await client.post("/v2/apps", json={"id": "/web", "instances": 1})
    assert r.status_code == 201
    await stream.wait_for(lambda d: b"event: deployment_success\r\n" in d)
    types = [t for t, _ in stream.events()]
    assert types[:4] == [
        "event_stream_attached",
        "api_post_event",
        "group_change_success",
        "deployment_info",
    ]
    for event_type, payload in stream.events():
        assert payload["eventType"] == event_type
    await stream.close()


async def test_event_type_filter_and_405_without_exact_accept(
    client: httpx.AsyncClient,
) -> None:
    for accept in ("application/json", "text/event-stream, */*", "*/*"):
        r = await client.get("/v2/events", headers={"Accept": accept})
        assert r.status_code == 405, accept
    stream = await open_stream(
        client, [("event_type", "status_update_event"), ("event_type", "app_terminated_event")]
    )
    await client.post("/v2/apps", json={"id": "/web", "instances": 1})
    await stream.wait_for(lambda d: b"TASK_RUNNING" in d)
    await client.delete("/v2/apps/web")
    await stream.wait_for(lambda d: b"app_terminated_event" in d)
    types = {t for t, _ in stream.events()}
    assert types == {"status_update_event", "app_terminated_event"}
    await stream.close()


async def test_stream_controls_close_stall_drop_and_log(
    sim: SimulatorServer, client: httpx.AsyncClient
) -> None:
    stream = await open_stream(client)
    await stream.wait_for(lambda d: b"event_stream_attached" in d)
    seq = (await client.get("/_sim/events/log")).json()["seq"]
    # Stall: nothing at all is sent, heartbeats included.
    assert (await client.post("/_sim/streams/stall")).status_code == 200
    await asyncio.sleep(0.1)
    before = len(stream.data)
    await asyncio.sleep(0.5)
    assert len(stream.data) == before
    await client.post("/_sim/streams/resume")
    await stream.wait_for(lambda d: len(d) > before)
    # Drop: the next event is logged but never reaches the stream.
    r = await client.post("/_sim/events/drop", params={"count": 1})
    assert r.json() == {"dropping": 1}
    await client.post("/v2/apps", json={"id": "/dropped", "instances": 0})
    await stream.wait_for(lambda d: b"group_change_success" in d)
    assert b"api_post_event" not in stream.data
    log = (await client.get("/_sim/events/log", params={"since": seq})).json()["events"]
    assert log[0]["eventType"] == "api_post_event" and log[0]["dropped"] is True
    assert all(isinstance(e["time"], float) and e["seq"] > seq for e in log)
    # Close: the body ends.
    assert (await client.post("/_sim/streams/close")).json() == {"closed": 1}
    await wait_until(lambda: stream.ended)
    assert stream.error is None  # a clean end of body, not a reset
    await stream.close()


async def test_slow_consumer_stream_is_closed(
    sim: SimulatorServer, client: httpx.AsyncClient
) -> None:
    stream = await open_stream(client)
    await stream.wait_for(lambda d: b"event_stream_attached" in d)
    await client.post("/_sim/streams/stall")
    for _ in range(1100):
        sim.bus.publish({"appId": "/x", "eventType": "app_terminated_event", "timestamp": "t"})
    await wait_until(lambda: stream.ended)
    assert not sim.bus.subscribers
    await client.post("/_sim/streams/resume")
    await stream.close()


async def test_apps_endpoints(client: httpx.AsyncClient) -> None:
    web = {
        "id": "/shop/web",
        "instances": 2,
        "labels": {"HAPROXY_GROUP": "external"},
        "portDefinitions": [{"port": 0, "name": "http"}],
    }
    r = await client.post("/v2/apps", json=web)
    assert r.status_code == 201 and r.json()["portDefinitions"][0]["port"] == 10000
    assert r.headers["cache-control"] == CACHE_CONTROL
    assert r.headers["x-marathon-leader"] == f"http://{client.base_url.host}:{client.base_url.port}"
    assert (await client.post("/v2/apps", json=web)).status_code == 409
    await client.post("/v2/apps", json={"id": "/internal", "labels": {"HAPROXY_GROUP": "internal"}})
    bad = await client.post("/v2/apps", json={"id": "/BAD"})
    assert bad.status_code == 422 and bad.json()["details"][0]["path"] == "/id"
    assert (await client.post("/v2/apps", content=b"{nope")).status_code == 400

    await wait_until_running(client, "/shop/web", 2)
    apps = (await client.get("/v2/apps", params={"embed": "apps.tasks"})).json()["apps"]
    assert [a["id"] for a in apps] == ["/shop/web", "/internal"]
    assert len(apps[0]["tasks"]) == 2 and apps[0]["deployments"] == []
    plain = (await client.get("/v2/apps")).json()["apps"][0]
    assert "tasks" not in plain and "tasksRunning" in plain
    sel = await client.get("/v2/apps", params={"label": "HAPROXY_GROUP==external"})
    assert [a["id"] for a in sel.json()["apps"]] == ["/shop/web"]
    assert (await client.get("/v2/apps", params={"label": "a b"})).status_code == 400

    one = await client.get("/v2/apps/shop/web")
    assert one.status_code == 200 and len(one.json()["app"]["tasks"]) == 2
    missing = await client.get("/v2/apps/shop/nope")
    assert missing.status_code == 404
    assert missing.json() == {"message": "App '/shop/nope' does not exist"}

    # Scale with a partial PUT; the deployment shows while in flight.
    r = await client.put("/v2/apps/shop/web", json={"instances": 3})
    assert r.status_code == 200 and set(r.json()) == {"version", "deploymentId"}
    await wait_until_running(client, "/shop/web", 3)
    # PUT on a missing app creates it.
    r = await client.put("/v2/apps/new", json={"instances": 0})
    assert r.status_code == 201

    tasks = (await client.get("/v2/tasks")).json()["tasks"]
    web_tasks = [t for t in tasks if t["appId"] == "/shop/web"]
    assert len(web_tasks) == 3 and all(t["servicePorts"] == [10000] for t in web_tasks)
    staging = await client.get("/v2/tasks", params={"status": "staging"})
    assert staging.json() == {"tasks": []}
    text = (await client.get("/v2/tasks", headers={"Accept": "text/plain"})).text
    line = text.splitlines()[0].split("\t")
    assert line[:2] == ["shop_web", "10000"] and line[-1] == "" and len(line) == 6

    info = (await client.get("/v2/info")).json()
    assert info["elected"] is True and info["leader"] == f"127.0.0.1:{client.base_url.port}"
    assert (await client.get("/v2/leader")).json() == {"leader": info["leader"]}
    pong = await client.get("/ping")
    assert pong.text == "pong" and pong.headers["cache-control"] == CACHE_CONTROL


async def wait_until_running(client: httpx.AsyncClient, app_id: str, n: int) -> dict:
    app: dict = {}
    for _ in range(250):
        app = (await client.get(f"/v2/apps{app_id}")).json()["app"]
        if app["tasksRunning"] == n and not app["deployments"] and len(app["tasks"]) == n:
            return app
        await asyncio.sleep(0.02)
    raise AssertionError(app)


async def test_kill_restart_delete_and_health_flip(client: httpx.AsyncClient) -> None:
    await client.post(
        "/v2/apps",
        json={"id": "/web", "instances": 2, "healthChecks": [{"protocol": "HTTP"}]},
    )
    app = await wait_until_running(client, "/web", 2)
    stream = await open_stream(client)
    victim = app["tasks"][0]["id"]

    r = await client.delete(f"/v2/apps/web/tasks/{victim}", params={"scale": "false"})
    assert r.status_code == 200 and r.json()["task"]["id"] == victim
    await stream.wait_for(lambda d: b'"taskStatus":"TASK_KILLED"' in d)
    app = await wait_until_running(client, "/web", 2)
    assert victim not in [t["id"] for t in app["tasks"]]

    # Health flip via the control endpoint: health_status_changed + re-sent TASK_RUNNING.
    target = app["tasks"][0]["id"]
    r = await client.post(f"/_sim/tasks/{target}/health", json={"alive": False})
    assert r.json()["changed"] is True
    await stream.wait_for(lambda d: b'"alive":false' in d)
    events = stream.events()
    flip = next(
        i
        for i, (t, p) in enumerate(events)
        if t == "health_status_changed_event" and p["alive"] is False
    )
    assert events[flip][1]["instanceId"] == target.rsplit("._app.", 1)[0]
    assert any(
        t == "status_update_event" and p["taskId"] == target and p["taskStatus"] == "TASK_RUNNING"
        for t, p in events[flip:]
    )
    app = (await client.get("/v2/apps/web")).json()["app"]
    assert app["tasksUnhealthy"] == 1
    await client.post(f"/_sim/tasks/{target}/health", json={"alive": True})

    # Rolling restart: every task replaced.
    old = {t["id"] for t in app["tasks"]}
    r = await client.post("/v2/apps/web/restart")
    assert r.status_code == 200
    app = await wait_until_running(client, "/web", 2)
    assert old.isdisjoint(t["id"] for t in app["tasks"])

    r = await client.delete("/v2/apps/web")
    assert r.status_code == 200 and set(r.json()) == {"version", "deploymentId"}
    assert (await client.get("/v2/apps/web")).status_code == 404
    await stream.wait_for(lambda d: b"app_terminated_event" in d)
    await stream.close()


async def test_basic_auth() -> None:
    async with (
        SimulatorServer(executor="none", credentials="alice:secret") as sim,
        httpx.AsyncClient(base_url=sim.url, verify=TLS) as c,
    ):
        for path in ("/v2/apps", "/ping", "/v2/events", "/nope"):
            r = await c.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == 'Basic realm="Mesosphere"'
            assert r.headers["cache-control"] == CACHE_CONTROL
        wrong = "Basic " + base64.b64encode(b"alice:nope").decode()
        assert (await c.get("/v2/apps", headers={"Authorization": wrong})).status_code == 401
        r = await c.get("/v2/apps", auth=("alice", "secret"))
        assert r.status_code == 200


async def test_standby_redirects_events_and_proxies_the_rest(
    sim: SimulatorServer, client: httpx.AsyncClient
) -> None:
    await client.post("/v2/apps", json={"id": "/web", "instances": 0})
    async with (
        SimulatorServer(executor="none", standby_of=sim.url) as standby,
        httpx.AsyncClient(base_url=standby.url, verify=TLS) as c,
    ):
        r = await c.get(
            "/v2/events?event_type=status_update_event&event_type=app_terminated_event",
            headers=SSE,
        )
        assert r.status_code == 302
        assert r.headers["location"] == (
            f"{sim.url}/v2/events?event_type=status_update_event&event_type=app_terminated_event"
        )
        r = await c.get("/v2/apps")
        assert r.status_code == 200 and r.json()["apps"][0]["id"] == "/web"
        assert r.headers["x-marathon-via"].endswith(standby.url.split("//")[1])
        assert r.headers["x-marathon-leader"] == sim.url
        r = await c.put("/v2/apps/web", json={"instances": 1})
        assert r.status_code == 200
        assert (await c.get("/ping")).text == "pong"
    assert sim.state.get_app("/web").instances == 1


async def test_standby_without_leader_answers_502() -> None:
    async with SimulatorServer(executor="none") as dead:
        dead_url = dead.url
    async with (
        SimulatorServer(executor="none", standby_of=dead_url) as standby,
        httpx.AsyncClient(base_url=standby.url, verify=TLS) as c,
    ):
        r = await c.get("/v2/apps")
        assert r.status_code == 502 and "message" in r.json()


def test_simulator_thread_for_synchronous_code() -> None:
    with SimulatorThread(executor="none", apps=[{"id": "/a", "instances": 2}]) as sim:
        r = httpx.get(sim.url + "/v2/apps", params={"embed": "apps.tasks"}, verify=TLS)
        assert r.status_code == 200 and r.json()["apps"][0]["id"] == "/a"
        app = sim.call(sim.scheduler.create_app, {"id": "/b"})
        assert app.id == "/b"
        assert sim.call(lambda: sorted(sim.state.apps)) == ["/a", "/b"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(sim.url + "/ping", timeout=1, verify=TLS)
