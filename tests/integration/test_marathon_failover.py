"""Failover past Marathons that answer, but badly: slowly, with redirects, in loops.

Real sockets on 127.0.0.1 (no HAProxy): the stand-ins of test_marathon_stream
plus raw servers that drip bytes. Each test prints how long failover took and
asserts only generous bounds.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from servicerouter.marathon.client import MarathonClient
from servicerouter.marathon.errors import MarathonUnavailable, StreamStalled
from servicerouter.marathon.events import EventStream

from .test_marathon_stream import ATTACHED, TERMINATED, Marathon, serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@asynccontextmanager
async def dripping(head: bytes, body: bytes, per_byte: float = 1.0) -> AsyncIterator[str]:
    """A server that sends `head` at once, then `body` one byte per `per_byte` seconds."""
    handlers: list[asyncio.Task[object]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(per_byte)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


APPS_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"


def authorization(request: Request) -> str | None:
    return request.headers.get("authorization")


async def test_a_marathon_answering_one_byte_per_second_is_skipped_by_the_deadline() -> None:
    async with (
        dripping(APPS_HEAD, b'{"apps": []}' + b" " * 52) as slow,
        serving(Marathon()) as good,
        MarathonClient([slow, good.url], request_timeout=1.0) as client,
    ):
        start = time.monotonic()
        result = await client.get_apps()
        took = time.monotonic() - start
        again = await client.get_apps()  # the good one is now tried first
        took_again = time.monotonic() - start - took
    print(f"\nfailover past a 1 B/s Marathon: {took:.2f}s (deadline 1s); next request "
          f"{took_again * 1000:.0f} ms")
    assert result.url == again.url == good.url
    assert 0.9 <= took < 10


async def test_the_deadline_names_the_url_when_every_marathon_is_slow() -> None:
    async with (
        dripping(APPS_HEAD, b" " * 64) as slow,
        MarathonClient([slow], request_timeout=0.5, attempts=1) as client,
    ):
        with pytest.raises(MarathonUnavailable,
                           match=rf"{slow} \(no complete answer within 0.5s\)"):
            await client.get_apps()


@dataclass
class AppsRedirect(Marathon):
    """A stand-in whose /v2/apps answers 302 to `redirect_to`."""

    def app(self) -> Starlette:
        async def apps(request: Request) -> Response:
            self.requests.append(request)
            return Response(status_code=302, headers={"Location": f"{self.redirect_to}/v2/apps"})

        return Starlette(routes=[Route("/v2/apps", apps)])


async def test_302_on_v2_apps_moves_to_the_next_url_without_following_it() -> None:
    elsewhere = Marathon()
    async with serving(elsewhere), serving(Marathon()) as good, \
            serving(AppsRedirect()) as redirecting:
        redirecting.redirect_to = elsewhere.url
        async with MarathonClient([redirecting.url, good.url], auth=("ops", "s3cret")) as c:
            start = time.monotonic()
            result = await c.get_apps()
            took = time.monotonic() - start
    print(f"\nfailover past a 302 on /v2/apps: {took * 1000:.0f} ms")
    assert result.url == good.url
    assert len(redirecting.requests) == 1
    assert elsewhere.requests == []  # not followed: the credentials stayed home
    assert took < 5


async def test_an_events_redirect_loop_between_two_urls_fails_over_to_the_third() -> None:
    good = Marathon(script=[ATTACHED, TERMINATED])
    async with serving(Marathon()) as a, serving(Marathon()) as b, serving(good):
        a.redirect_to, b.redirect_to = b.url, a.url
        async with MarathonClient([a.url, b.url, good.url]) as client:
            start = time.monotonic()
            async with EventStream(client) as stream:
                took = time.monotonic() - start
                assert stream.url == good.url
    print(f"\nfailover past a /v2/events redirect loop: {took * 1000:.0f} ms")
    assert good.requests and took < 5
    assert 1 <= len(a.requests) <= 8 and 1 <= len(b.requests) <= 8  # bounded hops


async def test_credentials_never_follow_a_redirect_to_an_unconfigured_host() -> None:
    stranger = Marathon(script=[ATTACHED])
    good = Marathon(script=[ATTACHED])
    async with serving(stranger), serving(good), serving(Marathon()) as standby:
        standby.redirect_to = stranger.url
        async with (
            MarathonClient([standby.url, good.url], dcos_token="eyJ.secret") as client,
            EventStream(client) as stream,
        ):
            assert stream.url == good.url
    assert stranger.requests == []
    assert authorization(standby.requests[0]) == "token=eyJ.secret"
    assert authorization(good.requests[0]) == "token=eyJ.secret"


async def test_a_standby_redirect_to_a_configured_leader_keeps_working_with_credentials() -> None:
    leader = Marathon(script=[ATTACHED])
    async with serving(leader), serving(Marathon()) as standby:
        standby.redirect_to = leader.url
        # The leader is configured (second): it gets its own credentials.
        async with MarathonClient([standby.url, leader.url], auth=("ops", "s3cret")) as client:
            async with EventStream(client) as stream:
                assert stream.url == leader.url
            assert client.events_leader is not None
            assert client.events_leader.url == leader.url
    expected = "Basic " + base64.b64encode(b"ops:s3cret").decode()
    assert authorization(standby.requests[0]) == expected
    assert authorization(leader.requests[0]) == expected


async def test_without_credentials_a_standby_may_redirect_anywhere() -> None:
    leader = Marathon(script=[ATTACHED])
    async with serving(leader), serving(Marathon()) as standby:
        standby.redirect_to = leader.url
        async with MarathonClient([standby.url]) as client, EventStream(client) as stream:
            assert stream.url == leader.url
    assert authorization(leader.requests[0]) is None


async def test_a_stream_dripping_bytes_without_a_line_is_stalled() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    alive: list[str] = []
    async with (
        dripping(head, ATTACHED + b"x" * 2000, per_byte=0.005) as url,
        MarathonClient([url]) as client,
        EventStream(client, stall_timeout=1.0, on_alive=alive.append) as stream,
    ):
        start = time.monotonic()
        with pytest.raises(StreamStalled, match=r"no complete line for 1s"):
            async for _ in stream:
                pass
        took = time.monotonic() - start
    print(f"\na stream dripping bytes without a line: stalled after {took:.2f}s (limit 1s)")
    assert alive == [url]  # the attach event completed lines: it was live at first
    assert took < 10


@dataclass
class LoginPage(Marathon):
    """Answers every GET with 200 and an HTML page: an auth proxy's login form, or a
    load balancer's maintenance page, in front of one of the Marathons."""

    body: bytes = b"<html><body><form>Sign in</form></body></html>"

    def app(self) -> Starlette:
        async def page(request: Request) -> Response:
            self.requests.append(request)
            return Response(self.body, media_type="text/html")

        return Starlette(routes=[Route("/v2/apps", page), Route("/v2/apps/{id:path}", page)])


@pytest.mark.parametrize("body", [b"<html><body>Sign in</body></html>",
                                  b'{"message": "maintenance"}', b'{"apps": [{"id": "/a", '])
async def test_a_200_that_is_not_marathons_answer_moves_to_the_next_url(body: bytes) -> None:
    """It was the answer: the sync failed on it, and since failover starts from the URL
    that last answered, every sync after it failed too while the next one was fine."""
    async with serving(Marathon()) as good, serving(LoginPage(body=body)) as login:
        async with MarathonClient([login.url, good.url]) as c:
            result = await c.get_apps()
            assert result.url == good.url
            assert [a["id"] for a in result.apps] == ["/shop/web"]
            assert c.candidates()[0].url == good.url  # remembered: asked first next time
            assert (await c.get_app("/shop/web")) == {"id": "/shop/web"}  # refetches too
        async with serving(LoginPage(body=body)) as other, \
                MarathonClient([login.url, other.url]) as c:
            with pytest.raises(MarathonUnavailable) as failed:
                await c.get_apps()
    message = str(failed.value)
    for url in (login.url, other.url):
        assert f"{url} (body is not JSON" in message or f"{url} (JSON has no 'apps'" in message
