"""/status while the engine moves on: the answer describes what is still there."""

from __future__ import annotations

import httpx
import pytest

from servicerouter.haproxy.runtime_parse import ServerState
from servicerouter.web import create_app

from .test_engine import app, make_engine, started


async def test_a_service_left_out_while_status_asks_haproxy_is_not_an_error() -> None:
    """/status reads HAProxy's server state between taking the page and describing it;
    a service the engine drops meanwhile (its owner's typo, its app deleted) must not
    turn the answer into a 500 for the operator who asked."""
    engine, runtime, _, _ = make_engine()
    await started(engine, 1)
    engine.mark(engine.state.set_app(app(1, app_id="/other")))
    await engine.step()
    assert {s.app_id for s in engine.layout.values()} == {"/web", "/other"}
    plain = runtime.show_servers_state

    async def meanwhile(backend: str | None = None) -> list[ServerState]:
        engine.mark(engine.state.remove_app("/other"))
        await engine.step()  # the engine drops the service while HAProxy answers
        return await plain(backend)

    runtime.show_servers_state = meanwhile  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://sr") as client:
        r = await client.get("/status")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["app_id"] for s in body["services"]] == ["/web"]
    assert body["services"][0]["endpoints"][0]["task_id"] == "t1"


async def test_app_filter_with_a_trailing_slash_still_matches_the_app_itself() -> None:
    """``?app=/shop/`` (as Marathon writes a group) listed what is under /shop but left
    out /shop itself, services and problems alike; README: the app and all under it."""
    engine, _, _, _ = make_engine()
    await started(engine, 1)
    engine.mark(engine.state.set_app(app(1, app_id="/web/api")))
    await engine.step()
    engine.app_errors["/web"] = "not an app"  # as a full sync reports one (invalid_app)
    engine.app_errors["/webshop"] = "not an app"
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://sr") as client:
        plain = (await client.get("/status", params={"app": "/web"})).json()
        slash = (await client.get("/status", params={"app": "/web/"})).json()
    assert [s["app_id"] for s in plain["services"]] == ["/web", "/web/api"]
    assert [p["app_id"] for p in plain["problems"]] == ["/web"]
    for key in ("services", "problems", "total"):
        assert slash[key] == plain[key], key


async def test_livez_is_haproxy_serving_whatever_marathon_does() -> None:
    """A Marathon health check on /healthz killed an instance that had merely lost
    Marathon: /healthz is 503 once the last full sync is 2 x --resync-interval + 30 s
    old (its documented contract, kept), while HAProxy still serves the last good
    config. /livez, the liveness check, asks only whether HAProxy answers."""
    import time

    from servicerouter.haproxy.runtime import RuntimeUnavailable

    engine, runtime, _, _ = make_engine()
    await started(engine, 1)
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://sr") as client:
        engine.last_sync = time.time()
        assert (await client.get("/livez")).json() == {"status": "ok"}
        engine.last_sync = time.time() - 10_000  # Marathon lost long ago
        ready = await client.get("/healthz")
        assert ready.status_code == 503 and "last successful sync" in ready.json()["reason"]
        alive = await client.get("/livez")
        assert (alive.status_code, alive.json()) == (200, {"status": "ok"})

        async def gone() -> dict[str, str]:
            raise RuntimeUnavailable("cannot connect to /x.sock", address="/x.sock")

        runtime.show_info = gone  # type: ignore[method-assign]
        dead = await client.get("/livez")
        assert dead.status_code == 503
        assert dead.json() == {"status": "unhealthy",
                               "reason": "HAProxy does not answer: cannot connect to /x.sock"}
        assert engine.haproxy_ok is False  # the probe is the one /healthz shares


async def test_each_scrape_counts_slots_once_and_afresh(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """/metrics: the slot gauges (servicerouter_endpoints, servicerouter_slots{used,free})
    come from one walk of the slot table per scrape, not one per gauge (13 ms a scrape at
    10,000 apps), and the next scrape sees a change made in between."""
    from servicerouter import gauges

    walks = []
    real = gauges.slot_counts
    monkeypatch.setattr(gauges, "slot_counts", lambda table: walks.append(1) or real(table))
    engine, _, _, _ = make_engine()
    await started(engine, 1, 2)
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://sr") as client:
        first = (await client.get("/metrics")).text
        assert len(walks) == 1
        assert "servicerouter_endpoints 2.0" in first
        assert 'servicerouter_slots{state="used"} 2.0' in first
        engine.mark(engine.state.set_app(app(1, 2, 3)))
        await engine.step()
        second = (await client.get("/metrics")).text
        assert len(walks) == 2
        assert "servicerouter_endpoints 3.0" in second
        assert 'servicerouter_slots{state="used"} 3.0' in second
