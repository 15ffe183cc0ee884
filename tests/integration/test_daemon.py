"""The daemon end to end: simulator → servicerouter → real HAProxy → real tasks.

Reload counts come from HAProxy's master (``show proc``), never from our own
counters; routing is checked with real requests through the frontends.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from servicerouter.haproxy.render import builtin_templates
from servicerouter.naming import service_name

from .conftest import needs_haproxy
from .harness import TLS, Daemon, Simulator, responders, running, wait_for, wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]


def start_daemon(tmp: Path, sim: Simulator, *extra: str) -> Daemon:
    return Daemon(tmp, sim.url, *extra).start()


def test_task_replacements_inside_capacity_need_no_reload(tmp_path: Path,
                                                          simulator: Simulator) -> None:
    # SHUTDOWN_DELAY: the backend's lame duck after SIGTERM (0.5 s by default), which this
    # test never looks at: it checks routing once the replacements run. Each kill still
    # goes TASK_KILLING, then TASK_KILLED 0.1 s later, then the replacement (the simulator
    # replaces only a terminal task), as before: 20 rounds no longer wait 0.4 s more each.
    port, live = simulator.launch("/churn", 4, env={"SHUTDOWN_DELAY": "0.1"})
    daemon = start_daemon(tmp_path, simulator)
    with running(daemon):
        wait_routed(port, live)
        reloads_before = daemon.reloads()
        rng = random.Random(7)
        replaced = 0
        while replaced < 40:  # every slot is reused several times over
            victims = rng.sample(sorted(live), 2)
            for task_id in victims:
                simulator.kill_task("/churn", task_id)
            replaced += len(victims)
            gone = set(victims)
            live = simulator.wait_tasks("/churn", lambda t, gone=gone: len(t) == 4
                                        and not t & gone, what="replacements")
            wait_routed(port, live)
        assert daemon.reloads() == reloads_before, "task churn inside capacity reloaded HAProxy"
        assert "servicerouter_reloads_total{reason=\"capacity\"} 0.0" in daemon.metrics()


def test_new_app_is_routed_with_one_reload_and_removed_app_unbound(
        tmp_path: Path, simulator: Simulator) -> None:
    simulator.create_app("/first", instances=1)
    simulator.wait_running("/first", 1)
    daemon = start_daemon(tmp_path, simulator)
    with running(daemon):
        before = daemon.reloads()
        port, live = simulator.launch("/second", 2)
        wait_routed(port, live)
        time.sleep(0.5)  # a second reload, if any, would land within the reload interval
        assert daemon.reloads() == before + 1

        simulator.delete_app("/second")
        wait_for(lambda: _refused(port), 15, what=f"port {port} unbound")
        assert responders(simulator.service_port("/first"), 2)


def test_in_the_old_workers_grace_clients_reach_the_same_tasks_as_through_the_new(
        tmp_path: Path, simulator: Simulator) -> None:
    """After a reload the old worker keeps accepting clients for --haproxy-grace (here
    the whole test). Task churn in that grace reaches both workers: every request,
    whichever worker accepts it, reaches exactly the live tasks. The daemon's own reads
    of HAProxy (the reconcile every second, the worker check) are not misled by the old
    worker: no further reload, no 'worker changed'."""
    port, live = simulator.launch("/web", 2)
    # Reconciles every 0.5 s: the grace gets the two it waits for sooner.
    daemon = start_daemon(tmp_path, simulator, "--haproxy-grace", "60",
                          "--reconcile-interval", "0.5")
    with running(daemon):
        wait_routed(port, live)
        before = daemon.reloads()
        new_port, new_live = simulator.launch("/new", 1)
        wait_routed(new_port, new_live)
        assert daemon.reloads() == before + 1
        assert daemon.proc_info().old_workers, "the old worker is in its grace"
        for _ in range(3):
            victim = sorted(live)[0]
            simulator.kill_task("/web", victim)
            live = simulator.wait_tasks("/web", lambda t, v=victim: len(t) == 2
                                        and v not in t, what=f"{victim} replaced")
            wait_routed(port, live)
            assert responders(port, 30) == live  # 30 new connections, to either worker
        read = daemon.proc.log.read_text().count("HAProxy's servers read back")
        wait_for(lambda: daemon.proc.log.read_text().count("HAProxy's servers read back")
                 > read + 1, 15, what="two reconciles in the grace")
        assert daemon.reloads() == before + 1
        assert daemon.proc_info().old_workers, "still in its grace"
        log = daemon.proc.log.read_text()
        assert "worker changed" not in log and "differs from the slot table" not in log


def _refused(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1, verify=TLS)
    except httpx.ConnectError:
        return True
    return False


def test_scaling_past_capacity_adds_servers_without_reload(tmp_path: Path,
                                                           simulator: Simulator) -> None:
    port, _ = simulator.launch("/grow", 2)
    daemon = start_daemon(tmp_path, simulator, "--slots-min-free", "1", "--slots-increment", "4")
    with running(daemon):
        backend = service_name("/grow", port)
        assert len(daemon.servers(backend)) == 4
        before = daemon.reloads()
        simulator.scale("/grow", 7)
        live = simulator.wait_running("/grow", 7, timeout=30)
        wait_routed(port, live)
        assert len(daemon.servers(backend)) >= 7
        assert daemon.reloads() == before, "add server should have avoided the reload"


def test_killed_haproxy_worker_is_recovered(tmp_path: Path, simulator: Simulator) -> None:
    port, live = simulator.launch("/sturdy", 2)
    daemon = start_daemon(tmp_path, simulator)
    with running(daemon):
        wait_routed(port, live)
        # A change applied at runtime only: the file on disk does not have it.
        live = simulator.replace_one("/sturdy", live)
        wait_routed(port, live)


        info = daemon.proc_info()
        os.kill(info.worker_pids[0], signal.SIGKILL)
        # HAProxy comes back and routes to exactly the live tasks again.
        wait_routed(port, live, timeout=30)
        assert daemon.proc.alive()



def test_a_restarted_worker_checks_each_task_on_its_own_check_port(
        tmp_path: Path, simulator: Simulator) -> None:
    """HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX: each server is checked on its task's
    port 1. A task replaced at runtime took a slot whose rendered check port is its
    predecessor's; a worker restarted from the file has that port, and the reconcile
    that moves the slot to the live task must move its check port too."""
    simulator.create_app("/chk", instances=2, ports=2, labels={
        "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1", "HAPROXY_1_ENABLED": "false"},
        healthChecks=[{"protocol": "TCP", "portIndex": 0, "intervalSeconds": 1}])
    live = simulator.wait_running("/chk", 2)
    port = simulator.service_port("/chk")
    backend = service_name("/chk", port)

    def expected() -> dict[int, int]:
        return {t["ports"][0]: t["ports"][1] for t in simulator.app("/chk")["tasks"]
                if t["state"] == "TASK_RUNNING"}

    daemon = start_daemon(tmp_path, simulator)
    with running(daemon):
        wait_for(lambda: (e := expected()) and daemon.check_ports(backend) == e, 30,
                 what="each server checked on its task's port 1")
        live = simulator.replace_one("/chk", live)  # into the dead task's slot
        wait_for(lambda: len(e := expected()) == 2 and daemon.check_ports(backend) == e, 30,
                 what="the replacement checked on its own port 1")
        info = daemon.proc_info()
        os.kill(info.worker_pids[0], signal.SIGKILL)
        wait_for(lambda: daemon.proc_info().worker_pids not in ([], info.worker_pids), 20,
                 what="a new worker")
        wait_for(lambda: daemon.check_ports(backend) == expected(), 30,
                 what="after the worker's restart, each server checked on its task's port 1")


def test_invalid_candidate_config_keeps_the_old_one_serving(tmp_path: Path,
                                                            simulator: Simulator) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(builtin_templates(), templates)
    port, live = simulator.launch("/steady", 1)
    daemon = start_daemon(tmp_path, simulator, "--templates", str(templates))
    with running(daemon):
        wait_routed(port, live)
        service = templates / "service.j2"
        service.write_text(service.read_text().replace("    balance {{ b.balance }}",
                                                       "    balance {{ b.balance }}\n"
                                                       "    not-a-keyword on"))
        simulator.create_app("/broken", instances=1)
        wait_for(lambda: 'servicerouter_reload_failures_total{stage="validate"} 1.0'
                 in daemon.metrics(), 20, what="a validation failure")
        assert "not-a-keyword" in daemon.proc.output()
        assert (tmp_path / "haproxy.cfg.rejected").exists() or list(tmp_path.glob("*rejected*"))
        assert "not-a-keyword" not in (tmp_path / "haproxy.cfg").read_text()
        wait_routed(port, live)  # the running config keeps serving
        # Task churn of the existing app still flows at runtime meanwhile.
        wait_routed(port, simulator.replace_one("/steady", live))


def test_sigterm_stops_daemon_and_haproxy(tmp_path: Path, simulator: Simulator) -> None:
    port, _ = simulator.launch("/bye", 1)
    daemon = start_daemon(tmp_path, simulator)


    pids = daemon.proc_info().all_pids
    assert daemon.proc.popen is not None
    daemon.proc.popen.send_signal(signal.SIGTERM)
    assert daemon.proc.popen.wait(15) == 0
    for pid in pids:
        wait_for(lambda p=pid: not _exists(p), 10, what=f"haproxy pid {pid} gone")
    assert _refused(port)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False

