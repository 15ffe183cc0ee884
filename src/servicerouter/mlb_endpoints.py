"""marathon-lb's operator endpoints, served by the daemon's web server.

HAProxy's stats frontend answers ``/_haproxy_health_check`` itself
(``monitor-uri``) and forwards the others to these routes, so tools written
for marathon-lb's port 9090 keep working:

- ``/_haproxy_getconfig``: the running ``haproxy.cfg``;
- ``/_haproxy_getvhostmap``: ``vhost backend`` per line (marathon-lb's map file);
- ``/_haproxy_getappmap``: ``app-id backend`` per line;
- ``/_haproxy_getpids``: the serving HAProxy worker's pid;
- ``/_mlb_signal/hup``: fetch every app from Marathon and apply (marathon-lb's SIGHUP);
- ``/_mlb_signal/usr1``: reload HAProxy with the current state (marathon-lb's SIGUSR1).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .haproxy.render import app_id_routes
from .haproxy.runtime import HAProxyRuntimeError
from .layout import Layout
from .planner import ReloadReason

if TYPE_CHECKING:
    from .engine import Engine


def vhost_map(layout: Layout) -> str:
    lines = sorted(f"{host} {name}" for name, shape in layout.items()
                   for host in shape.service.options.vhosts)
    return "".join(f"{ln}\n" for ln in lines)


def app_map(layout: Layout) -> str:
    """The X-Marathon-App-Id routes, as the app-id frontend has them: an id a laxer
    Marathon let hold a newline or a space ("/x\n/shop/web") gets none, instead of a
    line of its own naming another app's id beside this app's backend."""
    return "".join(f"{r['app_id']} {r['backend']}\n" for r in app_id_routes(layout))


def mlb_routes(engine: Engine) -> list[Route]:
    async def getconfig(_: Request) -> Response:
        if engine.running_config is None:
            return PlainTextResponse("no configuration is live yet\n", status_code=503)
        return PlainTextResponse(engine.running_config)

    async def getvhostmap(_: Request) -> Response:
        return PlainTextResponse(vhost_map(engine.layout))

    async def getappmap(_: Request) -> Response:
        return PlainTextResponse(app_map(engine.layout))

    async def getpids(_: Request) -> Response:
        try:
            info = await asyncio.wait_for(engine.runtime.show_info(), 2.0)
        except (HAProxyRuntimeError, asyncio.TimeoutError) as exc:
            return PlainTextResponse(f"HAProxy does not answer: {exc}\n", status_code=503)
        return PlainTextResponse(f"{info.get('Pid', '')}\n")

    async def hup(_: Request) -> Response:
        engine.request_full_sync()
        engine.request_reload(ReloadReason.MANUAL)
        return PlainTextResponse("resync from Marathon and reload requested\n")

    async def usr1(_: Request) -> Response:
        engine.request_reload(ReloadReason.MANUAL)
        return PlainTextResponse("reload requested\n")

    return [
        Route("/_haproxy_getconfig", getconfig),
        Route("/_haproxy_getvhostmap", getvhostmap),
        Route("/_haproxy_getappmap", getappmap),
        Route("/_haproxy_getpids", getpids),
        Route("/_mlb_signal/hup", hup, methods=["GET", "POST"]),
        Route("/_mlb_signal/usr1", usr1, methods=["GET", "POST"]),
    ]
