"""daemon.AcceptErrors: asyncio's accept errors out of descriptors, said once in a while."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from servicerouter.daemon import ACCEPT_ERROR_EVERY, AcceptErrors

ACCEPT = {"message": "socket.accept() out of system resource",
          "exception": OSError(24, "Too many open files")}


def test_accept_errors_are_one_line_per_interval_with_a_count(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    others: list[dict[str, Any]] = []
    handler = AcceptErrors(others.append, clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="servicerouter"):
            for _ in range(2048):  # one readable listener: up to its backlog of accepts
                handler(loop, dict(ACCEPT))
            now[0] += ACCEPT_ERROR_EVERY
            handler(loop, dict(ACCEPT))
            handler(loop, {"message": "something else"})
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "--listen cannot accept connections: [Errno 24] Too many open files" in lines[0]
    assert "(2047 more times in the last 10s)" in lines[1]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback
    assert others == [{"message": "something else"}]  # the rest as before
