"""HAProxy's own output into the daemon's log: levels, routine lines, and the loop
kept free while a reload's ~20,000 "Proxy ... stopped" lines come in."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from servicerouter.haproxy.process import PUMP_CHUNK, HAProxyProcess


def _pumped(data: bytes) -> tuple[HAProxyProcess, Any]:
    reader = asyncio.StreamReader(limit=2 ** 20)
    reader.feed_data(data)
    reader.feed_eof()
    return HAProxyProcess("/nonexistent.cfg", "/nonexistent.sock"), SimpleNamespace(
        stdout=reader)


async def test_levels_routine_lines_and_a_last_line_without_newline(
        caplog: pytest.LogCaptureFixture) -> None:
    proc, fake = _pumped(
        b"[NOTICE]   (1) : New worker (2) forked\n"
        b"[WARNING]  (2) : Proxy web_10000 stopped (cumulated conns: FE: 0, BE: 0).\n"
        b"[ALERT]    (2) : backend 'web_10000' has no server available!\n"
        b"[WARNING]  (1) : Former worker (3) exited")
    with caplog.at_level(logging.INFO, logger="servicerouter.haproxy"):
        await proc._pump_log(fake)
    got = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert got == [
        (logging.INFO, "haproxy: [NOTICE]   (1) : New worker (2) forked"),
        (logging.ERROR, "haproxy: [ALERT]    (2) : backend 'web_10000' has no server "
                        "available!"),
        (logging.WARNING, "haproxy: [WARNING]  (1) : Former worker (3) exited"),
    ]  # the per-proxy stop line is routine: DEBUG only
    assert "Former worker" in proc.log_tail()


async def test_routine_lines_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    proc, fake = _pumped(b"[WARNING]  (2) : Proxy web_10000 stopped (cumulated conns).\n")
    with caplog.at_level(logging.DEBUG, logger="servicerouter.haproxy"):
        await proc._pump_log(fake)
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


async def test_a_flood_of_lines_does_not_hold_the_event_loop() -> None:
    line = b"[WARNING]  (2) : Proxy backend_%05d stopped (cumulated conns: FE: 0, BE: 0).\n"
    data = b"".join(line % i for i in range(20000))  # a reload at 10,000 apps
    proc, fake = _pumped(data)
    turns = 0
    done = asyncio.Event()

    async def other_work() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    before = turns
    await proc._pump_log(fake)
    during = turns - before
    done.set()
    await other
    assert during >= len(data) // PUMP_CHUNK - 1  # a turn for others after each chunk
