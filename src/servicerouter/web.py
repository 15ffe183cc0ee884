"""The daemon's HTTP surface: ``/metrics``, ``/healthz``, ``/livez``, ``/status``,
``/config``, ``POST /resync``.

``/healthz`` is readiness: 503 also when Marathon has not been synced with for long
(the routes may be stale), which a load balancer in front of the LB hosts should act on
and a supervisor should not. ``/livez`` is liveness, for what restarts the instance
(Marathon's health check, the image's HEALTHCHECK): 503 only when its HAProxy does not
answer, since restarting an instance that lost Marathon only loses the last good
config it serves.

Bound to loopback by default (``--listen 127.0.0.1:9091``); binding anywhere
else is the operator's explicit choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from .haproxy.runtime import HAProxyRuntimeError
from .mlb_endpoints import mlb_routes
from .naming import slot_name

if TYPE_CHECKING:
    from .engine import Engine

MAX_PAGE = 1000
MAX_CONNECTIONS = 256
"""Open connections to the web listener; past this a new one is closed at once (each
holds a file descriptor the daemon needs for HAProxy's sockets and ``haproxy -c``)."""
REQUEST_TIMEOUT = 10.0
"""Seconds a connection may go without a request starting or being answered, and
(as nginx's ``send_timeout``) without the client taking any of an answer it was sent:
uvicorn itself closes only idle keep-alive connections, never one that sends nothing or
a request head a byte at a time, and its close waits for the client to take what is
buffered, which one that never reads never does."""


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the bounds above (``uvicorn.Config(http=...)``)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._seen: object = None
        self._unsent = 0  # bytes of answers not yet taken by the kernel, at the last check
        self._guard: asyncio.TimerHandle | None = None
        if len(self.connections) > MAX_CONNECTIONS:
            transport.close()
            return
        self._guard = self.loop.call_later(REQUEST_TIMEOUT, self._check)

    def _check(self) -> None:
        unsent = self.transport.get_write_buffer_size()
        if unsent and self._unsent and unsent >= self._unsent:
            # Nothing taken for REQUEST_TIMEOUT: a /config of megabytes would be held in
            # memory, and the connection open, for as long as the client lives.
            self._guard = None
            self._reset()
            return
        self._unsent = unsent
        cycle = self.cycle
        busy = cycle is not None and not cycle.response_complete
        # An answer in progress or still being taken, or a request started and answered
        # since the last check.
        if busy or unsent or (cycle is not None and cycle is not self._seen):
            self._seen = cycle
            self._guard = self.loop.call_later(REQUEST_TIMEOUT, self._check)
            return
        self._guard = None
        self.transport.close()

    def _reset(self) -> None:
        """Drop the connection and what is buffered for it, ours and the kernel's: after
        a plain close (even asyncio's abort) the kernel went on offering the megabytes
        in its send buffer, and the client's connection stayed open (90 s, measured)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # linger 0: close resets the connection
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None
        super().connection_lost(exc)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ValueError(f"query parameter {name}={raw!r} is not a whole number")
    # isdigit() admits digits int() refuses ("²") and 5,000-digit numbers int() refuses
    if not raw.isascii():
        raise ValueError(f"query parameter {name}={raw[:20]!r} is not a whole number")
    return max(low, min(high, int(raw) if len(raw) <= 18 else high))


def create_app(engine: Engine, *, health_probe_timeout: float = 1.0) -> Starlette:
    """The Starlette application serving ``engine``'s metrics and state."""

    async def metrics(_: Request) -> Response:
        engine.gauges.scrape()
        return Response(generate_latest(engine.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    async def probe_haproxy() -> str | None:
        try:
            await asyncio.wait_for(engine.runtime.show_info(), health_probe_timeout)
        except HAProxyRuntimeError as exc:
            return f"HAProxy does not answer: {exc}"
        except asyncio.TimeoutError:
            return (f"HAProxy does not answer on {engine.config.settings.socket_path} "
                    f"within {health_probe_timeout:g}s")
        return None

    # One probe at a time, shared by every /healthz waiting for it: 200 concurrent
    # checks opened 200 admin-socket sessions at once, and HAProxy refused some, so
    # /healthz said "HAProxy does not answer" about a healthy HAProxy.
    probing: asyncio.Future[str | None] | None = None

    async def haproxy_problems() -> tuple[list[str], str | None]:
        """(why HAProxy does not serve, from the shared probe; why no reload can happen)."""
        nonlocal probing
        problems = []
        if probing is None or probing.done():
            probing = asyncio.ensure_future(probe_haproxy())
        haproxy_problem = await asyncio.shield(probing)  # a client gone cancels only itself
        engine.haproxy_answered(haproxy_problem is None)
        if haproxy_problem:
            problems.append(haproxy_problem)
        reload_problem = engine.reloader.problem()  # e.g. a kept master that is silent
        if reload_problem and haproxy_problem:
            problems.append(reload_problem)
        return problems, reload_problem

    async def livez(_: Request) -> Response:
        """Liveness: HAProxy answers (it serves a config: the last good one, or the one
        left on disk), whatever Marathon does."""
        problems = (await haproxy_problems())[0]
        if problems:
            if not engine.ready.is_set():
                problems.append("no configuration is live yet")
            return JSONResponse({"status": "unhealthy", "reason": "; ".join(problems)},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    async def healthz(_: Request) -> Response:
        problems, reload_problem = await haproxy_problems()
        stale_after = 2 * engine.config.resync_interval + 30
        if engine.last_sync is None:
            problems.append("no successful sync with Marathon yet")
        elif time.time() - engine.last_sync > stale_after:
            problems.append(f"last successful sync with Marathon was "
                            f"{time.time() - engine.last_sync:.0f}s ago (> {stale_after:.0f}s)")
        if not engine.ready.is_set():
            problems.append("no configuration is live yet")
        if problems:
            return JSONResponse({"status": "unhealthy", "reason": "; ".join(problems)},
                                status_code=503)
        excluded = len(engine.app_errors) + len(engine.state.problem_list())
        degraded = engine.marathon_health.problems()  # HAProxy keeps the last good state
        if reload_problem:  # the workers serve; a change of shape waits for the master
            degraded.append(reload_problem)
        failing = engine.reload_pipeline.failing
        if failing is not None:  # changes that need a reload wait; the last config serves
            since, stage, why = failing
            degraded.append(f"reloads fail (stage {stage}) for {time.time() - since:.0f}s: "
                            f"{why}")
        if excluded:  # HAProxy serves everything else: healthy, with apps left out
            degraded.append(f"{excluded} services left out or limited; see /status problems")
        if degraded:
            body: dict[str, object] = {"status": "degraded", "reason": "; ".join(degraded)}
            if excluded:
                body["services_excluded"] = excluded
            return JSONResponse(body)
        return JSONResponse({"status": "ok"})

    async def status(request: Request) -> Response:
        try:
            limit = _int_param(request, "limit", 100, 1, MAX_PAGE)
            offset = _int_param(request, "offset", 0, 0, 10**9)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        app_filter = request.query_params.get("app")
        names = sorted(n for n, shape in engine.layout.items()
                       if shape.app_id  # not a spare backend (range mode)
                       and (app_filter is None or _under(shape.app_id, app_filter)))
        page = names[offset:offset + limit]
        haproxy: dict[tuple[str, str], str] = {}
        if page:
            # A few backends: ask for each; a large page: one read of everything.
            targets: list[str | None] = ([engine.layout[n].name for n in page]
                                         if len(page) <= 20 else [None])
            try:
                for target in targets:
                    for s in await engine.runtime.show_servers_state(target):
                        haproxy[(s.backend, s.server)] = s.admin + ("" if s.up else " down")
            except HAProxyRuntimeError:
                haproxy = {}
        # The engine went on while HAProxy answered: a service left out or deleted
        # meanwhile (or a range-mode backend handed back) is no longer described.
        services = [_service_status(engine, n, haproxy) for n in page
                    if n in engine.layout and engine.layout[n].app_id]
        used = sum(1 for slots in engine.table.values() for s in slots if s is not None)
        body: dict[str, Any] = {
            "counts": {"apps": len(engine.state.apps), "services": sum(
                           1 for shape in engine.layout.values() if shape.app_id),
                       "endpoints": used, "reloads": engine.reloads,
                       "runtime_updates": engine.runtime_updates},
            "last_reload": None if engine.last_reload is None else {
                "time": engine.last_reload[0], "reason": engine.last_reload[1]},
            "last_sync": engine.last_sync,
            "haproxy_up": engine.haproxy_ok,
            "haproxy_master_problem": engine.reloader.problem(),
            "marathon": {"up": engine.marathon_health.up,
                         "stream_connected": engine.marathon_health.stream_connected,
                         "stream_url": engine.marathon_health.stream_url,
                         "problems": engine.marathon_health.problems()},
            "problems": _problems(engine, app_filter),
            "total": len(names), "offset": offset, "limit": limit,
            "services": services,
        }
        return JSONResponse(body)

    async def config(_: Request) -> Response:
        if engine.running_config is None:
            return PlainTextResponse("no configuration is live yet\n", status_code=503)
        return PlainTextResponse(engine.running_config)

    async def resync(request: Request) -> Response:
        accept = request.query_params.get("accept_empty", "0").lower()
        if accept not in ("0", "1", "false", "true"):
            return PlainTextResponse(f"accept_empty={accept!r}: expected 1 or 0\n",
                                     status_code=400)
        if accept in ("1", "true"):
            engine.intake.accept_empty_once()
        engine.request_full_sync()
        return PlainTextResponse("full resync from Marathon requested" + (
            "; an answer listing no apps will be applied\n" if accept in ("1", "true")
            else "\n"), status_code=202)

    return Starlette(routes=[
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/livez", livez),
        Route("/status", status),
        Route("/config", config),
        Route("/resync", resync, methods=["POST"]),
        *mlb_routes(engine),  # marathon-lb's /_haproxy_* and /_mlb_signal/* (mlb_endpoints)
    ])


def _under(app_id: str, app_filter: str) -> bool:
    """``?app=``: the app itself and everything under it; ``/shop/`` (a group, as
    Marathon writes one) is ``/shop``."""
    base = app_filter.rstrip("/")
    return app_id == base or app_id.startswith(base + "/")


def _service_status(engine: Engine, name: str,
                    haproxy: dict[tuple[str, str], str]) -> dict[str, Any]:
    shape = engine.layout[name]
    slots = engine.table.get(name, [])
    endpoints = []
    for i in range(shape.slots):
        held = slots[i] if i < len(slots) else None
        if held is None:
            continue
        s = slot_name(i + 1)
        endpoints.append({"slot": s, "task_id": held.task_id, "address": f"{held.ip}:{held.port}",
                          "desired": held.state.value,
                          "haproxy": haproxy.get((shape.name, s))})
    used = len(endpoints)
    opts = shape.service.options
    out = {"app_id": shape.app_id, "port": shape.service.port, "backend": shape.name,
           "mode": opts.mode.value, "vhosts": list(opts.vhosts),
           "slots": {"used": used, "free": shape.slots - used}, "endpoints": endpoints}
    deployment = engine.state.deployment(shape.app_id)
    if deployment is not None:  # a blue/green pair routed as one app (deployments.py)
        out["deployment"] = {"members": deployment[0], "definition": deployment[1]}
    return out


def _problems(engine: Engine, app_filter: str | None) -> list[dict[str, Any]]:
    """Apps (or their service ports) left out, and why; at most MAX_PAGE."""
    out: list[dict[str, Any]] = [{"app_id": app_id, "reason": "invalid_app", "error": message}
                                 for app_id, message in engine.app_errors.items()]
    out += [{"app_id": p.app_id, "service_index": p.index, "reason": p.reason, "label": p.label,
             "value": p.value, "error": f"{p.label}={p.value!r} {p.message}"}
            for p in engine.state.problem_list()]
    if app_filter is not None:
        out = [p for p in out if _under(p["app_id"], app_filter)]
    return sorted(out, key=lambda p: (p["app_id"], p["error"]))[:MAX_PAGE]
