"""RuntimeClient failure modes against a fake unix-socket server (no HAProxy needed)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from servicerouter.haproxy.runtime import (
    RuntimeClient,
    RuntimeUnavailable,
    RuntimeUncertain,
    RuntimeUncertainError,
    Status,
)

Reply = Callable[[bytes], bytes | None]  # request -> bytes to send (None: hang)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def fake(sock_dir: Path) -> AsyncIterator[tuple[str, list[bytes], list[Reply]]]:
    """A fake admin socket; tests push one reply function per expected connection."""
    path = str(sock_dir / "fake.sock")
    seen: list[bytes] = []
    script: list[Reply] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while not data.endswith(b"quit\n"):
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
        seen.append(data)
        out = script.pop(0)(data)
        if out is None:
            await reader.read()  # hang until the client gives up
        else:
            writer.write(out)
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path)
    try:
        yield path, seen, script
    finally:
        server.close()


def well_behaved(request: bytes) -> bytes:
    body = request.decode().split("\n")[1:-2]  # drop "prompt" and "quit"
    n = sum(len(line.split(";")) for line in body)
    return b"\n> " + b"\n> " * n


async def test_happy_path_one_session(fake: tuple[str, list[bytes], list[Reply]]) -> None:
    path, seen, script = fake
    script.append(well_behaved)
    results = await RuntimeClient(path).execute(["set server b/s weight 1"] * 3)
    assert [r.status for r in results] == [Status.OK] * 3
    assert seen == [
        b"prompt\nset server b/s weight 1;set server b/s weight 1;set server b/s weight 1\nquit\n"
    ]


async def test_cut_short_reply_marks_the_tail_unknown(
    fake: tuple[str, list[bytes], list[Reply]],
) -> None:
    path, seen, script = fake
    script.append(lambda _: b"\n> \n> No such server.\n\n> IP chan")
    cmds = [
        "set server b/s weight 1",
        "set server b/x weight 1",
        "set server b/s addr 1.2.3.4",
        "show info",
    ]
    with pytest.raises(RuntimeUncertain) as info:
        await RuntimeClient(path).execute(cmds)
    statuses = [r.status for r in info.value.results]
    assert statuses == [Status.OK, Status.ERROR, Status.UNKNOWN, Status.NOT_SENT]
    assert info.value.uncertain == ["set server b/s addr 1.2.3.4"]
    assert path in str(info.value)
    assert len(seen) == 1  # the query session after the broken one was never sent
    assert RuntimeUncertainError is RuntimeUncertain


async def test_silence_after_write_is_uncertain_not_resent(
    fake: tuple[str, list[bytes], list[Reply]],
) -> None:
    path, seen, script = fake
    script.append(lambda _: None)
    with pytest.raises(RuntimeUncertain) as info:
        await RuntimeClient(path, timeout=0.3).execute(["set server b/s state ready"])
    assert [r.status for r in info.value.results] == [Status.UNKNOWN]
    assert "no reply" in str(info.value)
    assert len(seen) == 1


async def test_ambiguous_extra_replies_are_unknown(
    fake: tuple[str, list[bytes], list[Reply]],
) -> None:
    path, _, script = fake
    script.append(lambda _: b"\n> a\n> b\n> c\n> ")
    with pytest.raises(RuntimeUncertain) as info:
        await RuntimeClient(path).execute(["set server b/s weight 1", "set server b/s weight 2"])
    assert [r.status for r in info.value.results] == [Status.UNKNOWN] * 2


async def test_second_session_unavailable_keeps_first_results(
    fake: tuple[str, list[bytes], list[Reply]], sock_dir: Path
) -> None:
    path, _, script = fake

    def then_vanish(request: bytes) -> bytes:
        Path(path).unlink()  # the next connect fails: nothing more is sent
        return well_behaved(request)

    script.append(then_vanish)
    with pytest.raises(RuntimeUnavailable) as info:
        await RuntimeClient(path).execute(["set server b/s weight 1", "show info", "show stat"])
    assert [r.status for r in info.value.results] == [Status.OK, Status.NOT_SENT, Status.NOT_SENT]
    assert "1 of 3 commands were sent" in str(info.value)
    assert path in str(info.value)


def test_respelled_socket_path_names_the_same_file_differently() -> None:
    from servicerouter.haproxy.runtime import respell_socket_path

    live = "/run/haproxy/admin.sock"
    other = respell_socket_path(live, live)
    assert other == "/run/haproxy/./admin.sock"
    assert respell_socket_path(live, other) == live  # and back, for the next restore
    assert respell_socket_path("admin.sock", "admin.sock") == "./admin.sock"
