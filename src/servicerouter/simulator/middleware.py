"""Cross-cutting HTTP behaviour: Marathon's headers, basic auth, the standby proxy."""

from __future__ import annotations

import base64
import binascii
import hmac

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .serialize import dumps

CACHE_CONTROL = b"no-cache, no-store, must-revalidate"
CONTROL_PREFIX = "/_sim/"


class MarathonHeaders:
    """Adds ``Cache-Control`` to every response and ``X-Marathon-Leader`` on a leader;
    with ``credentials`` answers 401 to every request without them (except ``/_sim/``)."""

    def __init__(self, app: ASGIApp, leader_url: str | None, credentials: str | None) -> None:
        self.app = app
        self.leader_header = leader_url.encode() if leader_url else None
        self.credentials = credentials

    def _authorized(self, scope: Scope) -> bool:
        if self.credentials is None or scope["path"].startswith(CONTROL_PREFIX):
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "basic":
                    return False
                try:
                    decoded = base64.b64decode(token.strip(), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    return False
                return hmac.compare_digest(decoded, self.credentials)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                ]
                headers.append((b"cache-control", CACHE_CONTROL))
                if self.leader_header is not None:
                    headers.append((b"x-marathon-leader", self.leader_header))
                message = {**message, "headers": headers}
            await send(message)

        if not self._authorized(scope):
            response = Response(
                dumps({"message": "Invalid username or password."}),
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": 'Basic realm="Mesosphere"'},
            )
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)


class LeaderProxy:
    """A standby forwards requests to the leader, adding ``X-Marathon-Via``."""

    def __init__(self, leader_url: str, via: str, connect_timeout: float = 2.5) -> None:
        self.leader_url = leader_url.rstrip("/")
        self.via = via
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=connect_timeout), follow_redirects=False
        )

    async def forward(self, request: Request) -> Response:
        url = self.leader_url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        headers.append(("x-marathon-via", f"1.1 {self.via}"))
        try:
            upstream = await self.client.request(
                request.method, url, headers=headers, content=await request.body()
            )
        except httpx.HTTPError as exc:
            return Response(
                dumps({"message": f"Could not reach the leader {self.leader_url}: {exc}"}),
                status_code=502,
                media_type="application/json",
                headers={"X-Marathon-Via": f"1.1 {self.via}"},
            )
        out_headers = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "x-marathon-leader"
        }
        out_headers["X-Marathon-Via"] = f"1.1 {self.via}"
        if "x-marathon-leader" in upstream.headers:
            out_headers["X-Marathon-Leader"] = upstream.headers["x-marathon-leader"]
        return Response(upstream.content, status_code=upstream.status_code, headers=out_headers)

    async def aclose(self) -> None:
        await self.client.aclose()
