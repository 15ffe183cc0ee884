"""Range mode (``--service-port-range``): apps and vhosts come and go through HAProxy's
maps and a pool of spare backends, without reloads.

Reload counts come from HAProxy's master (``show proc``); routing from real requests
through the real HAProxy. The range is a block of consecutive ports free on this
machine, below the ephemeral range (so no other test's ``free_port`` lands in it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from servicerouter.demo.procs import Proc, free_port, free_port_range
from servicerouter.haproxy.runtime import RuntimeClient
from servicerouter.layout import Settings

from .conftest import needs_haproxy
from .harness import (
    EMPTY_CFG,
    PYTHON,
    TLS,
    Daemon,
    ExternalHAProxy,
    Simulator,
    children_of,
    master_reloads,
    responders,
    running,
    wait_for,
)

pytestmark = [pytest.mark.integration, needs_haproxy]

RANGE_SIZE = 24
HTTP = {"HAPROXY_0_MODE": "http"}


def start(tmp: Path, sim: Simulator, *extra: str, size: int = RANGE_SIZE
          ) -> tuple[Daemon, tuple[int, int]]:
    low, high = free_port_range(size)
    daemon = Daemon(tmp, sim.url, "--service-port-range", f"{low}-{high}", *extra).start()
    return daemon, (low, high)


def launch(sim: Simulator, app_id: str, port: int, instances: int = 1,
           labels: dict[str, str] | None = None) -> None:
    sim.create_app(app_id, instances=instances, labels=labels,
                   portDefinitions=[{"port": port, "protocol": "tcp"}])


def routed(sim: Simulator, app_id: str, port: int, timeout: float = 30.0) -> set[str]:
    """Wait until traffic on ``port`` reaches exactly the app's running tasks."""
    def check() -> set[str] | None:
        tasks = sim.running(app_id)
        return tasks if tasks and responders(port, 4 * len(tasks) + 4) == tasks else None

    return set(wait_for(check, timeout, what=f"traffic on :{port} reaching {app_id}'s tasks"))


def refused(port: int) -> bool:
    """A connection to ``port`` is refused or reset before any HTTP answer."""
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=5, headers={"Connection": "close"},
                  verify=TLS)
    except httpx.TransportError:
        return True
    return False


def unmapped(tmp: Path, port: int) -> bool:
    """The daemon removed ``port`` from the port map file it writes with each change."""
    ports = (tmp / "haproxy.cfg.d" / "ports.map").read_text()
    return not any(line.split()[0] == str(port) for line in ports.splitlines())


def by_host(http_port: int, host: str) -> set[str]:
    with httpx.Client(timeout=5, verify=TLS) as c:
        replies = [c.get(f"http://127.0.0.1:{http_port}/",
                         headers={"Host": host, "Connection": "close"}) for _ in range(6)]
    return {r.text.strip() for r in replies if r.status_code == 200}


def vhosts_of(daemon: Daemon, app_id: str) -> list[str] | None:
    services = daemon.status(app=app_id)["services"]
    return list(services[0]["vhosts"]) if services else None


def reload_reasons(daemon: Daemon) -> dict[str, float]:
    out = {}
    for line in daemon.metrics().splitlines():
        if line.startswith("servicerouter_reloads_total{"):
            key, _, value = line.rpartition(" ")
            out[key.split('"')[1]] = float(value)
    return out


def test_apps_in_the_range_come_and_go_without_reloads(tmp_path: Path,
                                                       simulator: Simulator) -> None:
    daemon, (low, _) = start(tmp_path, simulator)
    with running(daemon):
        before = daemon.reloads()
        assert refused(low + 1)  # bound by the range frontend, no app: refused at connect
        launch(simulator, "/ranged/new", low + 1, instances=2)
        routed(simulator, "/ranged/new", low + 1)
        assert daemon.reloads() == before
        simulator.delete_app("/ranged/new")
        wait_for(lambda: refused(low + 1), 20, what=f"port {low + 1} refused once the app left")
        assert daemon.reloads() == before
        # The returned spare serves the next app.
        launch(simulator, "/ranged/next", low + 2)
        routed(simulator, "/ranged/next", low + 2)
        assert daemon.reloads() == before
        assert "needs a reload" not in (tmp_path / "servicerouter.log").read_text()


def test_a_port_outside_the_range_gets_its_own_frontend_by_reload(tmp_path: Path,
                                                                  simulator: Simulator) -> None:
    daemon, (low, high) = start(tmp_path, simulator)
    with running(daemon):
        before = daemon.reloads()
        outside = free_port()
        launch(simulator, "/ranged/outside", outside)
        routed(simulator, "/ranged/outside", outside)
        wait_for(lambda: reload_reasons(daemon).get("own_frontend") == 1.0, 15,
                 what="the reload counted as own_frontend")
        assert daemon.reloads() == before + 1
        config = daemon.config.read_text()
        assert f"frontend ranged_outside_{outside}\n    bind *:{outside}\n" in config
        assert f"bind *:{low}-{high}\n" in config  # the range frontend is unchanged
        log = (tmp_path / "servicerouter.log").read_text()
        assert f"service port {outside} is outside --service-port-range {low}-{high}" in log


def test_vhosts_are_added_and_moved_through_the_host_map(tmp_path: Path,
                                                         simulator: Simulator) -> None:
    http_port = free_port()
    daemon, (low, _) = start(tmp_path, simulator, "--http-port", str(http_port))
    with running(daemon):
        before = daemon.reloads()
        # Both HTTP (a vhost implies it): moving the vhost changes no backend's mode.
        launch(simulator, "/shop/web", low + 1, labels={**HTTP, "HAPROXY_0_VHOST": "shop.test"})
        launch(simulator, "/shop/new", low + 2, labels=HTTP)
        simulator.wait_running("/shop/web", 1)
        # Its tasks read again each time: a task that dies at start is replaced.
        wait_for(lambda: (t := simulator.running("/shop/web")) and by_host(
            http_port, "shop.test") == t, 30, what="shop.test routed to /shop/web")
        assert daemon.reloads() == before
        # Move it: off /shop/web first, then onto /shop/new (an app already running).
        simulator.http.put("/v2/apps/shop/web", json={"labels": HTTP},
                           params={"force": "true"}).raise_for_status()
        # The daemon's own view, not just a 503: the label change restarts the tasks too.
        wait_for(lambda: vhosts_of(daemon, "/shop/web") == [], 30,
                 what="the daemon applying /shop/web's label change")
        wait_for(lambda: not by_host(http_port, "shop.test"), 30,
                 what="shop.test unrouted once /shop/web dropped it")
        simulator.http.put("/v2/apps/shop/new",
                           json={"labels": {**HTTP, "HAPROXY_0_VHOST": "shop.test"}},
                           params={"force": "true"}).raise_for_status()
        wait_for(lambda: (t := simulator.running("/shop/new")) and by_host(http_port,
                                                                          "shop.test") == t,
                 30, what="shop.test routed to /shop/new")
        assert daemon.reloads() == before
        assert "acl host_" not in daemon.config.read_text()  # maps, not one ACL per host


def test_a_hundred_new_apps_cost_at_most_one_reload(tmp_path: Path,
                                                    simulator: Simulator) -> None:
    """Issue #13: <= 1 reload per 100 app creations with the default pool, on a cold
    cluster: the default 8 spares run out once, and that reload leaves room for 100."""
    daemon, (low, _) = start(tmp_path, simulator, size=104)
    with running(daemon):
        before = daemon.reloads()
        apps = [(f"/burst/app{i:03d}", low + 1 + i) for i in range(100)]
        for first in range(0, len(apps), 10):  # a stream: ten at a time, then all routed
            for app_id, port in apps[first:first + 10]:
                launch(simulator, app_id, port)
            for app_id, port in apps[first:first + 10]:
                routed(simulator, app_id, port, timeout=60)
        spent = daemon.reloads() - before
        print(f"100 new apps with the default pool: {spent} reload(s)")
        assert spent <= 1
        for app_id, port in apps[::9]:  # what the reload moved is still routed
            routed(simulator, app_id, port)
        assert spent == reload_reasons(daemon).get("pool_exhausted", 0.0)


def test_a_removed_apps_own_backend_serves_the_next_app_without_a_reload(
        tmp_path: Path, simulator: Simulator) -> None:
    low, high = free_port_range(RANGE_SIZE)
    launch(simulator, "/own/a", low + 1, instances=2)  # in the first config: its own backend
    daemon = Daemon(tmp_path, simulator.url, "--service-port-range", f"{low}-{high}",
                    "--pool-spares", "1").start()
    with running(daemon):
        routed(simulator, "/own/a", low + 1)
        before = daemon.reloads()
        assert "backend own_a_" in daemon.config.read_text()
        backend = daemon.status(app="/own/a")["services"][0]["backend"]
        simulator.delete_app("/own/a")
        # (Refused already while its task drains: wait for the removal itself.)
        wait_for(lambda: unmapped(tmp_path, low + 1), 20, what="/own/a's map entry gone")
        assert refused(low + 1)
        assert daemon.reloads() == before
        # The one _pool_ TCP spare and /own/a's backend: two apps, no reload.
        launch(simulator, "/own/b", low + 2)
        launch(simulator, "/own/c", low + 3, instances=2)
        routed(simulator, "/own/b", low + 2)
        routed(simulator, "/own/c", low + 3)
        assert daemon.reloads() == before
        ports = dict(line.split() for line in
                     (tmp_path / "haproxy.cfg.d" / "ports.map").read_text().splitlines())
        held = {ports[str(low + 2)], ports[str(low + 3)]}
        assert backend in held, f"/own/a's old backend {backend} holds neither app: {held}"
        assert refused(low + 1)
        # A restarted worker reads the same config and maps: the same routing.
        info: Any = daemon.proc_info()
        os.kill(info.worker_pids[0], signal.SIGKILL)
        wait_for(lambda: daemon.proc_info()
                 .worker_pids not in ([], info.worker_pids), 20, what="a new worker")
        routed(simulator, "/own/b", low + 2)
        routed(simulator, "/own/c", low + 3)
        assert refused(low + 1)


def echoed_headers(port: int) -> dict[str, str]:
    """The request headers a task saw for a request through HAProxy (lower-case names)."""
    r = httpx.get(f"http://127.0.0.1:{port}/_echo", timeout=5,
                  headers={"Connection": "close"}, verify=TLS)
    r.raise_for_status()
    return {k.lower(): v for k, v in r.json()["headers"].items()}


def relabel(sim: Simulator, app_id: str, port: int, labels: dict[str, str]) -> None:
    """PUT the app's labels, and wait until its port answers in the mode they ask for:
    HTTP mode is what the task sees X-Forwarded-For from."""
    r = sim.http.put(f"/v2/apps{app_id}", json={"labels": labels}, params={"force": "true"})
    assert r.status_code == 200, r.text
    http = labels.get("HAPROXY_0_MODE") == "http"
    wait_for(lambda: ("x-forwarded-for" in echoed_headers(port)) == http, 30,
             what=f"{app_id} in {'HTTP' if http else 'TCP'} mode on :{port}")


def test_an_app_changing_mode_moves_into_a_spare_without_a_reload(
        tmp_path: Path, simulator: Simulator) -> None:
    """TCP to HTTP and back, with real HAProxy: the app moves into a spare of its new
    shape (its tasks first, then the port map), and its old backend returns to the pool.
    HTTP mode is visible to the task: HAProxy adds X-Forwarded-For and -Port."""
    low, high = free_port_range(RANGE_SIZE)
    launch(simulator, "/moving/app", low + 4, instances=2)  # its own backend, by the start
    daemon = Daemon(tmp_path, simulator.url, "--service-port-range", f"{low}-{high}").start()
    with running(daemon):
        routed(simulator, "/moving/app", low + 4)
        before = daemon.reloads()
        own = daemon.status(app="/moving/app")["services"][0]["backend"]
        assert "x-forwarded-for" not in echoed_headers(low + 4)  # TCP: bytes passed through
        relabel(simulator, "/moving/app", low + 4, HTTP)
        assert echoed_headers(low + 4)["x-forwarded-port"] == str(low + 4)
        routed(simulator, "/moving/app", low + 4)
        assert daemon.reloads() == before
        backend = daemon.status(app="/moving/app")["services"][0]["backend"]
        assert backend != own and backend.startswith("_pool_")
        # Back to TCP: into its own old backend again, still without a reload.
        relabel(simulator, "/moving/app", low + 4, {})
        routed(simulator, "/moving/app", low + 4)
        assert daemon.reloads() == before
        assert daemon.status(app="/moving/app")["services"][0]["backend"] == own
        assert "needs a reload" not in (tmp_path / "servicerouter.log").read_text()


def test_an_exhausted_pool_grows_by_one_reload(tmp_path: Path, simulator: Simulator) -> None:
    daemon, (low, _) = start(tmp_path, simulator, "--pool-spares", "2")
    with running(daemon):
        before = daemon.reloads()
        for i in range(2):
            launch(simulator, f"/grow/a{i}", low + 1 + i)
            routed(simulator, f"/grow/a{i}", low + 1 + i)
        assert daemon.reloads() == before
        launch(simulator, "/grow/a2", low + 3)  # the third: no TCP spare left
        routed(simulator, "/grow/a2", low + 3)
        wait_for(lambda: reload_reasons(daemon).get("pool_exhausted") == 1.0, 15,
                 what="a reload counted as pool_exhausted")
        assert daemon.reloads() == before + 1
        # The reload doubled the demand it saw: the next apps take spares again.
        for i in range(3, 6):
            launch(simulator, f"/grow/a{i}", low + 1 + i)
            routed(simulator, f"/grow/a{i}", low + 1 + i)
        assert daemon.reloads() == before + 1
        for i in range(6):  # and nothing that was routed before lost its route
            routed(simulator, f"/grow/a{i}", low + 1 + i)


def test_a_killed_worker_comes_back_with_the_runtime_maps(tmp_path: Path,
                                                          simulator: Simulator) -> None:
    http_port = free_port()
    daemon, (low, _) = start(tmp_path, simulator, "--http-port", str(http_port))
    with running(daemon):
        before = daemon.reloads()
        launch(simulator, "/kept/tcp", low + 1, instances=2)
        launch(simulator, "/kept/web", low + 2, labels={"HAPROXY_0_VHOST": "kept.test"})
        routed(simulator, "/kept/tcp", low + 1)
        web = simulator.wait_running("/kept/web", 1)
        wait_for(lambda: by_host(http_port, "kept.test") == web, 30, what="kept.test routed")
        assert daemon.reloads() == before  # all of it runtime: map entries and spares
        info: Any = daemon.proc_info()
        os.kill(info.worker_pids[0], signal.SIGKILL)
        wait_for(lambda: daemon.proc_info()
                 .worker_pids not in ([], info.worker_pids), 20, what="a new worker")
        routed(simulator, "/kept/tcp", low + 1)
        wait_for(lambda: by_host(http_port, "kept.test") == simulator.running("/kept/web"),
                 30, what="kept.test routed again")
        assert refused(low + 3)


def test_a_stop_while_a_candidate_is_checked_leaves_the_running_maps(
        tmp_path: Path, simulator: Simulator) -> None:
    """haproxy -c reads the map files a candidate names, so they are written first; a
    SIGTERM while it ran left the candidate's behind, beside the config HAProxy runs
    (which a restarted HAProxy, or the next daemon, then read with them)."""
    hang = tmp_path / "hang"
    slow = tmp_path / "haproxy-slow-check"  # -c hangs while `hang` exists
    slow.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ] && [ -e {hang} ]; then exec sleep 300; '
                    'fi\nexec haproxy "$@"\n')
    slow.chmod(0o755)
    maps = tmp_path / "haproxy.cfg.d"
    daemon, (low, _) = start(tmp_path, simulator, "--pool-spares", "1",
                             "--haproxy-bin", str(slow))
    checks: list[int] = []
    try:
        with running(daemon):
            launch(simulator, "/held/a0", low + 1)
            routed(simulator, "/held/a0", low + 1)  # in the one TCP spare: no reload
            wait_for(lambda: not unmapped(tmp_path, low + 1), 20, what="a0 in ports.map")
            running_maps = {p.name: p.read_text() for p in maps.iterdir()}
            hang.touch()
            launch(simulator, "/held/a1", low + 2)  # no spare left: a reload, checked
            assert daemon.proc.popen is not None
            pid = daemon.proc.popen.pid
            checks += wait_for(lambda: [c for c in children_of(pid)
                                        if "sleep" in Path(f"/proc/{c}/cmdline").read_text()],
                               30, what="haproxy -c checking the candidate")
            assert not unmapped(tmp_path, low + 2), "the candidate's maps are on disk"
            daemon.proc.popen.send_signal(signal.SIGTERM)
            assert daemon.proc.popen.wait(30) == 0, daemon.proc.output()
        assert {p.name: p.read_text() for p in maps.iterdir()} == running_maps
    finally:
        for child in checks:  # killed with the daemon's children; if not, here
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)


def test_dry_run_in_range_mode_validates_with_maps_and_touches_nothing(
        tmp_path: Path, simulator: Simulator) -> None:
    low, high = free_port_range(RANGE_SIZE)
    work = tmp_path / "etc"
    proc = Proc("servicerouter", [
        PYTHON, "-m", "servicerouter", "run", "--dry-run", "--marathon", simulator.url,
        "--haproxy-config", str(work / "haproxy.cfg"), "--haproxy-socket",
        str(work / "admin.sock"), "--start-haproxy", "--stats-port", "0", "--http-port",
        str(free_port()), "--https-port", "0", "--listen", f"127.0.0.1:{free_port()}",
        "--reconcile-interval", "1", "--service-port-range", f"{low}-{high}",
    ], tmp_path / "dry.log")
    with running(proc.start()):
        wait_for(lambda: "dry-run: would reload HAProxy" in proc.output(), 30,
                 what="the first (imaginary) reload, its candidate valid with its maps")
        launch(simulator, "/dry/new", low + 1)
        wait_for(lambda: f"add map {work}/haproxy.cfg.d/ports.map {low + 1} _pool_"
                 in proc.output(), 30, what="the new app's map entry, printed")
        assert proc.output().count("would reload HAProxy") == 1, "a new app needs no reload"
    assert not work.exists(), "a dry run wrote files"
    assert proc.popen is not None and proc.popen.returncode == 0, proc.output()
    assert "servicerouter-dry-run-" not in " ".join(os.listdir(tempfile.gettempdir()))


def test_https_routes_a_new_vhost_by_sni_and_host_through_the_map(tmp_path: Path,
                                                                   simulator: Simulator) -> None:
    from .test_marathon_lb_labels import _app, _cert, _get, _owner

    https = free_port()
    daemon, (low, _) = start(tmp_path, simulator, "--https-port", str(https),
                             "--ssl-certs", str(_cert(tmp_path)))
    with running(daemon):
        before = daemon.reloads()
        launch(simulator, "/sni/a", low + 1, labels={"HAPROXY_0_VHOST": "a.sni.test"})
        launch(simulator, "/sni/b", low + 2, labels={"HAPROXY_0_VHOST": "b.sni.test"})
        (a,) = simulator.wait_running("/sni/a", 1)
        (b,) = simulator.wait_running("/sni/b", 1)
        url = f"https://127.0.0.1:{https}/"
        wait_for(lambda: _app(_get(url, host="a.sni.test", sni="a.sni.test")) == _owner(a)
                 and _app(_get(url, host="b.sni.test", sni="b.sni.test")) == _owner(b), 30,
                 what="both vhosts routed over HTTPS")
        # SNI decides; without SNI (an IP address sends none) Host does: as with ACLs.
        assert _app(_get(url, host="b.sni.test", sni="a.sni.test")) == _owner(a)
        assert _app(_get(url, host="a.sni.test")) == _owner(a)
        assert _get(url, host="nobody.sni.test").status_code == 503
        assert daemon.reloads() == before


def test_the_range_flag_is_checked_at_start(tmp_path: Path) -> None:
    from servicerouter.cli import CliError
    from servicerouter.daemon import range_settings
    from servicerouter.demo.procs import free_port_range

    config = tmp_path / "haproxy.cfg"
    with pytest.raises(CliError, match=r"--service-port-range: '9-1' is not LOW-HIGH"):
        range_settings(Settings(), "9-1", 8, config)
    with pytest.raises(CliError, match="--pool-spares 0: must be >= 1"):
        range_settings(Settings(), "20000-20001", 0, config)
    low, high = free_port_range(4)
    with socket.socket() as busy:  # another process's listener, no SO_REUSEPORT
        busy.bind(("", low + 2))
        busy.listen()
        with pytest.raises(CliError, match=rf"1 of its ports are in use .* \(e\.g\. {low + 2}\)"):
            range_settings(Settings(), f"{low}-{high}", 8, config)
    got = range_settings(Settings(), f"{low}-{high}", 3, config)
    assert (got.service_port_range, got.pool_spares) == ((low, high), 3)
    assert got.map_dir == f"{config.resolve()}.d"


def test_a_restart_next_to_a_running_haproxy_adopts_its_pool_without_a_reload(
        tmp_path: Path, simulator: Simulator) -> None:
    low, high = free_port_range(RANGE_SIZE)
    haproxy = ExternalHAProxy(tmp_path).start()
    args = ("--service-port-range", f"{low}-{high}")
    with running(haproxy):
        launch(simulator, "/kept/old", low + 1)
        launch(simulator, "/kept/moved", low + 4)
        first = Daemon(tmp_path, simulator.url, *args, start_haproxy=False)
        with running(first):
            first.start()
            routed(simulator, "/kept/old", low + 1)
            launch(simulator, "/kept/spare", low + 2, instances=2)  # lives in a spare
            routed(simulator, "/kept/spare", low + 2)
            # Into an HTTP spare, its own TCP backend back to the pool.
            relabel(simulator, "/kept/moved", low + 4, HTTP)
            # Its own backend (from the first config) goes back to the pool, and into
            # spares.json, so the next daemon adopts it as a spare.
            simulator.delete_app("/kept/old")
            wait_for(lambda: unmapped(tmp_path, low + 1), 20, what="/kept/old unmapped")
        reloads_before = haproxy.reloads()
        second = Daemon(tmp_path, simulator.url, *args, start_haproxy=False)
        with running(second):
            second.start()
            wait_for(lambda: "adopted the running HAProxy" in second.proc.output(), 20,
                     what="the adoption log line")
            assert refused(low + 1)
            routed(simulator, "/kept/spare", low + 2)
            launch(simulator, "/kept/new", low + 3)  # the adopted pool serves a new app
            routed(simulator, "/kept/new", low + 3)
            launch(simulator, "/kept/old", low + 1)  # back: into its own old backend
            routed(simulator, "/kept/old", low + 1)
            routed(simulator, "/kept/moved", low + 4)
            assert "x-forwarded-for" in echoed_headers(low + 4)
            relabel(simulator, "/kept/moved", low + 4, {})
            routed(simulator, "/kept/moved", low + 4)
            assert haproxy.reloads() == reloads_before
            ports = (tmp_path / "haproxy.cfg.d" / "ports.map").read_text()
            assert f"{low + 1} kept_old_{low + 1}\n" in ports
            assert f"{low + 4} kept_moved_{low + 4}\n" in ports  # its own backend again


def test_a_first_candidate_rejected_leaves_the_files_of_the_haproxy_it_did_not_adopt(
        tmp_path: Path, simulator: Simulator) -> None:
    """A daemon that starts beside an HAProxy it cannot adopt (another --http-port than
    the config HAProxy runs) reloads it: its first candidate's maps go on disk for
    haproxy -c. A
    rejection (or a failed reload, or a stop) then wrote the maps of the layout it
    ran, which was none yet: empty maps beside the config that HAProxy still ran from
    disk, and its next reload (systemctl reload, a restart) routed no range port."""
    from servicerouter.haproxy.master_cli import MasterCLI

    low, high = free_port_range(RANGE_SIZE)
    haproxy = ExternalHAProxy(tmp_path).start()
    args = ("--service-port-range", f"{low}-{high}")
    maps = tmp_path / "haproxy.cfg.d"
    rejecting = tmp_path / "haproxy-rejecting"  # haproxy -c refuses every config
    rejecting.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then echo "[ALERT] (1) : '
                         'config : refused by the test" >&2; exit 1; fi\nexec haproxy "$@"\n')
    rejecting.chmod(0o755)
    with running(haproxy):
        launch(simulator, "/kept/a", low + 1)
        first = Daemon(tmp_path, simulator.url, *args, start_haproxy=False)
        with running(first):
            first.start()
            routed(simulator, "/kept/a", low + 1)
        config = haproxy.config.read_text()
        files = {p.name: p.read_text() for p in maps.iterdir()}
        assert f"{low + 1} " in files["ports.map"]
        second = Daemon(tmp_path, simulator.url, *args, "--haproxy-bin", str(rejecting),
                        "--http-port", str(free_port()), start_haproxy=False)
        with running(second):
            second.start(wait_healthy=False)
            wait_for(lambda: "candidate config rejected by haproxy -c" in second.proc.output(),
                     30, what="the first candidate rejected")
            assert {p.name: p.read_text() for p in maps.iterdir()} == files
        assert haproxy.config.read_text() == config
        assert {p.name: p.read_text() for p in maps.iterdir()} == files
        # HAProxy loads its files again (systemctl reload, say): /kept/a is still routed.
        asyncio.run(MasterCLI(str(haproxy.master_socket)).reload())
        routed(simulator, "/kept/a", low + 1)


def oneshot(command: str, sim: Simulator, tmp: Path, low: int, high: int, *extra: str
            ) -> subprocess.CompletedProcess[str]:
    """``servicerouter render|sync --service-port-range`` against the simulator."""
    return subprocess.run(
        [PYTHON, "-m", "servicerouter", command, "--marathon", sim.url,
         "--haproxy-socket", str(tmp / "admin.sock"), "--stats-port", "0",
         "--https-port", "0", "--service-port-range", f"{low}-{high}", *extra],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL, check=False)


def test_render_in_range_mode_writes_the_config_and_its_maps_and_they_route(
        tmp_path: Path, simulator: Simulator) -> None:
    low, high = free_port_range(RANGE_SIZE)
    launch(simulator, "/once/tcp", low + 1, instances=2)
    launch(simulator, "/once/outside", outside := free_port())
    simulator.wait_running("/once/tcp", 2)
    config = tmp_path / "out" / "haproxy.cfg"
    config.parent.mkdir()
    no_output = oneshot("render", simulator, tmp_path, low, high, "--http-port", "0")
    assert no_output.returncode == 2  # a usage error
    assert "render --service-port-range needs --output PATH" in no_output.stderr
    out = oneshot("render", simulator, tmp_path, low, high, "--http-port", "0",
                  "--output", str(config))
    assert out.returncode == 0, out.stderr
    text = config.read_text()
    maps = Path(f"{config}.d")
    assert f"frontend service_range\n    bind *:{low}-{high}\n" in text
    assert f"map_int({maps}/ports.map)" in text and "backend _pool_1\n" in text
    assert (maps / "ports.map").read_text() == f"{low + 1} once_tcp_{low + 1}\n"
    assert {p.name for p in maps.iterdir()} == {"ports.map", "hosts.map", "spares.json"}
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    haproxy = Proc("haproxy", ["haproxy", "-db", "-f", str(config)], tmp_path / "haproxy.log")
    with running(haproxy.start()):
        routed(simulator, "/once/tcp", low + 1)
        routed(simulator, "/once/outside", outside)  # its own frontend, as without the range
        assert refused(low + 2)


def test_sync_in_range_mode_routes_like_run(
        tmp_path: Path, simulator: Simulator) -> None:
    low, high = free_port_range(RANGE_SIZE)
    http_port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(EMPTY_CFG)
    master = tmp_path / "master.sock"
    args = ("--haproxy-config", str(config), "--haproxy-master-socket", str(master),
            "--http-port", str(http_port))

    def reloads() -> int:
        return master_reloads(master)

    launch(simulator, "/cron/web", low + 1, labels={"HAPROXY_0_VHOST": "one.test"})
    web = simulator.wait_running("/cron/web", 1)
    haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-f", str(config), "-S", str(master)],
                   tmp_path / "haproxy.log")
    with running(haproxy.start(lambda: master.exists() and reloads() == 0,
                               what="HAProxy's master socket")):
        out = oneshot("sync", simulator, tmp_path, low, high, *args)
        assert out.returncode == 0, out.stderr
        assert reloads() == 1
        routed(simulator, "/cron/web", low + 1)
        wait_for(lambda: by_host(http_port, "one.test") == web, 20, what="one.test routed")
        assert "one.test" in (tmp_path / "haproxy.cfg.d" / "hosts.map").read_text()
        assert refused(low + 2)
        # Nothing changed: silent, no reload.
        out = oneshot("sync", simulator, tmp_path, low, high, *args)
        assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
        assert reloads() == 1
        # A vhost change (a host map change): the reload makes HAProxy read the new map.
        simulator.http.put("/v2/apps/cron/web", json={"labels": {"HAPROXY_0_VHOST": "two.test"}},
                           params={"force": "true"}).raise_for_status()
        old = web
        web = wait_for(lambda: (t := simulator.running("/cron/web")) and len(t) == 1
                       and t != old and t, 30, what="/cron/web's new task, alone")
        out = oneshot("sync", simulator, tmp_path, low, high, *args)
        assert out.returncode == 0 and out.stdout, out.stderr
        assert reloads() == 2
        wait_for(lambda: by_host(http_port, "two.test") == web, 20, what="two.test routed")
        assert not by_host(http_port, "one.test")
        # A new app in the range: routed after the next sync.
        launch(simulator, "/cron/tcp", low + 3)
        simulator.wait_running("/cron/tcp", 1)
        assert oneshot("sync", simulator, tmp_path, low, high, *args).returncode == 0
        assert reloads() == 3
        routed(simulator, "/cron/tcp", low + 3)


def test_sync_counts_a_map_file_as_part_of_the_config(tmp_path: Path) -> None:
    """The same config text with other map contents (a vhost moved between two running
    apps) is a change: maps written before haproxy -c, put back when it fails."""
    from servicerouter.oneshot import Rendered, SyncError, sync

    config, maps = tmp_path / "haproxy.cfg", tmp_path / "haproxy.cfg.d"
    text = EMPTY_CFG + f"frontend f\n    bind 127.0.0.1:{free_port()}\n    mode http\n" \
        f"    use_backend %[req.hdr(host),lower,map_str({maps}/hosts.map)]\n"
    config.write_text(text)
    maps.mkdir()
    (maps / "hosts.map").write_text("a.test b1\n")
    args = argparse.Namespace(haproxy_config=str(config), haproxy_bin="haproxy",
                              haproxy_master_socket=None,
                              reload_command=f"touch {tmp_path / 'reloaded'}")

    async def moved() -> Rendered:
        return Rendered(text, str(maps), {"hosts.map": "a.test b2\n"})

    assert asyncio.run(sync(args, moved)).startswith(f"{config} updated")
    assert (tmp_path / "reloaded").exists()
    assert (maps / "hosts.map").read_text() == "a.test b2\n"
    assert asyncio.run(sync(args, moved)) == ""  # now the same: nothing to do
    (tmp_path / "reloaded").unlink()

    async def broken() -> Rendered:
        return Rendered(text + "    no-such-keyword\n", str(maps),
                        {"hosts.map": "a.test b3\n", "ports.map": "1 x\n"})

    with pytest.raises(SyncError, match="haproxy -c rejected the new config"):
        asyncio.run(sync(args, broken))
    assert (maps / "hosts.map").read_text() == "a.test b2\n"  # put back
    assert not (maps / "ports.map").exists() and config.read_text() == text
    assert not (tmp_path / "reloaded").exists()



def test_an_app_grown_past_its_spare_is_whole_again_after_a_worker_restart(
        tmp_path: Path, simulator: Simulator) -> None:
    """A new app with more tasks than a spare has slots grows the spare with ``add
    server``. A worker restarted from the file lacks those servers: reconcile must see
    them missing and bring every task back, not route the app to the first four only."""
    daemon, (low, _) = start(tmp_path, simulator)
    with running(daemon):
        before = daemon.reloads()
        launch(simulator, "/big/a", low + 1, instances=6)  # a spare has 4 slots
        routed(simulator, "/big/a", low + 1)
        assert daemon.reloads() == before
        info: Any = daemon.proc_info()
        os.kill(info.worker_pids[0], signal.SIGKILL)
        wait_for(lambda: daemon.proc_info()
                 .worker_pids not in ([], info.worker_pids), 20, what="a new worker")
        routed(simulator, "/big/a", low + 1)


def test_an_app_checked_on_its_traffic_port_never_inherits_another_apps_check_port(
        tmp_path: Path, simulator: Simulator) -> None:
    """A spare keeps the check ports an app with HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX
    set on its servers (HAProxy has no command that resets them): the next app in it,
    checked on its traffic port, would be checked on the old tasks' ports instead."""
    low, high = free_port_range(RANGE_SIZE)
    check = [{"protocol": "TCP", "portIndex": 0, "intervalSeconds": 1}]
    simulator.create_app("/chk/a", instances=2, healthChecks=check, labels={
        "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1", "HAPROXY_1_ENABLED": "false"},
        portDefinitions=[{"port": low + 1, "protocol": "tcp"},
                         {"port": low + 9, "protocol": "tcp"}])
    simulator.wait_running("/chk/a", 2)
    daemon = Daemon(tmp_path, simulator.url, "--service-port-range", f"{low}-{high}",
                    "--pool-spares", "1").start()
    with running(daemon):
        routed(simulator, "/chk/a", low + 1)
        simulator.delete_app("/chk/a")
        wait_for(lambda: unmapped(tmp_path, low + 1), 20, what="/chk/a's map entry gone")
        for i in (2, 3):  # one takes a _pool_ spare, the other /chk/a's old backend
            simulator.create_app(f"/chk/b{i}", instances=2, healthChecks=check,
                                 portDefinitions=[{"port": low + i, "protocol": "tcp"}])
        for i in (2, 3):
            app = f"/chk/b{i}"
            routed(simulator, app, low + i)
            backend = daemon.status(app=app)["services"][0]["backend"]
            tasks = [t for t in simulator.app(app)["tasks"] if t["state"] == "TASK_RUNNING"]
            checked = daemon.check_ports(backend)  # (0: the server's own port)
            assert set(checked) == {t["ports"][0] for t in tasks}
            assert not {p: c for p, c in checked.items() if c not in (0, p)}, \
                f"{app} in {backend} checked on other ports"


def test_reconcile_repairs_a_port_listed_twice_in_the_map(tmp_path: Path,
                                                          simulator: Simulator) -> None:
    """A port map entry left stale (by a lost runtime change) and then added again:
    HAProxy lists the port twice and answers its first entry, another app's backend.
    Reconcile must see the port as HAProxy routes it, and repair it."""
    daemon, (low, _) = start(tmp_path, simulator)
    with running(daemon):
        for i in (1, 2):
            launch(simulator, f"/twice/a{i}", low + i)
            routed(simulator, f"/twice/a{i}", low + i)
        ports = tmp_path / "haproxy.cfg.d" / "ports.map"
        own, other = (daemon.status(app=f"/twice/a{i}")["services"][0]["backend"]
                      for i in (1, 2))
        results = asyncio.run(RuntimeClient(str(daemon.socket)).execute([
            f"del map {ports} {low + 1}", f"add map {ports} {low + 1} {other}",
            f"add map {ports} {low + 1} {own}"]))
        assert all(r.ok for r in results), results
        routed(simulator, "/twice/a1", low + 1)  # a1's port reaches a1 again
        routed(simulator, "/twice/a2", low + 2)
