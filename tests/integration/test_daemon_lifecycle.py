"""The daemon as an operator meets it: what it leaves behind, its sockets, signals,
restarts next to an HAProxy it did not start, and a lost admin socket.

Reload counts come from HAProxy's master (``show proc``); routing from real requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servicerouter.haproxy.master_cli import MasterCLI
from servicerouter.haproxy.render import builtin_templates

from .conftest import needs_haproxy
from .harness import (
    EMPTY_CFG,
    PYTHON,
    Daemon,
    ExternalHAProxy,
    Simulator,
    children_of,
    free_port,
    open_tunnel,
    responders,
    running,
    wait_for,
)

pytestmark = [pytest.mark.integration, needs_haproxy]


def routed(sim: Simulator, app_id: str, port: int, timeout: float = 20.0) -> set[str]:
    """Wait until traffic through ``port`` reaches exactly the app's running tasks as
    Marathon has them at that moment: on a machine shared with other test runs, a
    task can die on a taken port and be replaced, and the daemon must follow."""
    def check() -> set[str] | None:
        tasks = sim.running(app_id)
        return tasks if tasks and responders(port, 4 * len(tasks) + 4) == tasks else None

    return set(wait_for(check, timeout, what=f"traffic on :{port} reaching {app_id}'s tasks"))


def replace_task(sim: Simulator, app_id: str) -> None:
    """Kill one of the app's running tasks (as Marathon has them now) and wait for its
    replacement."""
    sim.replace_one(app_id, sim.running(app_id))


def _wait_gone(pids: list[int]) -> None:
    for pid in pids:
        wait_for(lambda p=pid: not _alive(p), 15, what=f"haproxy pid {pid} gone")


def _stop_kept(pids: list[int]) -> None:
    """Stop a kept (detached) HAProxy: its master first, then wait for every process."""
    for pid in pids[:1]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    _wait_gone(pids)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _slow_check_haproxy(tmp: Path) -> Path:
    """An haproxy whose ``-c`` hangs (as one at 100% CPU did), all else is the real one."""
    wrapper = tmp / "haproxy-slow-check"
    wrapper.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then exec sleep 300; fi\n'
                       'exec haproxy "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_sigkilled_daemon_leaves_no_process_and_no_file(tmp_path: Path,
                                                        simulator: Simulator) -> None:
    simulator.launch("/left", 1)
    before_tmp = set(Path("/tmp").glob("servicerouter-check-*"))
    daemon = Daemon(tmp_path, simulator.url, "--haproxy-bin", str(_slow_check_haproxy(tmp_path)))
    with running(daemon):
        daemon.start()  # the first config starts HAProxy directly, with no haproxy -c
        assert daemon.proc.popen is not None
        pid = daemon.proc.popen.pid
        simulator.launch("/second", 1)  # a reload: its candidate meets the hanging -c

        def hanging_checks() -> list[int]:
            return [c for c in children_of(pid) if _comm(c) == "sleep"]

        checks = wait_for(hanging_checks, 30, what="a running haproxy -c")
        os.kill(pid, signal.SIGKILL)
        daemon.proc.popen.wait(10)
        for child in checks:
            wait_for(lambda c=child: not _alive(c), 30, what=f"haproxy -c {child} gone")
    assert set(Path("/tmp").glob("servicerouter-check-*")) == before_tmp
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers == []


def test_a_check_that_prints_megabytes_is_logged_in_brief(tmp_path: Path,
                                                          simulator: Simulator) -> None:
    """A broken template over many services is an alert each; the whole output was one
    log line per retry of the backoff (here 2.4 MB each)."""
    chatty = tmp_path / "haproxy-chatty"
    chatty.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then\n  yes "[ALERT] (1) : config : '
                      'parsing [x:1] : unknown keyword" | head -n 50000; exit 1\nfi\n'
                      'exec haproxy "$@"\n')
    chatty.chmod(0o755)
    port, _ = simulator.launch("/first", 1)
    daemon = Daemon(tmp_path, simulator.url, "--haproxy-bin", str(chatty))
    with running(daemon):
        daemon.start()  # the first config starts HAProxy directly, with no haproxy -c
        simulator.launch("/second", 1)
        logged = re.compile(r"candidate config rejected by haproxy -c.*?the running config "
                            r"keeps serving", re.DOTALL)
        message = wait_for(lambda: logged.search(daemon.proc.output()), 30,
                           what="the rejection logged").group(0)
        assert len(message) < 10_000
        assert message.endswith("more characters of haproxy -c's output not shown); the "
                                "running config keeps serving")
        routed(simulator, "/first", port)


def test_sigkilled_daemon_takes_its_haproxy_along(tmp_path: Path,
                                                  simulator: Simulator) -> None:
    """--start-haproxy ties HAProxy's life to the daemon's (see the README for why, and
    for the master-socket mode that keeps HAProxy serving)."""
    port, _ = simulator.launch("/tied", 1)
    daemon = Daemon(tmp_path, simulator.url)
    with running(daemon):
        daemon.start()
        routed(simulator, "/tied", port)
        pids = daemon.proc_info().all_pids
        assert daemon.proc.popen is not None
        os.kill(daemon.proc.popen.pid, signal.SIGKILL)
        daemon.proc.popen.wait(10)
        _wait_gone(pids)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("hangs", ["marathon", "check"])
def test_sigterm_while_starting_stops_at_once_and_leaves_nothing(tmp_path: Path,
                                                                 hangs: str) -> None:
    """A SIGTERM during the first full sync waited out --marathon-timeout, twice (60 s
    here, with the default 30 s); during the check of a config left on disk, haproxy -c's
    60 s. Here both are far longer than the bound the daemon gets to stop."""
    (tmp_path / "haproxy.cfg").write_text(
        EMPTY_CFG + f"listen stats\n    bind 127.0.0.1:{free_port()}\n")
    with socket.socket() as marathon:  # accepts connections, never answers
        marathon.bind(("127.0.0.1", 0))
        marathon.listen(16)
        extra = ["--marathon-timeout", "300"]
        if hangs == "check":
            extra += ["--haproxy-bin", str(_slow_check_haproxy(tmp_path))]
        daemon = Daemon(tmp_path, f"http://127.0.0.1:{marathon.getsockname()[1]}", *extra)
        with running(daemon):
            daemon.start(wait_healthy=False)
            assert daemon.proc.popen is not None
            pid = daemon.proc.popen.pid
            if hangs == "check":
                children = wait_for(lambda: [c for c in children_of(pid)
                                             if _comm(c) == "sleep"], 30, what="haproxy -c")
            else:
                wait_for(lambda: "starting HAProxy on the existing" in daemon.proc.output(),
                         30, what="HAProxy started on the config on disk")
                children = daemon.proc_info().all_pids
            os.kill(pid, signal.SIGTERM)
            try:
                daemon.proc.popen.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 60 s after SIGTERM (hanging: {hangs})")
            assert daemon.proc.popen.returncode == 0, daemon.proc.output()
            _wait_gone(children)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "haproxy-slow-check")
    assert left == ["haproxy.cfg", "servicerouter.log"], left


def test_sigterm_during_a_hanging_reload_command_stops_all_it_started(
        tmp_path: Path, simulator: Simulator) -> None:
    """The command's shell died with the daemon (parent-death signal), but what the
    shell had started was left running: the cancelled command was forgotten before the
    daemon's exit killed its children's process groups."""
    simulator.launch("/cmd", 1)
    daemon = Daemon(tmp_path, simulator.url, "--reload-command", "sleep 300; true",
                    start_haproxy=False)
    with running(daemon):
        daemon.start(wait_healthy=False)
        assert daemon.proc.popen is not None
        pid = daemon.proc.popen.pid
        sleeps = wait_for(lambda: [c for sh in children_of(pid) for c in children_of(sh)
                                   if _comm(c) == "sleep"], 30, what="the reload command")
        os.kill(pid, signal.SIGTERM)
        daemon.proc.popen.wait(30)
        try:
            _wait_gone(sleeps)
        finally:  # the defect's leftover must not outlive the test either
            for child in sleeps:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)


def test_sockets_are_0600_under_umask_000(tmp_path: Path, simulator: Simulator) -> None:
    port, _ = simulator.launch("/private", 1)
    daemon = Daemon(tmp_path, simulator.url)
    daemon.proc.argv = ["/bin/sh", "-c", 'umask 000; exec "$@"', "sh", *daemon.proc.argv]
    with running(daemon):
        daemon.start()
        routed(simulator, "/private", port)
        for sock in (daemon.socket, daemon.master_socket):
            mode = stat.S_IMODE(sock.stat().st_mode)
            assert mode == 0o600, f"{sock} has mode {oct(mode)}"
        # ... and still after a reload (the master re-executes itself).
        before = daemon.reloads()
        simulator.launch("/private2", 1)
        wait_for(lambda: daemon.reloads() > before, 20, what="a reload")
        assert stat.S_IMODE(daemon.master_socket.stat().st_mode) == 0o600
        assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600


def test_a_second_daemon_on_the_same_config_refuses_and_the_first_keeps_serving(
        tmp_path: Path, simulator: Simulator) -> None:
    """It used to start a second HAProxy that took over both socket paths (the first
    daemon then drove the second's HAProxy), and unlinked them under the first when it
    stopped."""
    port, _ = simulator.launch("/one", 2)
    first = Daemon(tmp_path, simulator.url)
    with running(first):
        first.start()
        routed(simulator, "/one", port)
        assert first.proc.popen is not None
        pids, reloads = first.proc_info().all_pids, first.reloads()
        second = Daemon(tmp_path, simulator.url)
        second.proc.argv[second.proc.argv.index("--listen") + 1] = f"127.0.0.1:{free_port()}"
        out = subprocess.run(second.proc.argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out.stderr
        lines = out.stderr.strip().splitlines()
        assert lines[-1] == (
            f"servicerouter: error: --haproxy-config {first.config}: another servicerouter "
            f"(pid {first.proc.popen.pid}) manages it (lock {first.config}.lock is held); "
            "nothing was done. Stop that one first, or give this one its own "
            "--haproxy-config and sockets"), out.stderr
        assert "listening" not in out.stderr and "starting HAProxy" not in out.stderr
        # Its own config but the same admin socket: that HAProxy would take the socket.
        argv = list(second.proc.argv)
        argv[argv.index("--haproxy-config") + 1] = str(tmp_path / "other.cfg")
        argv[argv.index("--haproxy-master-socket") + 1] = str(tmp_path / "other.sock")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith(
            f"servicerouter: error: --haproxy-socket {first.socket}: another servicerouter "
            f"(pid {first.proc.popen.pid}) manages it"), out.stderr
        assert not (tmp_path / "other.cfg").exists()
        assert not (tmp_path / "other.cfg.lock").exists()
        # The first daemon's HAProxy and sockets are untouched, and it goes on working.
        assert first.proc_info().all_pids == pids
        assert first.socket.exists() and first.master_socket.exists()
        replace_task(simulator, "/one")
        routed(simulator, "/one", port)
        assert first.reloads() == reloads, "a replacement is a runtime change"
        # A sync from cron would rewrite the config and reload behind its back too.
        sync = subprocess.run([PYTHON, "-m", "servicerouter", "sync", "--marathon",
                               simulator.url, "--haproxy-config", str(first.config),
                               "--haproxy-master-socket", str(first.master_socket)],
                              capture_output=True, text=True, timeout=60)
        assert sync.returncode == 1
        assert f"another servicerouter (pid {first.proc.popen.pid}) manages it" in sync.stderr
        assert first.reloads() == reloads
    assert not (tmp_path / "haproxy.cfg.lock").exists(), "a stopped daemon leaves its lock"
    assert not (tmp_path / "admin.sock.lock").exists()


def test_removed_admin_socket_is_restored_by_one_reload(tmp_path: Path,
                                                        simulator: Simulator) -> None:
    port, _ = simulator.launch("/sock", 2)
    daemon = Daemon(tmp_path, simulator.url)
    with running(daemon):
        daemon.start()
        routed(simulator, "/sock", port)
        before = daemon.reloads()
        removed = time.monotonic()
        daemon.socket.unlink()
        wait_for(daemon.socket.exists, 20, what="the admin socket back")
        restored = time.monotonic() - removed
        wait_for(lambda: daemon.http.get("/healthz").status_code == 200, 20, what="healthz 200")
        print(f"admin socket restored {restored:.2f}s after its removal")
        assert daemon.reloads() == before + 1
        # Runtime updates resume: a replacement is routed without another reload.
        replace_task(simulator, "/sock")
        routed(simulator, "/sock", port)
        assert daemon.reloads() == before + 1
        assert "HAProxy's admin socket" in daemon.proc.output()


@pytest.mark.parametrize("kept", [False, True], ids=["child", "kept"])
def test_a_removed_master_socket_does_not_stop_reloads(tmp_path: Path, simulator: Simulator,
                                                       kept: bool) -> None:
    """With the master socket gone (a cleaner of /tmp or /run, an operator) every reload
    failed for good: a new app was never routed. The daemon's own HAProxy master takes
    SIGUSR2 instead, and binds its socket again."""
    port, _ = simulator.launch("/msock/web", 2)
    daemon = Daemon(tmp_path, simulator.url, *(["--keep-haproxy-on-exit"] if kept else []))
    pids: list[int] = []
    try:
        with running(daemon):
            daemon.start()
            routed(simulator, "/msock/web", port)
            pids = daemon.proc_info().all_pids
            before = daemon.reloads()
            daemon.master_socket.unlink()
            new_port, _ = simulator.launch("/msock/new", 2)
            routed(simulator, "/msock/new", new_port, timeout=30)
            info = daemon.proc_info()  # the master's own count, through its socket again
            assert info.reloads == before + 1 and info.master_pid == pids[0]
            pids = info.all_pids
            assert stat.S_IMODE(daemon.master_socket.stat().st_mode) == 0o600
            routed(simulator, "/msock/web", port)
            assert "SIGUSR2" in daemon.proc.output()
    finally:
        if kept:
            _stop_kept(pids)


@contextlib.contextmanager
def tiny_disk(path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs at ``path`` (root only; the test is skipped otherwise)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_keeps_the_config_serving_and_healthz_says_reloads_fail(
        tmp_path: Path, simulator: Simulator) -> None:
    """With the config's disk full, every reload failed at its write while /healthz
    said ok: a new app waited, unseen. It is degraded now, naming the stage and the
    error; churn goes on at runtime, and the first reload after space is freed works."""
    port, _ = simulator.launch("/full/web", 2)
    with tiny_disk(tmp_path / "disk") as disk:
        daemon = Daemon(disk, simulator.url)
        with running(daemon):
            daemon.start()
            routed(simulator, "/full/web", port)
            ran = daemon.config.read_text()
            filler = disk / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            new_port, _ = simulator.launch("/full/new", 2)

            def degraded() -> dict[str, str] | None:
                body = daemon.http.get("/healthz").json()
                return body if "reloads fail (stage write)" in body.get("reason", "") \
                    else None

            body = wait_for(degraded, 30, what="/healthz degraded by failing reloads")
            assert body["status"] == "degraded" and "No space left" in body["reason"]
            assert daemon.config.read_text() == ran
            replace_task(simulator, "/full/web")
            routed(simulator, "/full/web", port)  # at runtime, meanwhile
            filler.unlink()
            routed(simulator, "/full/new", new_port, timeout=60)
            wait_for(lambda: daemon.http.get("/healthz").json()["status"] == "ok", 30,
                     what="/healthz ok again")
            assert not [p.name for p in disk.iterdir() if p.name.startswith(".")]


def test_worker_crash_while_a_reload_is_pending_is_reconciled(tmp_path: Path,
                                                              simulator: Simulator) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(builtin_templates(), templates)
    port, _ = simulator.launch("/steady", 2)
    daemon = Daemon(tmp_path, simulator.url, "--templates", str(templates))
    with running(daemon):
        daemon.start()
        routed(simulator, "/steady", port)
        replace_task(simulator, "/steady")  # at runtime only, not in the file
        routed(simulator, "/steady", port)
        service = templates / "service.j2"
        service.write_text(service.read_text().replace(
            "    balance {{ b.balance }}", "    balance {{ b.balance }}\n    not-a-keyword on"))
        simulator.create_app("/broken", instances=1)
        wait_for(lambda: 'servicerouter_reload_failures_total{stage="validate"} 1.0'
                 in daemon.metrics(), 20, what="a rejected candidate (the reload stays pending)")
        info = daemon.proc_info()
        os.kill(info.worker_pids[0], signal.SIGKILL)
        # The fresh worker starts from the file (a dead task in it); reconcile repairs it
        # although the new app's reload is still pending.
        routed(simulator, "/steady", port, timeout=30)


def test_sighup_reloads_with_new_templates_and_the_daemon_keeps_running(
        tmp_path: Path, simulator: Simulator) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(builtin_templates(), templates)
    port, _ = simulator.launch("/hup", 2)
    daemon = Daemon(tmp_path, simulator.url, "--templates", str(templates))
    with running(daemon):
        daemon.start()
        routed(simulator, "/hup", port)
        assert 'servicerouter_reloads_total{reason="startup"} 1.0' in daemon.metrics()
        before = daemon.reloads()
        service = templates / "service.j2"
        service.write_text(service.read_text().replace(
            "    balance {{ b.balance }}", "    balance {{ b.balance }}\n    # edited"))
        assert daemon.proc.popen is not None
        daemon.proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: 'servicerouter_reloads_total{reason="manual"} 1.0' in daemon.metrics(),
                 20, what="a manual reload after SIGHUP")
        assert daemon.reloads() == before + 1
        assert "# edited" in daemon.config.read_text()
        assert daemon.proc.alive()
        routed(simulator, "/hup", port)


def test_a_templates_folder_gone_keeps_the_running_config_not_the_built_in_one(
        tmp_path: Path, simulator: Simulator) -> None:
    """Jinja skips a search path that does not exist: a SIGHUP while a deploy tool
    replaced the --templates folder reloaded HAProxy with the built-in templates,
    silently dropping the operator's."""
    templates = tmp_path / "templates"
    shutil.copytree(builtin_templates(), templates)
    service = templates / "service.j2"
    service.write_text(service.read_text().replace(
        "    balance {{ b.balance }}", "    balance {{ b.balance }}\n    # ours"))
    port, _ = simulator.launch("/tpl", 2)
    daemon = Daemon(tmp_path, simulator.url, "--templates", str(templates))
    with running(daemon):
        daemon.start()
        routed(simulator, "/tpl", port)
        assert "# ours" in daemon.config.read_text()
        before = daemon.reloads()
        moved = tmp_path / "templates.old"
        templates.rename(moved)
        assert daemon.proc.popen is not None
        daemon.proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: 'servicerouter_reload_failures_total{stage="validate"} 1.0'
                 in daemon.metrics(), 20, what="the reload refused")
        assert f"--templates {templates}: no such directory" in daemon.proc.output()
        assert daemon.reloads() == before and "# ours" in daemon.config.read_text()
        replace_task(simulator, "/tpl")  # churn goes on at runtime meanwhile
        routed(simulator, "/tpl", port)
        moved.rename(templates)
        daemon.proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.reloads() == before + 1, 20, what="the reload, folder back")
        assert "# ours" in daemon.config.read_text()


def test_a_sighup_storm_is_one_reload_per_min_reload_interval(
        tmp_path: Path, simulator: Simulator) -> None:
    """Each SIGHUP (or /_mlb_signal request) used to reload at once, whatever
    --min-reload-interval said: 100 in a second were 5 reloads, each leaving an old
    worker to drain. Now they wait out the interval since the last reload began and
    are one reload."""
    port, _ = simulator.launch("/storm", 2)
    # 5 s: the storm ends ~0.5 s after the startup reload began (a few seconds on a busy
    # machine), well inside the interval; the one reload then waits out the rest of it.
    daemon = Daemon(tmp_path, simulator.url, "--min-reload-interval", "5")
    with running(daemon):
        daemon.start()
        routed(simulator, "/storm", port)
        before = daemon.reloads()
        assert daemon.proc.popen is not None
        for _ in range(30):
            daemon.proc.popen.send_signal(signal.SIGHUP)
            time.sleep(0.01)  # spaced, so that the kernel does not merge them
        daemon.http.post("/_mlb_signal/usr1").raise_for_status()
        wait_for(lambda: daemon.proc.output().count("SIGHUP received") >= 2, 20,
                 what="the SIGHUPs handled")
        def manual() -> float:
            found = re.search(r'servicerouter_reloads_total\{reason="manual"\} (\S+)',
                              daemon.metrics())
            return float(found.group(1)) if found else 0.0

        wait_for(lambda: manual() >= 1, 40, what="a manual reload, once the interval is over")
        # The storm ended long before the interval did: all of it is that one reload.
        assert (manual(), daemon.reloads()) == (1, before + 1)
        routed(simulator, "/storm", port)


def test_systemd_hears_ready_and_a_reload_right_after_it_reloads(
        tmp_path: Path, simulator: Simulator) -> None:
    """Type=notify: READY=1 comes once SIGHUP is handled, so a `systemctl reload` right
    after `systemctl start` reloads. Under Type=simple systemd sent it at once, to a
    Python still importing, and SIGHUP's default action ended the daemon."""
    port, _ = simulator.launch("/notify", 1)
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(address))
        systemd.settimeout(60)
        daemon = Daemon(tmp_path, simulator.url)
        daemon.proc.env["NOTIFY_SOCKET"] = str(address)
        with running(daemon):
            daemon.start(wait_healthy=False)
            assert "READY=1" in systemd.recv(4096).decode().splitlines()
            assert daemon.proc.popen is not None
            daemon.proc.popen.send_signal(signal.SIGHUP)  # at once, as systemd may
            status = systemd.recv(4096).decode()
            assert status.startswith("STATUS=HAProxy serves the config from Marathon: "
                                     "1 services of 1 apps; "), status
            routed(simulator, "/notify", port)
            wait_for(lambda: "SIGHUP received" in daemon.proc.output(), 20,
                     what="the SIGHUP taken as a reload")
            assert daemon.proc.alive()
            for pid in daemon.proc_info().all_pids:  # HAProxy does not inherit it
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                assert not any(v.startswith(b"NOTIFY_SOCKET=") for v in environ), pid
        later = []  # status lines as the counts change, then STOPPING=1 at SIGTERM
        while not later or later[-1] != "STOPPING=1\n":
            later.append(systemd.recv(4096).decode())
        assert all(m.startswith("STATUS=HAProxy serves") for m in later[:-1]), later


def test_sigusr1_resyncs_and_sigterm_says_why_it_stops(tmp_path: Path,
                                                       simulator: Simulator) -> None:
    port, _ = simulator.launch("/usr1", 1)
    daemon = Daemon(tmp_path, simulator.url)
    with running(daemon):
        daemon.start()
        routed(simulator, "/usr1", port)
        syncs = daemon.proc.output().count("full sync from")
        assert daemon.proc.popen is not None
        daemon.proc.popen.send_signal(signal.SIGUSR1)
        wait_for(lambda: daemon.proc.output().count("full sync from") > syncs, 20,
                 what="a full sync after SIGUSR1")
        daemon.proc.popen.send_signal(signal.SIGUSR2)  # the default action would kill it
        wait_for(lambda: "SIGUSR2 ignored" in daemon.proc.output(), 10, what="a log line")
        assert daemon.proc.alive()
        daemon.proc.popen.send_signal(signal.SIGTERM)
        assert daemon.proc.popen.wait(20) == 0
        assert "SIGTERM received; stopping" in daemon.proc.output()


def test_restart_next_to_a_running_haproxy_adopts_it_without_a_reload(
        tmp_path: Path, simulator: Simulator) -> None:
    port, _ = simulator.launch("/adopt", 3)
    other_port, _ = simulator.launch("/other", 1)
    haproxy = ExternalHAProxy(tmp_path).start()
    with running(haproxy):
        first = Daemon(tmp_path, simulator.url, start_haproxy=False)
        with running(first):
            first.start()
            routed(simulator, "/adopt", port)
            replace_task(simulator, "/adopt")  # a runtime change, not in the file
            routed(simulator, "/adopt", port)
        reloads = haproxy.reloads()
        assert reloads >= 1  # the first daemon's startup reload

        # Nothing changed: a restart adopts HAProxy as it is.
        second = Daemon(tmp_path, simulator.url, start_haproxy=False)
        with running(second):
            second.start()
            wait_for(lambda: "adopted the running HAProxy" in second.proc.output(), 20,
                     what="the adoption log line")
            routed(simulator, "/adopt", port)
        assert haproxy.reloads() == reloads

        # A task replaced while no daemon runs is applied at runtime by the next one.
        replace_task(simulator, "/adopt")
        third = Daemon(tmp_path, simulator.url, start_haproxy=False)
        with running(third):
            third.start()
            routed(simulator, "/adopt", port)
            routed(simulator, "/other", other_port)
            assert haproxy.reloads() == reloads
            # ... and a change of shape still reloads, once.
            port2, _ = simulator.launch("/added", 1)
            routed(simulator, "/added", port2)
            assert haproxy.reloads() == reloads + 1
        print(f"reloads across two daemon restarts with HAProxy kept running: "
              f"{haproxy.reloads() - reloads - 1}")


def test_json_logs_name_each_apply_step_per_app(tmp_path: Path, simulator: Simulator) -> None:
    port, _ = simulator.launch("/logs/web", 2)
    daemon = Daemon(tmp_path, simulator.url, "--log-format", "json")
    with running(daemon):
        daemon.start()
        routed(simulator, "/logs/web", port)
        replace_task(simulator, "/logs/web")
        routed(simulator, "/logs/web", port)
        # The kill and its replacement may be one step (+1 -1) or two (-1, then +1).
        pattern = re.compile(r'"INFO".*"/logs/web: \+(\d+) -(\d+)(?: ~\d+)? tasks, runtime, '
                             r'\d+ commands, ')

        def added_and_removed() -> bool:
            steps = [m.groups() for m in pattern.finditer(daemon.proc.output())]
            return sum(int(a) for a, _ in steps) >= 1 and sum(int(r) for _, r in steps) >= 1

        wait_for(added_and_removed, 20, what="per-app apply lines for the replacement")
    records = [json.loads(line) for line in daemon.proc.output().splitlines() if line]
    messages = {(r["level"], r["message"]) for r in records}
    assert any(level == "INFO" and m.startswith("reloaded HAProxy (startup")
               for level, m in messages)
    assert any(level == "DEBUG" and m.startswith("runtime command: set server ")
               for level, m in messages)
    # HAProxy's lines keep their level, but per-server state changes are DEBUG.
    relayed = [r for r in records if r["message"].startswith("haproxy: ")]
    per_server = [r for r in relayed if re.search(r": Server \S+/s\d+ ", r["message"])]
    assert per_server and all(r["level"] == "DEBUG" for r in per_server), per_server
    assert all(r["level"] == "INFO" for r in relayed if "[NOTICE]" in r["message"])


def test_text_logs_name_each_apply_step_per_app(tmp_path: Path, simulator: Simulator) -> None:
    # The per-app line in the default text format: written without a LogRecord when the
    # daemon's own handler is the only one (logformat.log_lines), the standard layout.
    port, _ = simulator.launch("/logs/text", 2)
    daemon = Daemon(tmp_path, simulator.url)
    with running(daemon):
        daemon.start()
        routed(simulator, "/logs/text", port)
        replace_task(simulator, "/logs/text")
        routed(simulator, "/logs/text", port)
        pattern = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO servicerouter\.engine: "
                             r"/logs/text: \+(\d+) -(\d+)(?: ~\d+)? tasks, runtime, \d+ commands, "
                             r"\d+ ms$", re.MULTILINE)

        def added_and_removed() -> bool:
            steps = [m.groups() for m in pattern.finditer(daemon.proc.output())]
            return sum(int(a) for a, _ in steps) >= 1 and sum(int(r) for _, r in steps) >= 1

        wait_for(added_and_removed, 20, what="per-app apply lines for the replacement")


def test_start_haproxy_restart_serves_the_old_config_and_adopts_it(
        tmp_path: Path, simulator: Simulator) -> None:
    port, _ = simulator.launch("/again", 2)
    first = Daemon(tmp_path, simulator.url)
    with running(first):
        first.start()
        routed(simulator, "/again", port)
    replace_task(simulator, "/again")
    second = Daemon(tmp_path, simulator.url)
    with running(second):
        second.start()
        routed(simulator, "/again", port)
        # HAProxy started from the file of the first run, which has this run's shape.
        assert second.reloads() == 0
        assert "adopted the running HAProxy" in second.proc.output()


def test_keep_haproxy_on_exit_serves_through_a_daemon_crash_and_is_adopted(
        tmp_path: Path, simulator: Simulator) -> None:
    port, _ = simulator.launch("/kept", 2)
    first = Daemon(tmp_path, simulator.url, "--keep-haproxy-on-exit")
    master = MasterCLI(str(first.master_socket))
    pids: list[int] = []
    try:
        with running(first):
            first.start()
            routed(simulator, "/kept", port)
            pids = asyncio.run(master.show_proc(patience=30)).all_pids
            assert first.proc.popen is not None
            os.kill(first.proc.popen.pid, signal.SIGKILL)
            first.proc.popen.wait(10)
        # No daemon: HAProxy keeps serving, and a task is replaced meanwhile.
        routed(simulator, "/kept", port)
        replace_task(simulator, "/kept")
        second = Daemon(tmp_path, simulator.url, "--keep-haproxy-on-exit")
        with running(second):
            second.start()
            routed(simulator, "/kept", port)
            info = asyncio.run(master.show_proc(patience=30))
            assert info.master_pid == pids[0] and info.reloads == 0  # adopted, no reload
            assert "adopting the HAProxy master" in second.proc.output()
        # A clean stop leaves it serving too.
        routed(simulator, "/kept", port)
    finally:
        _stop_kept(pids)


def test_kept_haproxy_that_dies_is_started_again(tmp_path: Path, simulator: Simulator) -> None:
    port, _ = simulator.launch("/kept2", 2)
    daemon = Daemon(tmp_path, simulator.url, "--keep-haproxy-on-exit")
    master = MasterCLI(str(daemon.master_socket))
    pids: list[int] = []
    try:
        with running(daemon):
            daemon.start()
            routed(simulator, "/kept2", port)
            replace_task(simulator, "/kept2")  # runtime only: not in the file
            routed(simulator, "/kept2", port)
            pids = asyncio.run(master.show_proc(patience=30)).all_pids
            os.kill(pids[0], signal.SIGKILL)
            _wait_gone(pids)
            # The watcher starts a new master from the file; reconcile restores the rest.
            routed(simulator, "/kept2", port, timeout=30)
            pids = asyncio.run(master.show_proc(patience=30)).all_pids
            assert "does not answer; starting HAProxy again" in daemon.proc.output()
    finally:
        _stop_kept(pids)


def test_a_silent_kept_master_shows_in_healthz_status_and_metrics(
        tmp_path: Path, simulator: Simulator) -> None:
    """A kept master that is alive but does not answer (stopped, or busy) is not
    restarted beside itself, and until now it showed only in the log: its workers still
    serve, but no reload can happen. /healthz says degraded and why, /status names it,
    and servicerouter_haproxy_master_up is 0 until it answers again."""
    port, _ = simulator.launch("/quiet", 2)
    daemon = Daemon(tmp_path, simulator.url, "--keep-haproxy-on-exit")
    master = MasterCLI(str(daemon.master_socket))
    pids: list[int] = []
    up = "servicerouter_haproxy_master_up"
    try:
        with running(daemon):
            daemon.start()
            routed(simulator, "/quiet", port)
            pids = asyncio.run(master.show_proc(patience=30)).all_pids
            assert f"{up} 1.0" in daemon.metrics()
            os.kill(pids[0], signal.SIGSTOP)
            try:
                wait_for(lambda: daemon.http.get("/healthz").json()["status"] == "degraded",
                         90, what="/healthz degraded by the stopped master")
                body = daemon.http.get("/healthz").json()
                assert daemon.http.get("/healthz").status_code == 200  # the workers serve
                assert f"HAProxy master {pids[0]} (stopped) does not answer" in body["reason"]
                assert "no reload until it does" in body["reason"]
                assert f"HAProxy master {pids[0]} (stopped)" in \
                    daemon.status()["haproxy_master_problem"]
                assert f"{up} 0.0" in daemon.metrics()
                routed(simulator, "/quiet", port)  # its worker goes on serving
            finally:
                os.kill(pids[0], signal.SIGCONT)
            wait_for(lambda: daemon.http.get("/healthz").json() == {"status": "ok"}, 90,
                     what="/healthz ok once the master answers again")
            assert daemon.status()["haproxy_master_problem"] is None
            assert f"{up} 1.0" in daemon.metrics()
    finally:
        for pid in pids[:1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        _stop_kept(pids)


@pytest.mark.parametrize("kept", [False, True], ids=["child", "kept"])
@pytest.mark.parametrize("damage", ["removed", "edited"])
def test_a_config_file_damaged_by_hand_is_put_back_when_haproxy_dies(
        tmp_path: Path, simulator: Simulator, damage: str, kept: bool) -> None:
    """HAProxy started again from a config file an operator removed (or overwrote) failed
    at every restart, then the supervisor gave up: nothing served until the next reload.
    The daemon knows the config HAProxy ran and puts it back first."""
    port, _ = simulator.launch("/mended", 2)
    daemon = Daemon(tmp_path, simulator.url, *(["--keep-haproxy-on-exit"] if kept else []))
    master = MasterCLI(str(daemon.master_socket))
    pids: list[int] = []
    try:
        with running(daemon):
            daemon.start()
            routed(simulator, "/mended", port)
            ran = daemon.config.read_text()
            if damage == "removed":
                daemon.config.unlink()
            else:
                daemon.config.write_text("this is not an HAProxy config\n")
            pids = asyncio.run(master.show_proc(patience=30)).all_pids
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pids)
            routed(simulator, "/mended", port, timeout=30)
            pids = asyncio.run(master.show_proc(patience=30)).all_pids
            assert daemon.config.read_text() == ran
            assert f"{daemon.config} was {damage if damage == 'removed' else 'changed'} " \
                   "outside servicerouter" in daemon.proc.output()
    finally:
        if kept:
            _stop_kept(pids)


def test_a_tenant_out_of_reloads_waits_and_never_holds_another(
        tmp_path: Path, simulator: Simulator) -> None:
    """One tenant changing its options over and over reloaded HAProxy for everyone, once
    per --min-reload-interval. With its reloads spent it waits for the next token; a
    reload another tenant needs goes at once, and carries the held change along."""
    port, _ = simulator.launch("/flap/web", 1)
    daemon = Daemon(tmp_path, simulator.url, "--tenant-reload-burst", "1",
                    "--tenant-reload-interval", "600")
    held = "servicerouter_reloads_held_total 1.0"

    def balance(value: str) -> None:
        r = simulator.http.put("/v2/apps/flap/web", params={"force": "true"},
                               json={"labels": {"HAPROXY_0_BALANCE": value}})
        assert r.status_code == 200, r.text

    def backend() -> str:
        text = daemon.config.read_text()
        return text[text.index(f"backend flap_web_{port}"):][:200]

    with running(daemon):
        daemon.start()
        routed(simulator, "/flap/web", port)
        reloads = daemon.reloads()
        balance("leastconn")  # /flap's one token
        wait_for(lambda: daemon.reloads() == reloads + 1, 30, what="the first change's reload")
        wait_for(lambda: "balance leastconn" in backend(), 10, what="leastconn rendered")
        balance("source")  # none left: held
        wait_for(lambda: held in daemon.metrics(), 30, what="the second change held")
        assert re.search(r"reload held \d+s: wanted only by /flap, whose apps spent",
                         daemon.proc.output())
        assert daemon.reloads() == reloads + 1 and "balance leastconn" in backend()
        shop, _ = simulator.launch("/shop/new", 1)  # another tenant: at once
        routed(simulator, "/shop/new", shop)
        assert daemon.reloads() == reloads + 2
        assert "balance source" in backend()  # the held change rode along
        routed(simulator, "/flap/web", port)


def test_sigterm_stops_haproxy_gracefully_a_connection_in_progress_finishes(
        tmp_path: Path, simulator: Simulator) -> None:
    # README and the systemd unit: SIGTERM reaches servicerouter alone, "which stops
    # HAProxy gracefully". It sent SIGTERM to the master, HAProxy's hard stop: every
    # request and connection in progress was cut at once.
    port, _ = simulator.launch("/soft", 1, labels={"HAPROXY_0_MODE": "http"})
    daemon = Daemon(tmp_path, simulator.url)
    with running(daemon):
        daemon.start()
        routed(simulator, "/soft", port)
        master = daemon.proc_info().master_pid
        assert daemon.proc.popen is not None
        with open_tunnel(port, "ws.test") as s:
            daemon.proc.popen.send_signal(signal.SIGTERM)

            def refused() -> bool:  # HAProxy stops listening first
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                except OSError:
                    return True
                return False

            wait_for(refused, 20, what=f"HAProxy no longer accepting on :{port}")
            for i in range(3):  # the connection in progress is still served
                s.sendall(f"ping {i}".encode())
                assert s.recv(100) == f"ping {i}".encode()
        # the last connection closed: HAProxy and the daemon end without waiting further
        assert daemon.proc.popen.wait(20) == 0
        _wait_gone([master])
        assert "ignored SIGTERM" not in daemon.proc.output()


def _forwarded_for(port: int) -> bool:
    """Whether a request through HAProxy's port reaches the task with X-Forwarded-For
    (the app's port is in HTTP mode in what HAProxy runs)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /_echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return b'"x-forwarded-for"' in answer.lower()


def test_a_reload_cut_short_by_sigterm_is_not_taken_for_loaded_by_the_next_daemon(
        tmp_path: Path, simulator: Simulator) -> None:
    # A stop while a reload was in flight left the new config in the file, but the
    # HAProxy started elsewhere never loaded it. The next daemon compared its render
    # with the file, found them equal, and adopted HAProxy "with no reload": the
    # change (here an app switched to HTTP mode) was never served.
    _reload_cut_short(tmp_path, simulator, signal.SIGTERM)


def test_a_reload_cut_short_by_sigkill_is_not_taken_for_loaded_by_the_next_daemon(
        tmp_path: Path, simulator: Simulator) -> None:
    # The same, killed: no code of the daemon's runs to put the file back, so the next
    # one must tell from the disk that HAProxy was never confirmed to load it.
    _reload_cut_short(tmp_path, simulator, signal.SIGKILL)


def _reload_cut_short(tmp_path: Path, simulator: Simulator, sig: signal.Signals) -> None:
    """A daemon stopped by ``sig`` while its reload command hangs: the next daemon
    serves the change (a reload), not the config HAProxy had before."""
    port, _ = simulator.launch("/cut", 1)
    haproxy = ExternalHAProxy(tmp_path).start()
    hang = tmp_path / "hang"
    script = tmp_path / "reload.sh"  # the init system's reload, hanging while `hang` exists
    script.write_text(f"#!/bin/sh\nif [ -e {hang} ]; then exec sleep 300; fi\n"
                      f"exec {PYTHON} -c 'import asyncio, servicerouter.haproxy.master_cli as m; "
                      f"asyncio.run(m.MasterCLI(\"{haproxy.master_socket}\").reload())'\n")
    script.chmod(0o755)
    args = ("--reload-command", str(script))
    sleeping: list[int] = []
    try:
        with running(haproxy):
            first = Daemon(tmp_path, simulator.url, *args, start_haproxy=False)
            with running(first):
                first.start()
                routed(simulator, "/cut", port)
                assert not _forwarded_for(port)
                hang.touch()
                r = simulator.http.put("/v2/apps/cut", params={"force": "true"},
                                       json={"labels": {"HAPROXY_0_MODE": "http"}})
                assert r.status_code == 200, r.text
                assert first.proc.popen is not None
                pid = first.proc.popen.pid
                sleeping += wait_for(lambda: [c for sh in children_of(pid)
                                              for c in children_of(sh)
                                              if _comm(c) == "sleep"],
                                     30, what="the reload command")
                first.proc.popen.send_signal(sig)
                status = first.proc.popen.wait(30)
                assert status == (0 if sig == signal.SIGTERM else -sig)
            hang.unlink()
            reloads = haproxy.reloads()
            second = Daemon(tmp_path, simulator.url, *args, start_haproxy=False)
            with running(second):
                second.start()
                routed(simulator, "/cut", port)
                wait_for(lambda: _forwarded_for(port), 20,
                         what="the app's HTTP mode served after the restart")
                assert haproxy.reloads() == reloads + 1
                assert "adopted the running HAProxy" not in second.proc.output()
    finally:  # a killed daemon's reload command outlives it (only its shell had the
        for child in sleeping:  # parent-death signal)
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)


def _listeners(port: int) -> set[int]:
    """Pids of the processes listening on TCP ``port`` (from /proc: socket inodes)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    pids = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{entry}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        pids.add(int(entry))
    return pids


def test_start_haproxy_beside_a_kept_haproxy_refuses_rather_than_start_a_second(
        tmp_path: Path, simulator: Simulator) -> None:
    # Dropping --keep-haproxy-on-exit from a host's flags: the next daemon started a
    # second HAProxy beside the kept one, on the same ports (SO_REUSEPORT shares the
    # connections between them) and socket paths; the kept one went on serving its
    # last config for ever, reachable through no socket, stopped by no one.
    port, _ = simulator.launch("/beside", 1)
    first = Daemon(tmp_path, simulator.url, "--keep-haproxy-on-exit")
    pids: list[int] = []
    try:
        with running(first):
            first.start()
            routed(simulator, "/beside", port)
            pids = first.proc_info().all_pids
        second = Daemon(tmp_path, simulator.url)  # no --keep-haproxy-on-exit
        with running(second):
            second.proc.start()
            assert second.proc.popen is not None
            assert second.proc.popen.wait(30) == 1
        out = second.proc.output()
        assert f"HAProxy master {pids[0]}" in out and "not starting a second HAProxy" in out
        assert _listeners(port) <= set(pids)  # only the kept HAProxy serves the port
        routed(simulator, "/beside", port)
        assert first.proc_info().master_pid == pids[0]  # its sockets are left to it
        assert first.servers()
        assert not (tmp_path / "haproxy.cfg.lock").exists()
    finally:
        _stop_kept(pids)


def _zombies_of(pid: int) -> list[int]:
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] == "Z":
                out.append(int(entry))
    return out


def test_a_killed_master_leaves_no_zombie_where_the_daemon_is_pid_1(
        tmp_path: Path, simulator: Simulator) -> None:
    # In the container the daemon is PID 1 (the Dockerfile's ENTRYPOINT): the workers
    # of an HAProxy master killed -9 (the OOM killer, say) became its children, and
    # nobody reaped them: a zombie for each, for ever, counted against the pids limit.
    # A child subreaper gets orphans as PID 1 does.
    port, _ = simulator.launch("/orphans", 1)
    daemon = Daemon(tmp_path, simulator.url)
    daemon.proc.argv = [PYTHON, "-c", "import ctypes, os, sys; "
                        "ctypes.CDLL(None).prctl(36, 1); "  # PR_SET_CHILD_SUBREAPER
                        "os.execv(sys.argv[1], sys.argv[1:])", *daemon.proc.argv]
    with running(daemon):
        daemon.start()
        routed(simulator, "/orphans", port)
        assert daemon.proc.popen is not None
        pid = daemon.proc.popen.pid
        for _ in range(2):
            info = daemon.proc_info()
            os.kill(info.master_pid, signal.SIGKILL)
            wait_for(lambda i=info: daemon.proc_info().master_pid != i.master_pid, 30,
                     what="HAProxy started again")
            routed(simulator, "/orphans", port)
            wait_for(lambda: not _zombies_of(pid), 15,
                     what="no zombie left among the daemon's children")
            assert _alive(daemon.proc_info().worker_pids[0])
