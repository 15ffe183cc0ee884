"""servicerouter_haproxy_up and /status's haproxy_up: whether HAProxy's admin socket
answers, kept current by the daemon itself (not only when someone asks /healthz), and
the same answer in both places."""

from __future__ import annotations

import asyncio

import httpx

from servicerouter.haproxy.runtime import RuntimeUnavailable
from servicerouter.planner import ReloadReason
from servicerouter.web import create_app

from .test_engine import counter, make_engine, started


def gone() -> RuntimeUnavailable:
    return RuntimeUnavailable("cannot connect to /x.sock", address="/x.sock")


async def test_haproxy_up_follows_the_admin_socket_with_no_apps_routed() -> None:
    """A new LB host with no apps yet: nothing is reconciled or sent at runtime, so only
    the once-a-second worker check asks HAProxy. The gauge stayed at 0 (and
    ServicerouterHAProxyDown paged) for a healthy HAProxy, unless something polled
    /healthz; and a dead one went unseen."""
    engine, runtime, _, reloader = make_engine()
    engine.request_reload(ReloadReason.STARTUP)
    await engine.step()
    assert reloader.reloads == 1 and not engine.layout
    await engine.reconciler.check_worker()
    assert counter(engine, "servicerouter_haproxy_up") == 1
    assert engine.haproxy_ok is True

    async def down() -> dict[str, str]:
        raise gone()

    runtime.show_info = down  # type: ignore[method-assign]
    await engine.reconciler.check_worker()
    assert counter(engine, "servicerouter_haproxy_up") == 0
    assert engine.haproxy_ok is False


async def test_healthz_and_status_agree_on_haproxy() -> None:
    """/healthz's own probe set the gauge but not /status's haproxy_up: with HAProxy
    stopped, /metrics said 0 and /status said true (until the next reconcile)."""
    engine, runtime, _, _ = make_engine()
    await started(engine, 1)
    assert engine.haproxy_ok is True

    async def down() -> dict[str, str]:
        raise gone()

    runtime.show_info = down  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://sr") as client:
        assert (await client.get("/healthz")).status_code == 503
        status = (await client.get("/status")).json()
    assert counter(engine, "servicerouter_haproxy_up") == 0
    assert status["haproxy_up"] is False


async def test_haproxy_up_while_marathon_is_down_at_start() -> None:
    """A restart while Marathon is down: the daemon retries its first sync, and HAProxy
    serves its last config meanwhile. Nothing asked HAProxy, so the gauge said 0 and
    ServicerouterHAProxyDown (critical) blamed HAProxy for Marathon's outage."""
    engine, _, _, _ = make_engine()  # its Marathon client is None: every sync fails
    stop = asyncio.Event()
    run = asyncio.ensure_future(engine.run(stop))
    try:
        for _ in range(500):  # bounded: 5 s
            if counter(engine, "servicerouter_haproxy_up") == 1:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
    assert engine.last_sync is None  # still retrying the first sync
    assert counter(engine, "servicerouter_haproxy_up") == 1
    assert engine.haproxy_ok is True
