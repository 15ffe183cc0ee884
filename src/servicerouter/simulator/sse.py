"""``GET /v2/events``: Marathon's Server-Sent Events stream, byte for byte.

Headers ``Content-Type: text/event-stream;charset=UTF-8`` and
``Connection: close``; frames ``event: <type>\\r\\ndata: <json>\\r\\n\\r\\n``;
a bare ``\\r\\n`` heartbeat after ``heartbeat_interval`` of silence; the body
ends when the server closes the stream (control endpoint, slow consumer).
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .context import SimContext
from .events import EventBus, Subscriber, stream_frames

EVENT_STREAM = "text/event-stream"


class EventStreamResponse(Response):
    def __init__(self, bus: EventBus, sub: Subscriber, heartbeat_interval: float) -> None:
        super().__init__(status_code=200)
        self.bus = bus
        self.sub = sub
        self.heartbeat_interval = heartbeat_interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream;charset=UTF-8"),
                    (b"connection", b"close"),
                ],
            }
        )

        close_after = self.bus.faults.events_close_after  # a fault switch, or None

        async def write() -> None:
            sent = 0
            if close_after == 0:
                return
            async for chunk in stream_frames(self.bus, self.sub, self.heartbeat_interval):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if chunk != b"\r\n":  # heartbeats do not count
                    sent += 1
                    if close_after is not None and sent >= close_after:
                        return

        async def wait_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        writer = asyncio.ensure_future(write())
        reader = asyncio.ensure_future(wait_disconnect())
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (writer, reader):
                fut.cancel()
            for fut in (writer, reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fut
            self.bus.unsubscribe(self.sub)
        if not reader.done() or reader.cancelled():
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def events_endpoint(request: Request) -> Response:
    ctx: SimContext = request.app.state.ctx
    if request.headers.get("accept", "").strip() != EVENT_STREAM:
        return JSONResponse(
            {"message": "HTTP 405 Method Not Allowed: Accept must be text/event-stream"},
            status_code=405,
        )
    if ctx.standby_of is not None:
        query = request.url.query
        location = f"{ctx.standby_of.rstrip('/')}/v2/events" + (f"?{query}" if query else "")
        return Response(status_code=302, headers={"Location": location})
    remote = request.client.host if request.client else "127.0.0.1"
    sub = ctx.bus.subscribe(remote, request.query_params.getlist("event_type"))
    return EventStreamResponse(ctx.bus, sub, ctx.heartbeat_interval)
