"""RuntimeClient failure modes against a fake unix-socket server (no HAProxy needed)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from servicerouter.haproxy.runtime import (
    HAProxyRuntimeError,
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


class Fake:
    """A fake admin socket. It answers ``prompt`` itself; tests push one reply function
    per request (a batch on the kept session, or a one-shot query session)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: list[bytes] = []
        self.script: list[Reply] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        data = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
                if data.startswith(b"prompt\n"):
                    data = data[len(b"prompt\n"):]
                    writer.write(b"\n> ")
                if not data.endswith(b"\n"):
                    continue
                self.seen.append(data)
                request, data = data, b""
                out = self.script.pop(0)(request)
                if out is None:
                    await reader.read()  # hang until the client gives up
                    break
                writer.write(out)
                await writer.drain()
                if request.endswith(b"quit\n") or not out.endswith(b"\n> "):
                    break  # a query session ends; a reply cut short ends the session
        finally:
            writer.close()


@pytest.fixture
async def fake(sock_dir: Path) -> AsyncIterator[tuple[str, list[bytes], list[Reply]]]:
    f = Fake(str(sock_dir / "fake.sock"))
    server = await asyncio.start_unix_server(f.handle, f.path)
    try:
        yield f.path, f.seen, f.script
    finally:
        server.close()


@pytest.fixture
async def fake_server(sock_dir: Path) -> AsyncIterator[Fake]:
    f = Fake(str(sock_dir / "fake.sock"))
    server = await asyncio.start_unix_server(f.handle, f.path)
    try:
        yield f
    finally:
        server.close()


def well_behaved(request: bytes) -> bytes:
    body = [ln for ln in request.decode().split("\n") if ln and ln != "quit"]
    n = sum(len(line.split(";")) for line in body)
    return b"\n> " * n


async def test_happy_path_one_session(fake: tuple[str, list[bytes], list[Reply]]) -> None:
    path, seen, script = fake
    script.append(well_behaved)
    results = await RuntimeClient(path).execute(["set server b/s weight 1"] * 3)
    assert [r.status for r in results] == [Status.OK] * 3
    assert seen == [b"set server b/s weight 1;set server b/s weight 1;set server b/s weight 1\n"]


async def test_cut_short_reply_marks_the_tail_unknown(
    fake: tuple[str, list[bytes], list[Reply]],
) -> None:
    path, seen, script = fake
    script.append(lambda _: b"\n> No such server.\n\n> IP chan")
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
    script.append(lambda _: b"a\n> b\n> c\n> ")
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


async def test_batches_share_one_kept_session_until_reset(fake_server: Fake) -> None:
    rt = RuntimeClient(fake_server.path)
    fake_server.script += [well_behaved] * 3
    for weight in (1, 2):
        await rt.execute_checked([f"set server b/s weight {weight}"])
    assert fake_server.connections == 1 and rt.sessions_opened == 1
    rt.reset()  # as the engine does after a reload: the next batch reaches the new worker
    await rt.execute_checked(["set server b/s weight 3"])
    assert fake_server.connections == 2
    assert fake_server.seen == [b"set server b/s weight 1\n", b"set server b/s weight 2\n",
                                b"set server b/s weight 3\n"]


async def test_a_session_haproxy_ended_while_idle_is_reopened_before_the_write(
    fake_server: Fake,
) -> None:
    rt = RuntimeClient(fake_server.path)
    fake_server.script += [well_behaved] * 2
    await rt.execute_checked(["set server b/s weight 1"])
    fake_server.writers[0].close()  # HAProxy's stats timeout, or the old worker exiting
    for _ in range(100):  # until the client's transport has seen the end
        await asyncio.sleep(0.01)
        if rt._kept is None or rt._kept.closed:
            break
    results = await rt.execute(["set server b/s weight 2"])
    assert [r.status for r in results] == [Status.OK]
    assert fake_server.connections == 2


async def test_an_idle_session_is_reopened_before_haproxy_would_end_it(
    fake_server: Fake,
) -> None:
    rt = RuntimeClient(fake_server.path, idle=0.0)
    fake_server.script += [well_behaved] * 2
    await rt.execute_checked(["set server b/s weight 1"])
    await asyncio.sleep(0.01)
    await rt.execute_checked(["set server b/s weight 2"])
    assert fake_server.connections == 2


async def test_after_an_uncertain_batch_the_next_one_does_not_resend_it(
    fake_server: Fake,
) -> None:
    rt = RuntimeClient(fake_server.path, timeout=0.3)
    fake_server.script += [lambda _: None, well_behaved]
    with pytest.raises(RuntimeUncertain) as info:
        await rt.execute(["set server b/s state ready"])
    assert info.value.uncertain == ["set server b/s state ready"]
    results = await rt.execute(["set server b/s weight 5"])
    assert [r.status for r in results] == [Status.OK]
    # A new session, and only the new command on it: the uncertain one is not resent.
    assert fake_server.connections == 2
    assert fake_server.seen == [b"set server b/s state ready\n", b"set server b/s weight 5\n"]


async def test_the_reply_timeout_is_silence_not_the_whole_exchange(sock_dir: Path) -> None:
    """A batch whose replies trickle in, each within the timeout, completes even though
    the exchange takes longer than the timeout; silence past it is still uncertain."""
    gaps: list[float] = [0.2, 0.2]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"prompt\n")
        writer.write(b"\n> ")
        await reader.readuntil(b"\n")  # the batch: two commands on one line
        for gap in gaps:
            await asyncio.sleep(gap)
            writer.write(b"\n> ")
            await writer.drain()
        await reader.read()
        writer.close()

    path = str(sock_dir / "slow.sock")
    server = await asyncio.start_unix_server(handle, path)
    async with server:
        rt = RuntimeClient(path, timeout=0.3)
        results = await rt.execute(["set server b/s1 state ready", "set server b/s2 state ready"])
        assert [r.status for r in results] == [Status.OK, Status.OK]
        rt.reset()
        gaps[:] = [0.1, 1.0]  # the second reply comes too late
        with pytest.raises(RuntimeUncertain, match=r"no reply for 0\.3s") as info:
            await rt.execute(["set server b/s1 state ready", "set server b/s2 state ready"])
        assert [r.status for r in info.value.results] == [Status.OK, Status.UNKNOWN]
        rt.reset()


async def test_an_idle_kept_session_outlives_the_reply_timeout(
    fake: tuple[str, list[bytes], list[Reply]],
) -> None:
    """The reply timer runs for the session's life but only counts while a reply is
    awaited: a session idle for longer than the timeout (yet below `idle`) is reused."""
    path, seen, script = fake
    script.extend([lambda _: b"\n> ", lambda _: b"\n> "])
    rt = RuntimeClient(path, timeout=0.2, idle=5.0)
    assert [r.status for r in await rt.execute(["set server b/s1 state ready"])] == [Status.OK]
    await asyncio.sleep(0.6)
    assert [r.status for r in await rt.execute(["set server b/s1 state drain"])] == [Status.OK]
    assert rt.sessions_opened == 1 and len(seen) == 2
    rt.reset()


async def test_replies_that_come_a_byte_at_a_time_make_one_batch(sock_dir: Path) -> None:
    """The kept session is woken once every reply is in, however HAProxy's answer is cut
    (a prompt split across reads included); the replies are attributed as before."""
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"prompt\n")
            writer.write(b"\n> ")
            with contextlib.suppress(asyncio.IncompleteReadError):  # until the client closes
                while await reader.readuntil(b"\n"):
                    for byte in b"\n> No such server.\n\n> ":
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(0)
        finally:
            writer.close()
            await writer.wait_closed()
            done.set()

    path = str(sock_dir / "drip.sock")
    server = await asyncio.start_unix_server(handle, path)
    async with server:
        rt = RuntimeClient(path)
        for _ in range(2):  # the same kept session, twice
            results = await rt.execute(["set server b/s1 state ready",
                                        "set server b/x state ready"])
            assert [(r.status, r.reply.strip()) for r in results] == [
                (Status.OK, ""), (Status.ERROR, "No such server.")]
        assert rt.sessions_opened == 1
        rt.reset()
        await asyncio.wait_for(done.wait(), 10)


async def test_a_socket_that_is_no_prompt_session_is_unavailable(sock_dir: Path) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"prompt\n")
        writer.write(b"Unknown command.\n")  # not HAProxy's admin socket, or not in admin mode
        writer.close()

    path = str(sock_dir / "other.sock")
    server = await asyncio.start_unix_server(handle, path)
    async with server:
        with pytest.raises(RuntimeUnavailable, match="no prompt session") as info:
            await RuntimeClient(path, timeout=1.0).execute(["set server b/s1 state ready"])
        assert "unexpected answer to 'prompt'" in str(info.value)
        assert [r.status for r in info.value.results] == [Status.NOT_SENT]


STATE = (b"1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n"
         b"3 web 1 s1 127.0.0.1 2 0 1 1 0 1 0 0 8 0 0 0 - 8080 - 0 0 - - 0\n\n")


async def test_a_slice_answered_only_in_part_is_a_broken_read_not_missing_backends(
    fake: tuple[str, list[bytes], list[Reply]],
) -> None:
    """HAProxy 2.6 ends a non-interactive session as soon as its input runs out after a
    ';' (a line that reached it in two reads): the backends left unasked must not look
    missing (the reconcile would reload for them), the read is broken."""
    path, seen, script = fake
    script.append(lambda _: STATE + b"Can't find backend.\n\n")  # 2 of the 3 asked
    rt = RuntimeClient(path)
    with pytest.raises(HAProxyRuntimeError, match="2 of 3"):
        async for _ in rt.servers_state_chunks(backends=["web", "nope", "lc"]):
            pass
    assert seen == [b"show servers state web;show servers state nope;show servers state lc\n"]


async def test_a_whole_dump_cut_short_is_a_broken_read(
    fake: tuple[str, list[bytes], list[Reply]],
) -> None:
    """A dump that ends without its closing empty line (the connection closed in the
    middle of it) is not HAProxy lacking every backend after the cut."""
    path, _, script = fake
    script.append(lambda _: STATE[:-1])
    with pytest.raises(HAProxyRuntimeError, match="0 of 1"):
        async for _ in RuntimeClient(path).servers_state_chunks():
            pass
    script.append(lambda _: STATE)
    lines = [ln async for chunk in RuntimeClient(path).servers_state_chunks() for ln in chunk]
    assert lines[-2:] == [STATE.decode().split("\n")[2], ""]


async def test_an_old_worker_busy_right_after_the_reload_is_still_found(
        sock_dir: Path) -> None:
    """Right after a reload the new worker may take every admin connection for a moment
    (seen: 16 connections in 4 ms all reached it, and the old worker, which accepted
    clients for 60 s more, never got a runtime change: one request in ten reached a
    killed task). The mirror keeps looking, pausing between tries, and the batches
    sent meanwhile reach the old worker once it answers."""
    old, new, busy = 100, 200, 24  # the first `busy` connections reach the new worker
    connections, to_old = 0, []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        pid = new if connections <= busy else old
        buf = b""
        try:
            while chunk := await reader.read(65536):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line == b"show info":
                        writer.write(f"Name: HAProxy\nPid: {pid}\n\n> ".encode())
                    else:
                        if pid == old and line != b"prompt":
                            to_old.append(line)
                        writer.write(b"\n> " * len(line.split(b";")))
                await writer.drain()
        finally:
            writer.close()

    path = str(sock_dir / "admin.sock")
    async with await asyncio.start_unix_server(handle, path):
        rt = RuntimeClient(path, timeout=2)
        rt.mirror(old, 60)
        await rt.execute_checked(["set server web/s1 state maint"])
        for _ in range(1000):  # bounded: the mirror looks for the old worker meanwhile
            if to_old or not rt.mirroring:
                break
            await asyncio.sleep(0.01)
        assert to_old == [b"set server web/s1 state maint"]
        assert rt.mirroring
        await rt.execute_checked(["set server web/s1 state ready"])
        for _ in range(1000):
            if len(to_old) == 2:
                break
            await asyncio.sleep(0.01)
        assert to_old[1:] == [b"set server web/s1 state ready"]
        rt.mirror(old, 0)
        rt.reset()
