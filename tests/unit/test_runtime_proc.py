"""Master CLI ``show proc`` parsing, on 2.6.12 transcripts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from servicerouter.haproxy.master_cli import (
    MAX_REPLY,
    HAProxyProcessError,
    MasterCLI,
    MasterUnavailable,
    WorkerInfo,
    parse_show_proc,
    parse_uptime,
)

HEAD = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
FRESH = (
    HEAD + "3157            master          0 [failed: 0]   0d00h05m36s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "3160            worker          0               0d00h05m36s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)
LINGERING = (
    HEAD + "3157            master          3 [failed: 1]   0d00h05m42s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "6445            worker          1               0d00h00m01s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "6211            worker          2               0d00h00m06s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)


def test_fresh() -> None:
    p = parse_show_proc(FRESH)
    assert (p.master_pid, p.reloads, p.failed_reloads, p.version) == (
        3157,
        0,
        0,
        "2.6.12-1+deb12u4",
    )
    assert p.workers == [WorkerInfo(3160, 0, "0d00h05m36s", "2.6.12-1+deb12u4")]
    assert p.old_workers == [] and p.worker_pids == [3160]


def test_old_workers_and_failed_reloads() -> None:
    p = parse_show_proc(LINGERING)
    assert (p.reloads, p.failed_reloads) == (3, 1)
    assert p.worker_pids == [6445]
    assert [w.pid for w in p.old_workers] == [6211]
    assert p.all_pids == [3157, 6445, 6211]


@pytest.mark.parametrize("text", ["", "Unknown command.\n", HEAD])
def test_no_master_line(text: str) -> None:
    with pytest.raises(ValueError):
        parse_show_proc(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("0d00h00m00s", 0), ("0d00h05m36s", 336), ("2d01h00m01s", 176401)]
)
def test_uptime(text: str, seconds: int) -> None:
    assert parse_uptime(text) == seconds
    assert WorkerInfo(1, 0, text, "v").uptime_seconds == seconds


# -- a master socket that misbehaves: bounded time and memory, a clear error ----------


async def _serve(tmp_path: Path, reply: Callable[[asyncio.StreamWriter], Awaitable[None]],
                 ) -> tuple[asyncio.AbstractServer, str]:
    path = str(tmp_path / "master.sock")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.readline()
            await reply(writer)
            writer.close()

    return await asyncio.start_unix_server(handle, path), path


async def test_a_reply_without_end_is_cut_off_not_held(tmp_path: Path) -> None:
    written = 0

    async def flood(writer: asyncio.StreamWriter) -> None:
        nonlocal written
        while written < 64 * MAX_REPLY:  # the test's own bound: 64 MB
            writer.write(b"x" * 65536)
            written += 65536
            await writer.drain()

    server, path = await _serve(tmp_path, flood)
    async with server:
        with pytest.raises(MasterUnavailable, match=r"longer than 1048576 bytes") as info:
            await MasterCLI(path, timeout=20).show_proc()
    assert path in str(info.value) and "show proc" in str(info.value)


@pytest.mark.parametrize("garbage", [b"", b"\xff\xfe\x00garbage\n", b"1 master x y\n",
                                     b"# workers\n1 worker 0 0d00h00m01s 2.6\n"])
async def test_garbage_to_show_proc_is_a_clear_error(tmp_path: Path, garbage: bytes) -> None:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(garbage)

    server, path = await _serve(tmp_path, answer)
    async with server:
        with pytest.raises(HAProxyProcessError, match=r"no master line") as info:
            await MasterCLI(path, timeout=5).show_proc()
    assert path in str(info.value)


async def test_a_master_that_never_answers_times_out(tmp_path: Path) -> None:
    async def silent(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server, path = await _serve(tmp_path, silent)
    async with server:
        with pytest.raises(MasterUnavailable, match=r"no complete reply to 'show proc'"):
            await MasterCLI(path, timeout=0.3).show_proc()


async def test_patience_waits_out_a_master_that_refuses_while_it_re_executes(
        tmp_path: Path) -> None:
    """After a reload, 2.6's master socket refuses connections for a moment (the master is
    re-executing itself): a bound socket that does not listen yet refuses the same way."""
    path = str(tmp_path / "master.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    with pytest.raises(MasterUnavailable, match="Connection refused"):
        await MasterCLI(path).show_proc()  # no patience: the refusal is the answer

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.write(FRESH.encode())
        writer.close()

    async def listen_later() -> asyncio.Server:
        await asyncio.sleep(0.3)  # the master is back
        return await asyncio.start_unix_server(answer, sock=sock)

    later = asyncio.create_task(listen_later())
    info = await MasterCLI(path).show_proc(patience=30)
    async with await later:
        assert info.master_pid == 3157 and info.worker_pids == [3160]
