"""Marathon's `/v2/events` Server-Sent Events stream as an async iterator of events.

One `EventStream` is one connection. It ends by raising: `StreamClosed` when
the server closes (leader change, slow consumer, restart), `StreamStalled` when
no complete line (not even the 10 s heartbeat) arrived for `stall_timeout`. The
caller owns the reconnect loop (`reconnect_delays()`) and the full resync that
must follow every (re)connect, because events are not replayed.

Stall detection is the read timeout on this request (total silence: one
re-arming timer in `wire.py`'s transport), plus a check on each chunk that some
line completed within `stall_timeout` (bytes trickling in without a line); no
timer task exists per byte or event. The body comes straight off the socket
(`wire.EventStreamTransport`), not through httpx's per-chunk generator layers.

The parser (`sse.SSEParser`, bytes in, frames out) is our own rather than httpx-sse:
both handle Marathon's CRLF frames and bare-CRLF heartbeats, but httpx-sse
hides the heartbeats (we need them to be cheap, not invisible), decodes every
byte to str before splitting, and cannot stamp each frame with the arrival time
of its chunk. Measured on the wire sample: see benchmarks in the commit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from ..redact import redact_url
from .client import MarathonClient, MarathonTarget, marathon_message, transport_reason
from .errors import (
    MarathonAuthError,
    MarathonUnavailable,
    StreamClosed,
    StreamStalled,
    excerpt,
    refusal,
)
from .fields import unpaired_surrogate
from .sse import DEFAULT_MAX_EVENT_BYTES, SSEParser
from .wire import RAW_BODY

__all__ = [
    "DEFAULT_EVENT_TYPES",
    "DEFAULT_MAX_EVENT_BYTES",
    "EventStream",
    "MarathonEvent",
    "SSEParser",
    "decode_frame",
    "reconnect_delays",
    "stream_events",
]

log = logging.getLogger(__name__)

DEFAULT_EVENT_TYPES: tuple[str, ...] = (
    "event_stream_attached",
    "status_update_event",
    "health_status_changed_event",
    "instance_health_changed_event",
    "unhealthy_instance_kill_event",
    "api_post_event",
    "app_terminated_event",
    "deployment_info",
    "deployment_success",
    "deployment_failed",
    "group_change_success",
)
"""Server-side filter. `event_stream_attached` is listed so a filtering Marathon
still sends it, but nothing depends on it: being connected is signalled by
`EventStream.connect()` returning (and `on_connect`)."""

EVENTS_PATH = "/v2/events"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class MarathonEvent:
    """One event: its type, its decoded JSON payload, and `time.monotonic()` when the
    chunk holding the frame's last byte arrived (for event-to-apply latency).

    An event over the stream's size limit arrives with `skipped_bytes` > 0, its
    type (when its `event:` line said it) and empty data: it was not read. One whose
    data could not be read (not a JSON object; `decode_frame` logged why) arrives with
    `unreadable` set, its type and empty data."""

    type: str
    data: dict[str, Any]
    received_at: float
    skipped_bytes: int = 0
    unreadable: bool = False


_decoder = msgspec.json.Decoder()


def decode_frame(url: str, name: str, data: bytes, received_at: float) -> MarathonEvent | None:
    """A parsed frame as an event; None (and a warning) when its data is not a JSON object."""
    why: object = None  # why the data cannot be read
    try:
        try:  # msgspec: ~1 µs an event instead of json.loads' ~3.5 (hundreds a second)
            payload = _decoder.decode(data)
        except msgspec.DecodeError:  # not JSON to msgspec: json.loads decides (NaN, too)
            payload = json.loads(data)
            bad = unpaired_surrogate(payload)
            if bad is not None:
                why = f"the string {bad} holds an unpaired UTF-16 surrogate"
    except ValueError as exc:
        why = exc
    except RecursionError:  # from either decoder: it would end the event loop, not a frame
        why = "nested too deep to decode"
    if why is not None:
        log.warning(
            "event stream %s: skipped a %s event whose data is not JSON (%s): %s",
            url,
            name,
            why,
            excerpt(data),
        )
        return None
    if not isinstance(payload, dict):
        log.warning(
            "event stream %s: skipped a %s event whose data is not a JSON object: %s",
            url,
            name,
            excerpt(data),
        )
        return None
    if name == "message":  # no `event:` line: fall back on the payload's own type
        name = str(payload.get("eventType") or name)
    return MarathonEvent(type=name, data=payload, received_at=received_at)


class EventStream:
    """One connection to `/v2/events`.

    ```
    async with EventStream(client, stall_timeout=30) as stream:  # connected (HTTP 200)
        async for event in stream:                              # raises StreamClosed/Stalled
            ...
    ```
    Connecting tries the leader learned from an earlier 302 first, then the
    client's URLs in failover order, each once (no retry here: the caller's
    reconnect loop backs off). Each URL gets the client's overall deadline for
    its answer, redirects included. A 302 from a standby is followed (at most
    `max_redirects` hops, query kept) and its target remembered on the client.
    Credentials follow a redirect only to a configured Marathon URL; with
    credentials configured, a redirect anywhere else is not followed. A URL that
    redirects in a loop, too far, or to something unusable is skipped like a
    dead one, and the next URL is tried.

    Silence is counted in complete lines, not bytes: a stream that drips bytes
    without completing a line (event or heartbeat) for `stall_timeout` is stalled.
    """

    def __init__(
        self,
        client: MarathonClient,
        event_types: Sequence[str] | None = DEFAULT_EVENT_TYPES,
        *,
        stall_timeout: float = 30.0,
        max_redirects: int = 3,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        on_connect: Callable[[str], None] | None = None,
        on_alive: Callable[[str], None] | None = None,
    ) -> None:
        if stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be > 0, got {stall_timeout}")
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be >= 1, got {max_event_bytes}")
        self._client = client
        self._params = [("event_type", t) for t in (event_types or ())]
        self._stall = stall_timeout
        self._max_redirects = max_redirects
        self._max_event = max_event_bytes
        self._on_connect = on_connect
        self._on_alive = on_alive
        self._response: httpx.Response | None = None
        self.url: str | None = None
        """Base URL of the Marathon that is streaming to us, once connected."""
        self.last_activity: float | None = None
        """`time.monotonic()` of the last byte received (heartbeats included)."""

    async def __aenter__(self) -> EventStream:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            await response.aclose()

    def __aiter__(self) -> AsyncIterator[MarathonEvent]:
        return self._events()

    async def connect(self) -> str:
        """Open the stream; return the base URL that answered 200."""
        if self._response is not None:
            raise RuntimeError("EventStream is already connected; use a new one to reconnect")
        client = self._client
        candidates = client.candidates()
        leader = client.events_leader
        if leader is not None:
            candidates = [leader] + [t for t in candidates if t.url != leader.url]
        failures: list[tuple[str, str]] = []
        refused: list[MarathonAuthError] = []
        for target in candidates:
            start = time.monotonic()
            try:
                self._response, answered = await asyncio.wait_for(
                    self._open(target), client.deadline
                )
            except (_Unreachable, MarathonAuthError, asyncio.TimeoutError) as exc:
                if isinstance(exc, MarathonAuthError):  # this one's credentials: the next
                    refused.append(exc)
                    failures.append((target.url, exc.reason))
                elif isinstance(exc, _Unreachable):
                    failures.append((target.url, exc.reason))
                else:
                    client.report("events", "timeout", time.monotonic() - start)
                    failures.append((target.url, f"no answer within {client.deadline:g}s"))
                if client.events_leader is not None and target.url == client.events_leader.url:
                    client.events_leader = None  # stale leader: fall back on the configured URLs
                continue
            if answered is not target:
                client.events_leader = answered
                log.info("event stream: %s redirected to leader %s", target.url, answered.url)
            if target in client.targets:
                client.mark_answered(target)
            self.url = answered.url
            self.last_activity = time.monotonic()
            if self._on_connect is not None:
                try:
                    self._on_connect(answered.url)
                except BaseException:
                    await self.aclose()
                    raise
            return answered.url
        raise refusal(refused, failures) or MarathonUnavailable(failures,
                                                                what=f"GET {EVENTS_PATH}")

    async def _open(self, target: MarathonTarget) -> tuple[httpx.Response, MarathonTarget]:
        client = self._client
        connect = client.timeout.connect
        timeout = httpx.Timeout(connect, read=self._stall, write=connect, pool=connect)
        headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        url = httpx.URL(target.url + EVENTS_PATH, params=self._params)
        first = target
        for _hop in range(self._max_redirects + 1):
            request = client.events_http.build_request("GET", url, headers=headers,
                                                       timeout=timeout)
            where = f"{target.url}{EVENTS_PATH}"
            start = time.monotonic()
            try:
                response = await client.events_http.send(
                    request, auth=client.auth_for(target), stream=True
                )
            except httpx.TransportError as exc:
                outcome, reason = transport_reason(exc, timeout)
                client.report("events", outcome, time.monotonic() - start)
                raise _Unreachable(target.url, _via(first, target, reason)) from None
            seconds = time.monotonic() - start
            status = response.status_code
            if status == 200:
                ctype = response.headers.get("Content-Type", "")
                if "text/event-stream" not in ctype:
                    await response.aclose()
                    client.report("events", "error", seconds)
                    raise _Unreachable(target.url, _via(
                        first, target,
                        f"answered 200 with Content-Type {ctype!r}, not text/event-stream"))
                client.report("events", "success", seconds)
                return response, target
            try:
                await response.aread()
            finally:
                await response.aclose()
            if status in _REDIRECTS:
                client.report("events", "redirect", seconds)
                url, target = self._follow(first, where, target, url, response)
                continue
            if status in (401, 403):
                client.report("events", "auth", seconds)
                raise MarathonAuthError(where, status, marathon_message(response))
            client.report("events", "error", seconds)
            raise _Unreachable(target.url, _via(
                first, target, f"HTTP {status}: {marathon_message(response)}"))
        raise _Unreachable(first.url, f"more than {self._max_redirects} redirects "
                                      f"(a redirect loop?), last to {url.copy_with(query=None)}")

    def _follow(
        self,
        first: MarathonTarget,
        where: str,
        target: MarathonTarget,
        url: httpx.URL,
        response: httpx.Response,
    ) -> tuple[httpx.URL, MarathonTarget]:
        """The next URL and target for a redirect, with the credentials it may have."""
        location = response.headers.get("Location")

        def refuse(problem: str) -> _Unreachable:
            return _Unreachable(first.url, f"{where}: {problem}")

        if not location:
            raise refuse(f"HTTP {response.status_code} without Location")
        try:
            nxt = url.join(location)
        except httpx.InvalidURL:
            raise refuse(f"redirect to an unusable URL {redact_url(location)!r}") from None
        if nxt.scheme not in ("http", "https") or not nxt.host:
            raise refuse(f"redirect to an unusable URL {redact_url(location)!r}")
        if url.scheme == "https" and nxt.scheme == "http":
            raise refuse(f"refusing to follow a redirect to http: {redact_url(str(nxt))}")
        if not nxt.path.endswith(EVENTS_PATH):
            raise refuse(f"redirect away from {EVENTS_PATH}: {redact_url(location)!r}")
        if not nxt.query:
            nxt = nxt.copy_with(params=self._params)
        client = self._client
        known = client.configured(nxt)
        if known is not None:
            return nxt, known  # a configured Marathon: its own credentials
        base = nxt.copy_with(path=nxt.path[: -len(EVENTS_PATH)] or "/", query=None)
        if client.has_credentials:
            raise refuse(
                f"redirect to {str(base).rstrip('/')}, which is not a configured Marathon "
                "URL; not followed, so credentials go only to configured URLs (add it to "
                "--marathon to use it)"
            )
        return nxt, MarathonTarget(url=str(base).rstrip("/"))

    async def _events(self) -> AsyncIterator[MarathonEvent]:
        if self._response is None:
            await self.connect()
        response = self._response
        assert response is not None and self.url is not None
        url = self.url
        parser = SSEParser(self._max_event)
        stall = self._stall
        seen_lines, last_line = 0, time.monotonic()
        # wire.py's body when it is ours (iterated directly: no httpx layers per chunk)
        raw: AsyncIterable[bytes] | None = response.extensions.get(RAW_BODY)
        try:
            try:
                async for chunk in raw if raw is not None else response.aiter_bytes():
                    now = self.last_activity = time.monotonic()
                    frames = parser.feed(chunk)
                    if parser.lines != seen_lines:
                        if not seen_lines and self._on_alive is not None:
                            self._on_alive(url)
                        seen_lines, last_line = parser.lines, now
                    elif now - last_line > stall:
                        raise StreamStalled(
                            url, f"no complete line for {stall:g}s (bytes trickle in but no "
                                 "event or heartbeat completes); connection closed")
                    for name, size in parser.skipped:
                        yield MarathonEvent(type=name, data={}, received_at=now,
                                            skipped_bytes=size)
                    parser.skipped.clear()
                    for name, data in frames:
                        event = decode_frame(url, name, data, now)
                        yield event if event is not None else MarathonEvent(
                            type=name, data={}, received_at=now, unreadable=True)
            except httpx.ReadTimeout:
                raise StreamStalled(
                    url,
                    f"no bytes for {stall:g}s (Marathon sends a heartbeat every 10s); "
                    "connection closed",
                ) from None
            except httpx.RequestError as exc:
                raise StreamClosed(url, f"connection lost: {exc or type(exc).__name__}") from None
            raise StreamClosed(url, "the server closed the stream")
        finally:
            await self.aclose()


def _via(first: MarathonTarget, target: MarathonTarget, reason: str) -> str:
    return reason if target is first else f"redirected to {target.url}: {reason}"


class _Unreachable(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


async def stream_events(
    client: MarathonClient,
    event_types: Sequence[str] | None = DEFAULT_EVENT_TYPES,
    *,
    stall_timeout: float = 30.0,
    max_redirects: int = 3,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    on_connect: Callable[[str], None] | None = None,
) -> AsyncIterator[MarathonEvent]:
    """Generator form of one `EventStream` connection; `on_connect(url)` fires on HTTP 200.

    Close it deterministically (`contextlib.aclosing`) when you stop early.
    """
    stream = EventStream(
        client,
        event_types,
        stall_timeout=stall_timeout,
        max_redirects=max_redirects,
        max_event_bytes=max_event_bytes,
        on_connect=on_connect,
    )
    async with stream:
        async for event in stream:
            yield event


def reconnect_delays(
    initial: float = 0.1,
    maximum: float = 10.0,
    multiplier: float = 2.0,
    jitter: float = 0.5,
    rand: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Endless exponential backoff with jitter, each delay in `[d * (1 - jitter), d]` where
    `d` doubles from `initial` up to `maximum`. Start a new iterator after a good connect."""
    if not (0 < initial <= maximum) or multiplier < 1 or not (0 <= jitter <= 1):
        raise ValueError("need 0 < initial <= maximum, multiplier >= 1, 0 <= jitter <= 1")
    delay = initial
    while True:
        yield delay * (1.0 - jitter * rand())
        delay = min(maximum, delay * multiplier)
