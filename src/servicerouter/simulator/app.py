"""The Starlette application factory of the Marathon simulator.

A leader serves the Marathon API (:mod:`.api`) and the test controls
(:mod:`.control`). A standby (``ctx.standby_of``) answers ``/ping`` and
``/_sim/faults`` itself, redirects ``/v2/events`` to the leader (302, same
query) and proxies everything else to the leader (``X-Marathon-Via``; 502 when unreachable).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from . import api, control
from .context import SimContext
from .faults import FaultMiddleware
from .middleware import LeaderProxy, MarathonHeaders
from .sse import events_endpoint

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal Server Error"
    return api.json_response({"message": f"HTTP {status} {detail}"}, status)


def create_app(ctx: SimContext, proxy: LeaderProxy | None = None) -> ASGIApp:
    """Build the ASGI app. ``proxy`` is required for a standby (it owns an HTTP client)."""
    if ctx.standby_of is not None:
        if proxy is None:
            proxy = LeaderProxy(ctx.standby_of, ctx.advertised)
        routes = [
            Route("/ping", api.ping, methods=["GET", "HEAD"]),
            Route("/v2/events", events_endpoint, methods=["GET"]),
            # Faults are per instance: a standby's own switches, not the leader's.
            Route("/_sim/faults", control.faults, methods=["GET", "POST", "DELETE"]),
            Route("/{path:path}", proxy.forward, methods=ALL_METHODS),
        ]
    else:
        routes = api.routes() + control.routes()
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.ctx = ctx
    leader_url = None if ctx.standby_of is not None else f"http://{ctx.advertised}"
    return MarathonHeaders(FaultMiddleware(app, ctx.bus.faults), leader_url, ctx.credentials)
