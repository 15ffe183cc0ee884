"""The event stream (and client failover) against tiny Marathon stand-ins on 127.0.0.1.

Each test starts its own Starlette app under uvicorn on an ephemeral port, or a
raw asyncio server when the exact bytes on the socket matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from servicerouter.marathon.client import MarathonClient
from servicerouter.marathon.errors import (
    MarathonAuthError,
    MarathonUnavailable,
    StreamClosed,
    StreamStalled,
)
from servicerouter.marathon.events import (
    DEFAULT_EVENT_TYPES,
    EventStream,
    MarathonEvent,
    stream_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(15)]

HEARTBEAT = b"\r\n"
ATTACHED = (
    b"event: event_stream_attached\r\n"
    b'data: {"remoteAddress":"127.0.0.1","eventType":"event_stream_attached",'
    b'"timestamp":"2021-03-02T08:11:30.061Z"}\r\n\r\n'
)
TERMINATED = (
    b"event: app_terminated_event\r\n"
    b'data: {"appId":"/shop/web","eventType":"app_terminated_event",'
    b'"timestamp":"2021-03-02T08:12:00.000Z"}\r\n\r\n'
)
MALFORMED = b'event: status_update_event\r\ndata: {"taskId": "t1", oops\r\n\r\n'
SSE_TYPE = "text/event-stream;charset=UTF-8"

Script = list[bytes | float | None]  # bytes to send, seconds to pause, None = go silent


@dataclass
class Marathon:
    """A scripted stand-in: what `/v2/events` sends, and what it was asked."""

    script: Script = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    redirect_to: str | None = None
    status: int = 200
    url: str = ""

    def app(self) -> Starlette:
        async def events(request: Request) -> Response:
            self.requests.append(request)
            if request.headers.get("accept") != "text/event-stream":
                return JSONResponse({"message": "HTTP 405 Method Not Allowed"}, status_code=405)
            if self.redirect_to is not None:
                location = f"{self.redirect_to}/v2/events?{request.url.query}"
                return Response(status_code=302, headers={"Location": location})
            if self.status != 200:
                return JSONResponse({"message": "Not Authorized"}, status_code=self.status)
            return StreamingResponse(
                self._play(), media_type=SSE_TYPE, headers={"Connection": "close"}
            )

        async def apps(request: Request) -> Response:
            self.requests.append(request)
            return JSONResponse({"apps": [{"id": "/shop/web"}]})

        async def app(request: Request) -> Response:
            self.requests.append(request)
            return JSONResponse({"app": {"id": "/" + request.path_params["id"]}})

        return Starlette(routes=[Route("/v2/events", events), Route("/v2/apps", apps),
                                 Route("/v2/apps/{id:path}", app)])

    async def _play(self) -> AsyncIterator[bytes]:
        for step in self.script:
            if step is None:
                await asyncio.sleep(3600)
            elif isinstance(step, float):
                await asyncio.sleep(step)
            else:
                yield step


@contextlib.asynccontextmanager
async def serving(marathon: Marathon) -> AsyncIterator[Marathon]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        marathon.app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    marathon.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield marathon
    finally:
        server.should_exit = True
        await task
        sock.close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def collect(stream: EventStream, into: list[MarathonEvent]) -> None:
    async for event in stream:
        into.append(event)


# -- the stream ---------------------------------------------------------------------


async def test_accept_header_exact_filters_on_the_query_and_server_close() -> None:
    script: Script = [ATTACHED, HEARTBEAT, TERMINATED, HEARTBEAT]
    async with serving(Marathon(script=script)) as m, MarathonClient([m.url]) as client:
        events: list[MarathonEvent] = []
        with pytest.raises(StreamClosed, match="the server closed the stream"):
            async with EventStream(client) as stream:
                assert stream.url == m.url
                await collect(stream, events)
    request = m.requests[0]
    assert request.headers["accept"] == "text/event-stream"
    assert request.query_params.getlist("event_type") == list(DEFAULT_EVENT_TYPES)
    assert [e.type for e in events] == ["event_stream_attached", "app_terminated_event"]
    assert events[1].data["appId"] == "/shop/web"
    assert events[0].received_at <= events[1].received_at <= time.monotonic()


async def test_malformed_data_is_skipped_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script: Script = [ATTACHED, MALFORMED, TERMINATED]
    async with serving(Marathon(script=script)) as m, MarathonClient([m.url]) as client:
        events: list[MarathonEvent] = []
        with pytest.raises(StreamClosed):
            async with EventStream(client, ["app_terminated_event"]) as stream:
                await collect(stream, events)
    # The malformed frame is yielded unread (the daemon resyncs on it), not dropped.
    assert [(e.type, e.unreadable) for e in events] == [
        ("event_stream_attached", False), ("status_update_event", True),
        ("app_terminated_event", False)]
    assert any("status_update_event" in r.getMessage() for r in caplog.records)
    assert m.requests[0].query_params.getlist("event_type") == ["app_terminated_event"]


async def test_silence_without_close_is_a_stall_detected_in_time() -> None:
    script: Script = [ATTACHED, None]
    async with serving(Marathon(script=script)) as m, MarathonClient([m.url]) as client:
        events: list[MarathonEvent] = []
        async with EventStream(client, stall_timeout=0.3) as stream:
            start = time.monotonic()
            with pytest.raises(StreamStalled, match=r"no bytes for 0.3s") as info:
                await collect(stream, events)
            waited = time.monotonic() - start
    assert [e.type for e in events] == ["event_stream_attached"]
    assert 0.25 <= waited < 2.0
    assert m.url in str(info.value)


async def test_heartbeats_keep_the_stream_alive_past_the_stall_timeout() -> None:
    script: Script = [ATTACHED]
    script += [0.1, HEARTBEAT] * 10  # 1 s of heartbeats, each well inside 0.3 s
    script += [TERMINATED]
    async with serving(Marathon(script=script)) as m, MarathonClient([m.url]) as client:
        events: list[MarathonEvent] = []
        start = time.monotonic()
        with pytest.raises(StreamClosed):
            async with aclosing(stream_events(client, stall_timeout=0.3)) as stream:
                async for event in stream:
                    events.append(event)
    assert [e.type for e in events] == ["event_stream_attached", "app_terminated_event"]
    assert events[1].received_at - start >= 0.9


async def test_302_from_a_standby_is_followed_and_the_leader_remembered() -> None:
    leader = Marathon(script=[ATTACHED, TERMINATED])
    async with serving(leader), serving(Marathon()) as standby:
        standby.redirect_to = leader.url
        outcomes: list[str] = []
        async with MarathonClient(
            [standby.url], on_request=lambda e, o, s: outcomes.append(o)
        ) as client:
            for _ in range(2):
                events: list[MarathonEvent] = []
                with pytest.raises(StreamClosed):
                    async with EventStream(client, ["app_terminated_event"]) as stream:
                        assert stream.url == leader.url
                        await collect(stream, events)
                assert [e.type for e in events][-1] == "app_terminated_event"
            assert client.events_leader is not None
            assert client.events_leader.url == leader.url
    assert len(standby.requests) == 1  # the second connect went straight to the leader
    assert [r.query_params.getlist("event_type") for r in leader.requests] == [
        ["app_terminated_event"]
    ] * 2
    assert outcomes == ["redirect", "success", "success"]


async def test_redirect_loop_is_bounded() -> None:
    async with serving(Marathon()) as standby, MarathonClient([standby.url]) as client:
        standby.redirect_to = standby.url
        with pytest.raises(MarathonUnavailable, match="more than 3 redirects"):
            await EventStream(client).connect()
    assert len(standby.requests) == 4


async def test_a_redirect_refused_does_not_quote_the_password_in_it() -> None:
    async with serving(Marathon()) as standby, MarathonClient([standby.url]) as client:
        standby.redirect_to = "ftp://ops:hunter2@127.0.0.1:1"
        with pytest.raises(MarathonUnavailable, match=r"unusable URL 'ftp://\*\*\*@127") as info:
            await EventStream(client).connect()
    assert "hunter2" not in str(info.value)


async def test_stream_fails_over_to_a_live_url_and_reports_when_connected() -> None:
    connected: list[str] = []
    dead = closed_port_url()
    async with (
        serving(Marathon(script=[ATTACHED])) as m,
        MarathonClient([dead, m.url]) as client,
    ):
        with pytest.raises(StreamClosed):
            async with aclosing(stream_events(client, on_connect=connected.append)) as stream:
                async for _ in stream:
                    pass
    assert connected == [m.url]


async def test_nobody_listening_names_every_url() -> None:
    dead1, dead2 = closed_port_url(), closed_port_url()
    async with MarathonClient([dead1, dead2]) as client:
        with pytest.raises(MarathonUnavailable) as info:
            await EventStream(client).connect()
    assert str(info.value) == (
        f"no Marathon answered GET /v2/events: {dead1} (connection refused), "
        f"{dead2} (connection refused)"
    )


async def test_auth_error_on_the_stream() -> None:
    async with serving(Marathon(status=401)) as m, MarathonClient([m.url]) as client:
        with pytest.raises(MarathonAuthError, match="Not Authorized"):
            await EventStream(client).connect()
    assert len(m.requests) == 1


async def test_a_master_refusing_access_leaves_the_stream_to_the_next() -> None:
    # One master whose credentials lag behind a rotation does not stop the others.
    async with serving(Marathon(status=401)) as refusing, \
            serving(Marathon(script=[ATTACHED, None])) as ok, \
            MarathonClient([refusing.url, ok.url]) as client:
        stream = EventStream(client)
        assert await stream.connect() == ok.url
        await stream.aclose()
    assert len(refusing.requests) == 1


async def test_every_master_refusing_access_is_an_auth_error() -> None:
    async with serving(Marathon(status=403)) as m1, serving(Marathon(status=401)) as m2, \
            MarathonClient([m1.url, m2.url]) as client:
        with pytest.raises(MarathonAuthError) as info:
            await EventStream(client).connect()
    assert info.value.status == 403 and m1.url in str(info.value)
    assert len(m1.requests) == len(m2.requests) == 1


# -- the exact bytes on the socket, close-delimited like Marathon --------------------


async def raw_server(
    reply: Callable[[asyncio.StreamWriter], Any], heads: list[bytes]
) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await reply(writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def closed_after(reply: Callable[[asyncio.StreamWriter], Any], match: str,
                       **stream_kw: Any) -> list[str]:
    """Stream from a raw server answering with ``reply`` until the stream ends with a
    StreamClosed matching ``match``; the types of the events seen before."""
    server, url = await raw_server(reply, [])
    async with server, MarathonClient([url]) as client:
        events: list[MarathonEvent] = []
        with pytest.raises(StreamClosed, match=match):
            async with EventStream(client, **stream_kw) as stream:
                await collect(stream, events)
    return [e.type for e in events]


async def test_exact_wire_bytes_close_delimited_in_awkward_chunks() -> None:
    wire = ATTACHED + HEARTBEAT + MALFORMED + TERMINATED + HEARTBEAT + HEARTBEAT
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream;charset=UTF-8\r\n"
        b"Connection: close\r\nCache-Control: no-cache, no-store, must-revalidate\r\n\r\n"
    )

    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        for cut in range(0, len(wire), 37):  # splits inside CRLFs and JSON
            writer.write(wire[cut : cut + 37])
            await writer.drain()
            await asyncio.sleep(0.001)

    heads: list[bytes] = []
    server, url = await raw_server(reply, heads)
    async with server, MarathonClient([url]) as client:
        events: list[MarathonEvent] = []
        with pytest.raises(StreamClosed):
            async with EventStream(client, ["app_terminated_event"]) as stream:
                await collect(stream, events)
    # The malformed frame is yielded unread (the daemon resyncs on it), not dropped.
    assert [(e.type, e.unreadable) for e in events] == [
        ("event_stream_attached", False), ("status_update_event", True),
        ("app_terminated_event", False)]
    request_line, *header_lines = heads[0].decode().split("\r\n")
    assert request_line == "GET /v2/events?event_type=app_terminated_event HTTP/1.1"
    assert "Accept: text/event-stream" in header_lines


async def test_connection_dropped_mid_frame_is_stream_closed() -> None:
    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"%x\r\n%s\r\n" % (len(ATTACHED), ATTACHED))
        writer.write(b"ff\r\nevent: status_up")  # then the leader steps down
        await writer.drain()

    assert await closed_after(reply, "connection lost") == ["event_stream_attached"]


async def test_200_that_is_not_an_event_stream_is_refused() -> None:
    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi")
        await writer.drain()

    server, url = await raw_server(reply, [])
    async with server, MarathonClient([url]) as client:
        with pytest.raises(MarathonUnavailable, match="not text/event-stream"):
            await EventStream(client).connect()


async def test_a_server_that_never_answers_times_out_at_the_stall_timeout() -> None:
    release = asyncio.Event()

    async def reply(writer: asyncio.StreamWriter) -> None:
        await release.wait()

    server, url = await raw_server(reply, [])
    async with server, MarathonClient([url]) as client:
        start = time.monotonic()
        with pytest.raises(MarathonUnavailable, match=r"\(no bytes for 0.3s\)"):
            await EventStream(client, stall_timeout=0.3).connect()
        assert time.monotonic() - start < 2.0
        release.set()
        await asyncio.sleep(0.01)


# -- the REST client over real sockets ------------------------------------------------


async def test_get_apps_fails_over_from_a_refused_port_to_a_live_one() -> None:
    dead = closed_port_url()
    async with serving(Marathon()) as m, MarathonClient([dead, m.url]) as client:
        result = await client.get_apps()
        again = await client.get_apps()
    assert result.url == again.url == m.url
    assert result.apps == [{"id": "/shop/web"}]
    assert [r.query_params.getlist("embed") for r in m.requests] == [["apps.tasks"]] * 2


# -- the event stream's own transport (wire.py): chunked bodies, stalls, TLS -----------


async def test_chunked_wire_bytes_with_extensions_and_trailers_in_awkward_chunks() -> None:
    frames = [ATTACHED, HEARTBEAT, MALFORMED, TERMINATED, HEARTBEAT]
    wire = b"".join(b"%X;x=1\r\n%s\r\n" % (len(f), f) for f in frames)
    wire += b"0\r\nX-Trailer: 1\r\n\r\n"

    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + wire[:5])
        for cut in range(5, len(wire), 11):  # splits inside sizes, CRLFs and JSON
            writer.write(wire[cut : cut + 11])
            await writer.drain()
            await asyncio.sleep(0.001)
        await asyncio.sleep(3600)  # the body ended: the stream is over, not the socket

    assert await closed_after(reply, "the server closed the stream") == [
        "event_stream_attached", "status_update_event", "app_terminated_event"]


async def test_silence_inside_a_chunked_body_is_a_stall_and_bad_framing_a_lost_connection(
) -> None:
    async def silent(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(ATTACHED), ATTACHED))
        await writer.drain()
        await asyncio.sleep(3600)

    async def garbled(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\nnot-hex\r\n")
        await writer.drain()
        await asyncio.sleep(3600)

    for reply, problem in ((silent, StreamStalled), (garbled, StreamClosed)):
        server, url = await raw_server(reply, [])
        async with server, MarathonClient([url]) as client:
            start = time.monotonic()
            with pytest.raises(problem) as info:
                async with EventStream(client, stall_timeout=0.3) as stream:
                    await collect(stream, [])
            assert time.monotonic() - start < 5.0
        text = str(info.value)
        assert ("no bytes for 0.3s" in text) if problem is StreamStalled else \
            ("connection lost" in text and "not-hex" in text), text


@pytest.fixture
def tls_files(tmp_path: Any) -> tuple[str, str]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(key), str(cert)


async def test_tls_event_stream_is_verified_and_works_with_the_right_ca(
        tls_files: tuple[str, str]) -> None:
    import ssl

    key, cert = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Connection: close\r\n\r\n" + ATTACHED + TERMINATED)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        async with MarathonClient([url]) as client:  # the system CAs: refused
            with pytest.raises(MarathonUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await EventStream(client).connect()
        async with MarathonClient([url], verify=cert) as client:
            events: list[MarathonEvent] = []
            with pytest.raises(StreamClosed):
                async with EventStream(client) as stream:
                    await collect(stream, events)
    assert [e.type for e in events] == ["event_stream_attached", "app_terminated_event"]


async def test_a_content_length_body_ends_the_stream_at_its_length() -> None:
    body = ATTACHED + TERMINATED

    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body + b"trailing junk")
        await writer.drain()
        await asyncio.sleep(3600)  # the socket stays open: the length ends the body

    assert await closed_after(reply, "the server closed the stream", stall_timeout=5) == [
        "event_stream_attached", "app_terminated_event"]
