"""HAProxy's admin socket answering what HAProxy never would (audit of the daemon's inputs).

A reply is bounded in time (``REPLY_SPAN`` x the timeout, however bytes trickle in)
and in size (``MAX_REPLY`` on the kept session), so such a peer ends the session with
an error instead of holding a batch, and the memory, for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from servicerouter.haproxy.runtime import RuntimeClient
from servicerouter.haproxy.runtime_errors import HAProxyRuntimeError


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _trickle(writer: asyncio.StreamWriter) -> None:
    """20 s of one byte every 25 ms: never a prompt, never an end. (The tests' client
    timeout is 0.15 s, six gaps: only the reply's span can end the wait.)"""
    for _ in range(800):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.025)
    writer.close()


async def _batch_fails(sock_dir: Path, reply: Callable[[asyncio.StreamWriter], Awaitable[None]],
                      timeout: float, bound: float) -> None:
    """A batch on the kept session to a peer that opens the prompt session and takes the
    command as HAProxy does, then answers with ``reply``: the batch ends in an error
    within ``bound`` seconds."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.readuntil(b"prompt\n")
            writer.write(b"\n> ")
            await reader.readuntil(b"\n")
            await reply(writer)

    path = str(sock_dir / "session.sock")
    async with await asyncio.start_unix_server(handle, path):
        rt = RuntimeClient(path, timeout=timeout)
        try:
            with pytest.raises(HAProxyRuntimeError):
                await asyncio.wait_for(rt.execute(["set server b/s1 state ready"]), bound)
        finally:
            rt.reset()


async def test_a_reply_that_trickles_without_end_is_bounded_in_time(sock_dir: Path) -> None:
    await _batch_fails(sock_dir, _trickle, timeout=0.15, bound=6)


async def test_a_reply_that_floods_without_a_prompt_is_bounded_in_memory(
        sock_dir: Path) -> None:
    sent = 0

    async def flood(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        while sent < 128 << 20:  # the test's own bound
            writer.write(b"x" * 65536)
            sent += 65536
            await writer.drain()
        await asyncio.sleep(5)

    await _batch_fails(sock_dir, flood, timeout=0.5, bound=20)
    assert sent < 32 << 20, f"the client read {sent >> 20} MB of a reply before giving up"


async def test_a_query_whose_reply_trickles_without_end_is_bounded_in_time(
        sock_dir: Path) -> None:
    """A query (its own connection, read to EOF) from a peer that never closes it."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.readuntil(b"quit\n")
            await _trickle(writer)

    path = str(sock_dir / "trickle-query.sock")
    server = await asyncio.start_unix_server(handle, path)
    async with server:
        rt = RuntimeClient(path, timeout=0.15)
        with pytest.raises(HAProxyRuntimeError, match=r"no complete reply within 1\.5s"):
            await asyncio.wait_for(rt.query("show info"), 6)
