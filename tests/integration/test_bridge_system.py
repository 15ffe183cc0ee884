"""``haproxy-marathon-bridge install_haproxy_system`` and ``refresh_system_haproxy``
into a scratch root: the real HAProxy, the simulator, real backends on loopback.

Only the package manager is a recorder (``--package-manager``); the installed
command, the cron file, the Marathon list, ``haproxy -c`` and the reload through
HAProxy's master socket (as Debian's haproxy.service starts it) are all real.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from servicerouter import bridge_system as bs
from servicerouter.demo.procs import Proc

from .conftest import needs_haproxy
from .harness import (
    EMPTY_CFG,
    Daemon,
    Simulator,
    free_port,
    master_reloads,
    running,
    wait_for,
    wait_routed,
)

pytestmark = [pytest.mark.integration, needs_haproxy]

BRIDGE = [sys.executable, "-c", "import sys; from servicerouter.bridge import main; "
                                "sys.exit(main())"]


def bridge(*args: str | Path, command: list[str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(command or BRIDGE), *map(str, args)], capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL, check=False)


def http_get(conn: socket.socket) -> str:
    """One keep-alive HTTP/1.1 request on an open connection; the body (a task id)."""
    conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = conn.recv(4096)
        assert chunk, "connection closed"
        body += chunk
    return body.decode().strip()


def recorder(tmp: Path, name: str = "apt-get") -> tuple[Path, Path]:
    """A stand-in package manager that records its arguments (one call per line)."""
    record = tmp / "package-manager.calls"
    script = tmp / "bin" / name
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {record}\n')
    script.chmod(0o755)
    return script, record


@contextlib.contextmanager
def system_haproxy(tmp_path: Path, simulator: Simulator,
                   listed: bool = True) -> Iterator[tuple[Path, bs.Paths]]:
    """The bridge's installed layout under ``tmp_path/root`` (the Marathon list unless not
    ``listed``, an empty config) and an HAProxy master running on it: (root, paths)."""
    root = tmp_path / "root"
    paths = bs.Paths(root)
    if listed:
        paths.marathons.parent.mkdir(parents=True)
        paths.marathons.write_text(simulator.url.removeprefix("http://") + "\n")
    paths.config.parent.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(EMPTY_CFG)
    master = paths.master_socket
    master.parent.mkdir(parents=True)
    haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-f", str(paths.config),
                               "-S", str(master)], tmp_path / "haproxy.log")
    with running(haproxy.start(lambda: master.exists() and master_reloads(master) == 0,
                               what="HAProxy's master socket")):
        yield root, paths


def test_install_then_refresh_reloads_only_on_change(tmp_path: Path,
                                                     simulator: Simulator) -> None:
    root = tmp_path / "root"
    apt, record = recorder(tmp_path)
    marathon = simulator.url.removeprefix("http://")
    # Install, as root into the scratch root; the first Marathon never answers.
    out = bridge("install_haproxy_system", "--root", root, "--package-manager", apt,
                 "--stats-port", "0", "127.0.0.1:1", marathon)
    assert out.returncode == 0, out.stderr
    assert record.read_text().splitlines() == ["apt-get update -qq",
                                               "apt-get install -y -qq haproxy"]
    marathons = root / "etc/haproxy-marathon-bridge/marathons"
    assert marathons.read_text() == f"127.0.0.1:1\n{marathon}\n"
    cron = root / "etc/cron.d/haproxy-marathon-bridge"
    entries = [line for line in cron.read_text().splitlines()
               if line and not line.startswith("#") and "=" not in line]
    assert entries == ["* * * * * root /usr/local/bin/haproxy-marathon-bridge "
                       "refresh_system_haproxy --stats-port 0"]
    assert cron.read_text().endswith("\n") and stat.S_IMODE(cron.stat().st_mode) == 0o644
    command = root / "usr/local/bin/haproxy-marathon-bridge"
    assert os.access(command, os.X_OK)
    installed = [str(command)]  # from here on, the command the cron job runs

    # HAProxy as Debian's haproxy.service starts it: -Ws, master socket, default config.
    (root / "etc/haproxy").mkdir(parents=True)
    config = root / "etc/haproxy/haproxy.cfg"
    config.write_text(EMPTY_CFG)
    refresh = ("refresh_system_haproxy", "--root", root, "--stats-port", "0")
    out = bridge(*refresh, command=installed)
    assert out.returncode == 1
    assert "no running HAProxy to reload" in out.stderr and "Traceback" not in out.stderr
    assert config.read_text() == EMPTY_CFG, "nothing is written when nothing can reload"

    port, live = simulator.launch("/cron/web", 2)
    master = root / "run/haproxy-master.sock"
    haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-f", str(config), "-S", str(master)],
                   tmp_path / "haproxy.log")
    def reloads() -> int:
        return master_reloads(master)

    with running(haproxy.start(lambda: master.exists() and reloads() == 0,
                               what="HAProxy's master socket")):
        out = bridge(*refresh, command=installed)
        assert out.returncode == 0, out.stderr
        assert "reloaded" in out.stdout
        assert reloads() == 1
        check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0
        assert (check.stdout + check.stderr).strip() == "Configuration file is valid", \
            "the bridge's config makes haproxy -c warn"
        wait_routed(port, live)

        # Nothing changed: no write, no reload, no output for cron to mail.
        before = config.stat().st_mtime_ns
        out = bridge(*refresh, command=installed)
        assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
        assert reloads() == 1 and config.stat().st_mtime_ns == before

        # A reload does not break connections: one opened before it keeps working.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            first = http_get(conn)
            assert first in live
            simulator.scale("/cron/web", 3)
            live = simulator.wait_running("/cron/web", 3)
            out = bridge(*refresh, command=installed)
            assert out.returncode == 0, out.stderr
            assert reloads() == 2
            assert http_get(conn) in live, "the reload broke an open connection"
        wait_routed(port, live)

        # A task replaced: the next refresh reloads once and routes to the new set.
        live = simulator.replace_one("/cron/web", live)
        out = bridge(*refresh, command=installed)
        assert out.returncode == 0, out.stderr
        assert reloads() == 3
        wait_routed(port, live)
        wait_for(lambda: haproxy.alive(), what="HAProxy still running")


def test_refresh_without_install_says_what_to_run(tmp_path: Path) -> None:
    out = bridge("refresh_system_haproxy", "--root", tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"haproxy-marathon-bridge: error: no Marathon list at "
        f"{tmp_path}/etc/haproxy-marathon-bridge/marathons: run "
        "'haproxy-marathon-bridge install_haproxy_system HOST:PORT ...' first")


def test_install_refuses_an_unknown_package_manager(tmp_path: Path) -> None:
    pm, record = recorder(tmp_path, "brew")
    out = bridge("install_haproxy_system", "--root", tmp_path / "root", "--package-manager",
                 pm, "127.0.0.1:8080")
    assert out.returncode == 1 and "'brew' is not one of apt-get, dnf, yum, zypper" in out.stderr
    assert not record.exists() and not (tmp_path / "root").exists()


@pytest.mark.skipif(os.geteuid() != 0 and shutil.which("setpriv") is None,
                    reason="needs setpriv to drop root")
def test_install_refuses_clearly_when_not_root(tmp_path: Path) -> None:
    drop = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            if os.geteuid() == 0 else [])
    probe = subprocess.run([*drop, sys.executable, "-c", "import servicerouter.bridge"],
                           capture_output=True, timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip("user nobody cannot run this checkout's Python (a private directory)")
    existed = Path("/etc/haproxy-marathon-bridge").exists()
    out = bridge("install_haproxy_system", "127.0.0.1:8080", command=[*drop, *BRIDGE])
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("haproxy-marathon-bridge: error: install_haproxy_system "
                                 "must run as root"), out.stderr
    assert "nothing was changed" in out.stderr
    assert Path("/etc/haproxy-marathon-bridge").exists() == existed


def test_install_writes_the_marathon_list_readable_by_root_only(tmp_path: Path) -> None:
    """The list may hold Marathon credentials (user:pass@host): 0600, also when an
    earlier install left it readable by every local user."""
    root = tmp_path / "root"
    apt, _ = recorder(tmp_path)
    marathons = root / "etc/haproxy-marathon-bridge/marathons"
    install = ("install_haproxy_system", "--root", root, "--package-manager", apt)
    out = bridge(*install, "ops:s3cret@m1:8080")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(marathons.stat().st_mode) == 0o600
    marathons.chmod(0o644)  # as installs before this fix left it
    out = bridge(*install, "ops:n3w@m1:8080")
    assert out.returncode == 0, out.stderr
    assert marathons.read_text() == "ops:n3w@m1:8080\n"
    assert stat.S_IMODE(marathons.stat().st_mode) == 0o600
    assert [p.name for p in marathons.parent.iterdir()] == ["marathons"], "no temp left"


def test_each_refresh_makes_an_older_readable_marathon_list_private(tmp_path: Path) -> None:
    """A list an install before the 0600 fix wrote stayed 0644 until the next install."""
    paths = bs.Paths(tmp_path)
    paths.marathons.parent.mkdir(parents=True)
    paths.marathons.write_text("ops:s3cret@m1:8080\n")
    paths.marathons.chmod(0o644)
    assert bs.read_marathons(paths) == ["ops:s3cret@m1:8080"]
    assert stat.S_IMODE(paths.marathons.stat().st_mode) == 0o600


def test_a_marathon_list_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    paths = bs.Paths(tmp_path)
    paths.marathons.parent.mkdir(parents=True)
    paths.marathons.write_bytes(b"m\xe91:8080\n")
    with pytest.raises(bs.BridgeError, match=f"{paths.marathons} is not UTF-8 text"):
        bs.read_marathons(paths)


@pytest.mark.parametrize("before", [EMPTY_CFG, None], ids=["replaced", "first"])
async def test_a_failed_reload_puts_the_running_config_back_so_the_next_refresh_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: str | None) -> None:
    """A new config on disk that HAProxy never loaded looked unchanged to every later
    cron run: the reload was never retried."""
    paths = bs.Paths(tmp_path)
    paths.marathons.parent.mkdir(parents=True)
    paths.marathons.write_text("m1:8080\n")
    paths.config.parent.mkdir(parents=True)
    if before is not None:
        paths.config.write_text(before)
        paths.config.chmod(0o640)
    candidate = f"{EMPTY_CFG}listen web\n    bind 127.0.0.1:{free_port()}\n"

    async def generate(_: list[str]) -> str:
        return candidate

    failing = [sys.executable, "-c", "import sys; sys.exit('haproxy.service: reload failed')"]
    monkeypatch.setattr(bs, "reload_plan", lambda _: ("command", failing))
    with pytest.raises(bs.BridgeError) as failed:
        await bs.refresh(paths, generate)
    message = str(failed.value)
    assert "haproxy.service: reload failed" in message and "the next refresh retries" in message
    rejected = paths.config.with_name("haproxy.cfg.rejected")
    assert rejected.read_text() == candidate and str(rejected) in message
    if before is None:
        assert not paths.config.exists()
    else:
        assert paths.config.read_text() == before
        assert stat.S_IMODE(paths.config.stat().st_mode) == 0o640

    monkeypatch.setattr(bs, "reload_plan", lambda _: ("command", ["true"]))
    done = await bs.refresh(paths, generate)
    assert done.startswith(f"{paths.config} replaced; HAProxy reloaded"), done
    assert paths.config.read_text() == candidate
    assert [p.name for p in paths.config.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_reload_haproxy_refuses_is_retried_by_the_next_refresh(
        tmp_path: Path, simulator: Simulator) -> None:
    """A config haproxy -c passes can still fail to load: here another process holds its
    port. The config HAProxy runs goes back on disk, so once the port is free the next
    cron run reloads rather than finding nothing changed."""
    port, live = simulator.launch("/taken/web", 1)
    with system_haproxy(tmp_path, simulator) as (root, paths):
        refresh = ("refresh_system_haproxy", "--root", root, "--stats-port", "0")
        with socket.create_server(("0.0.0.0", port)):  # not SO_REUSEPORT: HAProxy can't
            out = bridge(*refresh)
            assert out.returncode == 1
            assert "rejected the new configuration" in out.stderr, out.stderr
            assert "the next refresh retries" in out.stderr and "Traceback" not in out.stderr
            assert paths.config.read_text() == EMPTY_CFG
            assert f"bind 0.0.0.0:{port}" in (root / "etc/haproxy/haproxy.cfg.rejected"
                                                ).read_text()
        out = bridge(*refresh)
        assert out.returncode == 0, out.stderr
        assert "reloaded" in out.stdout
        wait_routed(port, live)


def test_the_old_scripts_cron_line_still_refreshes(tmp_path: Path, simulator: Simulator) -> None:
    """The old script's install left ``/etc/cron.d/haproxy-marathon-bridge`` running
    ``haproxy-marathon-bridge logged refresh_system_haproxy $(cat .../marathons)``: the
    Marathons as arguments, the output to syslog. pip installs this command where the old
    script was, so that line runs it every minute until the next install: it must keep
    refreshing HAProxy, not fail on 'logged' and stop every update."""
    port, live = simulator.launch("/old/cron", 2)
    marathon = simulator.url.removeprefix("http://")
    with system_haproxy(tmp_path, simulator, listed=False) as (root, paths):
        master = paths.master_socket
        # No list was written by this command's install: the arguments name the Marathons.
        out = bridge("logged", "refresh_system_haproxy", "--root", root, "--stats-port", "0",
                     "127.0.0.1:1", marathon)
        assert out.returncode == 0, out.stderr
        assert (out.stdout, out.stderr) == ("", ""), "'logged' sends the output to syslog"
        assert master_reloads(master) == 1
        wait_routed(port, live)
        assert not paths.marathons.exists(), "the arguments are not written anywhere"

        live = simulator.replace_one("/old/cron", live)
        out = bridge("refresh_system_haproxy", "--root", root, "--stats-port", "0", marathon)
        assert out.returncode == 0, out.stderr
        assert "reloaded" in out.stdout
        assert master_reloads(master) == 2
        wait_routed(port, live)


def test_a_refresh_leaves_a_config_servicerouter_manages_alone(tmp_path: Path,
                                                                simulator: Simulator) -> None:
    """Moving a host from the bridge to ``servicerouter run`` and forgetting the cron job:
    every minute the refresh replaced the daemon's config with its own and reloaded
    HAProxy. It refuses, as ``sync`` does, while a servicerouter holds the config's lock."""
    root = tmp_path / "root"
    paths = bs.Paths(root)
    port, live = simulator.launch("/moved/web", 2)
    paths.marathons.parent.mkdir(parents=True)
    paths.marathons.write_text(simulator.url.removeprefix("http://") + "\n")
    paths.config.parent.mkdir(parents=True)
    daemon = Daemon(paths.config.parent, simulator.url)  # its config is the bridge's
    assert daemon.config == paths.config
    with running(daemon):
        daemon.start()
        wait_routed(port, live)
        paths.master_socket.parent.mkdir(parents=True)
        paths.master_socket.symlink_to(daemon.master_socket)  # as Debian's would be
        out = bridge("refresh_system_haproxy", "--root", root, "--stats-port", "0")
        assert out.returncode == 1, out.stdout + out.stderr
        assert out.stderr.startswith(
            f"haproxy-marathon-bridge: error: {paths.config}: another servicerouter (pid "
            f"{daemon.proc.popen.pid if daemon.proc.popen else '?'}) manages it"), out.stderr
        assert "Remove /etc/cron.d/haproxy-marathon-bridge" in out.stderr
        assert out.stdout == "", "nothing replaced, nothing reloaded"
        # The daemon's own config (it may reload meanwhile for its own reasons).
        assert "haproxy-marathon-bridge" not in paths.config.read_text()
        assert f"stats socket {daemon.socket}" in paths.config.read_text()
        wait_routed(port, live)


def test_a_lock_that_cannot_be_made_is_named_and_nothing_changes(tmp_path: Path) -> None:
    """Where the config's lock cannot be created (a read-only /etc/haproxy; a folder in
    its way here) the refresh printed Python's bare "[Errno 21] Is a directory: '...'";
    it now says what sync and render -o say, in their words."""
    paths = bs.Paths(tmp_path)
    paths.marathons.parent.mkdir(parents=True)
    paths.marathons.write_text("127.0.0.1:1\n")
    paths.config.parent.mkdir(parents=True)
    paths.config.write_text(EMPTY_CFG)
    lock = paths.config.with_name("haproxy.cfg.lock")
    lock.mkdir()
    out = bridge("refresh_system_haproxy", "--root", tmp_path, "--stats-port", "0")
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip() == (
        f"haproxy-marathon-bridge: error: {paths.config}: cannot create the lock {lock}: Is a "
        "directory; nothing was changed")
    assert out.stdout == "" and paths.config.read_text() == EMPTY_CFG


def test_a_refresh_keeps_the_routes_when_marathon_lists_no_apps_unless_told(
        tmp_path: Path, simulator: Simulator) -> None:
    """A Marathon on empty or wrong storage lists no apps: the refresh replaced the config
    with one routing nothing and reloaded, taking every service down. As ``sync`` does, it
    refuses while the config routes apps; --allow-empty-marathon applies it."""
    port, live = simulator.launch("/kept/web", 2)
    with system_haproxy(tmp_path, simulator) as (root, paths):
        master = paths.master_socket
        # A stats listener: a config routing nothing still has something to listen on.
        refresh = ("refresh_system_haproxy", "--root", root, "--stats-port", str(free_port()))
        assert bridge(*refresh).returncode == 0
        wait_routed(port, live)
        routed = paths.config.read_text()
        simulator.http.post("/_sim/faults", json={"empty_store": True}).raise_for_status()
        out = bridge(*refresh)
        assert out.returncode == 1, out.stdout + out.stderr
        assert out.stderr.startswith(
            f"haproxy-marathon-bridge: error: {simulator.url}: Marathon lists no apps "
            "at all, which would unroute the app routed here"), out.stderr
        assert out.stderr.rstrip().endswith("--allow-empty-marathon applies it"), out.stderr
        assert paths.config.read_text() == routed and master_reloads(master) == 1
        wait_routed(port, live)
        out = bridge(*refresh, "--allow-empty-marathon")
        assert out.returncode == 0, out.stderr
        assert f":{port}" not in paths.config.read_text() and master_reloads(master) == 2


async def test_a_refresh_removes_what_a_killed_refresh_left_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh killed inside its atomic write (a reboot, an OOM kill) leaves
    ``.haproxy.cfg.XXXXXXXX.tmp`` in /etc/haproxy; every later refresh left it there for
    good. Now the next one removes it (as sync does), and only it."""
    paths = bs.Paths(tmp_path)
    paths.marathons.parent.mkdir(parents=True)
    paths.marathons.write_text("m1:8080\n")
    paths.config.parent.mkdir(parents=True)
    paths.config.write_text(EMPTY_CFG)
    fd, name = tempfile.mkstemp(dir=paths.config.parent, prefix=".haproxy.cfg.", suffix=".tmp")
    os.close(fd)  # named as atomic_write names them
    left = Path(name)
    other = paths.config.parent / ".haproxy.cfg.swp"
    other.write_text("the operator's\n")

    async def generate(_: list[str]) -> str:
        return EMPTY_CFG  # unchanged: nothing else is written

    monkeypatch.setattr(bs, "reload_plan", lambda _: ("command", ["true"]))
    assert await bs.refresh(paths, generate) == "unchanged"
    assert not left.exists()
    assert other.read_text() == "the operator's\n"
