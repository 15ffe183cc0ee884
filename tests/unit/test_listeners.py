"""The daemon's and the simulator's HTTP listeners answer without Nagle's delay.

asyncio sets TCP_NODELAY on a connection only when its socket says IPPROTO_TCP; a
listener made with ``socket.socket(family, SOCK_STREAM)`` (protocol 0) hands out
connections without it, and every keep-alive answer (uvicorn writes headers and body
separately) then waited ~40 ms for the client's delayed ACK: /metrics, /healthz and
every Marathon request to the simulator.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from servicerouter.daemon import _bind
from servicerouter.simulator.server import bound_socket

LISTENERS: dict[str, Callable[[], socket.socket]] = {
    "daemon --listen": lambda: _bind("--listen", "127.0.0.1", 0),
    "simulator": lambda: bound_socket("127.0.0.1", 0),
}


@pytest.mark.parametrize("make", LISTENERS.values(), ids=list(LISTENERS))
async def test_accepted_connections_do_not_wait_for_acks(
        make: Callable[[], socket.socket]) -> None:
    sock = make()
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.listen(8)  # the simulator's: uvicorn listens on it
    accepted: asyncio.Future[asyncio.BaseTransport] = asyncio.get_running_loop().create_future()

    class Capture(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)

    server = await asyncio.get_running_loop().create_server(Capture, sock=sock)
    async with server:
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = await asyncio.wait_for(accepted, 10)
        server_side = transport.get_extra_info("socket")
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), (
            "the server's end of the connection uses Nagle's algorithm")
        transport.close()
        writer.close()
