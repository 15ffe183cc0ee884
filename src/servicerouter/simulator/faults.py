"""Fault switches for tests (``/_sim/faults``): a Marathon that answers, but badly.

=========================  =========================================================
``slow_bytes_per_second``  every Marathon API response body (``/v2/events``
                           included, ``/_sim/`` never) trickles out at this rate
``apps_redirect``          ``GET /v2/apps`` and ``/v2/apps/...`` answer 302 to this
                           base URL (same path and query)
``events_redirect``        ``GET /v2/events`` answers 302 to this base URL (same
                           query); two simulators pointing at each other loop
``malformed_status``       the next N ``status_update_event`` go out with
                           ``"ports": [99999]`` (``/v2/apps`` stays right)
``late_running``           after every terminal ``status_update_event``, a stale
                           copy saying ``TASK_RUNNING`` follows (out of order)
``events_close_after``     each ``/v2/events`` stream ends after this many chunks of
                           events (0: right after its headers), as a proxy with a
                           short timeout or a flapping leader would end it
``apps_bad_gzip``          ``GET /v2/apps`` and ``/v2/apps/...`` say
                           ``Content-Encoding: gzip`` over a body that is not
                           gzip (a proxy that mangles answers)
``empty_store``            ``GET /v2/apps`` lists no apps, ``/v2/apps/{id}...`` is a
                           404 and ``/v2/tasks`` lists none, with no events: a
                           leader on an empty or wrong ZooKeeper path (the tasks
                           keep running)
=========================  =========================================================

The HTTP switches live in :class:`FaultMiddleware`; the event ones are applied
by :meth:`apply_to_event` from the event bus.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, fields
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .model import TERMINAL_STATES, JsonDict

CONTROL_PREFIX = "/_sim/"


@dataclass
class Faults:
    slow_bytes_per_second: float | None = None
    apps_redirect: str | None = None
    events_redirect: str | None = None
    malformed_status: int = 0
    late_running: bool = False
    events_close_after: int | None = None
    empty_store: bool = False
    apps_bad_gzip: bool = False

    def update(self, body: Any) -> None:
        """Apply a ``POST /_sim/faults`` body; raises ValueError naming the bad key."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object of fault switches")
        known = {f.name for f in fields(self)}
        for key, value in body.items():
            if key not in known:
                raise ValueError(f"unknown fault {key!r} (known: {', '.join(sorted(known))})")
            if key == "slow_bytes_per_second" and value is not None and (
                    not isinstance(value, (int, float)) or value <= 0):
                raise ValueError("slow_bytes_per_second must be a number > 0 or null")
            if key in ("apps_redirect", "events_redirect") and value is not None and (
                    not isinstance(value, str) or not value.startswith(("http://", "https://"))):
                raise ValueError(f"{key} must be an http(s) base URL or null")
            if key == "malformed_status" and (not isinstance(value, int) or value < 0):
                raise ValueError("malformed_status must be a count >= 0")
            if key == "events_close_after" and value is not None and (
                    type(value) is not int or value < 0):
                raise ValueError("events_close_after must be a count >= 0 or null")
            if key in ("late_running", "empty_store", "apps_bad_gzip") \
                    and not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            setattr(self, key, value.rstrip("/") if isinstance(value, str) else value)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)

    def as_json(self) -> JsonDict:
        return asdict(self)

    def apply_to_event(self, payload: JsonDict) -> list[JsonDict]:
        """The payloads to send for one event under the current switches."""
        if payload.get("eventType") != "status_update_event":
            return [payload]
        if self.malformed_status > 0:
            self.malformed_status -= 1
            payload = {**payload, "ports": [99999]}
        out = [payload]
        if self.late_running and payload.get("taskStatus") in TERMINAL_STATES:
            out.append({**payload, "taskStatus": "TASK_RUNNING", "message": "late"})
        return out


class FaultMiddleware:
    """Serves the HTTP fault switches of ``faults`` in front of the simulator."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        f = self.faults
        query = scope.get("query_string", b"").decode("latin-1")
        target = None
        if f.apps_redirect and (path == "/v2/apps" or path.startswith("/v2/apps/")) \
                and scope.get("method") == "GET":
            target = f.apps_redirect + path
        elif f.events_redirect and path == "/v2/events":
            target = f.events_redirect + path
        if target is not None:
            location = target + (f"?{query}" if query else "")
            await Response(status_code=302, headers={"Location": location})(scope, receive, send)
            return
        if f.apps_bad_gzip and scope.get("method") == "GET" and (
                path == "/v2/apps" or path.startswith("/v2/apps/")):
            await Response(b"this is not gzip", headers={"Content-Encoding": "gzip"},
                           media_type="application/json")(scope, receive, send)
            return
        if f.empty_store and scope.get("method") == "GET" and (
                path in ("/v2/apps", "/v2/tasks") or path.startswith("/v2/apps/")):
            if path == "/v2/tasks":
                empty = JSONResponse({"tasks": []})
            elif path == "/v2/apps":
                empty = JSONResponse({"apps": []})
            else:  # Marathon's answer for an app it does not know
                app_id = path[len("/v2/apps"):].removesuffix("/tasks")
                empty = JSONResponse({"message": f"App '{app_id}' does not exist"}, 404)
            await empty(scope, receive, send)
            return
        rate = f.slow_bytes_per_second
        if rate is None:
            await self.app(scope, receive, send)
            return

        # Runs until the body is out or the simulator stops (uvicorn cancels it then).
        async def trickle(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            body: bytes = message.get("body", b"")
            for i in range(len(body)):
                await send({"type": "http.response.body", "body": body[i:i + 1],
                            "more_body": True})
                await asyncio.sleep(1.0 / rate)
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app(scope, receive, trickle)
