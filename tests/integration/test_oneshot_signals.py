"""SIGTERM and SIGINT stop ``render`` and ``sync`` cleanly (a supervisor's or an
operator's stop): exit status 128 + the signal, no traceback, and a sync stopped midway
leaves the config and its map files as they were, with no temporary file behind.

Run as cron runs them, in a subprocess; the signal is sent once the command waits (on a
Marathon that never answers, or on a reload command that never ends)."""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servicerouter.demo.procs import Proc, free_port_range, wait_for
from servicerouter.haproxy.master_cli import parse_show_proc

from .conftest import needs_haproxy
from .harness import EMPTY_CFG, PYTHON, Simulator, master_reloads, running, wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]
PATIENCE = 30.0  # seconds: generous, on a busy 2-core machine


@pytest.fixture
def silent_marathon() -> Iterator[socket.socket]:
    """A listener on loopback that accepts connections (the kernel does) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server


def start(*argv: str, python: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, *python, "-m", "servicerouter", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)


def waiting_on(silent_marathon: socket.socket, tmp_path: Path, command: str) -> list[str]:
    """``command``'s arguments to run against the Marathon that never answers, on an
    empty config in ``tmp_path``."""
    config = tmp_path / "haproxy.cfg"
    config.write_text(EMPTY_CFG)
    url = f"http://127.0.0.1:{silent_marathon.getsockname()[1]}"
    where = (["--haproxy-config", str(config), "--reload-command", "true"]
             if command == "sync" else ["--output", str(config)])
    return [command, "--marathon", url, "--marathon-timeout", "120",
            "--haproxy-socket", str(tmp_path / "admin.sock"), *where]



def beside_haproxy(tmp_path: Path, simulator: Simulator
                   ) -> tuple[Path, Path, tuple[str, ...], Proc]:
    """A ``sync`` beside an HAProxy of its own (not started yet) on an empty config in
    ``tmp_path``: the config, HAProxy's master socket, sync's arguments but the reload's,
    and the HAProxy."""
    config = tmp_path / "haproxy.cfg"
    config.write_text(EMPTY_CFG)
    master = tmp_path / "master.sock"
    common = ("sync", "--marathon", simulator.url, "--haproxy-config", str(config),
              "--haproxy-socket", str(tmp_path / "admin.sock"), "--stats-port", "0",
              "--http-port", "0", "--https-port", "0")
    haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-f", str(config), "-S", str(master)],
                   tmp_path / "haproxy.log")
    return config, master, common, haproxy


def sync_once(common: tuple[str, ...], master: Path) -> subprocess.CompletedProcess[str]:
    """One more ``sync`` with ``common``'s arguments, reloading through ``master``."""
    return subprocess.run([PYTHON, "-m", "servicerouter", *common,
                           "--haproxy-master-socket", str(master)],
                          capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL, check=False)

@contextlib.contextmanager
def stopped_in_the_end(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=PATIENCE)


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix not in (".log", ".sock")}


@pytest.mark.parametrize(("command", "sig", "status"), [
    ("sync", signal.SIGTERM, 143),
    ("sync", signal.SIGINT, 130),
    ("render", signal.SIGTERM, 143),
])
def test_a_signal_while_marathon_is_waited_for_stops_cleanly(
        tmp_path: Path, silent_marathon: socket.socket, command: str, sig: int,
        status: int) -> None:
    args = waiting_on(silent_marathon, tmp_path, command)
    before = files(tmp_path)
    with stopped_in_the_end(start(*args)) as proc:
        waiting, _, _ = select.select([silent_marathon], [], [], PATIENCE)
        assert waiting, f"{command} never asked Marathon"
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == status, err
    assert "Traceback" not in err, err
    assert out == ""
    assert files(tmp_path) == before  # untouched; no temp file, no lock left


# Modules the command imports on its way to its event loop, in that order: right after
# entry.py's first lines, in cli.py's imports, cli.main's own, and the last before the
# loop. The slower the machine, the longer this start (~0.3 s on 2 cores).
STARTING = ("servicerouter.envflags", "servicerouter.cli", "servicerouter.haproxy.render",
            "servicerouter.stopping")


@pytest.mark.parametrize("command", ["sync", "render"])
def test_a_signal_while_the_command_starts_stops_it_cleanly(
        tmp_path: Path, silent_marathon: socket.socket, command: str) -> None:
    """A SIGTERM in the first ~0.3 s, while Python imported the command, killed it with
    SIGTERM's default action (status -15) instead of its clean 143. Each run here is
    signalled as soon as it reports (python -X importtime) that it has imported one of
    its modules: a moment in its start, while it cannot have finished (Marathon never
    answers)."""
    args = waiting_on(silent_marathon, tmp_path, command)
    before = files(tmp_path)
    for module in STARTING:
        proc = start(*args, python=("-X", "importtime"))
        lines: queue.Queue[str | None] = queue.Queue()

        def read(stream: Any = proc.stderr, out: queue.Queue[str | None] = lines) -> None:
            for line in stream:
                out.put(line)
            out.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with stopped_in_the_end(proc):
            seen: list[str] = []
            while not (seen and seen[-1].split("|")[-1].strip() == module):
                line = lines.get(timeout=PATIENCE)
                assert line is not None, f"{command} ended before importing {module}"
                seen.append(line)
            assert proc.poll() is None, f"{command} had ended when signalled"
            os.kill(proc.pid, signal.SIGTERM)
            out = proc.stdout.read() if proc.stdout else ""
            proc.wait(timeout=PATIENCE)
        reader.join(PATIENCE)
        while (line := lines.get_nowait()) is not None:
            seen.append(line)
        err = "".join(ln for ln in seen if not ln.startswith("import time:"))
        assert proc.returncode == 143, f"signalled after importing {module}: {err}"
        assert "Traceback" not in err, err
        assert err.strip() == f"servicerouter: {command} stopped by SIGTERM", err
        assert out == ""
        assert files(tmp_path) == before, module  # untouched; no temp file, no lock left


def test_a_sync_stopped_during_its_reload_puts_the_config_and_maps_back(
        tmp_path: Path, simulator: Simulator) -> None:
    low, high = free_port_range(8)
    config = tmp_path / "haproxy.cfg"
    common = ("sync", "--marathon", simulator.url, "--haproxy-config", str(config),
              "--haproxy-socket", str(tmp_path / "admin.sock"), "--stats-port", "0",
              "--http-port", "0", "--https-port", "0", "--service-port-range", f"{low}-{high}")
    first = subprocess.run([PYTHON, "-m", "servicerouter", *common, "--pool-spares", "1",
                            "--reload-command", "true"], capture_output=True, text=True,
                           timeout=90, stdin=subprocess.DEVNULL, check=False)
    assert first.returncode == 0, first.stderr
    before = files(tmp_path)
    assert any(name.startswith("haproxy.cfg.d/") for name in before), before

    # A change (another pool size: the config and the maps differ), and a reload that
    # never ends: the new files are in place while it runs.
    pid_file = tmp_path / "reload.pid"
    hang = f"echo $$ > {pid_file}; exec sleep 600"
    with stopped_in_the_end(start(*common, "--pool-spares", "3",
                                  "--reload-command", hang)) as proc:
        try:
            wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), PATIENCE,
                     what="the reload command")
            assert config.read_text() != before["haproxy.cfg"]  # the change is on disk
            os.kill(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=PATIENCE)
        finally:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    pid_file.unlink()
    assert files(tmp_path) == before  # config and maps as they were; nothing else left


class HoldingMaster:
    """A master socket in front of HAProxy's own: it passes each command on, but holds
    back every ``show proc`` answer that shows the reload done (a worker that was not
    there before the ``reload``) until :meth:`release`. HAProxy has reloaded; the sync
    has not yet read that it did."""

    def __init__(self, path: Path, master: Path) -> None:
        self.path, self.master = path, master
        self.held = threading.Event()
        self.released = threading.Event()
        self.holding = 0  # answers held back so far (each a sync waiting on one)
        self._counted = threading.Condition()
        self.workers: set[int] | None = None
        self.reload_sent = False
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _ask(self, line: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(PATIENCE)
            s.connect(str(self.master))
            s.sendall(line)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        return reply

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            line = b""
            while chunk := conn.recv(4096):
                line += chunk
            try:
                reply = self._ask(line)
            except OSError:
                return  # the master re-executing: the client is refused as it would be
            if line.strip() == b"reload":
                self.reload_sent = True
            elif line.strip() == b"show proc":
                workers = set(parse_show_proc(reply.decode()).worker_pids)
                if not self.reload_sent:
                    self.workers = workers
                elif self.workers is not None and workers - self.workers:
                    with self._counted:
                        self.holding += 1
                        self._counted.notify_all()
                    self.held.set()
                    self.released.wait(PATIENCE)
            with contextlib.suppress(OSError):
                conn.sendall(reply)

    def wait_holding(self, count: int, timeout: float) -> bool:
        """Until ``count`` answers have been held back (False: not within ``timeout``)."""
        with self._counted:
            return self._counted.wait_for(lambda: self.holding >= count, timeout)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.close()


def test_a_sync_stopped_after_haproxy_reloaded_keeps_the_new_config(
        tmp_path: Path, simulator: Simulator) -> None:
    """A stop that came once HAProxy had reloaded, before the sync read that it had, put
    the old file back: HAProxy served the new config, the file said the old one, and the
    next sync reloaded again. One last look at the master decides: it reloaded, so the
    new file stays."""
    config, master, common, haproxy = beside_haproxy(tmp_path, simulator)
    port, live = simulator.launch("/stop/web", 2)
    with running(haproxy.start(lambda: master.exists() and master_reloads(master) == 0,
                               what="HAProxy's master socket")):
        holding = HoldingMaster(tmp_path / "holding.sock", master)
        try:
            with stopped_in_the_end(start(*common, "--haproxy-master-socket",
                                          str(holding.path))) as proc:
                assert holding.held.wait(PATIENCE), f"HAProxy never reloaded (sync: {proc.poll()})"
                os.kill(proc.pid, signal.SIGTERM)
                # Released once the stop is being acted on (its last look at the master,
                # held too): released at once, the held answer could reach the sync
                # before the signal did, and the sync end as if never stopped (exit 0).
                assert holding.wait_holding(2, PATIENCE), "the stop never looked at the master"
                holding.release()
                _, err = proc.communicate(timeout=PATIENCE)
        finally:
            holding.close()
        assert proc.returncode == 143, err
        assert "Traceback" not in err, err
        assert master_reloads(master) == 1
        wait_routed(port, live)  # HAProxy serves the new config ...
        assert f":{port}" in config.read_text()  # ... and the file is that config
        # So the next sync has nothing to do: no reload, nothing said.
        again = sync_once(common, master)
        assert (again.returncode, again.stdout) == (0, ""), again.stderr
        assert master_reloads(master) == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_sync_killed_before_haproxy_reloaded_is_not_taken_for_applied_by_the_next(
        tmp_path: Path, simulator: Simulator) -> None:
    """SIGKILL (the OOM killer, cron's timeout -s KILL) runs no code: a sync killed once
    it had written the new config, before HAProxy reloaded it, left a file HAProxy never
    loaded. The next sync found the file equal to its render and did nothing, for ever:
    the app stayed unrouted until some other change. ``<config>.unconfirmed`` (the
    daemon's marker) is there from the first change on; the next sync reloads."""
    config, master, common, haproxy = beside_haproxy(tmp_path, simulator)
    marker = tmp_path / "haproxy.cfg.unconfirmed"
    port, live = simulator.launch("/killed/web", 2)
    pid_file = tmp_path / "reload.pid"
    hang = f"echo $$ > {pid_file}; exec sleep 600"
    with running(haproxy.start(lambda: master.exists() and master_reloads(master) == 0,
                               what="HAProxy's master socket")):
        with stopped_in_the_end(start(*common, "--reload-command", hang)) as proc:
            try:
                wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                         PATIENCE, what="the reload command")
                assert f":{port}" in config.read_text()  # the change is on disk
                os.kill(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=PATIENCE)
            finally:
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL
        assert marker.exists(), "a change HAProxy was never seen to load, unmarked"
        assert master_reloads(master) == 0
        again = sync_once(common, master)
        assert again.returncode == 0, again.stderr
        assert "HAProxy reloaded" in again.stdout, (again.stdout, again.stderr)
        assert "haproxy.cfg.unconfirmed is there" in again.stderr, again.stderr
        assert master_reloads(master) == 1
        wait_routed(port, live)
        assert not marker.exists()
        # Confirmed: the run after that has nothing to do.
        third = sync_once(common, master)
        assert (third.returncode, third.stdout) == (0, ""), third.stderr
        assert master_reloads(master) == 1
