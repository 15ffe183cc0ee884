"""Runtime API client against the real HAProxy binary, loopback only."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from servicerouter.demo.procs import free_port
from servicerouter.haproxy import runtime
from servicerouter.haproxy import runtime_commands as c
from servicerouter.haproxy.process import HAProxyProcess
from servicerouter.haproxy.runtime import (
    HAProxyRuntimeError,
    RuntimeClient,
    RuntimeUnavailable,
    Status,
)
from servicerouter.haproxy.runtime_parse import parse_servers_state

from .conftest import needs_haproxy

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = [
    pytest.mark.integration,
    needs_haproxy,
    pytest.mark.timeout(30),
]


CONFIG = """\
global
{grace}    stats socket {dir}/admin.sock mode 600 level admin
    stats socket ipv4@127.0.0.1:{admin_port} level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend web
    bind 127.0.0.1:{port}
    use_backend lc if {{ path_beg /lc }}
    default_backend web
backend web
    balance roundrobin
    server s1 127.0.0.1:1 disabled
    server s2 127.0.0.1:1 disabled
    server s3 127.0.0.1:1 check inter 100ms disabled
backend lc
    balance leastconn
"""


class Env:
    def __init__(self, root: Path, grace: str = "") -> None:
        self.dir = root
        self.port = free_port()
        self.admin_port = free_port()
        self.config = root / "haproxy.cfg"
        self.config.write_text(CONFIG.format(dir=root, port=self.port, admin_port=self.admin_port,
                                             grace=f"    grace {grace}\n" if grace else ""))
        self.admin = str(root / "admin.sock")
        self.proc = HAProxyProcess(self.config, root / "master.sock", haproxy_bin=HAPROXY)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))  # unix socket paths < 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def env(short_dir: Path) -> AsyncIterator[Env]:
    e = Env(short_dir)
    await e.proc.start()
    try:
        yield e
    finally:
        await e.proc.stop()


@pytest.fixture
async def graced(short_dir: Path) -> AsyncIterator[Env]:
    """HAProxy whose old workers keep accepting for 60 s after a reload (``grace``): for
    the whole test, both workers answer the admin socket and the listeners."""
    e = Env(short_dir, grace="60s")
    await e.proc.start()
    try:
        yield e
    finally:
        await e.proc.stop()


@pytest.fixture
async def backend() -> AsyncIterator[int]:
    """A tiny HTTP server answering ``backend-<port>``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = f"backend-{port}".encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


async def http_get(port: int, path: str = "/") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_set_addr_and_ready_routes_real_traffic(env: Env, backend: int) -> None:
    client = RuntimeClient(env.admin)
    assert (await http_get(env.port))[0] == 503  # every slot disabled
    results = await client.execute(
        [
            c.set_server_addr("web", "s1", "127.0.0.1", backend),
            c.set_server_state("web", "s1", "ready"),
        ]
    )
    assert [r.status for r in results] == [Status.OK, Status.OK]
    assert "changed from" in results[0].reply
    assert await http_get(env.port) == (200, f"backend-{backend}")  # at once, no check
    states = {s.server: s for s in await client.show_servers_state("web")}
    s1 = states["s1"]
    assert (s1.addr, s1.port, s1.ready, s1.up, s1.in_maint) == (
        "127.0.0.1",
        backend,
        True,
        True,
        False,
    )
    assert s1.configured_disabled  # the 0x04 marker stays after `ready`
    assert states["s2"].in_maint and not states["s2"].up


async def test_errors_are_per_command_and_the_batch_goes_on(env: Env) -> None:
    client = RuntimeClient(env.admin)
    results = await client.execute(
        [
            "set server web/nope state ready",
            "set server nope/s1 state ready",
            "set server web state ready",
            "set server web/s2 addr foo",
            "set server web/s2 weight abc",  # 2.6 prints this one without a newline
            c.set_weight("web", "s2", 7),
            "show servers state web",
            c.set_server_addr("web", "s2", "127.0.0.2", 8080),
        ]
    )
    assert [r.status for r in results] == [Status.ERROR] * 5 + [Status.OK] * 3
    assert [r.reply for r in results[:3]] == [
        "No such server.",
        "No such backend.",
        "Require 'backend/server'.",
    ]
    assert results[3].reply.startswith("Invalid addr")
    s2 = next(s for s in await client.show_servers_state("web") if s.server == "s2")
    assert (s2.weight, s2.addr, s2.port) == (7, "127.0.0.2", 8080)


async def test_large_batch_over_many_lines_keeps_order(env: Env) -> None:
    client = RuntimeClient(env.admin, bufsize=2048, margin=512)
    cmds = [c.set_weight("web", f"s{1 + i % 3}", i % 200) for i in range(3000)]
    assert len(client.plan(cmds)[0]) > 50  # many lines, one session
    results = await client.execute(cmds)
    assert all(r.ok for r in results)
    weights = {s.server: s.weight for s in await client.show_servers_state("web")}
    assert weights == {"s1": 2997 % 200, "s2": 2998 % 200, "s3": 2999 % 200}


async def test_tcp_admin_socket_and_show_info(env: Env) -> None:
    client = RuntimeClient(f"ipv4@127.0.0.1:{env.admin_port}")
    info = await client.show_info()
    proc = await env.proc.master.show_proc()
    assert int(info["Pid"]) == proc.worker_pids[0]
    assert info["Version"].startswith("2.")
    stat = await client.show_stat()
    assert {(r["pxname"], r["svname"]) for r in stat} >= {("web", "s1"), ("web", "FRONTEND")}
    assert await client.show_backends() == ["web", "lc"]


async def test_missing_socket_is_unavailable_and_names_it(short_dir: Path) -> None:
    path = str(short_dir / "nope.sock")
    with pytest.raises(RuntimeUnavailable) as info:
        await RuntimeClient(path).execute([c.set_weight("web", "s1", 1), "show info"])
    assert path in str(info.value)
    assert [r.status for r in info.value.results] == [Status.NOT_SENT] * 2
    assert info.value.not_sent == ["set server web/s1 weight 1", "show info"]


@pytest.mark.parametrize("algo_backend", ["web", "lc"])  # roundrobin, leastconn
async def test_add_server_then_ready(env: Env, backend: int, algo_backend: str) -> None:
    client = RuntimeClient(env.admin)
    path = "/lc" if algo_backend == "lc" else "/"
    if algo_backend == "web":
        await client.execute_checked(
            [c.set_server_state("web", f"s{i}", "maint") for i in (1, 2, 3)]
        )
    results = await client.execute_checked(
        [
            c.add_server(algo_backend, "dyn1", "127.0.0.1", backend, "check", "weight", "5"),
            c.set_server_state(algo_backend, "dyn1", "ready"),
            c.enable_health(algo_backend, "dyn1"),
        ]
    )
    assert results[0].reply == "New server registered."
    dyn = next(s for s in await client.show_servers_state(algo_backend) if s.server == "dyn1")
    assert (dyn.ready, dyn.up, dyn.weight) == (True, True, 5)
    assert await http_get(env.port, path) == (200, f"backend-{backend}")
    # del server needs maint first; then the slot is gone
    bad = await client.execute([c.del_server(algo_backend, "dyn1")])
    assert bad[0].status is Status.ERROR and "maintenance" in bad[0].reply
    await client.execute_checked(
        [c.set_server_state(algo_backend, "dyn1", "maint"), c.del_server(algo_backend, "dyn1")]
    )
    assert all(s.server != "dyn1" for s in await client.show_servers_state(algo_backend))


async def test_ready_with_check_is_up_at_once_then_checks_decide(env: Env, backend: int) -> None:
    """2.6: `state ready` on a `check` server puts it UP immediately (health = rise);
    the first failing check takes it DOWN."""
    client = RuntimeClient(env.admin)
    dead = free_port()
    await client.execute_checked(
        [
            c.set_server_state("web", "s1", "maint"),
            c.set_server_addr("web", "s3", "127.0.0.1", dead),
            c.set_server_state("web", "s3", "ready"),
        ]
    )
    s3 = next(s for s in await client.show_servers_state("web") if s.server == "s3")
    assert s3.up and s3.ready  # before any check ran
    for _ in range(40):
        await asyncio.sleep(0.05)
        s3 = next(s for s in await client.show_servers_state("web") if s.server == "s3")
        if not s3.up:
            break
    assert not s3.up and s3.ready  # DOWN by health check, still administratively ready
    await client.execute_checked([c.set_server_addr("web", "s3", "127.0.0.1", backend)])
    for _ in range(40):
        await asyncio.sleep(0.05)
        if (await http_get(env.port))[0] == 200:
            break
    assert await http_get(env.port) == (200, f"backend-{backend}")


async def test_streamed_servers_state_is_the_same_as_the_whole_reply(env: Env) -> None:
    rt = RuntimeClient(env.admin)
    await rt.execute_checked([c.set_server_addr("web", "s2", "127.0.0.2", 8080),
                              c.set_server_state("web", "s2", "drain")])
    whole = await rt.show_servers_state()
    lines = [ln async for chunk in rt.servers_state_chunks(chunk=64) for ln in chunk]
    assert parse_servers_state("\n".join(lines)) == whole
    assert [s.server for s in whole] == ["s1", "s2", "s3"]
    assert (whole[1].addr, whole[1].port, whole[1].draining) == ("127.0.0.2", 8080, True)


async def test_servers_state_of_some_backends_only(env: Env) -> None:
    """A slice of the periodic reconcile: the backends asked, as many to a connection as
    fit on a command line (a bufsize this small fits one), and an unknown one said so."""
    rt = RuntimeClient(env.admin, bufsize=300, margin=44)  # 256 bytes a line: 11 commands
    asked = ["lc", "web", "nope"] * 4
    assert len(";".join(f"show servers state {b}" for b in asked)) > 256  # two connections
    lines = [ln async for chunk in rt.servers_state_chunks(backends=asked) for ln in chunk]
    assert lines.count("1") == 8  # an answer each, with its version line (not nope's)
    assert lines.count("Can't find backend.") == 4
    data = [ln for ln in lines if ln[:1].isdigit() and ln != "1"]
    assert [ln.split()[1] for ln in data] == ["web"] * 12  # lc has no servers
    one = [ln async for chunk in RuntimeClient(env.admin).servers_state_chunks(
        backends=["web", "lc"]) for ln in chunk]
    assert [ln.split()[3] for ln in one if ln[:1].isdigit() and ln != "1"] == ["s1", "s2", "s3"]


async def test_a_line_haproxy_gets_in_two_reads_is_answered_in_part_and_said_so(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured on 2.6.12: in a non-interactive session HAProxy closes as soon as its
    input runs out after a ';'. A slice whose line reaches it in two reads split there
    is answered in part; the read must fail rather than report the rest as missing."""
    rt = RuntimeClient(env.admin)
    connect = rt._connect

    async def split_after_the_first_command() -> tuple[asyncio.StreamReader,
                                                       asyncio.StreamWriter]:
        reader, writer = await connect()
        write = writer.write

        def two_reads(data: bytes) -> None:
            cut = data.index(b";") + 1
            write(data[:cut])
            asyncio.get_running_loop().call_later(
                0.3, lambda: None if writer.is_closing() else write(data[cut:]))

        writer.write = two_reads  # type: ignore[method-assign]
        return reader, writer

    monkeypatch.setattr(rt, "_connect", split_after_the_first_command)
    with pytest.raises(HAProxyRuntimeError, match="1 of 2"):
        async for _ in rt.servers_state_chunks(backends=["web", "lc"]):
            pass


async def test_kept_session_is_reset_after_a_reload_to_reach_the_new_worker(env: Env) -> None:
    rt = RuntimeClient(env.admin)
    await rt.execute_checked([c.set_server_addr("web", "s1", "127.0.0.3", 8001)])
    old = (await rt.show_info())["Pid"]
    info = await env.proc.reload()
    assert info.reloads == 1
    new = (await rt.show_info())["Pid"]  # queries connect anew: the new worker
    assert new != old
    # The kept session still belongs to the old worker (measured on 2.6): a change
    # sent on it would be lost for the new one. After reset() it reaches the new worker.
    rt.reset()
    await rt.execute_checked([c.set_server_addr("web", "s1", "127.0.0.4", 8002)])
    (s1,) = [s for s in await rt.show_servers_state("web") if s.server == "s1"]
    assert (s1.addr, s1.port) == ("127.0.0.4", 8002)
    assert rt.sessions_opened == 2


async def test_a_batch_refused_by_an_old_worker_goes_to_the_new_one(env: Env) -> None:
    """A reload the client was not told about: its kept session still reaches the old
    worker, which refuses every command ("Proxy is disabled."); nothing was applied, so
    the batch is sent once more on a new session and reaches the new worker."""
    rt = RuntimeClient(env.admin)
    await rt.execute_checked([c.set_server_addr("web", "s2", "127.0.0.3", 8001)])
    await env.proc.reload()
    await rt.execute_checked([c.set_server_addr("web", "s2", "127.0.0.5", 8005),
                              c.set_server_state("web", "s2", "ready")])
    (s2,) = [s for s in await rt.show_servers_state("web") if s.server == "s2"]
    assert (s2.addr, s2.port, s2.ready) == ("127.0.0.5", 8005, True)
    assert rt.sessions_opened == 2


async def test_a_kept_session_is_never_opened_with_the_worker_it_must_not_be_with(
        env: Env) -> None:
    """While a reload hands over, ``not_from`` names the old worker: a kept session that
    lands on it is closed unused and tried again, until the timeout says so."""
    rt = RuntimeClient(env.admin, timeout=0.5)
    pid = int((await rt.show_info())["Pid"])
    rt.not_from = pid
    with pytest.raises(RuntimeUnavailable, match=f"still answered by the old worker {pid}"):
        await rt.execute([c.set_server_addr("web", "s3", "127.0.0.6", 8006)])
    reader = RuntimeClient(env.admin)  # (rt's own queries would avoid that worker too)
    (s3,) = [s for s in await reader.show_servers_state("web") if s.server == "s3"]
    assert (s3.addr, s3.port) != ("127.0.0.6", 8006)  # nothing was sent to it
    rt.not_from = pid + 1  # another worker's: this one is fine
    await rt.execute_checked([c.set_server_addr("web", "s3", "127.0.0.6", 8006)])
    (s3,) = [s for s in await rt.show_servers_state("web") if s.server == "s3"]
    assert (s3.addr, s3.port) == ("127.0.0.6", 8006)
    assert rt.sessions_opened == 1


async def reload_in_grace(env: Env) -> tuple[RuntimeClient, int]:
    """Reload ``env`` (grace on) with a backend only the new config has; return a client
    whose kept session is still with the old worker, and that worker's pid, once the old
    worker is seen answering the admin socket in its grace (as the new one does)."""
    rt = RuntimeClient(env.admin)
    await rt.execute_checked([c.set_server_addr("web", "s1", "127.0.0.3", 8003)])  # kept
    old = int((await rt.show_info())["Pid"])
    env.config.write_text(env.config.read_text()
                          + "backend fresh\n    server f1 127.0.0.1:1 disabled\n")
    await env.proc.reload()
    probe = RuntimeClient(env.admin)
    for _ in range(500):  # bounded: the kernel hands connections to either worker
        if (await probe.show_info())["Pid"] == str(old):
            break
    else:
        pytest.fail(f"the old worker {old} never answered in its grace")
    return rt, old


async def test_in_the_old_workers_grace_queries_are_answered_by_the_new_one(
        graced: Env) -> None:
    """With HAProxy's grace the old worker still accepts admin connections after a
    reload. Told its pid (``not_from``), the client's queries and its streamed
    ``show servers state`` (the reconcile's read) come only from the new worker."""
    rt, old = await reload_in_grace(graced)
    rt.not_from = old
    for _ in range(30):
        assert (await rt.show_info())["Pid"] != str(old)
        assert "fresh" in {s.backend for s in await rt.show_servers_state()}
        lines = [ln async for chunk in rt.servers_state_chunks() for ln in chunk]
        assert "fresh" in {s.backend for s in parse_servers_state("\n".join(lines))}


async def test_an_old_worker_that_is_never_reached_is_reported(
        env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Told to mirror a worker no connection reaches (gone, or not accepting any more),
    the client stops looking after MIRROR_SEARCH seconds and says so; batches go on
    to the current worker."""
    monkeypatch.setattr(runtime, "MIRROR_SEARCH", 0.3)
    rt = RuntimeClient(env.admin)
    rt.mirror(2**22 + 1, 60)  # above Linux's pid_max: no worker has it
    await rt.execute_checked([c.set_server_addr("web", "s1", "127.0.0.3", 8003)])
    for _ in range(500):
        if not rt.mirroring:
            break
        await asyncio.sleep(0.01)
    assert not rt.mirroring
    assert re.search(rf"HAProxy's old worker {2**22 + 1}, in its grace, was not reached in "
                     rf"\d+ connections to {re.escape(env.admin)} over 0\.\d+s", caplog.text)
    await rt.execute_checked([c.set_server_addr("web", "s1", "127.0.0.4", 8004)])
    assert "127.0.0.4" in await rt.query("show servers state web")


async def test_in_the_old_workers_grace_it_is_sent_every_batch_too(
        graced: Env, backend: int) -> None:
    """The clients the old worker still accepts in its grace reach the servers the new
    worker has: after ``mirror(old, ...)`` each batch goes to both; a command only the
    new config can take is refused by the old worker alone."""
    rt, old = await reload_in_grace(graced)
    rt.reset()  # as after a reload: the kept session was the old worker's
    rt.not_from = old
    rt.mirror(old, 60)
    await rt.execute_checked([c.set_server_addr("web", "s1", "127.0.0.1", backend),
                              c.set_server_state("web", "s1", "ready"),
                              c.set_server_state("fresh", "f1", "maint")])
    assert rt.mirroring
    master = graced.proc.master
    for worker in (f"!{old}", "1"):  # the old worker, then the current one
        for _ in range(200):  # the old worker reads the batch after our reply came
            text = await master.worker_command("show servers state web", worker)
            (s1,) = [s for s in parse_servers_state(text) if s.server == "s1"]
            if s1.ready:
                break
            await asyncio.sleep(0.01)
        assert (s1.addr, s1.port, s1.ready) == ("127.0.0.1", backend, True), worker
    for _ in range(20):  # whichever worker accepts it, a client reaches the new server
        assert await http_get(graced.port) == (200, f"backend-{backend}")
    rt.mirror(old, 0)  # ends it
    assert not rt.mirroring
