"""The daemon's web surface under load and odd requests: it stays truthful and bounded.

Real daemon, real HAProxy, the simulator; requests only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import shutil
import socket
from pathlib import Path

import httpx
import pytest

from servicerouter.haproxy.render import builtin_templates

from .conftest import needs_haproxy
from .harness import TLS, Daemon, Simulator, running, wait_for, wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]


async def _burst(url: str, path: str, clients: int) -> list[tuple[int, str]]:
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, verify=TLS) as http:
        replies = await asyncio.gather(*(http.get(path) for _ in range(clients)))
    return [(r.status_code, r.text) for r in replies]


def test_many_concurrent_healthz_do_not_report_a_healthy_haproxy_down(
        tmp_path: Path, simulator: Simulator) -> None:
    """Each /healthz asked HAProxy's admin socket on its own: 150 at once were partly
    refused by HAProxy, and /healthz answered 503 "HAProxy does not answer"."""
    port, live = simulator.launch("/burst", 2)
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        for _ in range(3):
            replies = asyncio.run(_burst(daemon.url, "/healthz", 150))
            bad = [r for r in replies if r != (200, '{"status":"ok"}')]
            assert not bad, f"{len(bad)} of {len(replies)}: {bad[0]}"
        assert "servicerouter_haproxy_up 1.0" in daemon.metrics()
        wait_routed(port, live)


ODD = [
    ("POST", "/healthz", 405), ("DELETE", "/config", 405), ("PUT", "/status", 405),
    ("GET", "/../../etc/passwd", 404), ("GET", "/config/../../../etc/passwd", 404),
    ("GET", "/%2e%2e/%2e%2e/etc/passwd", 404),
    ("GET", "/status?limit=abc", 400), ("GET", "/status?offset=-1", 400),
    ("GET", "/status?limit=" + "9" * 5000, 200),  # clamped to the page size
    ("GET", "/status?limit=%C2%B2", 400),  # a digit to isdigit(), not to int()
    ("GET", "/status?app=" + "x" * 10000, 200),
]


def test_odd_requests_get_a_plain_answer_and_the_daemon_serves_on(
        tmp_path: Path, simulator: Simulator) -> None:
    port, live = simulator.launch("/odd", 1)
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon), httpx.Client(base_url=daemon.url, timeout=10, verify=TLS) as http:
        wait_routed(port, live)
        for method, path, expected in ODD:
            reply = http.request(method, path)
            assert reply.status_code == expected, (method, path[:60], reply.text[:200])
            assert "root:" not in reply.text
        assert http.get("/healthz").status_code == 200
        wait_routed(port, live)


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: closed too
        return True


def test_connections_that_never_send_a_request_are_closed_and_routing_goes_on(
        tmp_path: Path, simulator: Simulator) -> None:
    """uvicorn closed only idle keep-alive connections: one that sent nothing, or half a
    request head, stayed open for ever, each holding a file descriptor the daemon needs
    for HAProxy's sockets (1,024 of them under systemd's default soft limit)."""
    port, live = simulator.launch("/idle", 1)
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon), contextlib.ExitStack() as stack:
        wait_routed(port, live)
        socks = [stack.enter_context(socket.create_connection(("127.0.0.1", daemon.listen_port)))
                 for _ in range(30)]
        socks[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        assert daemon.http.get("/healthz").status_code == 200  # others are served meanwhile
        wait_for(lambda: all(_closed_by_peer(s) for s in socks), timeout=60,
                 what="the daemon to close connections that never sent a request")
        assert daemon.http.get("/healthz").status_code == 200
        wait_routed(port, live)


def _established(sock: socket.socket) -> bool:
    """TCP_INFO's state: ESTABLISHED (1) until the peer closes or resets the connection
    (whether or not this side reads what was sent)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1


def test_a_client_that_never_reads_a_large_config_is_cut_off(
        tmp_path: Path, simulator: Simulator) -> None:
    """GET /config larger than the kernel's socket buffers, never read: the answer sat
    in the daemon's memory and the connection stayed open for ever, one of the 256 the
    listener allows (uvicorn's close waits for the client to take what is buffered). A
    client that reads gets all of it."""
    templates = tmp_path / "templates"
    shutil.copytree(builtin_templates(), templates)
    padding = '{{ ("# padding: a config of 10,000 apps is this large\\n") * 300000 }}\n'
    (templates / "global.j2").write_text((templates / "global.j2").read_text() + padding)
    port, live = simulator.launch("/big", 1)
    daemon = Daemon(tmp_path, simulator.url, "--templates", str(templates)).start()
    with running(daemon):
        wait_routed(port, live)
        whole = daemon.http.get("/config", timeout=60)
        assert whole.status_code == 200 and len(whole.content) > 10_000_000
        assert whole.text == daemon.config.read_text()
        with socket.socket() as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.connect(("127.0.0.1", daemon.listen_port))
            stuck.sendall(b"GET /config HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
            wait_for(lambda: not _established(stuck), timeout=90,
                     what="the daemon to drop a connection that takes none of its answer")
        assert daemon.http.get("/healthz").status_code == 200
        assert len(daemon.http.get("/config", timeout=60).content) == len(whole.content)
        wait_routed(port, live)


def test_out_of_file_descriptors_the_log_stays_short_and_all_recovers(
        tmp_path: Path, simulator: Simulator) -> None:
    """Out of descriptors, asyncio logged a traceback for each accept it tried on
    --listen: 7,000 a second (885,000 lines in 20 s) until descriptors were free again.
    Now one line every 10 s says so; once descriptors are free the daemon answers and
    routes again."""
    port, live = simulator.launch("/fds", 2)
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        assert daemon.proc.popen is not None
        pid = daemon.proc.popen.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        in_use = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        hogs: list[socket.socket] = []
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 2, hard))
            for _ in range(10):  # more connections than it has descriptors for
                hogs.append(socket.create_connection(("127.0.0.1", daemon.listen_port), 5))
            said = ("--listen cannot accept connections", "out of system resource")
            wait_for(lambda: any(s in daemon.proc.output() for s in said), 20,
                     what="the listener out of descriptors")
            mark = len(daemon.proc.output().splitlines())
            wait_for(lambda: "--listen cannot accept connections" in "\n".join(
                daemon.proc.output().splitlines()[mark:]) or daemon.proc.output().count(
                "out of system resource") > 1000, 30, what="the next line about it")
            tracebacks = daemon.proc.output().count("out of system resource")
            assert tracebacks == 0, f"{tracebacks} accept errors logged one by one"
        finally:
            for hog in hogs:
                hog.close()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        wait_for(lambda: daemon.http.get("/healthz").status_code == 200, 30,
                 what="/healthz answering again")
        new = simulator.replace_one("/fds", live)
        wait_routed(port, new)
