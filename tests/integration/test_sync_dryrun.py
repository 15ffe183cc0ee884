"""``servicerouter sync`` (cron) and ``servicerouter run --dry-run`` against the
simulator, with the real HAProxy (sync) or none at all (dry run)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from servicerouter.demo.procs import Proc, free_port

from .conftest import needs_haproxy
from .harness import EMPTY_CFG, PYTHON, Simulator, master_reloads, running, wait_for, wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]



def sync(marathon: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servicerouter", "sync", "--marathon", marathon,
         "--haproxy-config", str(tmp / "haproxy.cfg"),
         "--haproxy-socket", str(tmp / "admin.sock"), "--stats-port", "0",
         "--http-port", "0", "--https-port", "0", *extra],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL, check=False)


def test_sync_applies_only_changes_and_fails_clearly(tmp_path: Path,
                                                     simulator: Simulator) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(EMPTY_CFG)
    master = tmp_path / "master.sock"
    by_master = ("--haproxy-master-socket", str(master))

    def reloads() -> int:
        return master_reloads(master)

    port, live = simulator.launch("/sync/web", 2)
    haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-f", str(config), "-S", str(master)],
                   tmp_path / "haproxy.log")
    with running(haproxy.start(lambda: master.exists() and reloads() == 0,
                               what="HAProxy's master socket")):
        out = sync(simulator.url, tmp_path, *by_master)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"servicerouter: {config} updated; HAProxy reloaded via "
                                     f"master socket {master}"), out.stdout
        assert reloads() == 1
        wait_routed(port, live)

        # Unchanged: exit 0, silent (cron mails output), no write, no reload.
        mtime = config.stat().st_mtime_ns
        out = sync(simulator.url, tmp_path, *by_master)
        assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
        assert reloads() == 1 and config.stat().st_mtime_ns == mtime

        # A change: one reload, traffic reaches the new task set.
        simulator.scale("/sync/web", 3)
        live = simulator.wait_running("/sync/web", 3)
        assert sync(simulator.url, tmp_path, *by_master).returncode == 0
        assert reloads() == 2
        wait_routed(port, live)
        good = config.read_text()

        # haproxy -c rejects the candidate: exit 1, file and HAProxy untouched.
        bad = tmp_path / "templates"
        bad.mkdir()
        (bad / "defaults.j2").write_text("defaults\n    mode tcp\n    no-such-keyword 1\n")
        out = sync(simulator.url, tmp_path, *by_master, "--templates", str(bad))
        assert out.returncode == 1
        assert out.stderr.startswith("servicerouter: error: haproxy -c rejected the new "
                                     f"config (kept at {config}.rejected)"), out.stderr
        assert "no-such-keyword" in out.stderr and "Traceback" not in out.stderr
        assert config.read_text() == good and reloads() == 2

        # The reload fails: the old file comes back, so the next sync retries.
        simulator.scale("/sync/web", 2)
        live = simulator.wait_running("/sync/web", 2)
        out = sync(simulator.url, tmp_path, "--reload-command", "exit 3")
        assert out.returncode == 1
        assert "reload via command 'exit 3' failed" in out.stderr, out.stderr
        assert f"was restored to the config HAProxy is running (the new one is kept at " \
               f"{config}.rejected), the next sync retries" in out.stderr, out.stderr
        assert config.read_text() == good and reloads() == 2
        assert "server" in (tmp_path / "haproxy.cfg.rejected").read_text()
        assert sync(simulator.url, tmp_path, *by_master).returncode == 0
        assert reloads() == 3
        wait_routed(port, live)



def test_a_first_sync_whose_reload_fails_says_it_removed_the_config(
        tmp_path: Path, simulator: Simulator) -> None:
    """With no config before it, a failed reload removes the new file; the error said it
    was "restored to the config HAProxy is running", a config that does not exist."""
    simulator.launch("/first/web", 1)
    config = tmp_path / "haproxy.cfg"
    out = sync(simulator.url, tmp_path, "--reload-command", "exit 3")
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        f"{config} was removed, as there was none before (the new one is kept at "
        f"{config}.rejected); the next sync retries"), out.stderr
    assert not config.exists() and "server" in (tmp_path / "haproxy.cfg.rejected").read_text()

# haproxy -c that rejects any config routing the app "/sync/rejectme" (its backend's
# name), as it would a value admission missed; the real haproxy for everything else.
REJECTING_CHECK = """#!/bin/sh
case " $* " in
*" -c "*)
    cfg=$(cat)
    if printf '%s\\n' "$cfg" | grep -q '^backend sync_rejectme_'; then
        echo "[ALERT]    (1) : config : something is wrong, HAProxy does not say where"
        exit 1
    fi
    printf '%s\\n' "$cfg" | REAL "$@"
    exit $? ;;
esac
exec REAL "$@"
"""


def test_a_service_haproxy_rejects_is_left_out_and_the_others_are_synced(
        tmp_path: Path, simulator: Simulator) -> None:
    config, master = tmp_path / "haproxy.cfg", tmp_path / "master.sock"
    config.write_text(EMPTY_CFG)
    check = tmp_path / "haproxy-rejecting"
    check.write_text(REJECTING_CHECK.replace("REAL", shutil.which("haproxy") or "haproxy"))
    check.chmod(0o755)
    args = ("--haproxy-master-socket", str(master), "--haproxy-bin", str(check))
    port, live = simulator.launch("/sync/good", 2)
    bad_port, _ = simulator.launch("/sync/rejectme", 1)
    haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-f", str(config), "-S", str(master)],
                   tmp_path / "haproxy.log")
    with running(haproxy.start(lambda: master.exists() and master_reloads(master) == 0,
                               what="HAProxy's master socket")):
        out = sync(simulator.url, tmp_path, *args)
        assert out.returncode == 0, out.stderr
        assert "updated; HAProxy reloaded" in out.stdout
        assert re.search(r"app /sync/rejectme: backend sync_rejectme_\d+=.* is what haproxy -c "
                         r"said about this service; service left out", out.stderr), out.stderr
        assert master_reloads(master) == 1
        wait_routed(port, live)
        assert "sync_rejectme" not in config.read_text()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", bad_port), timeout=5).close()
        # The next run finds the same: nothing to change, the app reported again.
        out = sync(simulator.url, tmp_path, *args)
        assert (out.returncode, out.stdout) == (0, ""), out.stderr
        assert "/sync/rejectme" in out.stderr
        # The other apps keep being synced.
        simulator.scale("/sync/good", 3)
        live = simulator.wait_running("/sync/good", 3)
        out = sync(simulator.url, tmp_path, *args)
        assert out.returncode == 0 and "updated" in out.stdout, out.stderr
        assert master_reloads(master) == 2
        wait_routed(port, live)


def test_sync_without_a_reload_method_changes_nothing(tmp_path: Path,
                                                      simulator: Simulator) -> None:
    out = sync(simulator.url, tmp_path, "--haproxy-master-socket", str(tmp_path / "none.sock"))
    assert out.returncode == 1
    assert out.stderr.startswith("servicerouter: error: reload via master socket "), out.stderr
    assert not (tmp_path / "haproxy.cfg").exists()


def test_sync_over_a_config_that_is_not_utf8_names_it_and_changes_nothing(
        tmp_path: Path, simulator: Simulator) -> None:
    """It could not be put back if the reload failed: refuse before touching anything."""
    config = tmp_path / "haproxy.cfg"
    config.write_bytes(b"# caf\xe9\n" + EMPTY_CFG.encode())
    out = sync(simulator.url, tmp_path, "--haproxy-master-socket", str(tmp_path / "m.sock"))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"servicerouter: error: {config} is not UTF-8 text (invalid continuation byte at "
        "byte 5); nothing was changed: move it aside or save it as UTF-8")
    assert config.read_bytes().startswith(b"# caf\xe9\n")


def test_dry_run_prints_what_it_would_do_and_touches_nothing(tmp_path: Path,
                                                             simulator: Simulator) -> None:
    port, live = simulator.launch("/dry/web", 2)
    work = tmp_path / "etc"
    proc = Proc("servicerouter", [
        PYTHON, "-m", "servicerouter", "run", "--dry-run", "--marathon", simulator.url,
        "--haproxy-config", str(work / "haproxy.cfg"), "--haproxy-socket",
        str(work / "admin.sock"), "--start-haproxy", "--stats-port", "0", "--http-port", "0",
        "--https-port", "0", "--listen", f"127.0.0.1:{free_port()}", "--reconcile-interval",
        "1", "--min-reload-interval", "0.2",
    ], tmp_path / "dry.log")
    with running(proc.start()):
        wait_for(lambda: "dry-run: would reload HAProxy" in proc.output(), 30,
                 what="the first (imaginary) reload")
        out = proc.output()
        assert f"dry-run: would write {work / 'haproxy.cfg'}" in out
        new = simulator.replace_one("/dry/web", live)
        (task,) = [t for t in simulator.app("/dry/web")["tasks"] if t["id"] in new - live]
        addr = re.compile(rf"dry-run: would send to {re.escape(str(work))}/admin.sock: "
                          rf"set server dry_web_{port}/s\d+ addr 127.0.0.1 port "
                          rf"{task['ports'][0]}\n")
        wait_for(lambda: addr.search(proc.output()), 30,
                 what=f"{addr.pattern!r} for the replacement")
        assert proc.output().count("would reload HAProxy") == 1, "churn needs no reload"
        simulator.launch("/dry/other", 1)  # a new app changes the shape: one more reload
        wait_for(lambda: proc.output().count("would reload HAProxy") == 2, 30,
                 what="the reload a new app needs")
    assert not work.exists(), "a dry run wrote files"
    assert proc.popen is not None and proc.popen.returncode == 0, proc.output()


def system_haproxy(tmp: Path) -> tuple[Path, Path, tuple[str, str], Proc]:
    """An HAProxy started as an init system would (on a config with only its admin
    socket), for `sync` to reload through its master socket: (config, master socket,
    the sync flags naming it, the process to start)."""
    config, master = tmp / "haproxy.cfg", tmp / "master.sock"
    config.write_text(EMPTY_CFG)
    haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-f", str(config), "-S", str(master)],
                   tmp / "haproxy.log")
    return config, master, ("--haproxy-master-socket", str(master)), haproxy


def test_each_sync_run_keeps_ports_with_their_owner_not_the_older_thief(
        tmp_path: Path, simulator: Simulator) -> None:
    """Every cron run starts afresh: without the owners it keeps next to the config, the
    oldest definition would take a port from its owner at the owner's next deploy."""
    _, master, by_master, haproxy = system_haproxy(tmp_path)
    with running(haproxy.start(lambda: master.exists(), what="HAProxy's master socket")):
        port, live = simulator.launch("/teama/db", 1)
        out = sync(simulator.url, tmp_path, *by_master)
        assert out.returncode == 0, out.stderr
        wait_routed(port, live)
        simulator.launch("/aaa/thief", 1, labels={"HAPROXY_0_PORT": str(port)})
        out = sync(simulator.url, tmp_path, *by_master)
        assert "port_taken" not in out.stderr and "is already bound by app /teama/db" \
            in out.stderr, out.stderr
        simulator.scale("/teama/db", 2)  # a deploy: the thief's definition is now older
        live = simulator.wait_running("/teama/db", 2)
        out = sync(simulator.url, tmp_path, *by_master)
        assert out.returncode == 0, out.stderr
        assert "is already bound by app /teama/db" in out.stderr, out.stderr
        wait_routed(port, live)
        owners = (tmp_path / "haproxy.cfg.owners.json").read_text()
        assert f'"{port}": "/teama/db"' in owners


def test_a_sync_run_refuses_an_empty_marathon_unless_told(tmp_path: Path,
                                                          simulator: Simulator) -> None:
    """A Marathon on empty storage lists no apps: a cron run would have replaced the
    config with one routing nothing. The owners file of the last run says apps were
    routed, so the run fails and changes nothing; --allow-empty-marathon applies it."""
    config, master, by_master, haproxy = system_haproxy(tmp_path)
    with running(haproxy.start(lambda: master.exists(), what="HAProxy's master socket")):
        port, live = simulator.launch("/teama/db", 1)
        assert sync(simulator.url, tmp_path, *by_master).returncode == 0
        wait_routed(port, live)
        routed, reloads = config.read_text(), master_reloads(master)
        simulator.http.post("/_sim/faults", json={"empty_store": True}).raise_for_status()
        out = sync(simulator.url, tmp_path, *by_master)
        assert out.returncode == 1
        assert out.stderr.startswith(
            f"servicerouter: error: {simulator.url}: Marathon lists no apps at all, "
            "which would unroute the app routed here"), out.stderr
        assert out.stderr.rstrip().endswith("--allow-empty-marathon applies it"), out.stderr
        assert config.read_text() == routed and master_reloads(master) == reloads
        wait_routed(port, live)
        out = sync(simulator.url, tmp_path, *by_master, "--allow-empty-marathon")
        assert out.returncode == 0, out.stderr
        assert f":{port}" not in config.read_text() and master_reloads(master) == reloads + 1


def test_sync_removes_what_a_killed_run_left_and_nothing_else(
        tmp_path: Path, simulator: Simulator) -> None:
    """A sync (or daemon) SIGKILLed inside an atomic_write leaves its temp file, next to
    the config or in <config>.d; the next sync removes those, and only those."""
    config, maps = tmp_path / "haproxy.cfg", tmp_path / "haproxy.cfg.d"
    maps.mkdir()
    config.write_text(EMPTY_CFG)
    left = []
    for folder, name in ((tmp_path, "haproxy.cfg"), (tmp_path, "haproxy.cfg.owners.json"),
                         (maps, "ports.map"), (maps, "crt-0123456789abcdef.list")):
        fd, path = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)  # named as atomic_write names them
        left.append(Path(path))
    others = [tmp_path / ".haproxy.cfg.swp", maps / "notes.tmp", maps / ".ports.map.tmp"]
    for path in others:
        path.write_text("the operator's\n")
    out = sync(simulator.url, tmp_path, "--reload-command", "true")
    assert out.returncode == 0, out.stderr
    assert [p for p in left if p.exists()] == []
    assert all(p.read_text() == "the operator's\n" for p in others)


def test_a_service_whose_port_another_process_holds_is_left_out_and_the_others_synced(
        tmp_path: Path, simulator: Simulator) -> None:
    """An app's HAPROXY_0_PORT on a port another process listens on passed haproxy -c
    (which binds nothing), and HAProxy's reload then failed to bind it: sync, which had
    no bind check (the daemon's guard has one), restored the old file and failed every
    run, so no other app's change was ever applied."""
    config, master = tmp_path / "haproxy.cfg", tmp_path / "master.sock"
    config.write_text(EMPTY_CFG)
    by_master = ("--haproxy-master-socket", str(master))
    port, live = simulator.launch("/sync/good", 2)
    with socket.socket() as held:  # another process's listener, on loopback
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        simulator.create_app("/sync/squatter", instances=0, cmd=None,
                             labels={"HAPROXY_0_PORT": str(taken)})
        haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-f", str(config), "-S",
                                   str(master)], tmp_path / "haproxy.log")
        with running(haproxy.start(lambda: master.exists() and master_reloads(master) == 0,
                                   what="HAProxy's master socket")):
            out = sync(simulator.url, tmp_path, *by_master)
            assert out.returncode == 0, out.stderr
            assert "updated; HAProxy reloaded" in out.stdout
            assert (f"app /sync/squatter: HAPROXY_0_PORT='*:{taken}' cannot be bound: "
                    "Address already in use; service left out") in out.stderr, out.stderr
            assert master_reloads(master) == 1
            wait_routed(port, live)
            assert "sync_squatter" not in config.read_text()
            # The other apps keep being synced.
            simulator.scale("/sync/good", 3)
            live = simulator.wait_running("/sync/good", 3)
            out = sync(simulator.url, tmp_path, *by_master)
            assert out.returncode == 0 and "updated" in out.stdout, out.stderr
            assert master_reloads(master) == 2
            wait_routed(port, live)
