"""A lean HTTP/1.1 transport for the event stream: one connection per request, the
response body read straight off an asyncio stream.

Why not httpx's own transport: at 100 task replacements/s (~500 events/s) each chunk
of `/v2/events` went up through ~7 async-generator layers (httpx, httpcore, anyio's
cancel scope per read, h11's chunked reader); that was ~15% of the daemon's CPU. Here
httpx still builds and sends the request (auth per target, redirects, status
handling: `events.py` is unchanged there), h11 writes the request and parses the
response head, and a 200's body is de-chunked by :class:`ChunkedDecoder` from one
`StreamReader.read` per chunk. A read timeout (the stall timeout) is one timer that
re-arms itself, not a timer per read.

The body is exposed two ways: as the response's httpx stream (so any httpx code
works) and, for the hot path, as ``response.extensions[RAW_BODY]``, a :class:`Body`
to iterate directly. Other statuses are read whole (bounded) into the response.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx

__all__ = ["RAW_BODY", "Body", "ChunkedDecoder", "EventStreamTransport"]

RAW_BODY = "servicerouter.raw_body"
READ_SIZE = 1 << 16
MAX_HEAD = 64 * 1024  # bytes of status line and headers
MAX_ERROR_BODY = 1 << 20  # bytes read of a non-200 answer (an error message)
_MAX_SIZE_LINE = 1024
# Bytes of trailer lines after the last chunk. Nothing of them reaches the event stream,
# whose stall check runs per chunk of payload, while each re-arms the read timeout: a
# server sending trailers forever held the stream open, silent, with no reconnect.
_MAX_TRAILERS = 64 * 1024
_HEX = b"0123456789abcdefABCDEF"


class ChunkedDecoder:
    """`Transfer-Encoding: chunked` bytes in, payload bytes out. Pure and incremental:
    a chunk-size line, a chunk or its CRLF may be split anywhere across `feed` calls.
    `done` is set after the last chunk and its trailers; ValueError on bad framing."""

    __slots__ = ("_buf", "_left", "_state", "_trailers", "done")

    def __init__(self) -> None:
        self._buf = b""  # an incomplete size or trailer line
        self._left = 0  # payload bytes still due in the current chunk
        self._state = 0  # 0: size line, 1: payload, 2: CRLF after payload, 3: trailers
        self._trailers = 0  # bytes of trailer lines so far
        self.done = False

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end and not self.done:
            state = self._state
            if state == 1:
                take = min(self._left, end - pos)
                out.append(data if take == end else data[pos:pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = 2
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._buf += data[pos:]
                if len(self._buf) > _MAX_SIZE_LINE:
                    raise ValueError("chunked body: a chunk-size or trailer line over "
                                     f"{_MAX_SIZE_LINE} bytes")
                break
            line = self._buf + data[pos:nl]
            self._buf, pos = b"", nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if state == 2:
                if line:
                    raise ValueError(f"chunked body: {line[:40]!r} after a chunk, not CRLF")
                self._state = 0
            elif state == 0:
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or size_text.lstrip(_HEX):
                    raise ValueError(f"chunked body: bad chunk size {line[:40]!r}")
                size = int(size_text, 16)
                if size:
                    self._left, self._state = size, 1
                else:
                    self._state = 3
            elif not line:  # state 3: the blank line after the trailers ends the body
                self.done = True
            else:
                self._trailers += len(line)
                if self._trailers > _MAX_TRAILERS:
                    raise ValueError(f"chunked body: trailers over {_MAX_TRAILERS} bytes "
                                     "after the last chunk")
        return b"".join(out) if len(out) != 1 else out[0]


class Body(httpx.AsyncByteStream):
    """A 200's body on its own connection: chunked, `Content-Length` or until close.

    Iterating raises `httpx.ReadTimeout` after `read_timeout` seconds without a byte,
    `httpx.RemoteProtocolError` for bad framing or a body cut short, `httpx.ReadError`
    if the connection fails; it ends when the body does. `aclose` closes the connection.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 first: bytes, headers: httpx.Headers, read_timeout: float | None) -> None:
        self._reader, self._writer = reader, writer
        self._first = first
        self._timeout = read_timeout
        self._timed_out = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        encoding = headers.get("transfer-encoding", "").lower()
        self._chunked = ChunkedDecoder() if "chunked" in encoding else None
        length = headers.get("content-length")
        self._left: int | None = None
        if self._chunked is None and length is not None:
            try:
                self._left = int(length)
            except ValueError:
                raise httpx.RemoteProtocolError(f"bad Content-Length {length!r}") from None

    def _watch(self) -> None:
        """The read timeout: fires `timeout` after the last byte; re-arms if bytes came."""
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last
        assert self._timeout is not None
        if idle >= self._timeout:
            self._timer = None
            self._timed_out = True
            self._writer.transport.abort()  # the pending read ends (at EOF)
        else:
            self._timer = loop.call_later(self._timeout - idle, self._watch)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        if self._timeout is not None:
            self._timer = loop.call_later(self._timeout, self._watch)
        reader, chunked = self._reader, self._chunked
        data, self._first = self._first, b""
        try:
            while True:
                if data:
                    if chunked is not None:
                        try:
                            data = chunked.feed(data)
                        except ValueError as exc:
                            raise httpx.RemoteProtocolError(str(exc)) from None
                    elif self._left is not None:
                        data = data[:self._left]
                        self._left -= len(data)
                    if data:
                        yield data
                if (chunked is not None and chunked.done) or self._left == 0:
                    return  # the body is complete (Content-Length: 0 included)
                try:
                    data = await reader.read(READ_SIZE)
                except OSError as exc:
                    raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
                if not data:
                    if self._timed_out:
                        raise httpx.ReadTimeout(f"no data for {self._timeout:g}s")
                    if chunked is not None or self._left:
                        raise httpx.RemoteProtocolError(
                            "peer closed connection without sending complete message body")
                    return  # close-delimited: the end of the body
                self._last = loop.time()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._writer.close()


class EventStreamTransport(httpx.AsyncBaseTransport):
    """httpx transport for `GET /v2/events`: a new connection per request (a stream
    holds its connection for hours; there is nothing to pool), HTTP/1.1 only."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        read_timeout: float | None = timeouts.get("read")
        url = request.url
        secure = url.scheme == "https"
        port = url.port or (443 if secure else 80)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                url.host, port, ssl=self._ssl if secure else None,
                server_hostname=url.host if secure else None, limit=READ_SIZE * 4),
                timeouts.get("connect"))
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        try:
            return await self._exchange(request, reader, writer, read_timeout)
        except BaseException:
            writer.close()
            raise

    async def _exchange(self, request: httpx.Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, read_timeout: float | None
                        ) -> httpx.Response:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        target = request.url.raw_path
        try:
            writer.write(conn.send(h11.Request(method=request.method, target=target,
                                               headers=list(request.headers.raw))))
            writer.write(conn.send(h11.EndOfMessage()))
            head = await self._next(conn, reader, read_timeout, request)
            while isinstance(head, h11.InformationalResponse):
                head = await self._next(conn, reader, read_timeout, request)
        except h11.ProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from None
        if not isinstance(head, h11.Response):
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request)
        headers = httpx.Headers(head.headers.raw_items())
        extensions: dict[str, Any] = {"http_version": b"HTTP/" + head.http_version,
                                      "reason_phrase": head.reason}
        if head.status_code == 200:
            body = Body(reader, writer, conn.trailing_data[0], headers, read_timeout)
            extensions[RAW_BODY] = body
            return httpx.Response(200, headers=headers, stream=body, extensions=extensions)
        content = await self._read_whole(conn, reader, read_timeout, request)
        writer.close()
        return httpx.Response(head.status_code, headers=headers, content=content,
                              extensions=extensions)

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader,
                    timeout: float | None, request: httpx.Request) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
            except asyncio.TimeoutError:
                raise httpx.ReadTimeout(f"no data for {timeout:g}s", request=request) from None
            except OSError as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
            conn.receive_data(data)

    async def _read_whole(self, conn: h11.Connection, reader: asyncio.StreamReader,
                          timeout: float | None, request: httpx.Request) -> bytes:
        """A non-200 answer's body (a redirect's or an error's), at most MAX_ERROR_BODY."""
        parts: list[bytes] = []
        size = 0
        try:
            while size < MAX_ERROR_BODY:
                event = await self._next(conn, reader, timeout, request)
                if isinstance(event, h11.Data):
                    parts.append(bytes(event.data))
                    size += len(event.data)
                else:  # EndOfMessage, or the connection closed
                    break
        except h11.ProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from None
        return b"".join(parts)[:MAX_ERROR_BODY]
