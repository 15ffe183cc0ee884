"""``--keep-haproxy-on-exit`` (:class:`KeptHAProxy`) with the real HAProxy: a kept master
that is alive but does not answer its master CLI (stopped with SIGSTOP, as a busy one
is slow) is never taken for dead, so no second HAProxy starts on its ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from servicerouter.demo.procs import free_port
from servicerouter.haproxy import detached
from servicerouter.haproxy.control import ConfigFile
from servicerouter.haproxy.detached import KeptHAProxy
from servicerouter.haproxy.master_cli import (
    HAProxyProcessError,
    MasterCLI,
    ReloadError,
    parse_show_proc,
)
from servicerouter.haproxy.process import StartError

from .conftest import needs_haproxy

pytestmark = [pytest.mark.integration, needs_haproxy, pytest.mark.timeout(120)]


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.config = root / "haproxy.cfg"
        self.config.write_text(f"""\
global
    stats socket {root}/admin.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
listen web
    bind 127.0.0.1:{self.port}
    server s1 127.0.0.1:1 disabled
""")
        self.master_socket = str(root / "master.sock")

    def kept(self, *, answer_timeout: float = 60.0, haproxy_bin: str = "haproxy"
             ) -> KeptHAProxy:
        kept = KeptHAProxy(ConfigFile(self.config, haproxy_bin), self.master_socket,
                           str(self.root / "admin.sock"))
        kept.master.timeout = 1.0  # a stopped master is given up on sooner
        kept.answer_timeout = answer_timeout
        return kept

    def processes(self) -> set[int]:
        """Pids of every live process started with this master socket (read by the test
        itself from /proc, not by the code under test)."""
        found = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().decode(errors="replace").split("\0")
                with open(f"/proc/{entry}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and any(a.startswith(self.master_socket) for a in argv):
                found.add(int(entry))
        return found


class Engine:
    """What KeptHAProxy asks of the engine."""

    def __init__(self) -> None:
        self.reconciles = 0

    def request_reconcile(self) -> None:
        self.reconciles += 1


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:  # resume and kill whatever runs with our socket, until nothing is left
        def gone() -> bool:
            for pid in e.processes():
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            return not e.processes()

        await until(gone, 30, "every HAProxy of the test gone")


async def kept_master(env: Env) -> int:
    """Start a kept HAProxy as a daemon would, and leave it running as the daemon's stop
    does: the master's pid."""
    first = env.kept()
    await first.start(Engine())  # type: ignore[arg-type]
    await first.stop()
    info = await MasterCLI(env.master_socket).show_proc(patience=10)
    assert info.workers
    return info.master_pid


async def stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    await until(lambda: state(pid) == "T", 30, f"HAProxy master {pid} stopped")


async def test_a_stopped_kept_master_is_not_started_twice(env: Env) -> None:
    master = await kept_master(env)
    running = env.processes()
    await stop(master)
    second = env.kept(answer_timeout=2.0)
    try:
        with pytest.raises(StartError, match=rf"HAProxy master {master} \(stopped\).*not "
                                             r"starting a second HAProxy.*kill -CONT"):
            await second.start(Engine())  # type: ignore[arg-type]
        assert env.processes() == running, "a second HAProxy was started"
        assert Path(env.master_socket).exists(), "the stopped master's socket was removed"
        with pytest.raises(HAProxyProcessError, match=rf"{master} \(stopped\)"):
            await second.reload()
        assert env.processes() == running, "a reload started a second HAProxy"
    finally:
        await second.stop()


async def test_a_kept_master_that_answers_again_while_waited_for_is_adopted(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servicerouter.haproxy")
    master = await kept_master(env)
    running = env.processes()
    await stop(master)
    second = env.kept()
    starting = asyncio.ensure_future(second.start(Engine()))  # type: ignore[arg-type]
    try:
        await until(lambda: "waiting" in caplog.text, 30, "the wait to be logged")
        os.kill(master, signal.SIGCONT)
        await asyncio.wait_for(starting, 60)
        assert f"adopting the HAProxy master {master}" in caplog.text
        assert env.processes() == running
    finally:
        starting.cancel()
        await second.stop()


async def test_the_watch_waits_for_a_stopped_master_rather_than_starting_another(
        env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="servicerouter.haproxy")
    monkeypatch.setattr(detached, "WATCH_INTERVAL", 0.1)
    kept = env.kept()
    await kept.start(Engine())  # type: ignore[arg-type]
    try:
        info = await MasterCLI(env.master_socket).show_proc(patience=10)
        running = env.processes()
        await stop(info.master_pid)
        await until(lambda: "does not answer" in caplog.text, 60, "the watch to notice")
        assert "starting HAProxy again" not in caplog.text
        assert env.processes() == running, "a second HAProxy was started"
        os.kill(info.master_pid, signal.SIGCONT)
        await until(lambda: "answers again" in caplog.text, 60, "the watch to see it back")
    finally:
        await kept.stop()


def alive(pid: int) -> bool:
    try:
        return state(pid) not in ("Z", "X")
    except OSError:
        return False


async def test_a_launch_that_times_out_leaves_nothing_running(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher hangs after the real HAProxy has detached (its master and worker
    left the launcher's process group): all of them go, not only the launcher."""
    marker = env.root / "detached"
    hanging = env.root / "haproxy-hangs"
    hanging.write_text('#!/bin/sh\nif [ "$1" = "-W" ]; then haproxy "$@" || exit\n'
                       f'  echo $$ > {marker}; exec sleep 300\nfi\nexec haproxy "$@"\n')
    hanging.chmod(0o755)
    monkeypatch.setattr(detached, "START_TIMEOUT", 10.0)
    kept = env.kept(haproxy_bin=str(hanging))
    try:
        with pytest.raises(StartError, match=r"did not detach within 10\.0s; what it "
                                             r"started was killed"):
            await kept.start(Engine())  # type: ignore[arg-type]
    finally:
        await kept.stop()
    assert marker.exists(), "HAProxy had not detached when the launch timed out"
    launcher = int(marker.read_text())
    assert not alive(launcher), "the hanging launcher outlived the launch"
    assert not env.processes(), "HAProxy's master or worker outlived the failed launch"


def blocking_master(path: str, line: str) -> str:
    """One master CLI command with a plain blocking socket: while it runs, the event loop
    (and the daemon's watch with it) cannot look at HAProxy, as an operator's command
    between two looks of the watch."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply.decode()


async def test_a_rejected_reload_by_sigusr2_is_not_taken_for_a_success(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SIGUSR2 reload (master socket gone) was judged against the watch's last look at
    the master. An operator's reload since then (its new worker, its reset failure count)
    made a rejected config look loaded: the daemon took HAProxy to run a config it had
    refused, and never retried. It is judged against the master as it is when signalled."""
    monkeypatch.setattr(detached, "WATCH_INTERVAL", 0.05)
    good = env.config.read_text()
    kept = env.kept()
    await kept.start(Engine())  # type: ignore[arg-type]
    try:
        master = (await MasterCLI(env.master_socket).show_proc(patience=10)).master_pid
        env.config.write_text(good + "garbage\n")
        with pytest.raises(ReloadError, match="rejected"):
            await kept.reload()
        # The watch has looked at the master since: it knows of the failed reload.
        await until(lambda: kept._info and kept._info.failed_reloads == 1, 30,
                    "the watch to see the failed reload")
        # Between two looks of the watch: an operator reloads the good config, and the
        # master socket is removed.
        env.config.write_text(good)
        blocking_master(env.master_socket, "reload")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                info = parse_show_proc(blocking_master(env.master_socket, "show proc"))
                if info.reloads == 2 and info.failed_reloads == 0:
                    break
            assert time.monotonic() < deadline, "the operator's reload never happened"
            time.sleep(0.05)
        os.unlink(env.master_socket)
        env.config.write_text(good + "garbage\n")
        with pytest.raises(ReloadError, match="rejected"):
            await kept.reload()  # by SIGUSR2, rejected by HAProxy
        after = await MasterCLI(env.master_socket).show_proc(patience=10)
        assert after.master_pid == master and after.failed_reloads == 1
        assert after.worker_pids == info.worker_pids, "HAProxy did take the config"
    finally:
        await kept.stop()
