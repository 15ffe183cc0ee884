"""One app never harms another: bad values, stolen names and oversized apps, end to end.

Real HAProxy, the simulator, real tasks. Values Marathon itself would refuse
(ports out of range, Infinity) are stored with the simulator's test-only
``/_sim/apps/{id}/tamper``, as a laxer Marathon would serve them. Every test
checks that another app keeps serving through HAProxy and that a new app is
still routed while the bad one is there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from servicerouter.certnames import cert_names
from servicerouter.naming import service_name

from ..unit.payloads import UNLOADABLE_PEM as FAKE_PEM
from .conftest import needs_haproxy
from .harness import TLS, Daemon, ExternalHAProxy, Simulator, responders, running, wait_for

pytestmark = [pytest.mark.integration, needs_haproxy]


def tamper(sim: Simulator, app_id: str, **body: Any) -> None:
    r = sim.http.post(f"/_sim/apps{app_id}/tamper", content=json.dumps(body),  # NaN allowed
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def problems(daemon: Daemon) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p in daemon.status()["problems"]:
        out.setdefault(p["app_id"], []).append(p)
    return out


def scrape(daemon: Daemon, name: str) -> dict[str, float]:
    found = {}
    for line in daemon.metrics().splitlines():
        if line.startswith(name + "{"):
            key, _, value = line.rpartition(" ")
            found[key[len(name) + 1:-1]] = float(value)
    return found


def serving(sim: Simulator, app_id: str, port: int, timeout: float = 30.0) -> None:
    """Wait until traffic through ``port`` reaches exactly the app's running tasks (as
    the simulator has them now: it may have replaced one meanwhile)."""
    wait_for(lambda: responders(port, 12) == sim.running(app_id), timeout,
             what=f"traffic on :{port} reaching exactly the tasks of {app_id}")


def new_app_is_routed(sim: Simulator, daemon: Daemon, app_id: str) -> None:
    before = daemon.reloads()
    port, _ = sim.launch(app_id, 1)
    serving(sim, app_id, port)
    # The master's socket is briefly away while it re-executes for a reload.
    wait_for(lambda: daemon.reloads() > before, 15, what="HAProxy's reload count to grow")


def shop_pem(tmp: Path) -> bytes:
    """A self-signed certificate for shop.test and its key, one PEM (as HAProxy takes)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=shop.test", "-days", "1", "-keyout", str(tmp / "k"), "-out",
                    str(tmp / "c")], check=True, capture_output=True, timeout=60)
    return (tmp / "c").read_bytes() + (tmp / "k").read_bytes()


def test_fresh_start_next_to_bad_apps_serves_the_others(tmp_path: Path,
                                                        simulator: Simulator) -> None:
    certs, elsewhere = tmp_path / "certs", tmp_path / "elsewhere"
    certs.mkdir()
    elsewhere.mkdir()
    (certs / "adir").mkdir()
    (certs / "fake.pem").write_text(FAKE_PEM)
    (elsewhere / "other-tenant.pem").write_text(FAKE_PEM)
    os.symlink(elsewhere / "other-tenant.pem", certs / "escape.pem")
    daemon = Daemon(tmp_path, simulator.url, "--ssl-cert-dir", str(certs))
    good_port, _ = simulator.launch("/good", 2)

    expected: dict[str, str] = {}  # app id -> reason

    def bad(app_id: str, reason: str, instances: int = 0, labels: dict[str, str] | None = None,
            **tampered: Any) -> None:
        # No cmd: the simulator's fake executor runs the tasks (their ports are tampered).
        simulator.create_app(app_id, instances=instances, labels=labels, cmd=None)
        if instances:
            simulator.wait_running(app_id, instances)
        if tampered:
            tamper(simulator, app_id, **tampered)
        expected[app_id] = reason

    for name, value in (("missing", certs / "missing.pem"), ("dir", certs / "adir"),
                        ("shadow", "/etc/shadow"), ("outside", elsewhere / "other-tenant.pem"),
                        ("symlink", certs / "escape.pem"), ("unloadable", certs / "fake.pem")):
        bad(f"/bad/cert-{name}", "ssl_cert", labels={"HAPROXY_0_SSL_CERT": str(value)})
    for name, port in (("neg", -5), ("big", 65536), ("huge", 1e20)):
        bad(f"/bad/port-{name}", "port", definition={"portDefinitions": [{"port": port}]})
    for name, port in (("zero", 0), ("neg", -3), ("big", 70000)):
        bad(f"/bad/taskport-{name}", "task_port", instances=1, taskPorts=[port])
    for name, seconds in (("inf", float("inf")), ("nan", float("nan")), ("1e308", 1e308),
                          ("big", 2147484)):
        bad(f"/bad/hc-{name}", "health_check", definition={"healthChecks": [
            {"protocol": "TCP", "portIndex": 0, "intervalSeconds": seconds}]})
    bad("/bad/bind-addr", "bind_address", labels={"HAPROXY_0_BIND_ADDR": "192.0.2.77"})
    bad("/bad/daemon-port", "port_reserved",
        labels={"HAPROXY_0_PORT": str(daemon.listen_port)})
    bad("/bad/held-port", "bind_failed", labels={"HAPROXY_0_PORT": str(simulator.port)})
    bad("/bad/taken-port", "port_taken", labels={"HAPROXY_0_PORT": str(good_port)})

    daemon.start()
    with running(daemon):
        serving(simulator, "/good", good_port)
        found = wait_for(lambda: (p := problems(daemon)) and set(p) >= set(expected) and p,
                         30, what="every bad app in /status problems")
        for app_id, reason in expected.items():
            (problem,) = found[app_id]
            assert problem["reason"] == reason, (app_id, problem)
            assert problem["value"] and len(problem["value"]) <= 203, problem
        assert "outside the allowed" in found["/bad/cert-symlink"][0]["error"]
        assert "192.0.2.77" in found["/bad/bind-addr"][0]["error"]
        health = daemon.http.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        assert health.json()["services_excluded"] == len(expected)
        excluded = scrape(daemon, "servicerouter_services_excluded")
        assert excluded['reason="ssl_cert"'] == 6 and excluded['reason="task_port"'] == 3
        assert sum(excluded.values()) == len(expected)
        # What is on disk is what HAProxy accepts (a restarted master serves it).
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(daemon.config)],
                               capture_output=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr

        new_app_is_routed(simulator, daemon, "/new/one")

        # The worker dies: the master restarts from the file, and everything still routes.
        new_port = simulator.service_port("/new/one")
        info = daemon.proc_info()
        os.kill(info.worker_pids[0], signal.SIGKILL)
        wait_for(lambda: daemon.proc_info()
                 .master_pid != info.master_pid, 30, what="HAProxy restarted by the daemon")
        serving(simulator, "/good", good_port)
        serving(simulator, "/new/one", new_port)
        new_app_is_routed(simulator, daemon, "/new/two")

        # Problems are logged once, not once per sync.
        simulator.http.post("/_sim/streams/close")  # reconnect: a full sync follows
        wait_for(lambda: "event stream attached" in _log(daemon).split(
            "HAProxy restarted")[-1], 30, what="a full sync after reconnecting")
        log = _log(daemon)
        assert log.count("/bad/bind-addr: HAPROXY_0_BIND_ADDR") == 1
        assert log.count("/bad/held-port: HAPROXY_0_PORT") == 1  # retried at each sync


def unloadable(cert: Path) -> str:
    """/status's error for a certificate file HAProxy cannot load (its markers around
    bytes that are not a certificate)."""
    return (f"HAPROXY_0_SSL_CERT='{cert}' is a file HAProxy cannot load (haproxy -c: "
            f"unable to load certificate from file '{cert}'.); it must hold the "
            "certificate, its private key and any chain as PEM blocks HAProxy can read; "
            "service left out, others applied")


def _log(daemon: Daemon) -> str:
    return (daemon.tmp / "servicerouter.log").read_text()


def _reached(http_port: int, host: str, path: str = "/") -> set[str]:
    """The tasks six requests for ``host`` on the vhost frontend reach (one connection
    each, so the balancing shows)."""
    with httpx.Client(timeout=5, verify=TLS) as c:
        return {c.get(f"http://127.0.0.1:{http_port}{path}",
                      headers={"Host": host, "Connection": "close"}).text.strip()
                for _ in range(6)}


def _presented(port: int, sni: str) -> tuple[str, ...] | None:
    """The names of the certificate HAProxy presents on ``port`` for ``sni`` (taken
    without verifying it); None: no TLS answers there."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    assert der is not None
    return cert_names(ssl.DER_cert_to_PEM_cert(der).encode())


def _reached_tls(port: int, host: str) -> set[str]:
    """The tasks four HTTPS requests for ``host`` (Host and SNI) on ``port`` reach."""
    with httpx.Client(timeout=5, verify=False) as c:
        return {c.get(f"https://127.0.0.1:{port}/", headers={"Host": host,
                      "Connection": "close"}, extensions={"sni_hostname": host}
                      ).text.strip() for _ in range(4)}


def test_a_health_checked_task_port_outside_1_65535_costs_only_its_service(
        tmp_path: Path, simulator: Simulator) -> None:
    """An audit's tenant: its running task reports 70000 at the port index its health
    check borrows (HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX). HAProxy would check 4464
    without a word, and the daemon's check-port raised for every app's batch. Now that
    service is left out, named in /status, and every other app goes on at runtime."""
    good_port, good = simulator.launch("/good", 2)
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        serving(simulator, "/good", good_port)
        app_id = "/evil/checkport"
        simulator.create_app(app_id, instances=1, ports=2, cmd=None, labels={
            "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1", "HAPROXY_1_ENABLED": "false"},
            healthChecks=[{"protocol": "TCP", "portIndex": 0}])
        simulator.wait_running(app_id, 1)
        (task,) = simulator.app(app_id)["tasks"]
        tamper(simulator, app_id, taskPorts=[task["ports"][0], 70000])
        (problem,) = wait_for(lambda: problems(daemon).get(app_id), 30,
                              what="the bad health-checked port in /status")
        assert (problem["reason"], problem["label"], problem["value"]) == (
            "task_port", f"tasks[{task['id']}].ports[1]", "70000")
        # Another app's churn is applied at runtime, and a new app is routed.
        simulator.replace_one("/good", good)
        serving(simulator, "/good", good_port)
        new_app_is_routed(simulator, daemon, "/new/one")
        text = daemon.config.read_text()
        assert "port 70000" not in text and "evil_checkport" not in text
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(daemon.config)],
                               capture_output=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_an_auth_hash_too_slow_to_check_per_request_costs_only_its_service(
        tmp_path: Path, simulator: Simulator) -> None:
    """HAProxy hashes a client's password with the label's algorithm and cost on every
    request, in a worker thread every tenant shares. With $6$rounds=50000000$ that took
    28 s, and HAProxy's watchdog killed the whole process 3 s after one request with
    credentials: every tenant's service refused connections. Such a hash leaves out
    its service; the others keep serving."""
    good_port, _ = simulator.launch("/good", 2)
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        serving(simulator, "/good", good_port)
        slow = "$6$rounds=50000000$abcdefgh$" + "x" * 86
        evil_port, _ = simulator.launch("/evil/slowauth", 1, labels={
            "HAPROXY_0_AUTH": f"r:alice:{slow}"})
        (problem,) = wait_for(lambda: problems(daemon).get("/evil/slowauth"), 30,
                              what="the slow hash in /status")
        assert (problem["reason"], problem["label"]) == ("label_invalid", "HAPROXY_0_AUTH")
        assert "rounds=50000000" in problem["error"] and slow not in json.dumps(problem)
        with httpx.Client(timeout=10) as c, pytest.raises(httpx.TransportError):
            c.get(f"http://127.0.0.1:{evil_port}/", auth=("alice", "guess"))
        serving(simulator, "/good", good_port)
        new_app_is_routed(simulator, daemon, "/new/one")
        assert "rounds=50000000" not in daemon.config.read_text()


def test_a_virtual_host_belongs_to_the_group_that_claimed_it(tmp_path: Path,
                                                             simulator: Simulator) -> None:
    from servicerouter.demo.procs import free_port

    http_port = free_port()
    daemon = Daemon(tmp_path, simulator.url, "--http-port", str(http_port)).start()
    with running(daemon):
        simulator.launch("/teama/web", 1, labels={"HAPROXY_0_VHOST": "shop.test"})
        simulator.launch("/teama/api", 1, labels={"HAPROXY_0_VHOST": "shop.test",
                                                           "HAPROXY_0_PATH": "/api"})
        # Another group: an id that sorts first, and PATH=/ to catch everything.
        _, thief = simulator.launch("/aaa/thief", 1, labels={"HAPROXY_0_VHOST": "shop.test",
                                                             "HAPROXY_0_PATH": "/"})

        def reached(path: str) -> set[str]:
            return _reached(http_port, "shop.test", path)

        def routed_to_group() -> bool:  # a task the simulator replaces counts as the app's
            return (reached("/") == simulator.running("/teama/web")
                    and reached("/api/x") == simulator.running("/teama/api"))

        wait_for(routed_to_group, 30, what="shop.test routed to its group only")
        (problem,) = wait_for(lambda: problems(daemon).get("/aaa/thief"), 15,
                              what="the thief's problem")
        assert problem["reason"] == "vhost_taken" and problem["label"] == "HAPROXY_0_VHOST"
        assert "group /teama (app /teama/web claimed it first)" in problem["error"]
        assert not thief & (reached("/") | reached("/api/x"))
        new_app_is_routed(simulator, daemon, "/teamc/new")
        wait_for(routed_to_group, 30, what="shop.test still routed to its group only")
        assert not (reached("/") | reached("/api/x")) & simulator.running("/aaa/thief")


def test_a_vhost_label_of_too_many_names_costs_only_its_service(
        tmp_path: Path, simulator: Simulator) -> None:
    """A tenant's VHOST of 1,001 '*.' names with the top BACKEND_WEIGHT: HAProxy tries
    them first for every request on the shared frontend (40,000 made it 3x slower for
    everyone), and the daemon indexes each name's domains (204 MB for a 1 MB value of
    deep names). That service is left out and named; the other tenants' hosts route."""
    from servicerouter.demo.procs import free_port

    http_port = free_port()
    daemon = Daemon(tmp_path, simulator.url, "--http-port", str(http_port)).start()
    with running(daemon):
        simulator.launch("/teama/web", 1, labels={"HAPROXY_0_VHOST": "shop.test"})
        wanted = ",".join(f"*.h{i}.many.test" for i in range(1001))
        simulator.launch("/evil/many", 1, labels={"HAPROXY_0_VHOST": wanted,
                                                  "HAPROXY_0_BACKEND_WEIGHT": "1000000"})
        (problem,) = wait_for(lambda: problems(daemon).get("/evil/many"), 30,
                              what="the oversized VHOST in /status")
        assert (problem["reason"], problem["label"]) == ("label_invalid", "HAPROXY_0_VHOST")
        assert "names 1001 hosts; at most 1000" in problem["error"]
        wait_for(lambda: _reached(http_port, "shop.test") == simulator.running("/teama/web"),
                 30, what="shop.test routed to its owner")
        new_app_is_routed(simulator, daemon, "/teamc/new")
        assert "many.test" not in daemon.config.read_text()


def _relabel(simulator: Simulator, app_id: str, labels: dict[str, str]) -> None:
    """Replace an app's labels (a deploy, as its owner would make one)."""
    r = simulator.http.put(f"/v2/apps{app_id}", params={"force": "true"},
                           json={"labels": labels})
    assert r.status_code == 200, r.text


def _reaches_only(http_port: int, host: str, simulator: Simulator, app_id: str) -> bool:
    """Requests for ``host`` reach exactly ``app_id``'s running tasks."""
    return _reached(http_port, host) == simulator.running(app_id)


def test_a_typo_in_its_own_labels_does_not_hand_a_virtual_host_to_another_group(
        tmp_path: Path, simulator: Simulator) -> None:
    """A service left out for a bad value of its own (HAPROXY_0_BALANCE=roundrobinn) let
    go of its names: the app of another group waiting for shop.test took it in the same
    reload, and kept it once the typo was fixed. Left out, the service now keeps them."""
    from servicerouter.demo.procs import free_port

    http_port = free_port()
    daemon = Daemon(tmp_path, simulator.url, "--http-port", str(http_port)).start()

    def relabel(labels: dict[str, str]) -> None:
        _relabel(simulator, "/teama/web", labels)

    def owner_routed() -> bool:
        return _reaches_only(http_port, "shop.test", simulator, "/teama/web")

    with running(daemon):
        # Another host keeps the vhost frontend bound while the owner's service is out.
        simulator.launch("/teamb/web", 1, labels={"HAPROXY_0_VHOST": "other.test"})
        simulator.launch("/teama/web", 1, labels={"HAPROXY_0_VHOST": "shop.test"})
        wait_for(owner_routed, 30, what="shop.test routed to its owner")
        _, thief = simulator.launch("/aaa/thief", 1, labels={"HAPROXY_0_VHOST": "shop.test"})
        wait_for(lambda: problems(daemon).get("/aaa/thief"), 30, what="the waiting app")
        relabel({"HAPROXY_0_VHOST": "shop.test", "HAPROXY_0_BALANCE": "roundrobinn"})
        (typo,) = wait_for(lambda: problems(daemon).get("/teama/web"), 30,
                           what="the owner's typo in /status")
        assert (typo["reason"], typo["label"]) == ("label_invalid", "HAPROXY_0_BALANCE")
        wait_for(lambda: "backend teama_web_" not in daemon.config.read_text(), 30,
                 what="the owner's service left out of the served config")
        assert "aaa_thief" not in daemon.config.read_text()
        assert not _reached(http_port, "shop.test") & thief
        (waiting,) = problems(daemon)["/aaa/thief"]
        assert waiting["reason"] == "vhost_taken" and "group /teama" in waiting["error"]
        relabel({"HAPROXY_0_VHOST": "shop.test"})
        wait_for(owner_routed, 30, what="shop.test routed to its owner again")
        assert "/teama/web" not in problems(daemon)


@pytest.mark.parametrize(("owner_id", "group", "typo"), [
    # A plain app naming a group, with a start time that is not one.
    ("/teama/web", {}, {"HAPROXY_DEPLOYMENT_GROUP": "teama/web",
                        "HAPROXY_DEPLOYMENT_STARTED_AT": "yesterday"}),
    # zdd.py's app, alone in its group (routed as /teama/web), with a count that is not one.
    ("/teama/web-blue", {"HAPROXY_DEPLOYMENT_GROUP": "teama/web"},
     {"HAPROXY_DEPLOYMENT_TARGET_INSTANCES": "two"}),
], ids=["plain", "zdd-member"])
def test_a_typo_in_its_deployment_labels_does_not_hand_a_virtual_host_to_another_group(
        tmp_path: Path, simulator: Simulator, owner_id: str, group: dict[str, str],
        typo: dict[str, str]) -> None:
    """A refused HAPROXY_DEPLOYMENT_* value leaves the whole app out (deployment_group):
    it let go of its names as if deleted, and the app of another group waiting for
    shop.test took it. Left out, the app now keeps them until fixed or deleted."""
    from servicerouter.demo.procs import free_port

    http_port = free_port()
    daemon = Daemon(tmp_path, simulator.url, "--http-port", str(http_port)).start()
    labels = {"HAPROXY_0_VHOST": "shop.test", **group}

    def relabel(labels: dict[str, str]) -> None:
        _relabel(simulator, owner_id, labels)

    def owner_routed() -> bool:
        return _reaches_only(http_port, "shop.test", simulator, owner_id)

    with running(daemon):
        # Another host keeps the vhost frontend bound while the owner's app is out.
        simulator.launch("/teamb/web", 1, labels={"HAPROXY_0_VHOST": "other.test"})
        simulator.launch(owner_id, 1, labels=labels)
        wait_for(owner_routed, 30, what="shop.test routed to its owner")
        _, thief = simulator.launch("/aaa/thief", 1, labels={"HAPROXY_0_VHOST": "shop.test"})
        wait_for(lambda: problems(daemon).get("/aaa/thief"), 30, what="the waiting app")
        relabel({**labels, **typo})
        (refused,) = wait_for(lambda: problems(daemon).get(owner_id), 30,
                              what="the owner's refused label in /status")
        assert refused["reason"] == "deployment_group"
        assert refused["label"] == next(iter(typo.keys() - {"HAPROXY_DEPLOYMENT_GROUP"}))
        wait_for(lambda: "backend teama_web" not in daemon.config.read_text(), 30,
                 what="the owner's service left out of the served config")
        assert "aaa_thief" not in daemon.config.read_text()
        assert not _reached(http_port, "shop.test") & thief
        (waiting,) = problems(daemon)["/aaa/thief"]
        assert waiting["reason"] == "vhost_taken" and "group /teama" in waiting["error"]
        relabel(labels)
        wait_for(owner_routed, 30, what="shop.test routed to its owner again")
        assert owner_id not in problems(daemon) and "/aaa/thief" in problems(daemon)


def test_a_restart_while_the_owner_is_broken_keeps_its_virtual_host(
        tmp_path: Path, simulator: Simulator) -> None:
    """Restarted while the owner's service is left out for a typo of its own, the daemon
    had nothing of the owner in memory: the owners file gave shop.test back, the owner's
    claims at the first sync did not name it, and the waiting thief took it."""
    from servicerouter.demo.procs import free_port

    http_port = free_port()
    labels = {"HAPROXY_0_VHOST": "shop.test"}

    def daemon() -> Daemon:
        return Daemon(tmp_path, simulator.url, "--http-port", str(http_port))

    def relabel(labels: dict[str, str]) -> None:
        _relabel(simulator, "/teama/web", labels)

    def owner_routed() -> bool:
        return _reaches_only(http_port, "shop.test", simulator, "/teama/web")

    first = daemon().start()
    with running(first):
        simulator.launch("/teamb/web", 1, labels={"HAPROXY_0_VHOST": "other.test"})
        simulator.launch("/teama/web", 1, labels=labels)
        wait_for(owner_routed, 30, what="shop.test routed to its owner")
        _, thief = simulator.launch("/aaa/thief", 1, labels=labels)
        wait_for(lambda: problems(first).get("/aaa/thief"), 30, what="the waiting app")
        relabel({**labels, "HAPROXY_0_BALANCE": "roundrobinn"})
        wait_for(lambda: problems(first).get("/teama/web"), 30, what="the owner's typo")
    second = daemon().start()
    with running(second):
        # Refused at the first sync after the restart (not routed in its place).
        (waiting,) = wait_for(lambda: problems(second).get("/aaa/thief"), 30,
                              what="the thief refused after the restart")
        assert waiting["reason"] == "vhost_taken" and "group /teama" in waiting["error"]
        (typo,) = problems(second)["/teama/web"]
        assert (typo["reason"], typo["label"]) == ("label_invalid", "HAPROXY_0_BALANCE")
        config = second.config.read_text()
        assert "aaa_thief" not in config and "backend teama_web_" not in config
        assert not _reached(http_port, "shop.test") & thief
        relabel(labels)
        wait_for(owner_routed, 30, what="shop.test routed to its owner again")
        assert "/aaa/thief" in problems(second)


def test_a_wildcard_from_another_group_does_not_take_an_owned_host(
        tmp_path: Path, simulator: Simulator) -> None:
    """*.corp.test with a heavy BACKEND_WEIGHT sorts before shop.corp.test on the vhost
    frontend: admitted, it would take the owner's traffic. It is refused instead."""
    from servicerouter.demo.procs import free_port

    http_port = free_port()
    daemon = Daemon(tmp_path, simulator.url, "--http-port", str(http_port)).start()
    with running(daemon):
        simulator.launch("/teama/web", 1, labels={"HAPROXY_0_VHOST": "shop.corp.test"})
        simulator.launch("/aaa/thief", 1, labels={"HAPROXY_0_VHOST": "*.corp.test",
                                                  "HAPROXY_0_BACKEND_WEIGHT": "1000"})

        def reached(host: str) -> set[str]:
            return _reached(http_port, host)

        (problem,) = wait_for(lambda: problems(daemon).get("/aaa/thief"), 30,
                              what="the wildcard's problem")
        assert (problem["reason"], problem["label"], problem["value"]) == (
            "vhost_taken", "HAPROXY_0_VHOST", "*.corp.test")
        assert "covers host shop.corp.test of group /teama" in problem["error"]
        wait_for(lambda: reached("shop.corp.test") == simulator.running("/teama/web"), 30,
                 what="shop.corp.test routed to /teama/web only")
        new_app_is_routed(simulator, daemon, "/teamc/new")
        assert reached("shop.corp.test") == simulator.running("/teama/web")
        assert not reached("other.corp.test") & simulator.running("/aaa/thief")


def test_another_groups_certificate_is_not_served_on_a_thiefs_port(
        tmp_path: Path, simulator: Simulator) -> None:
    """Both files are under --ssl-cert-dir, and both apps are allowed certificates; but
    shop.pem is /teama's: on /aaa/thief's port it would present shop.test's name and
    key to clients lured to https://shop.test:<that port>/."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "shop.pem").write_bytes(shop_pem(tmp_path))
    owner_port, _ = simulator.launch("/teama/web", 1, labels={
        "HAPROXY_0_SSL_CERT": str(certs / "shop.pem")})
    daemon = Daemon(tmp_path, simulator.url, "--ssl-cert-dir", str(certs)).start()
    with running(daemon):
        def over_tls(port: int) -> set[str]:
            with httpx.Client(timeout=5, verify=False) as c:
                return {c.get(f"https://127.0.0.1:{port}/",
                              headers={"Connection": "close"}).text.strip() for _ in range(4)}

        wait_for(lambda: over_tls(owner_port) == simulator.running("/teama/web"), 30,
                 what="/teama/web served over TLS")
        thief_port, _ = simulator.launch("/aaa/thief", 1, labels={
            "HAPROXY_0_SSL_CERT": str(certs / "shop.pem")})
        (problem,) = wait_for(lambda: problems(daemon).get("/aaa/thief"), 30,
                              what="the thief's problem")
        assert (problem["reason"], problem["label"]) == ("ssl_cert", "HAPROXY_0_SSL_CERT")
        assert "certificate of group /teama (app /teama/web named it first)" in \
            problem["error"]
        new_app_is_routed(simulator, daemon, "/teamc/new")
        assert f":{thief_port}" not in daemon.config.read_text()
        assert over_tls(owner_port) == simulator.running("/teama/web")
        # Kept next to the config: a restart gives the file back to its owner.
        owners_file = tmp_path / "haproxy.cfg.owners.json"
        wait_for(lambda: owners_file.exists() and json.loads(owners_file.read_text()).get(
            "certs") == {str((certs / "shop.pem").resolve()): ["/teama", "/teama/web"]}, 15,
            what="the certificate's owner in the owners file")


def test_a_certificate_file_broken_under_a_running_service_costs_only_that_service(
        tmp_path: Path, simulator: Simulator) -> None:
    """The service's definition did not change, so it was trusted: haproxy -c refusing
    its (rewritten) certificate file was taken for the operator's change, and every
    reload failed: no new app of any tenant was routed, and /status showed nothing.
    The file, changed on disk, is judged again before the next reload (Guard)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    certs = tmp_path / "certs"
    certs.mkdir()
    good = shop_pem(tmp_path)
    cert = certs / "shop.pem"
    cert.write_bytes(good)
    port, _ = simulator.launch("/teama/web", 1, labels={"HAPROXY_0_SSL_CERT": str(cert)})
    daemon = Daemon(tmp_path, simulator.url, "--ssl-cert-dir", str(certs)).start()
    with running(daemon):
        def over_tls() -> set[str]:
            with httpx.Client(timeout=5, verify=False) as c:
                return {c.get(f"https://127.0.0.1:{port}/",
                              headers={"Connection": "close"}).text.strip() for _ in range(4)}

        wait_for(lambda: over_tls() == simulator.running("/teama/web"), 30,
                 what="/teama/web served over TLS")
        cert.write_text(FAKE_PEM)  # a rotation gone wrong
        new_app_is_routed(simulator, daemon, "/teamb/new")
        (problem,) = wait_for(lambda: problems(daemon).get("/teama/web"), 30,
                              what="the broken certificate's service in /status")
        assert (problem["reason"], problem["label"]) == ("ssl_cert", "HAPROXY_0_SSL_CERT")
        assert problem["error"] == unloadable(cert)
        assert "haproxy -c rejected" not in _log(daemon)
        # Fixed, and seen at the next full sync: the service comes back.
        cert.write_bytes(good)
        assert daemon.proc.popen is not None
        daemon.proc.popen.send_signal(signal.SIGUSR1)
        wait_for(lambda: over_tls() == simulator.running("/teama/web"), 30,
                 what="/teama/web over TLS again")
        assert "/teama/web" not in problems(daemon)


def test_a_certificate_file_haproxy_cannot_load_costs_no_other_tenant_a_check(
        tmp_path: Path, simulator: Simulator) -> None:
    """A file HAProxy cannot load (here a certificate's markers around bytes that are
    not one) was left to haproxy -c: every candidate naming it was rejected, for every
    tenant, and each change waited for isolation to bisect the app out. Admission now
    refuses it, naming the label and the file: no candidate is rejected at all."""
    certs = tmp_path / "certs"
    certs.mkdir()
    cert = certs / "fake.pem"
    cert.write_text(FAKE_PEM)
    steady, _ = simulator.launch("/steady", 1)
    daemon = Daemon(tmp_path, simulator.url, "--ssl-cert-dir", str(certs)).start()
    with running(daemon):
        serving(simulator, "/steady", steady)
        simulator.create_app("/bad/cert", instances=0, cmd=None,
                             labels={"HAPROXY_0_SSL_CERT": str(cert)})
        (problem,) = wait_for(lambda: problems(daemon).get("/bad/cert"), 30,
                              what="the unloadable certificate's app in /status")
        new_app_is_routed(simulator, daemon, "/other/new")
        assert (problem["reason"], problem["label"], problem["value"]) == (
            "ssl_cert", "HAPROXY_0_SSL_CERT", str(cert))
        assert problem["error"] == unloadable(cert)
        # No validation round failed on its account: nothing rejected, kept or bisected.
        assert "haproxy -c rejected" not in _log(daemon)
        assert not (tmp_path / "haproxy.cfg.rejected").exists()
        failures = scrape(daemon, "servicerouter_reload_failures_total")
        assert failures['stage="validate"'] == 0
        serving(simulator, "/steady", steady)


def test_a_rejected_candidate_that_cannot_be_kept_is_still_isolated(
        tmp_path: Path, simulator: Simulator) -> None:
    """Keeping the rejected candidate beside the config failed (a full disk; here a
    folder in the way) with an exception out of the reload: no isolation, nothing
    applied, and the next step retried at once, 300 tracebacks in 5 s. (haproxy -c
    here rejects any candidate holding /bad/rejectme, which nothing else refuses.)"""
    real = shutil.which("haproxy")
    assert real
    check = tmp_path / "haproxy-rejecting"
    check.write_text(GATED_CHECK.replace("MARKED", "rejectme")
                     .replace("GATE", str(tmp_path / "no-gate")).replace("REAL", real))
    check.chmod(0o755)
    in_the_way = tmp_path / "haproxy.cfg.rejected"
    in_the_way.mkdir()
    (in_the_way / "x").write_text("x")
    simulator.launch("/first", 1)
    daemon = Daemon(tmp_path, simulator.url, "--haproxy-bin", str(check)).start()
    with running(daemon):
        simulator.create_app("/bad/rejectme", instances=0, cmd=None)
        new_app_is_routed(simulator, daemon, "/good/new")
        (problem,) = wait_for(lambda: problems(daemon).get("/bad/rejectme"), 30,
                              what="the rejected app's problem")
        assert problem["reason"] == "haproxy_rejected"
        out = daemon.proc.output()
        assert "apply step failed" not in out
        assert (f"kept at nowhere: writing {in_the_way} failed: Is a directory" in out)


def test_a_restart_keeps_a_virtual_host_with_its_owner_not_the_older_thief(
        tmp_path: Path, simulator: Simulator) -> None:
    """The owner redeploys after a thief was refused: the thief's definition is now the
    older one. A restarted daemon claims from the owners kept next to the config, not by
    age, so the host stays with its owner."""
    from servicerouter.demo.procs import free_port

    http_port = free_port()

    def daemon() -> Daemon:
        return Daemon(tmp_path, simulator.url, "--http-port", str(http_port))

    def reached() -> set[str]:
        return _reached(http_port, "owned.test")

    first = daemon().start()
    with running(first):
        simulator.launch("/teama/web", 1, labels={"HAPROXY_0_VHOST": "owned.test"})
        wait_for(lambda: reached() == simulator.running("/teama/web"), 30,
                 what="owned.test routed to /teama/web")
        simulator.launch("/aaa/thief", 1, labels={"HAPROXY_0_VHOST": "owned.test"})
        wait_for(lambda: problems(first).get("/aaa/thief"), 15, what="the thief refused")
        simulator.scale("/teama/web", 2)  # a deploy: its version is now the newer one
        simulator.wait_running("/teama/web", 2)
        wait_for(lambda: reached() == simulator.running("/teama/web"), 30,
                 what="owned.test routed to both tasks of /teama/web")
    assert (tmp_path / "haproxy.cfg.owners.json").exists()
    second = daemon().start()
    with running(second):
        wait_for(lambda: problems(second).get("/aaa/thief"), 15,
                 what="the thief refused again after the restart")
        (problem,) = problems(second)["/aaa/thief"]
        assert problem["reason"] == "vhost_taken"
        wait_for(lambda: reached() == simulator.running("/teama/web"), 30,
                 what="owned.test still routed to /teama/web after the restart")
        assert not reached() & simulator.running("/aaa/thief")


def test_an_app_over_the_server_cap_routes_its_first_tasks(tmp_path: Path) -> None:
    # A port range with room for 1,000 tasks besides the others (the default has 1,000).
    simulator = Simulator(tmp_path, extra=["--port-range", "40000-42999"]).start()
    daemon = Daemon(tmp_path, simulator.url, "--max-servers-per-backend", "40")
    with running(simulator, daemon):
        daemon.start()
        good_port, _ = simulator.launch("/good", 2)
        serving(simulator, "/good", good_port)
        # No cmd: the simulator runs these 1,000 tasks with its fake executor.
        simulator.create_app("/huge", instances=1000, cmd=None)
        big_port = simulator.service_port("/huge")
        backend = service_name("/huge", big_port)
        tasks = wait_for(lambda: len(t := simulator.running("/huge")) == 1000 and t, 60,
                         what="1,000 tasks of /huge")
        wait_for(lambda: len(daemon.servers(backend)) == 40, 60, what="/huge in HAProxy")
        addresses = {f"{s.addr}:{s.port}" for s in daemon.servers(backend)}
        assert len(addresses) <= 40
        (problem,) = wait_for(lambda: problems(daemon).get("/huge"), 15, what="/huge capped")
        assert problem["reason"] == "too_many_servers" and problem["value"] == "1000"
        assert "first 40" in problem["error"]
        first = set(sorted(tasks)[:40])
        wait_for(lambda: {e["task_id"] for e in daemon.status(app="/huge")["services"][0][
            "endpoints"]} == first, 30, what="the first 40 tasks by id in /huge's slots")
        serving(simulator, "/good", good_port)
        new_app_is_routed(simulator, daemon, "/new")
        serving(simulator, "/good", good_port)


# ``haproxy -c`` for the next test, real haproxy underneath. A candidate naming the app
# MARKED is rejected with an alert that names no line, proxy or file, so only bisection
# can blame the app; while GATE/hold exists, every other check (isolation's) waits for
# it to go (at most 50 s, under the daemon's 60 s check timeout), after saying so in
# GATE/held.
GATED_CHECK = """#!/bin/sh
case " $* " in
*" -c "*)
    cfg=$(cat)
    if printf '%s\\n' "$cfg" | grep -q MARKED; then
        echo "[ALERT]    (1) : config : something is wrong, HAProxy does not say where"
        exit 1
    fi
    if [ -e GATE/hold ]; then
        : > GATE/held
        i=0
        while [ -e GATE/hold ] && [ $i -lt 500 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    printf '%s\\n' "$cfg" | REAL "$@"
    exit $? ;;
esac
exec REAL "$@"
"""


def test_isolating_a_rejected_app_does_not_hold_other_apps_churn(
        tmp_path: Path, simulator: Simulator) -> None:
    real = shutil.which("haproxy")
    assert real
    gate = tmp_path / "gate"
    gate.mkdir()
    check = tmp_path / "haproxy-gated"
    check.write_text(GATED_CHECK.replace("MARKED", "bisectme").replace("GATE", str(gate))
                     .replace("REAL", real))
    check.chmod(0o755)
    port, _ = simulator.launch("/steady", 2)
    # HAProxy itself is the real binary; only the daemon's haproxy -c goes through the gate.
    haproxy = ExternalHAProxy(tmp_path).start()
    daemon = Daemon(tmp_path, simulator.url, "--haproxy-bin", str(check), start_haproxy=False)
    with running(haproxy, daemon):
        daemon.start()
        serving(simulator, "/steady", port)
        reloads = wait_for(lambda: (haproxy.reloads(),), 10, what="show proc")[0]
        (gate / "hold").touch()
        try:
            simulator.create_app("/bisectme", instances=1)
            wait_for((gate / "held").exists, 30, what="isolation's haproxy -c at the gate")
            # While isolation waits on haproxy -c, another app's new task is routed.
            simulator.scale("/steady", 3)
            simulator.wait_running("/steady", 3)
            serving(simulator, "/steady", port)
            assert "/bisectme" not in problems(daemon)  # isolation has not finished
            assert haproxy.reloads() == reloads  # a runtime change: no reload
        finally:
            (gate / "hold").unlink()
        (problem,) = wait_for(lambda: problems(daemon).get("/bisectme"), 60,
                              what="/bisectme left out by isolation")
        assert problem["reason"] == "haproxy_rejected"
        assert "HAProxy does not say where" in problem["value"]
        serving(simulator, "/steady", port)


def _pem(tmp: Path, name: str, subject: str, san: str, key_type: str = "rsa:2048") -> Path:
    """A self-signed certificate with its key, one PEM, made with the openssl CLI
    (``key_type`` ec: a P-256 key, made in milliseconds)."""
    key, crt = tmp / f"{name}.key", tmp / f"{name}.crt"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] \
        if key_type == "ec" else ["-newkey", key_type]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-days", "1",
                    "-subj", subject, "-addext", f"subjectAltName={san}", "-keyout", str(key),
                    "-out", str(crt)], check=True, capture_output=True, timeout=60)
    pem = tmp / f"{name}.pem"
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    key.unlink()
    crt.unlink()
    return pem


def test_thirty_one_tenants_certificates_are_each_presented_for_their_own_host(
        tmp_path: Path, simulator: Simulator) -> None:
    """Every tenant's certificate was a `crt` on the shared HTTPS frontend's bind line,
    which HAProxy cuts at 64 words: from the 30th app with one, the config failed for
    everyone. They now go in a crt-list, each filtered to its services' vhosts."""
    from servicerouter.demo.procs import free_port

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    certs = tmp_path / "certs"
    certs.mkdir()
    operator = _pem(tmp_path, "operator", "/CN=corp.test", "DNS:*.corp.test")
    tenants = [f"/team{i:02d}/web" for i in range(31)]
    https = free_port()
    daemon = Daemon(tmp_path, simulator.url, "--https-port", str(https), "--ssl-certs",
                    str(operator), "--ssl-cert-dir", str(certs)).start()

    with running(daemon):
        for i, app_id in enumerate(tenants):  # no tasks: the handshake is what counts
            host = f"t{i}.corp.test"
            pem = _pem(certs, f"t{i}", f"/CN={host}", f"DNS:{host}", "ec")
            simulator.create_app(app_id, instances=0, labels={
                "HAPROXY_0_VHOST": host, "HAPROXY_0_SSL_CERT": str(pem)})
        wait_for(lambda: _presented(https, "t30.corp.test") == ("t30.corp.test",), 60,
                 what="the 31st tenant's certificate presented")
        for i in range(31):
            assert _presented(https, f"t{i}.corp.test") == (f"t{i}.corp.test",)
        assert _presented(https, "other.corp.test") == ("corp.test", "*.corp.test")
        assert not any(problems(daemon).get(a) for a in tenants), problems(daemon)
        text = daemon.config.read_text()
        (bind,) = [ln for ln in text.splitlines() if f"bind *:{https} " in ln]
        assert len(bind.split()) < 64, bind


@pytest.mark.parametrize("cut", ["rejected", "stopped"])
def test_a_candidates_crt_list_does_not_outlive_it(tmp_path: Path, simulator: Simulator,
                                                   cut: str) -> None:
    """The crt-list is named by its content, so a candidate with another set of tenant
    certificates writes a file of its own in <config>.d. Only the next successful
    reload removed it: after a rejected candidate, or a stop (during the check here),
    it outlived the daemon, beside the config that never named it."""
    from servicerouter.demo.procs import free_port

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    certs = tmp_path / "certs"
    certs.mkdir()
    operator = _pem(tmp_path, "operator", "/CN=corp.test", "DNS:*.corp.test")
    flag = tmp_path / "cut"  # while it exists, haproxy -c refuses (or hangs)
    act = ('echo "[ALERT] (1) : config : refused by the test" >&2; exit 1'
           if cut == "rejected" else "exec sleep 300")
    wrapper = tmp_path / "haproxy-cut"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ] && [ -e {flag} ]; then {act}; fi\n'
                       'exec haproxy "$@"\n')
    wrapper.chmod(0o755)
    folder = Path(f"{(tmp_path / 'haproxy.cfg').resolve()}.d")

    def named() -> set[str]:
        return {Path(p).name for p in re.findall(r"crt-list (\S+)",
                                                 (tmp_path / "haproxy.cfg").read_text())}

    def lists() -> set[str]:
        return {p.name for p in folder.glob("crt-*.list")}

    for i in (1, 2):
        _pem(certs, f"t{i}", f"/CN=t{i}.corp.test", f"DNS:t{i}.corp.test", "ec")
    simulator.create_app("/team1/web", instances=0, labels={
        "HAPROXY_0_VHOST": "t1.corp.test", "HAPROXY_0_SSL_CERT": str(certs / "t1.pem")})
    daemon = Daemon(tmp_path, simulator.url, "--https-port", str(free_port()),
                    "--ssl-certs", str(operator), "--ssl-cert-dir", str(certs),
                    "--haproxy-bin", str(wrapper)).start()
    with running(daemon):
        (served,) = named()
        assert lists() == {served}
        flag.touch()
        simulator.create_app("/team2/web", instances=0, labels={
            "HAPROXY_0_VHOST": "t2.corp.test", "HAPROXY_0_SSL_CERT": str(certs / "t2.pem")})
        if cut == "rejected":  # (test_engine checks the folder while the daemon runs)
            # (Not its crt-list first: written, rejected and removed, it can come and go
            # between two looks.)
            wait_for(lambda: "candidate config rejected by haproxy -c" in _log(daemon), 30,
                     what="the candidate rejected")
        else:  # the check hangs: the candidate's crt-list is there meanwhile
            wait_for(lambda: len(lists()) > 1, 30, what="the candidate's crt-list")
    assert named() == {served}
    assert lists() == {served}


def test_a_certificate_for_many_long_vhosts_is_presented_and_costs_no_one(
        tmp_path: Path, simulator: Simulator) -> None:
    """HAProxy reads 65,535 characters of a crt-list line: a tenant whose line (its
    certificate and its VHOST names) was longer failed haproxy -c, and the alert also
    named the crt-list's line 61, which isolation read as line 61 of the config, another
    tenant's rule on the vhost frontend: on a fresh host that tenant was left out with it,
    until its definition changed. The file now spans as many lines as its names need:
    it is presented for each of them, and nobody is left out."""
    from servicerouter.demo.procs import free_port

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    certs = tmp_path / "certs"
    certs.mkdir()
    operator = _pem(tmp_path, "operator", "/CN=corp.test", "DNS:*.corp.test")
    victims = [f"/team{i:02d}/web" for i in range(60)]
    for i, app_id in enumerate(victims):  # no tasks: what counts is who is left out
        pem = _pem(certs, f"t{i}", f"/CN=t{i}.corp.test", f"DNS:t{i}.corp.test", "ec")
        simulator.create_app(app_id, instances=0, labels={
            "HAPROXY_0_VHOST": f"t{i}.corp.test", "HAPROXY_0_SSL_CERT": str(pem)})
    # Sorting last, its certificate is the crt-list's 61st; 700 long names make its line
    # ~70,000 characters.
    big = _pem(certs, "big", "/CN=big.corp.test", "DNS:big.corp.test,DNS:*.big.corp.test",
               "ec")
    names = [f"h{i}.{'x' * 60}.{'y' * 25}.big.corp.test" for i in range(700)]
    simulator.create_app("/zzz/big", instances=0, labels={  # the certificate's names last
        "HAPROXY_0_VHOST": ",".join([*names, "big.corp.test", "*.big.corp.test"]),
        "HAPROXY_0_SSL_CERT": str(big)})
    https = free_port()
    daemon = Daemon(tmp_path, simulator.url, "--http-port", str(free_port()),
                    "--https-port", str(https), "--ssl-certs", str(operator),
                    "--ssl-cert-dir", str(certs)).start()

    with running(daemon):
        wait_for(lambda: all(service_name(a, simulator.service_port(a)) in
                             daemon.config.read_text() for a in [*victims, "/zzz/big"]), 60,
                 what="every tenant's service in the served config")
        assert _presented(https, names[-1]) == ("big.corp.test", "*.big.corp.test")
        assert _presented(https, names[0]) == ("big.corp.test", "*.big.corp.test")
        assert _presented(https, "t59.corp.test") == ("t59.corp.test",)
        assert not problems(daemon), problems(daemon)
        assert "line too long" not in _log(daemon)


def test_a_certificate_naming_another_tenants_host_is_not_presented_for_it(
        tmp_path: Path, simulator: Simulator) -> None:
    """HAProxy picks the shared HTTPS frontend's certificate by SNI, an exact name
    before the operator's wildcard: /aaa/evil's certificate, which also names
    victim.corp.test, was presented to /teamb/web's clients. Then it was kept off the
    shared frontend, but its own port still presented it; now it is presented nowhere
    (victim.corp.test is /teamb's host): victim.corp.test keeps the operator's
    certificate and its tasks, and /aaa/evil is left out and told why."""
    from servicerouter.demo.procs import free_port

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    certs = tmp_path / "certs"
    certs.mkdir()
    operator = _pem(tmp_path, "operator", "/CN=corp.test", "DNS:*.corp.test")
    evil = _pem(certs, "evil", "/CN=evil.corp.test", "DNS:evil.corp.test,DNS:victim.corp.test")
    https = free_port()
    _, victims = simulator.launch("/teamb/web", 1, labels={"HAPROXY_0_VHOST": "victim.corp.test"})
    daemon = Daemon(tmp_path, simulator.url, "--https-port", str(https), "--ssl-certs",
                    str(operator), "--ssl-cert-dir", str(certs)).start()

    with running(daemon):
        wait_for(lambda: _reached_tls(https, "victim.corp.test") == victims, 30,
                 what="victim.corp.test served over the HTTPS frontend")
        evil_port, _ = simulator.launch("/aaa/evil", 1, labels={
            "HAPROXY_0_VHOST": "evil.corp.test", "HAPROXY_0_SSL_CERT": str(evil)})
        (problem,) = wait_for(lambda: problems(daemon).get("/aaa/evil"), 30,
                              what="/aaa/evil's problem")
        assert (problem["reason"], problem["label"]) == ("ssl_cert", "HAPROXY_0_SSL_CERT")
        assert "is a certificate for victim.corp.test, which belongs to group /teamb " \
            "(app /teamb/web claimed it first)" in problem["error"]
        new_app_is_routed(simulator, daemon, "/teamc/new")
        text = daemon.config.read_text()
        assert str(evil) not in text and f":{evil_port}" not in text
        assert _presented(https, "victim.corp.test") == ("corp.test", "*.corp.test")
        assert _reached_tls(https, "victim.corp.test") == simulator.running("/teamb/web")


def test_a_copy_of_another_tenants_certificate_is_presented_on_no_port(
        tmp_path: Path, simulator: Simulator) -> None:
    """On its own port any file under --ssl-cert-dir was presented: /teamb's copy of
    shop.corp.test's certificate (the file of an earlier rotation), or a wildcard over
    it, completed TLS for https://shop.corp.test:<its port>/ without a warning, and the
    browser sent shop.corp.test's cookies to /teamb's tasks. A certificate's names are
    now hosts its service claims, first come: /teamb is left out and told why, /teama
    keeps its host and certificate (across a restart, though /teamb's definitions are
    older then), and a new app of another tenant is routed meanwhile."""
    from servicerouter.demo.procs import free_port

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    certs = tmp_path / "certs"
    certs.mkdir()
    shop = _pem(certs, "shop", "/CN=shop.corp.test", "DNS:shop.corp.test", "ec")
    (certs / "shop-2025.pem").write_bytes(shop.read_bytes())  # left by a rotation
    wild = _pem(certs, "wild", "/CN=corp.test", "DNS:*.corp.test", "ec")
    https = free_port()

    def daemon() -> Daemon:
        return Daemon(tmp_path, simulator.url, "--https-port", str(https),
                      "--ssl-cert-dir", str(certs))

    def owner_served(d: Daemon) -> None:
        wait_for(lambda: _presented(owner_port, "shop.corp.test") == ("shop.corp.test",)
                 and _reached_tls(owner_port, "shop.corp.test") == simulator.running("/teama/web")
                 and _reached_tls(https, "shop.corp.test") == simulator.running("/teama/web"), 30,
                 what="/teama/web served with its certificate, on its port and by SNI")
        assert _presented(https, "shop.corp.test") == ("shop.corp.test",)

    def thieves_left_out(d: Daemon) -> None:
        found = wait_for(lambda: (p := problems(d)) and {"/teamb/copy", "/teamb/wild"}
                         <= set(p) and p, 30, what="both of /teamb's services refused")
        (copy,) = found["/teamb/copy"]
        assert (copy["reason"], copy["label"], copy["value"]) == (
            "ssl_cert", "HAPROXY_0_SSL_CERT", str(certs / "shop-2025.pem"))
        assert "is a certificate for shop.corp.test, which belongs to group /teama " \
            "(app /teama/web claimed it first)" in copy["error"]
        (wildcard,) = found["/teamb/wild"]
        assert wildcard["reason"] == "ssl_cert"
        assert "is a certificate for *.corp.test, which covers host shop.corp.test of " \
            "group /teama" in wildcard["error"]
        assert scrape(d, "servicerouter_services_excluded")['reason="ssl_cert"'] == 2
        text = d.config.read_text()
        for port in (copy_port, wild_port):
            assert f":{port}" not in text
            assert _presented(port, "shop.corp.test") is None

    owner_port, _ = simulator.launch("/teama/web", 1, labels={
        "HAPROXY_0_VHOST": "shop.corp.test", "HAPROXY_0_SSL_CERT": str(shop)})
    first = daemon().start()
    with running(first):
        owner_served(first)
        copy_port, _ = simulator.launch("/teamb/copy", 1, labels={
            "HAPROXY_0_SSL_CERT": str(certs / "shop-2025.pem")})
        wild_port, _ = simulator.launch("/teamb/wild", 1, labels={
            "HAPROXY_0_SSL_CERT": str(wild)})
        thieves_left_out(first)
        assert "app /teamb/copy: HAPROXY_0_SSL_CERT=" in _log(first)
        new_app_is_routed(simulator, first, "/teamc/new")
        owner_served(first)
        simulator.scale("/teama/web", 2)  # a deploy: /teamb's definitions are older now
        simulator.wait_running("/teama/web", 2)
        owner_served(first)
    second = daemon().start()  # claims from the owners kept beside the config
    with running(second):
        owner_served(second)
        thieves_left_out(second)
        serving(simulator, "/teamc/new", simulator.service_port("/teamc/new"))


def test_an_app_created_with_a_routed_groups_id_takes_neither_its_traffic_nor_its_host(
        tmp_path: Path, simulator: Simulator) -> None:
    """At the root, group web (zdd.py's /web-blue) served shop.test; another tenant
    creating /web left the group out and, with the group's owner key, took shop.test.
    First come now: /web is left out, through a deploy of the pair and a restart (the
    pair's definition then newer than /web's: the owners file says who held the id)."""
    from servicerouter.demo.procs import free_port

    http_port = free_port()
    group = {"HAPROXY_0_VHOST": "shop.test", "HAPROXY_DEPLOYMENT_GROUP": "web"}

    def daemon() -> Daemon:
        return Daemon(tmp_path, simulator.url, "--http-port", str(http_port))

    def group_routed() -> bool:
        return _reaches_only(http_port, "shop.test", simulator, "/web-blue")

    def left_out(d: Daemon) -> dict[str, Any]:
        (p,) = wait_for(lambda: problems(d).get("/web"), 30, what="/web left out in /status")
        assert (p["reason"], p["label"]) == ("deployment_group", "id")
        assert "deployment group web (/web-blue)" in p["error"], p
        return p

    first = daemon().start()
    with running(first):
        simulator.launch("/web-blue", 1, labels=group)
        wait_for(group_routed, 30, what="shop.test routed to group web")
        _, other = simulator.launch("/web", 1, labels={"HAPROXY_0_VHOST": "shop.test"})
        left_out(first)
        new_app_is_routed(simulator, first, "/newcomer")  # a reload since /web came
        assert group_routed() and not _reached(http_port, "shop.test") & other
        _relabel(simulator, "/web-blue", {**group, "HAPROXY_DEPLOYMENT_COLOUR": "blue"})
        wait_for(lambda: simulator.app("/web-blue")["labels"].get("HAPROXY_DEPLOYMENT_COLOUR"),
                 30, what="the pair's new definition")
        wait_for(group_routed, 30, what="shop.test routed to the redeployed group")
        left_out(first)
    second = daemon().start()
    with running(second):
        left_out(second)
        wait_for(group_routed, 30, what="shop.test routed to group web after the restart")
        assert "/web-blue" not in problems(second)
