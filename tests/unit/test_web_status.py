"""/status while the engine moves on: the answer describes what is still there."""

from __future__ import annotations

import httpx

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
