"""SIGTERM and SIGINT stop ``render`` and ``sync`` cleanly (a supervisor's or an
operator's stop): exit status 128 + the signal, no traceback, and a sync stopped midway
leaves the config and its map files as they were, with no temporary file behind.

Run as cron runs them, in a subprocess; the signal is sent once the command waits (on a
Marathon that never answers, or on a reload command that never ends)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from servicerouter.demo.procs import free_port_range, wait_for

from .conftest import needs_haproxy
from .harness import EMPTY_CFG, PYTHON, Simulator

pytestmark = [pytest.mark.integration, needs_haproxy]
PATIENCE = 30.0  # seconds: generous, on a busy 2-core machine


@pytest.fixture
def silent_marathon() -> Iterator[socket.socket]:
    """A listener on loopback that accepts connections (the kernel does) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server


def start(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "servicerouter", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)


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
    config = tmp_path / "haproxy.cfg"
    config.write_text(EMPTY_CFG)
    before = files(tmp_path)
    url = f"http://127.0.0.1:{silent_marathon.getsockname()[1]}"
    where = (["--haproxy-config", str(config), "--reload-command", "true"]
             if command == "sync" else ["--output", str(config)])
    with stopped_in_the_end(start(command, "--marathon", url, "--marathon-timeout", "120",
                                  "--haproxy-socket", str(tmp_path / "admin.sock"),
                                  *where)) as proc:
        waiting, _, _ = select.select([silent_marathon], [], [], PATIENCE)
        assert waiting, f"{command} never asked Marathon"
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == status, err
    assert "Traceback" not in err, err
    assert out == ""
    assert files(tmp_path) == before  # untouched; no temp file, no lock left


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
