"""The web listener's per-connection bounds (web.GuardedH11Protocol), looked at as its
timer does: each check compares what the connection did since the previous one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from servicerouter.web import GuardedH11Protocol


class Transport(asyncio.Transport):
    """What the protocol asks of a socket transport: bytes still buffered, close, abort."""

    def __init__(self) -> None:
        super().__init__()
        self.unsent = 0
        self.closed = self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def app(scope: Any, receive: Any, send: Any) -> None:
    pass


async def connected() -> tuple[GuardedH11Protocol, Transport]:
    config = uvicorn.Config(app=app, http=GuardedH11Protocol, log_config=None)
    config.load()
    protocol = GuardedH11Protocol(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    protocol.cycle = SimpleNamespace(  # type: ignore[assignment]
        response_complete=True, message_event=asyncio.Event())  # an answer written whole
    return protocol, transport


async def test_a_client_taking_a_large_answer_slowly_keeps_its_connection() -> None:
    """A multi-MB /config over a slow link takes longer than the timeout: what counts is
    that the client takes some of it between two checks (nginx's send_timeout)."""
    protocol, transport = await connected()
    for unsent in (12_000_000, 9_000_000, 5_000_000, 1):
        transport.unsent = unsent
        protocol._check()
        assert not transport.aborted, unsent  # (a close lets it take the rest)
    transport.unsent = 0
    protocol._check()  # all taken, nothing asked since: an idle connection, closed
    assert transport.closed and not transport.aborted
    protocol.connection_lost(None)


async def test_a_client_that_takes_none_of_an_answer_is_dropped() -> None:
    protocol, transport = await connected()
    transport.unsent = 12_000_000
    protocol._check()  # the answer is there, just written
    assert not transport.aborted
    transport.unsent = 11_000_000
    protocol._check()
    assert not transport.aborted
    protocol._check()  # none of it taken for a whole check interval
    assert transport.aborted
    protocol.connection_lost(None)
