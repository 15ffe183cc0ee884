"""Admission: values checked against what they do on this host, and who owns a host name."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servicerouter import certnames, hostfacts
from servicerouter.admission import CertFact, Facts, top_group
from servicerouter.layout import Settings, build_layout
from servicerouter.marathon.parse import parse_app
from servicerouter.model import App, Health, Options, Problem, Service, Task
from servicerouter.owners import Owners
from servicerouter.state import ClusterState

from .payloads import LOADABLE_PEM as PEM
from .payloads import UNLOADABLE_PEM

# Only a certificate's markers: its names cannot be read.
UNREADABLE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" \
             "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def app(app_id: str, port: int, version: str = "2026-01-01", tasks: int = 1,
        task_port: int = 31000, **opts: object) -> App:
    options = Options(**opts)  # type: ignore[arg-type]
    return App(id=app_id, version=version, services=(Service(app_id, 0, port, options),),
               tasks=tuple(Task(f"{app_id.strip('/')}.{i:04d}", app_id, "10.0.0.1",
                                (task_port + i,), "TASK_RUNNING") for i in range(tasks)))


def reasons(s: ClusterState, app_id: str) -> list[str]:
    return [p.reason for p in s.problems.get(app_id, ())]


def test_top_group() -> None:
    assert top_group("/shop/web/api") == "/shop"
    assert top_group("/web") == "/web"


def test_vhost_belongs_to_the_group_of_its_first_claimer_shared_by_path() -> None:
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(app("/teama/web", 10001, vhosts=("shop.example.com",)))
    # Same top-level group, another path: shares the host.
    s.set_app(app("/teama/api", 10002, vhosts=("shop.example.com",), paths=("/api",)))
    # Another group, even with an id that sorts first and with PATH=/: refused.
    s.set_app(app("/aaa/thief", 10003, vhosts=("shop.example.com",), paths=("/",)))
    assert set(s.desired) == {"teama_web_10001", "teama_api_10002"}
    (problem,) = s.problems["/aaa/thief"]
    assert problem.reason == "vhost_taken" and problem.label == "HAPROXY_0_VHOST"
    assert "group /teama (app /teama/web claimed it first)" in problem.message
    # Kept across a full sync where the thief comes first and is older.
    s.replace_all([app("/aaa/thief", 10003, version="2000-01-01", vhosts=("shop.example.com",)),
                   app("/teama/web", 10001, vhosts=("shop.example.com",)),
                   app("/teama/api", 10002, vhosts=("shop.example.com",), paths=("/api",))])
    assert "aaa_thief_10003" not in s.desired
    # The same host and path twice, even within the group: the second is refused.
    s.set_app(app("/teama/copy", 10004, vhosts=("shop.example.com",), paths=("/api",)))
    assert reasons(s, "/teama/copy") == ["vhost_taken"]
    # When the group lets go of the host, the waiting app gets it.
    s.remove_app("/teama/api")
    s.remove_app("/teama/copy")
    dirty = s.remove_app("/teama/web")
    assert "aaa_thief_10003" in dirty and "aaa_thief_10003" in s.desired
    assert s.problems == {}


def test_first_claim_among_new_apps_is_the_oldest_definition() -> None:
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.replace_all([app("/a/new", 10001, version="2026-02-01", vhosts=("x.example.com",)),
                   app("/b/old", 10002, version="2025-01-01", vhosts=("x.example.com",))])
    assert set(s.desired) == {"b_old_10002"}


def test_a_wildcard_never_overlaps_another_owners_host() -> None:
    """The vhost frontends try a wildcard route before an exact one when its weight,
    path or name sorts first: a wildcard over another group's host would take its
    traffic. Whoever claimed first keeps it, in both directions."""
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(app("/teama/web", 10001, vhosts=("shop.corp.example.org",)))
    s.set_app(app("/aaa/thief", 10002, vhosts=("*.corp.example.org",), backend_weight=100))
    s.set_app(app("/bbb/wide", 10003, vhosts=("*.example.org",)))
    assert set(s.desired) == {"teama_web_10001"}
    (p,) = s.problems["/aaa/thief"]
    assert (p.reason, p.label, p.value) == ("vhost_taken", "HAPROXY_0_VHOST", "*.corp.example.org")
    assert "covers host shop.corp.example.org of group /teama (app /teama/web claimed it " \
           "first)" in p.message
    assert reasons(s, "/bbb/wide") == ["vhost_taken"]
    # Its own group may add a wildcard over it; then another group's host under it waits.
    s.set_app(app("/teama/all", 10004, vhosts=("*.shop.corp.example.org",)))
    s.set_app(app("/ccc/sub", 10005, vhosts=("a.shop.corp.example.org",)))
    assert "teama_all_10004" in s.desired and "ccc_sub_10005" not in s.desired
    assert "is under host *.shop.corp.example.org of group /teama" in \
           s.problems["/ccc/sub"][0].message
    # When the owner lets go, the waiting claims are looked at again.
    s.remove_app("/teama/all")
    assert "ccc_sub_10005" in s.desired
    s.remove_app("/ccc/sub")
    dirty = s.remove_app("/teama/web")
    assert "aaa_thief_10002" in dirty and set(s.desired) == {"aaa_thief_10002"}
    # A full sync keeps it so (the older definition does not win over a held host).
    s.replace_all([app("/aaa/thief", 10002, vhosts=("*.corp.example.org",)),
                   app("/zzz/old", 10006, version="2000-01-01", vhosts=("x.corp.example.org",))])
    assert set(s.desired) == {"aaa_thief_10002"}


@pytest.mark.parametrize(("policy", "refused"), [("group", True), ("exclusive", True),
                                                  ("open", False)])
@pytest.mark.parametrize("wildcard", ["*.com", "*.co.uk", "*.github.io", "*.mesos"])
def test_a_wildcard_over_a_public_suffix_is_refused(policy: str, refused: bool,
                                                    wildcard: str) -> None:
    # *.co.uk claimed every other tenant's shop.co.uk: the first to name it squatted a
    # namespace anyone may register under, as *.com would.
    s = ClusterState(Settings(http_port=0, https_port=0, vhost_policy=policy))
    s.set_app(app("/a/tld", 10001, vhosts=("ok.example.com", wildcard)))
    s.set_app(app("/b/shop", 10002, vhosts=("shop." + wildcard[2:],)))
    assert ("a_tld_10001" not in s.desired) is refused
    if refused:
        (p,) = s.problems["/a/tld"]
        assert (p.reason, p.label) == ("label_refused", "HAPROXY_0_VHOST")
        assert f"{wildcard}, a wildcard over a public suffix ({wildcard[2:]}" in p.message
        assert "b_shop_10002" in s.desired  # the other tenant's host under it is served


@pytest.mark.parametrize("wildcard", ["*.example.com", "*.example.co.uk", "*.marathon.mesos",
                                      "*.shop.github.io"])
def test_a_wildcard_over_a_registrable_domain_is_claimed(wildcard: str) -> None:
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(app("/a/web", 10001, vhosts=(wildcard,)))
    assert "a_web_10001" in s.desired and not s.problems


def test_the_owners_kept_on_disk_hold_against_a_wildcard_after_a_restart() -> None:
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(app("/teama/web", 10001, version="2026-02-01", vhosts=("shop.corp.example.org",)))
    restarted = ClusterState(Settings(http_port=0, https_port=0))
    restarted.restore_owners(s.owners())
    restarted.replace_all([
        app("/aaa/thief", 10002, version="2000-01-01", vhosts=("*.corp.example.org",)),
        app("/teama/web", 10001, version="2026-02-01", vhosts=("shop.corp.example.org",))])
    assert set(restarted.desired) == {"teama_web_10001"}


@pytest.mark.parametrize(("policy", "routed"), [
    ("group", {"t_web_10001", "t_api_10002"}),
    ("exclusive", {"t_web_10001"}),
    ("open", {"t_web_10001", "t_api_10002", "u_x_10003"}),
])
def test_vhost_policies(policy: str, routed: set[str]) -> None:
    s = ClusterState(Settings(http_port=0, https_port=0, vhost_policy=policy))
    s.set_app(app("/t/web", 10001, vhosts=("h.example.com",)))
    s.set_app(app("/t/api", 10002, vhosts=("h.example.com",), paths=("/api",)))
    s.set_app(app("/u/x", 10003, vhosts=("h.example.com",), paths=("/x",)))
    assert set(s.desired) == routed


def test_daemon_ports_and_bad_task_ports_and_addresses_leave_out_one_service() -> None:
    s = ClusterState(Settings(stats_port=0, http_port=0, https_port=0,
                              reserved_ports=(9091,)))
    s.set_facts(Facts(addresses={"192.0.2.77": False, "127.0.0.1": True}))
    s.set_app(app("/own", 9091))
    s.set_app(app("/zero", 10001, task_port=0))
    s.set_app(app("/big", 10002, task_port=70000))
    s.set_app(app("/addr", 10003, bind_address="192.0.2.77"))
    s.set_app(app("/fine", 10004, bind_address="127.0.0.1"))
    assert set(s.desired) == {"fine_10004"}
    assert reasons(s, "/own") == ["port_reserved"]
    assert reasons(s, "/zero") == ["task_port"] == reasons(s, "/big")
    (p,) = s.problems["/addr"]
    assert str(p) == ("app /addr: HAPROXY_0_BIND_ADDR='192.0.2.77' is not an address of this "
                      "host; service left out, others applied")


def checked_app(app_id: str, port: int, *task_ports: tuple[int, ...],
                network: dict[str, object] | None = None) -> App:
    """An app whose port index 0 is health-checked on each task's port index 1 (a TCP
    check, as an audit's tenant wrote it), parsed as Marathon sends it."""
    raw: dict[str, object] = {
        "id": app_id, "portDefinitions": [{"port": port}, {"port": port + 1}],
        "labels": {"HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1",
                   "HAPROXY_1_ENABLED": "false"},
        "healthChecks": [{"protocol": "TCP", "portIndex": 0}],
        "tasks": [{"id": f"t{i}", "host": "127.0.0.1", "ports": list(ports),
                   "ipAddresses": [{"ipAddress": "10.0.0.5"}], "state": "TASK_RUNNING",
                   "healthCheckResults": [{"alive": True}]}
                  for i, ports in enumerate(task_ports)]}
    if network:
        del raw["portDefinitions"]
        raw.update(network)
    parsed, _ = parse_app(raw, lambda host: host)
    return parsed


@pytest.mark.parametrize("bad", [70000, 65536, -5, 99999999999])
def test_a_health_checked_task_port_outside_1_65535_leaves_out_that_service(bad: int) -> None:
    """HAProxy wraps `port 70000` in a config (to 4464) without a word, and check-port
    at runtime refuses it: the daemon's apply step raised for every app's batch."""
    s = ClusterState(Settings(stats_port=0, http_port=0, https_port=0))
    s.set_app(checked_app("/evil/a", 10000, (20002, bad)))
    s.set_app(checked_app("/good/b", 10010, (20012, 20013)))
    assert set(s.desired) == {"good_b_10010"}
    assert s.desired["good_b_10010"].endpoints[0].check_port == 20013
    (p,) = s.problems["/evil/a"]
    assert (p.reason, p.index, p.label, p.value) == ("task_port", 0, "tasks[t0].ports[1]",
                                                    str(bad))
    assert str(p) == (f"app /evil/a: tasks[t0].ports[1]='{bad}' is not a port HAProxy can "
                      "connect to (1-65535), and HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX=1 "
                      "health-checks it; service left out, others applied")


def test_a_task_event_with_a_bad_health_checked_port_is_judged_like_a_full_sync() -> None:
    """The event path edits endpoints without admission (state._retask): a task whose
    health-checked port is outside 1-65535 must take it through admission all the same,
    and the service comes back when that task is gone."""
    s = ClusterState(Settings(stats_port=0, http_port=0, https_port=0))
    s.set_app(checked_app("/evil/a", 10000, (20002, 20003)))
    assert {e.check_port for e in s.desired["evil_a_10000"].endpoints} == {20003}
    bad = Task("e2", "/evil/a", "127.0.0.1", (20004, 70000), "TASK_RUNNING", Health.HEALTHY)
    assert s.update_task(bad) == {"evil_a_10000"}
    assert s.desired == {} and reasons(s, "/evil/a") == ["task_port"]
    assert s.problems["/evil/a"][0].label == "tasks[e2].ports[1]"
    assert s.remove_task("/evil/a", "e2") == {"evil_a_10000"}
    assert set(s.desired) == {"evil_a_10000"} and "/evil/a" not in s.problems


@pytest.mark.parametrize("bad", [70000, -5])
def test_an_ip_per_task_health_checked_container_port_outside_1_65535_is_refused(
        bad: int) -> None:
    """IP-per-task: the health-checked port is the container port at the index, the same
    for every task, written into each server line of the config (`port 70000`)."""
    def network(port: int, container_port: int) -> dict[str, object]:
        return {"networks": [{"mode": "container", "name": "dcos"}],
                "container": {"type": "MESOS", "portMappings": [
                    {"containerPort": 8080, "servicePort": port},
                    {"containerPort": container_port, "servicePort": port + 1}]}}

    s = ClusterState(Settings(stats_port=0, http_port=0, https_port=0))
    s.set_app(checked_app("/evil/c", 10300, network=network(10300, bad)))  # no task needed
    s.set_app(checked_app("/good/d", 10310, (), network=network(10310, 9090)))
    assert set(s.desired) == {"good_d_10310"}
    (good,) = s.desired["good_d_10310"].endpoints
    assert (good.ip, good.port, s.desired["good_d_10310"].service.options.health_check_port) \
        == ("10.0.0.5", 8080, 9090)
    (p,) = s.problems["/evil/c"]
    assert (p.reason, p.label, p.value) == ("task_port", "container port index 1", str(bad))
    assert "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX=1 health-checks it" in p.message


def test_certificates_only_from_allowed_folders(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "certs", tmp_path / "elsewhere"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "good.pem").write_text(PEM)
    (allowed / "nokey.pem").write_text(PEM.split("-----BEGIN PRIVATE")[0])
    (outside / "secret.pem").write_text(PEM)
    os.symlink(outside / "secret.pem", allowed / "escape.pem")
    os.symlink(allowed / "good.pem", allowed / "alias.pem")
    (allowed / "dir.pem").mkdir()
    (tmp_path / "listed.pem").write_text(PEM)

    def check(path: Path) -> CertFact:
        return hostfacts.check_cert(str(path), [str(allowed)], [str(tmp_path / "listed.pem")])

    assert check(allowed / "good.pem").path == str(allowed / "good.pem")
    assert check(allowed / "alias.pem") == check(allowed / "good.pem")
    assert check(tmp_path / "listed.pem").path == str(tmp_path / "listed.pem")
    assert check(tmp_path / "listed.pem").shared and not check(allowed / "good.pem").shared
    problems = {name: check(p).problem for name, p in [
        ("outside", outside / "secret.pem"), ("escape", allowed / "escape.pem"),
        ("missing", allowed / "missing.pem"), ("dir", allowed / "dir.pem"),
        ("nokey", allowed / "nokey.pem"), ("shadow", Path("/etc/shadow"))]}
    assert "not under an allowed certificate folder" in str(problems["outside"])
    assert "outside the allowed certificate folders" in str(problems["escape"])
    assert "cannot be opened" in str(problems["missing"])
    assert "not a regular file" in str(problems["dir"])
    assert "certificate and a private key" in str(problems["nokey"])
    assert "not under an allowed certificate folder" in str(problems["shadow"])


def test_refused_certificate_leaves_out_the_service_and_a_good_one_is_resolved(
        tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_text(PEM)
    os.symlink(tmp_path / "a.pem", tmp_path / "link.pem")
    settings = Settings(http_port=0, https_port=0, ssl_cert_dirs=(str(tmp_path),))
    apps = [app("/tls", 10001, ssl_cert=str(tmp_path / "link.pem")),
            app("/bad", 10002, ssl_cert="/etc/shadow")]
    s = ClusterState(settings)
    s.set_facts(hostfacts.gather(apps, settings))
    s.replace_all(apps)
    assert s.desired["tls_10001"].service.options.ssl_cert == str(tmp_path / "a.pem")
    assert reasons(s, "/bad") == ["ssl_cert"]


def test_more_tasks_than_the_cap_route_the_first_by_task_id() -> None:
    settings = Settings(http_port=0, https_port=0, max_servers_per_backend=4)
    s = ClusterState(settings)
    big = app("/big", 10001, tasks=10)
    s.set_app(App(big.id, big.version, services=big.services, tasks=big.tasks[::-1]))
    d = s.desired["big_10001"]
    assert sorted(e.task_id for e in d.endpoints) == [f"big.{i:04d}" for i in range(4)]
    (p,) = s.problems["/big"]
    assert (p.reason, p.value) == ("too_many_servers", "10")
    layout, _ = build_layout(s.desired, {}, settings)
    assert layout["big_10001"].slots == 4  # no free slots past the cap


def test_excluded_service_comes_back_only_when_its_definition_changes() -> None:
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(app("/x", 10001, tasks=2))
    problem = Problem("/x", 0, "haproxy_rejected", "HAPROXY_0_*", "", "rejected")
    assert s.exclude("x_10001", problem) == {"x_10001"}
    assert s.desired == {}
    s.update_task(Task("x.9999", "/x", "10.0.0.2", (31999,), "TASK_RUNNING"))  # churn only
    assert s.desired == {} and reasons(s, "/x") == ["haproxy_rejected"]
    s.set_app(app("/x", 10001, tasks=2, balance="leastconn"))  # a new definition
    assert set(s.desired) == {"x_10001"} and s.problems == {}


def test_bind_checks_at_the_edge() -> None:
    import socket

    assert hostfacts.host_has_address("127.0.0.1")
    assert not hostfacts.host_has_address("192.0.2.77")  # TEST-NET-1: no host has it
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert "cannot be bound" in str(hostfacts.bind_problem("127.0.0.1", port))
        assert "cannot be bound" in str(hostfacts.bind_problem("*", port))
    with socket.socket() as reuse:  # how HAProxy listens: a port it holds passes
        reuse.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reuse.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reuse.bind(("127.0.0.1", 0))
        reuse.listen()
        assert hostfacts.bind_problem("127.0.0.1", reuse.getsockname()[1]) is None
    assert "cannot be bound" in str(hostfacts.bind_problem("192.0.2.77", 10001))


@pytest.mark.parametrize("key", [
    "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE\n-----END ENCRYPTED PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\n"
    "MIIE\n-----END RSA PRIVATE KEY-----\n"])
def test_a_certificate_with_an_encrypted_key_is_refused(tmp_path: Path, key: str) -> None:
    """With a terminal, HAProxy asks for the passphrase there: haproxy -c hangs until its
    timeout, every check of the bisection too, and every reload with it."""
    pem = tmp_path / "enc.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" + key)
    fact = hostfacts.check_cert(str(pem), [str(tmp_path)], [])
    assert fact.path is None and "encrypted private key" in str(fact.problem)



def _openssl_pem(tmp_path: Path, name: str, *args: str) -> tuple[bytes, bytes]:
    """(certificate, key) PEM blocks of a new self-signed certificate."""
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "1", "-subj",
                    "/CN=shop.example.com", *args, "-keyout", str(tmp_path / f"{name}.k"),
                    "-out", str(tmp_path / f"{name}.c")],
                   check=True, capture_output=True, timeout=60)
    return (tmp_path / f"{name}.c").read_bytes(), (tmp_path / f"{name}.k").read_bytes()


def test_a_certificate_haproxy_would_refuse_to_load_is_refused(tmp_path: Path) -> None:
    """A key of another certificate, or an RSA key OpenSSL's default security level
    refuses: ``haproxy -c`` rejected the whole candidate ("inconsistencies between private
    key and certificate", "unable to load SSL certificate into SSL Context"), so every
    tenant's change waited for isolation to find the service."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    cert, key = _openssl_pem(tmp_path, "good", "-newkey", "rsa:2048")
    _, other_key = _openssl_pem(tmp_path, "other", "-newkey", "ec", "-pkeyopt",
                                "ec_paramgen_curve:prime256v1")
    weak = b"".join(_openssl_pem(tmp_path, "weak", "-newkey", "rsa:1024"))
    _, same_type_key = _openssl_pem(tmp_path, "other-rsa", "-newkey", "rsa:2048")
    files = {"good": cert + key, "mismatch": cert + other_key, "weak": weak,
             "key-first": key + cert, "mismatch-rsa": cert + same_type_key}
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)

    def check(name: str) -> CertFact:
        return hostfacts.check_cert(str(tmp_path / f"{name}.pem"), [str(tmp_path)], [])

    assert check("good").path == str(tmp_path / "good.pem")
    assert check("key-first").path == str(tmp_path / "key-first.pem")  # HAProxy takes it
    assert check("mismatch").path is None
    assert check("mismatch").problem == (
        "holds a private key that is not the certificate's: HAProxy refuses the file "
        "(\"inconsistencies between private key and certificate\"); put the certificate's "
        "own key in it")
    assert check("mismatch-rsa").problem == check("mismatch").problem
    assert check("weak").path is None
    assert check("weak").problem == (
        "holds a key or signature OpenSSL's default security level refuses (ee key too "
        "small): HAProxy cannot load it; use an RSA key of at least 2,048 bits, or EC, "
        "signed with SHA-256 or better")
    # The service is left out at admission, with the label and the file.
    settings = Settings(http_port=0, https_port=0, ssl_cert_dirs=(str(tmp_path),))
    apps = [app("/tls/ok", 10001, ssl_cert=str(tmp_path / "good.pem")),
            app("/tls/bad", 10002, ssl_cert=str(tmp_path / "mismatch.pem"))]
    s = ClusterState(settings)
    s.set_facts(hostfacts.gather(apps, settings))
    s.replace_all(apps)
    assert set(s.desired) == {"tls_ok_10001"}
    (p,) = s.problems["/tls/bad"]
    assert (p.reason, p.label, p.value) == ("ssl_cert", "HAPROXY_0_SSL_CERT",
                                            str(tmp_path / "mismatch.pem"))
    assert "not the certificate's" in p.message and "service left out" in p.message


def test_a_file_openssl_cannot_load_is_judged_by_haproxy_once_per_version(
        tmp_path: Path) -> None:
    """A file OpenSSL's loader refuses for another reason than its key was admitted and
    left to haproxy -c, which then refused every candidate, for every tenant. haproxy -c
    itself now judges it alone (HAProxy takes some such files), once per version of the
    file; a file OpenSSL loads costs no process; and when haproxy -c cannot be run, the
    file is refused (fail closed) and asked about again next time."""
    real = shutil.which("haproxy")
    if real is None:
        pytest.skip("haproxy is not on PATH")
    calls = tmp_path / "calls"
    counting = tmp_path / "haproxy"
    counting.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    counting.chmod(0o755)

    def asked() -> int:
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "good.pem").write_text(PEM)
    bad = certs / "bad.pem"
    bad.write_text(UNLOADABLE_PEM)
    settings = Settings(http_port=0, https_port=0, ssl_cert_dirs=(str(certs),),
                        haproxy_bin=str(counting))
    apps = [app("/tls/ok", 10001, ssl_cert=str(certs / "good.pem")),
            app("/tls/bad", 10002, ssl_cert=str(bad))]
    s = ClusterState(settings)
    s.set_facts(hostfacts.gather(apps, settings))
    s.replace_all(apps)
    assert set(s.desired) == {"tls_ok_10001"}
    (p,) = s.problems["/tls/bad"]
    assert (p.reason, p.label, p.value) == ("ssl_cert", "HAPROXY_0_SSL_CERT", str(bad))
    assert p.message == (
        f"is a file HAProxy cannot load (haproxy -c: unable to load certificate from file "
        f"'{bad}'.); it must hold the certificate, its private key and any chain as PEM "
        "blocks HAProxy can read; service left out, others applied")
    assert asked() == 1  # for bad.pem only
    assert s.set_facts(hostfacts.gather(apps, settings)) == set()
    assert asked() == 1  # the same version: not asked again
    bad.write_text(PEM)  # replaced by a good file: loaded by OpenSSL, no process
    assert s.set_facts(hostfacts.gather(apps, settings)) == {"tls_bad_10002"}
    assert set(s.desired) == {"tls_ok_10001", "tls_bad_10002"} and asked() == 1
    # haproxy -c cannot be run: refused, saying so, and not remembered.
    other = certs / "other.pem"
    other.write_text(UNLOADABLE_PEM)
    fact = hostfacts.check_cert(str(other), [str(certs)], [], str(tmp_path / "no-haproxy"))
    assert fact.path is None
    assert str(fact.problem).startswith("cannot be checked: OpenSSL cannot load it (")
    assert str(fact.problem).endswith(
        f"and {tmp_path / 'no-haproxy'} -c cannot run: No such file or directory")
    fact = hostfacts.check_cert(str(other), [str(certs)], [], str(counting))
    assert "is a file HAProxy cannot load" in str(fact.problem) and asked() == 2


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 0100007F:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   2: 0100007F:0016 0100007F:BB1C 01 00000000:00000000 00:00000000 00000000     0
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 0A
   1: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A
"""


@pytest.mark.skipif(sys.byteorder != "little", reason="the sample tables are little-endian")
def test_listeners_read_from_proc_net_tcp() -> None:
    assert hostfacts.listeners(PROC_NET_TCP, 22) == ["0.0.0.0"]  # not the connection
    assert hostfacts.listeners(PROC_NET_TCP, 25) == ["127.0.0.1"]
    assert hostfacts.listeners(PROC_NET_TCP6, 53) == ["::1"]
    assert hostfacts.listeners(PROC_NET_TCP6, 80) == ["127.0.0.1"]  # v4-mapped
    assert hostfacts.listeners(PROC_NET_TCP, 80) == []
    assert hostfacts.overlaps("", "127.0.0.1") and hostfacts.overlaps("10.0.0.1", "::")
    assert not hostfacts.overlaps("10.0.0.1", "127.0.0.1")
    assert hostfacts.overlaps("::ffff:127.0.0.1", "127.0.0.1")  # as listeners() gives it


def _unprivileged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets made from now on may not bind (a daemon without the right to ports below
    1024, where HAProxy has it); sockets made before are left as they are."""
    import socket

    real = socket.socket

    class Unprivileged(real):  # type: ignore[misc,valid-type]
        def bind(self, address: object) -> None:
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket, "socket", Unprivileged)


def test_a_privileged_port_another_process_holds_is_refused_before_the_reload(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon may not bind below 1024 where HAProxy may (the container's setcap):
    a port there that sshd holds would fail HAProxy's reload for every app. It is
    judged from the listening sockets instead."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        _unprivileged(monkeypatch)
        assert "another socket listens on 127.0.0.1 port" in str(
            hostfacts.bind_problem("*", port))
        assert "another socket listens" in str(hostfacts.bind_problem("127.0.0.1", port))
        assert hostfacts.bind_problem("127.0.0.2", port) is None  # another address: free


def test_a_privileged_port_next_to_haproxys_own_socket_is_not_held_by_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An app that moves its bind address (127.0.0.1 -> *) on a privileged port HAProxy
    already listens on: the listener there is HAProxy's own, which its new worker binds
    beside (SO_REUSEPORT), so the move is let through, as the plain bind test lets it
    through for an unprivileged port. Before, the app was left out until a full resync."""
    import socket

    with socket.socket() as haproxys:
        haproxys.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        haproxys.bind(("127.0.0.1", 0))
        haproxys.listen()
        port = haproxys.getsockname()[1]
        _unprivileged(monkeypatch)
        served = {f"127.0.0.1:{port}", "*:10001", f"ipv6@::1:{port}"}
        assert hostfacts.bind_problem("*", port, served) is None
        assert hostfacts.bind_problem("127.0.0.1", port, served) is None
        # HAProxy binds the same port elsewhere only: the socket is another process's.
        assert "another socket listens on 127.0.0.1" in str(
            hostfacts.bind_problem("*", port, {f"127.0.0.2:{port}", f"*:{port + 1}"}))


def test_own_hosts_reads_haproxys_binds_as_proc_net_tcp_shows_them() -> None:
    binds = ["*:80", "10.0.0.1:80", "ipv6@::1:80", "ipv4@127.0.0.2:80", "10.0.0.2:81",
             "/run/haproxy/admin.sock", "ipv6@::ffff:10.0.0.3:80", "fd@3:80", "[::2]:80"]
    assert hostfacts.own_hosts(binds, 80) == {
        "0.0.0.0", "10.0.0.1", "::1", "127.0.0.2", "10.0.0.3", "::2"}
    assert hostfacts.own_hosts(binds, 81) == {"10.0.0.2"}
    assert hostfacts.own_hosts([], 80) == set()


def test_a_replaced_certificate_file_is_judged_again(tmp_path: Path) -> None:
    cert = tmp_path / "a.pem"
    cert.write_text(PEM)
    settings = Settings(http_port=0, https_port=0, ssl_cert_dirs=(str(tmp_path),))
    apps = [app("/tls", 10001, ssl_cert=str(cert))]
    s = ClusterState(settings)
    s.set_facts(hostfacts.gather(apps, settings))
    s.replace_all(apps)
    s.exclude("tls_10001", Problem("/tls", 0, "haproxy_rejected", "backend tls_10001", "x",
                                   "rejected"))
    assert s.desired == {}
    assert s.set_facts(hostfacts.gather(apps, settings)) == set()  # nothing changed
    cert.write_text(PEM + "\n")  # the operator puts a fixed file in place
    assert s.set_facts(hostfacts.gather(apps, settings)) == {"tls_10001"}
    assert set(s.desired) == {"tls_10001"}


def test_two_ports_of_one_app_on_one_host_and_path_keep_the_first() -> None:
    s = ClusterState(Settings(http_port=0, https_port=0))
    opts = Options(vhosts=("h.example.com",))
    s.set_app(App("/t/two", services=(Service("/t/two", 0, 10001, opts),
                                      Service("/t/two", 1, 10002, opts))))
    assert set(s.desired) == {"t_two_10001"}
    (p,) = s.problems["/t/two"]
    assert p.index == 1 and "which t_two_10001 already routes" in p.message


def test_a_certificate_file_belongs_to_the_owner_that_named_it_first() -> None:
    """Another tenant's certificate on one's own port presents the other's name and key
    to clients lured to https://<their host>:<that port>/; their cookies would follow."""
    def cert_app(app_id: str, port: int, cert: str, version: str = "2026-01-01") -> App:
        return app(app_id, port, version=version, ssl_cert=cert)

    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_facts(Facts(certs={"/c/shop.pem": CertFact("/c/shop.pem"),
                             "/c/alias.pem": CertFact("/c/shop.pem"),  # a symlink to it
                             "/c/default.pem": CertFact("/c/default.pem", shared=True)}))
    s.set_app(cert_app("/teama/web", 10001, "/c/shop.pem"))
    s.set_app(cert_app("/teama/api", 10002, "/c/shop.pem"))  # its own group: shared
    s.set_app(cert_app("/aaa/thief", 10003, "/c/alias.pem"))
    s.set_app(cert_app("/bbb/x", 10004, "/c/default.pem"))  # the operator's --ssl-certs
    s.set_app(cert_app("/ccc/y", 10005, "/c/default.pem"))
    assert set(s.desired) == {"teama_web_10001", "teama_api_10002", "bbb_x_10004",
                              "ccc_y_10005"}
    (p,) = s.problems["/aaa/thief"]
    assert (p.reason, p.label, p.value) == ("ssl_cert", "HAPROXY_0_SSL_CERT", "/c/shop.pem")
    assert "is the certificate of group /teama (app /teama/web named it first)" in p.message
    # Kept across a restart, though the thief's definition is older.
    restarted = ClusterState(Settings(http_port=0, https_port=0))
    restarted.restore_owners(Owners.from_json(s.owners().to_json()))
    restarted.set_facts(s.facts)
    restarted.replace_all([cert_app("/aaa/thief", 10003, "/c/alias.pem", "2000-01-01"),
                           cert_app("/teama/web", 10001, "/c/shop.pem")])
    assert set(restarted.desired) == {"teama_web_10001"}
    # When the owner lets go, the waiting app gets it.
    s.remove_app("/teama/web")
    assert "aaa_thief_10003" not in s.desired
    dirty = s.remove_app("/teama/api")
    assert "aaa_thief_10003" in dirty and "aaa_thief_10003" in s.desired


def test_overlapping_owners_kept_from_an_older_version_leave_the_host_to_the_exact_claim(
        ) -> None:
    """An owners file written before wildcards were checked may hold both."""
    kept = Owners(hosts={"shop.corp.example.org": ("/teama", "/teama/web"),
                         "*.corp.example.org": ("/aaa", "/aaa/thief")})
    for thief, owner in (("2000-01-01", "2026-01-01"), ("2026-01-01", "2000-01-01")):
        s = ClusterState(Settings(http_port=0, https_port=0))
        s.restore_owners(kept)
        s.replace_all([app("/aaa/thief", 10002, thief, vhosts=("*.corp.example.org",)),
                       app("/teama/web", 10001, owner, vhosts=("shop.corp.example.org",))])
        assert set(s.desired) == {"teama_web_10001"}
        assert reasons(s, "/aaa/thief") == ["vhost_taken"]


def test_a_certificate_on_the_https_frontend_names_only_its_services_hosts() -> None:
    """HAProxy picks the certificate of the shared HTTPS frontend by SNI, among every
    service's certificates, an exact name before a wildcard and the first loaded among
    equals: a tenant's certificate naming another's host was presented to that host's
    clients (over the operator's wildcard, and over the owner's own certificate)."""
    names = {"/c/evil.pem": ("evil.example.com", "spare.example.com"),
             "/c/wild.pem": ("*.shop.example.com",), "/c/shop.pem": ("shop.example.com",
                                                                    "a.b.shop.example.com"),
             "/c/deep.pem": ("*.b.shop.example.com",)}
    s = ClusterState(Settings(http_port=0, https_port=8443))
    s.set_facts(Facts(certs={
        **{p: CertFact(p, names=n) for p, n in names.items()},
        "/c/op.pem": CertFact("/c/op.pem", shared=True, names=("victim.example.com",))}))
    s.set_app(app("/teamb/web", 10001, vhosts=("victim.example.com",)))
    s.set_app(app("/aaa/evil", 10002, vhosts=("evil.example.com",), ssl_cert="/c/evil.pem"))
    # Its own hosts, exact or under its wildcard vhost: presented for them only.
    s.set_app(app("/shop/web", 10003, vhosts=("shop.example.com", "*.shop.example.com"),
                  ssl_cert="/c/shop.pem"))
    s.set_app(app("/shop/api", 10004, vhosts=("*.shop.example.com",), paths=("/api",),
                  ssl_cert="/c/wild.pem"))
    s.set_app(app("/shop/deep", 10005, vhosts=("*.shop.example.com",), paths=("/deep",),
                  ssl_cert="/c/deep.pem"))
    # A wildcard certificate over one exact vhost would answer for its neighbours too.
    s.set_app(app("/shop/one", 10006, vhosts=("one.shop.example.com",),
                  ssl_cert="/c/wild.pem"))
    # Without vhosts it is only on its own port; the operator's files are anyone's.
    s.set_app(app("/aaa/port", 10007, ssl_cert="/c/evil.pem"))
    s.set_app(app("/aaa/op", 10008, vhosts=("op.example.com",), ssl_cert="/c/op.pem"))
    # Every service is served; a certificate naming more than its service routes is
    # kept off the shared HTTPS frontend only (its own port still presents it).
    assert len(s.desired) == 8
    offered = {n for n, d in s.desired.items() if d.service.options.ssl_cert
               and d.service.options.sni_cert}
    assert offered == {"shop_web_10003", "shop_api_10004", "shop_deep_10005",
                       "aaa_port_10007", "aaa_op_10008"}
    assert s.desired["aaa_evil_10002"].service.options.ssl_cert == "/c/evil.pem"
    (p,) = s.problems["/aaa/evil"]
    assert (p.reason, p.label, p.value) == ("ssl_cert", "HAPROXY_0_SSL_CERT", "/c/evil.pem")
    assert p.message.startswith("is a certificate for spare.example.com, a host "
                                "HAPROXY_0_VHOST (evil.example.com) does not route, so it is "
                                "not offered on the shared HTTPS frontend")
    (p,) = s.problems["/shop/one"]
    assert "is a certificate for *.shop.example.com" in p.message
    # A certificate whose names cannot be read may name anything (another tenant's
    # host): refused on every frontend, its own port too.
    s.set_facts(Facts(certs={**s.facts.certs,
                             "/c/odd.pem": CertFact("/c/odd.pem", names=None)}))
    s.set_app(app("/odd/web", 10009, vhosts=("odd.example.com",), ssl_cert="/c/odd.pem"))
    assert "odd_web_10009" not in s.desired
    (p,) = s.problems["/odd/web"]
    assert (p.reason, p.label) == ("ssl_cert", "HAPROXY_0_SSL_CERT")
    assert "host names (subjectAltName, common name) could not be read" in p.message
    # No shared HTTPS frontend: a certificate is only on its service's own port.
    alone = ClusterState(Settings(http_port=0, https_port=0))
    alone.set_facts(Facts(certs={"/c/evil.pem": CertFact("/c/evil.pem",
                                                         names=names["/c/evil.pem"])}))
    alone.set_app(app("/aaa/evil", 10002, vhosts=("evil.example.com",),
                      ssl_cert="/c/evil.pem"))
    assert set(alone.desired) == {"aaa_evil_10002"} and not alone.problems
    # --vhost-policy open: one tenant, no owners; the file is the operator's choice.
    single = ClusterState(Settings(http_port=0, https_port=8443, vhost_policy="open"))
    single.set_facts(alone.facts)
    single.set_app(app("/aaa/evil", 10002, vhosts=("evil.example.com",),
                       ssl_cert="/c/evil.pem"))
    assert set(single.desired) == {"aaa_evil_10002"} and not single.problems


def _openssl_cert(tmp: Path, subject: str, san: str, mask: str = "utf8only") -> bytes:
    """A self-signed certificate (DER) from the openssl CLI; ``mask``: the string types
    its subject may use (openssl's string_mask; MASK:0x800 is BMPString only)."""
    (tmp / "req.cnf").write_text(f"[req]\ndistinguished_name = dn\nstring_mask = {mask}\n"
                                 "[dn]\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-config", str(tmp / "req.cnf"), "-subj", subject,
                    *(["-addext", f"subjectAltName={san}"] if san else []),
                    "-keyout", str(tmp / "k"), "-outform", "DER", "-out", str(tmp / "c")],
                   check=True, capture_output=True, timeout=60)
    return (tmp / "c").read_bytes()


def _pem(der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    return (b"-----BEGIN CERTIFICATE-----\n"
            + b"\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
            + b"\n-----END CERTIFICATE-----\n")


def test_a_name_is_cut_at_a_nul_and_decoded_by_its_string_type(tmp_path: Path) -> None:
    """HAProxy indexes each name as a C string after OpenSSL's ASN1_STRING_to_UTF8: a
    dNSName ``good.example.com<NUL>.evil.example.com`` is presented for SNI
    good.example.com, however its owner's host is named."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    der = _openssl_cert(tmp_path, "/CN=evil.example.com",
                        "DNS:evil.example.com,DNS:good.example.comX.evil.example.com")
    # The same length, so the DER stays well formed (the signature is not read).
    der = der.replace(b"good.example.comX", b"good.example.com\0")
    assert certnames.cert_names(_pem(der)) == ("evil.example.com", "good.example.com")
    # A common name in a BMPString (UTF-16).
    bmp = _openssl_cert(tmp_path, "/CN=Wide.Example.com", "", "MASK:0x800")
    assert b"\x1e\x20\x00W\x00i" in bmp
    assert certnames.cert_names(_pem(bmp)) == ("wide.example.com",)
    # Only ASCII is lowercased, as HAProxy does: KELVIN SIGN is not a "k".
    kelvin = _openssl_cert(tmp_path, "/CN=\u212a.example.com", "", "utf8only")
    assert certnames.cert_names(_pem(kelvin)) == ()


def test_a_certificates_names_are_read_as_haproxy_reads_them(tmp_path: Path) -> None:
    """subjectAltName DNS names and common names, lowercased (HAProxy indexes both for
    SNI); no IP addresses, nothing of a file that does not parse."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/O=Acme Ltd/CN=Shop.Example.com", "-addext",
                    "subjectAltName=DNS:*.Shop.example.com,IP:127.0.0.1,DNS:other.example.com",
                    "-keyout", str(tmp_path / "k"), "-out", str(tmp_path / "c")],
                   check=True, capture_output=True, timeout=60)
    pem = (tmp_path / "c").read_bytes() + (tmp_path / "k").read_bytes()
    assert certnames.cert_names(pem) == ("shop.example.com", "*.shop.example.com",
                                         "other.example.com")
    (tmp_path / "a.pem").write_bytes(pem)
    fact = hostfacts.check_cert(str(tmp_path / "a.pem"), [str(tmp_path)], [])
    assert fact.names == ("shop.example.com", "*.shop.example.com", "other.example.com")
    # A certificate that cannot be read here may name anything: None (fail closed).
    assert certnames.cert_names(UNREADABLE.encode()) is None
    assert certnames.cert_names(UNLOADABLE_PEM.encode()) == ("unloadable.test",)
    assert certnames.cert_names(pem[:200] + b"-----END CERTIFICATE-----") is None
    # OpenSSL (and so HAProxy) takes the first certificate block of the file, whatever
    # its label: a TRUSTED CERTIFICATE first, naming the victim, was skipped for a plain
    # CERTIFICATE after it naming only the tenant's host.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=evil.example.com", "-addext",
                    "subjectAltName=DNS:evil.example.com,DNS:victim.example.com",
                    "-keyout", str(tmp_path / "ek"), "-out", str(tmp_path / "ec")],
                   check=True, capture_output=True, timeout=60)
    trusted = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "ec"), "-trustout"],
                             check=True, capture_output=True, timeout=60).stdout
    assert trusted.startswith(b"-----BEGIN TRUSTED CERTIFICATE-----")
    bundle = trusted + (tmp_path / "c").read_bytes() + (tmp_path / "ek").read_bytes()
    assert certnames.cert_names(bundle) == ("evil.example.com", "victim.example.com")


def test_a_service_left_out_for_its_own_problem_keeps_its_names() -> None:
    # Left out for a value of its own (a typo, a certificate file away in a rotation),
    # a service let go of its port, hosts and certificate file: an app of another group
    # waiting for them took them, and kept them once the owner was fixed.
    certs = {"/certs/shop.pem": CertFact("/certs/shop.pem", names=("shop.example.com",))}
    s = ClusterState(Settings(http_port=80, https_port=443))
    s.set_facts(Facts(certs))

    def shop(version: str, **labels: str) -> App:
        raw = {"id": "/shop/web", "version": version, "portDefinitions": [{"port": 10001}],
               "labels": {"HAPROXY_0_VHOST": "shop.example.com",
                          "HAPROXY_0_SSL_CERT": "/certs/shop.pem", **labels}}
        return parse_app(raw, lambda host: None)[0]

    def thief(app_id: str, port: int, **opts: object) -> App:
        return app(app_id, port, vhosts=("shop.example.com",), **opts)

    s.set_app(shop("1"))
    s.set_app(thief("/evil/host", 10002))
    s.set_app(thief("/evil/port", 10001, version="2", paths=("/x",)))
    s.set_app(app("/evil/cert", 10003, ssl_cert="/certs/shop.pem"))
    assert set(s.desired) == {"shop_web_10001"}
    waiting = {a: reasons(s, a) for a in ("/evil/host", "/evil/port", "/evil/cert")}
    assert waiting == {"/evil/host": ["vhost_taken"], "/evil/port": ["port_taken"],
                       "/evil/cert": ["ssl_cert"]}
    s.set_app(shop("2", HAPROXY_0_BALANCE="roundrobinn"))  # the owner's typo
    assert set(s.desired) == set() and reasons(s, "/shop/web") == ["label_invalid"]
    assert {a: reasons(s, a) for a in waiting} == waiting
    s.set_facts(Facts({"/certs/shop.pem": CertFact(None, "cannot be opened")}))  # rotation
    s.set_app(shop("3"))
    assert set(s.desired) == set() and reasons(s, "/shop/web") == ["ssl_cert"]
    assert {a: reasons(s, a) for a in waiting} == waiting
    s.set_facts(Facts(certs))  # the new file is in place
    assert set(s.desired) == {"shop_web_10001"} and "/shop/web" not in s.problems
    # Letting go on purpose still hands them over.
    s.set_app(parse_app({"id": "/shop/web", "version": "4", "portDefinitions": [
        {"port": 10009}]}, lambda host: None)[0])
    assert set(s.desired) == {"shop_web_10009", "evil_host_10002", "evil_port_10001",
                              "evil_cert_10003"}
    assert not s.problems


def test_a_certificates_names_are_hosts_its_service_claims_on_every_frontend() -> None:
    """On its own port, any file under --ssl-cert-dir was presented: a copy of another
    tenant's certificate (or one covering its host by a wildcard) lured that host's
    clients to https://shop.example.com:<the thief's port>/, their cookies with them.
    Presenting a certificate now claims its names as hosts, first come, as a VHOST."""
    names = {"/c/shop.pem": ("shop.example.com",), "/c/copy.pem": ("shop.example.com",),
             "/c/old.pem": ("shop.example.com",), "/c/wild.pem": ("*.example.com",),
             "/c/many.pem": ("api.teamb.org", "www.teamb.org", "shop.example.com"),
             "/c/db.pem": ("db.example.net",), "/c/tld.pem": ("ok.example.org", "*.co.uk"),
             "/c/huge.pem": tuple(f"h{i}.example.org" for i in range(1001))}
    facts = Facts(certs={**{p: CertFact(p, names=n) for p, n in names.items()},
                         "/c/op.pem": CertFact("/c/op.pem", shared=True,
                                               names=("shop.example.com",))})
    apps = [app("/teama/web", 10001, "2026-01-01", vhosts=("shop.example.com",),
                ssl_cert="/c/shop.pem"),
            app("/teama/api", 10002, "2026-01-02", ssl_cert="/c/copy.pem"),  # its own tenant
            app("/teamb/old", 10003, "2026-01-03", ssl_cert="/c/old.pem"),  # a copy of it
            app("/teamb/wild", 10004, "2026-01-04", ssl_cert="/c/wild.pem"),
            app("/teamb/many", 10005, "2026-01-05", ssl_cert="/c/many.pem"),
            app("/teamb/op", 10006, "2026-01-06", ssl_cert="/c/op.pem"),  # --ssl-certs
            # TLS on its own port for its own name, no VHOST: its name is its own.
            app("/teamc/db", 10007, "2026-01-07", ssl_cert="/c/db.pem"),
            app("/teamd/web", 10008, "2026-01-08", vhosts=("db.example.net",)),
            app("/teame/tld", 10009, "2026-01-09", ssl_cert="/c/tld.pem"),
            app("/teame/huge", 10010, "2026-01-10", ssl_cert="/c/huge.pem")]
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_facts(facts)
    for a in apps:
        s.set_app(a)
    assert set(s.desired) == {"teama_web_10001", "teama_api_10002", "teamb_op_10006",
                              "teamc_db_10007"}
    (p,) = s.problems["/teamb/old"]
    assert (p.reason, p.label, p.value) == ("ssl_cert", "HAPROXY_0_SSL_CERT", "/c/old.pem")
    assert p.message == ("is a certificate for shop.example.com, which belongs to group "
                         "/teama (app /teama/web claimed it first): a certificate may name "
                         "only hosts of its own owner; service left out, others applied")
    (p,) = s.problems["/teamb/wild"]
    assert p.reason == "ssl_cert" and p.message.startswith(
        "is a certificate for *.example.com, which covers host shop.example.com of group "
        "/teama (app /teama/web claimed it first)")
    (p,) = s.problems["/teamb/many"]
    assert p.reason == "ssl_cert" and "certificate for shop.example.com, which belongs to " \
        "group /teama" in p.message
    (p,) = s.problems["/teamd/web"]  # the name is /teamc's: it presented it first
    assert (p.reason, p.label) == ("vhost_taken", "HAPROXY_0_VHOST")
    assert "names host db.example.net, which belongs to group /teamc (app /teamc/db " \
        "claimed it first, presenting a certificate for it)" in p.message
    (p,) = s.problems["/teame/tld"]
    assert p.reason == "ssl_cert" and "*.co.uk, a wildcard over a public suffix" in p.message
    (p,) = s.problems["/teame/huge"]
    assert p.reason == "ssl_cert" and "for 1001 host names; at most 1000" in p.message
    # The state a fresh sync of the same apps gives (the oldest definition claims first).
    fresh = ClusterState(Settings(http_port=0, https_port=0))
    fresh.set_facts(facts)
    fresh.replace_all(reversed(apps))
    assert (fresh.desired, fresh.problems) == (s.desired, s.problems)
    # Kept across a restart (owners file), though the newcomer's definition is older.
    restarted = ClusterState(Settings(http_port=0, https_port=0))
    restarted.restore_owners(Owners.from_json(s.owners().to_json()))
    restarted.set_facts(facts)
    restarted.replace_all([app("/teamd/web", 10008, "2000-01-01", vhosts=("db.example.net",)),
                           app("/teamc/db", 10007, "2026-01-07", ssl_cert="/c/db.pem")])
    assert set(restarted.desired) == {"teamc_db_10007"}
    # A rotated file is claimed by its new names: now naming /teama's host, it is refused,
    # and the name it let go is /teamd's; rotated back, the name is /teamd's now.
    rotated = Facts(certs={**facts.certs, "/c/db.pem": CertFact(
        "/c/db.pem", stamp=(1, 1), names=("db.example.net", "shop.example.com"))})
    dirty = s.set_facts(rotated)
    assert "teamc_db_10007" in dirty and "teamd_web_10008" in dirty
    assert "teamc_db_10007" not in s.desired and "teamd_web_10008" in s.desired
    assert s.set_facts(facts) == set()  # still refused: db.example.net is /teamd's
    assert s.problems["/teamc/db"][0].message.startswith(
        "is a certificate for db.example.net, which belongs to group /teamd")
    # When the owner lets go, the apps refused its names have them.
    s.remove_app("/teama/api")
    dirty = s.remove_app("/teama/web")
    assert {"teamb_old_10003", "teamb_wild_10004", "teamb_many_10005"} <= dirty
    assert {"teamb_old_10003", "teamb_wild_10004", "teamb_many_10005"} <= set(s.desired)
    # First come, as for a VHOST: a certificate presented first keeps its names from a
    # tenant arriving later, which is told who presents it.
    later = ClusterState(Settings(http_port=0, https_port=0))
    later.set_facts(facts)
    later.set_app(apps[2])
    later.set_app(apps[0])
    assert set(later.desired) == {"teamb_old_10003"}
    assert "(app /teamb/old claimed it first, presenting a certificate for it)" in \
        later.problems["/teama/web"][0].message
    # --vhost-policy open: one tenant, no owners.
    single = ClusterState(Settings(http_port=0, https_port=0, vhost_policy="open"))
    single.set_facts(facts)
    for a in apps[:6]:
        single.set_app(a)
    assert len(single.desired) == 6 and not single.problems


def test_a_certificate_rotated_between_syncs_is_judged_before_haproxy_loads_it(
        tmp_path: Path) -> None:
    """A file's names were read at a full sync (every 5 minutes) or when its app changed:
    a reload meanwhile (any app's) had HAProxy load the rotated file, naming another
    owner's host now, on the service's own port. The guard reads a file changed on disk
    again before each reload."""
    from servicerouter.guard import Guard

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")

    def pem(cn: str) -> bytes:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                        f"/CN={cn}", "-keyout", str(tmp_path / "k"), "-out",
                        str(tmp_path / "c")], check=True, capture_output=True, timeout=60)
        return (tmp_path / "c").read_bytes() + (tmp_path / "k").read_bytes()

    certs = tmp_path / "certs"
    certs.mkdir()
    db = certs / "db.pem"
    db.write_bytes(pem("db.example.net"))
    settings = Settings(http_port=0, https_port=0, ssl_cert_dirs=(str(certs),))
    apps = [app("/teama/web", 10001, vhosts=("shop.example.com",)),
            app("/teamc/db", 10002, ssl_cert=str(db))]
    s = ClusterState(settings)
    s.set_facts(hostfacts.gather(apps, settings))
    s.replace_all(apps)
    guard = Guard(s, None, settings, None)  # type: ignore[arg-type]
    assert set(s.desired) == {"teama_web_10001", "teamc_db_10002"}
    assert asyncio.run(guard.recheck_certs()) == set()  # unchanged: not read again
    db.write_bytes(pem("shop.example.com"))  # rotated to a file for /teama's host
    assert asyncio.run(guard.recheck_certs()) == {"teamc_db_10002"}
    assert set(s.desired) == {"teama_web_10001"}
    (p,) = s.problems["/teamc/db"]
    assert (p.reason, p.value) == ("ssl_cert", str(db))
    assert "is a certificate for shop.example.com, which belongs to group /teama" in p.message
    db.write_bytes(pem("db.example.net"))  # rotated back: nobody else holds it
    assert asyncio.run(guard.recheck_certs()) == set()  # not routed: its next full sync judges it


class _FactsReadWhole(ClusterState):
    """set_facts as it was: every fact copied and compared, every app's services read."""

    def set_facts(self, facts: Facts) -> set[str]:
        old, self.facts = self.facts, self.facts.merged(facts)
        self._ownership.share_certs(
            {f.path for f in self.facts.certs.values() if f.shared and f.path})
        changed_certs = {k for k, v in self.facts.certs.items() if old.certs.get(k) != v}
        changed_addrs = {k for k, v in self.facts.addresses.items()
                         if old.addresses.get(k) != v}
        if not changed_certs and not changed_addrs:
            return set()
        dirty: set[str] = set()
        for a in self._groups.definitions():
            if any(s.options.ssl_cert in changed_certs or s.options.bind_address in changed_addrs
                   for s in a.services):
                for name in [n for n, (svc, _) in self.excluded.items() if svc.app_id == a.id]:
                    del self.excluded[name]
                dirty |= self._refresh(a.id)
        return dirty


def test_new_facts_re_admit_the_apps_naming_them_as_a_pass_over_every_app_did() -> None:
    """set_facts merges in place and finds the apps naming a changed certificate file or
    bind address through the state's index (not a pass over every app): what it returns,
    and the state it leaves (routed services, problems, exclusions, owners, facts, the
    operator's shared files), equal those of the pass over every app, step by step, as
    apps (blue/green members, a live app with a group's id) and facts come and go."""
    import random

    from servicerouter.deployments import GROUP, STARTED_AT

    settings = Settings(http_port=0, https_port=8443)
    certs = ["/c/a.pem", "/c/b.pem", "/c/alias.pem", "/c/op.pem", "/c/odd.pem"]
    hosts = ["a.example.com", "b.example.com", "shop.example.com"]
    ids = ["/t1/web", "/t1/api", "/t2/web", "/t3/x", "/web", "/web-blue", "/web-green",
           "/t1/web-blue", "/t1/web-green"]
    for seed in range(6):
        rng = random.Random(seed)
        new, old = ClusterState(settings), _FactsReadWhole(settings)

        def some_app(app_id: str, rng: random.Random = rng) -> App:
            opts: dict[str, object] = {}
            if rng.random() < 0.7:
                opts["ssl_cert"] = rng.choice(certs)
            if rng.random() < 0.5:
                opts["vhosts"] = (rng.choice(hosts),)
            if rng.random() < 0.3:
                opts["bind_address"] = rng.choice(["127.0.0.1", "192.0.2.7"])
            a = app(app_id, 10000 + rng.randrange(6), f"2026-01-0{rng.randrange(1, 9)}",
                    **opts)
            if "-" in app_id and rng.random() < 0.8:  # a blue/green member
                group = app_id.rsplit("-", 1)[0].lstrip("/")
                a = App(a.id, a.version, {GROUP: group, STARTED_AT: a.version + "T00:00:00"},
                        services=a.services, tasks=a.tasks)
            return a

        def some_facts(rng: random.Random = rng) -> Facts:
            picked = rng.sample(certs, rng.randrange(1, 4))
            return Facts(
                certs={c: CertFact(None, "cannot be opened") if rng.random() < 0.2 else
                       CertFact("/c/a.pem" if c == "/c/alias.pem" else c, None,
                                (rng.randrange(3), 1), c == "/c/op.pem" or rng.random() < 0.1,
                                None if c == "/c/odd.pem" else (rng.choice(hosts),))
                       for c in picked},
                addresses={b: rng.random() < 0.5 for b in
                           rng.sample(["127.0.0.1", "192.0.2.7"], rng.randrange(0, 3))})

        refreshed = 0
        for step in range(250):
            roll = rng.random()
            if roll < 0.35:
                facts = some_facts()
                dirty = new.set_facts(facts)
                assert dirty == old.set_facts(facts), (seed, step)
                refreshed += bool(dirty)
            elif roll < 0.85:
                a = some_app(rng.choice(ids))
                assert new.set_app(a) == old.set_app(a), (seed, step)
            elif roll < 0.95:
                app_id = rng.choice(ids)
                assert new.remove_app(app_id) == old.remove_app(app_id), (seed, step)
            elif new.desired:
                name = rng.choice(sorted(new.desired))
                d = new.desired[name]
                problem = Problem(d.service.app_id, d.service.index, "haproxy_rejected",
                                  f"backend {name}", "x", "rejected")
                assert new.exclude(name, problem) == old.exclude(name, problem)
            assert (new.desired, new.problems, new.excluded) == \
                (old.desired, old.problems, old.excluded), (seed, step)
            assert new.owners() == old.owners(), (seed, step)
            assert (dict(new.facts.certs), dict(new.facts.addresses)) == \
                (dict(old.facts.certs), dict(old.facts.addresses))
            assert new._ownership._shared_certs == old._ownership._shared_certs
        assert refreshed > 10, seed  # facts that changed what was routed


def test_an_app_naming_one_file_and_address_on_two_ports_is_redeployed_and_deleted() -> None:
    """One certificate file (and bind address) for two ports of an app, as its HTTP and
    HTTPS ports have: the index of the apps naming each file and address listed the app
    once per port on the way in and took it out once per port on the way out, so its
    redeploy or removal raised KeyError, and a full sync with either did, for every app."""
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_facts(Facts(certs={"/c/shop.pem": CertFact("/c/shop.pem")},
                      addresses={"127.0.0.1": True}))
    opts = Options(ssl_cert="/c/shop.pem", bind_address="127.0.0.1")
    shop = App("/shop/web", "2026-01-01", services=(
        Service("/shop/web", 0, 10001, opts), Service("/shop/web", 1, 10002, opts)),
        tasks=(Task("shop.1", "/shop/web", "10.0.0.1", (31000, 31001), "TASK_RUNNING"),))
    other = app("/other/x", 10003)
    s.replace_all([shop, other])
    s.replace_all([App(shop.id, "2026-02-01", services=shop.services[:1], tasks=shop.tasks),
                   other])  # a deploy: one port left
    assert set(s.desired) == {"shop_web_10001", "other_x_10003"}
    s.set_app(shop)
    s.replace_all([other])  # deleted
    assert set(s.desired) == {"other_x_10003"}
    assert s.set_facts(Facts(certs={"/c/shop.pem": CertFact("/c/shop.pem", stamp=(1, 1))},
                             addresses={"127.0.0.1": False})) == set()  # no one names them


def test_apps_refused_something_and_deleted_are_not_kept_waiting_for_it() -> None:
    """An app refused a taken port or host stays listed as waiting for it until it is
    let go; deleted, it stayed listed too, one more id per such app (a CI build naming
    a team's host) for as long as the owner keeps it. A full sync forgets the apps
    gone; the ones still in Marathon get what they wait for when it is let go."""
    s = ClusterState(Settings(http_port=0, https_port=0))
    owner = app("/teama/web", 10001, vhosts=("shop.example.com",))
    s.set_app(owner)
    for k in range(50):
        s.set_app(app(f"/ci/port{k}", 10001))  # the port is taken
        s.set_app(app(f"/ci/host{k}", 11000 + k, vhosts=("shop.example.com",)))
        s.remove_app(f"/ci/port{k}")
        s.remove_app(f"/ci/host{k}")
    waiting = app("/teamb/web", 12000, vhosts=("shop.example.com",))
    s.replace_all([owner, waiting])

    def waiters() -> set[str]:
        o = s._ownership
        return {a for held in (o._waiting, o._hosts.waiting, o._certs.waiting)
                for apps in held.values() for a in apps}

    assert waiters() == {"/teamb/web"}
    assert reasons(s, "/teamb/web") == ["vhost_taken"]
    s.replace_all([waiting])  # the owner is deleted: the one waiting gets the host
    assert set(s.desired) == {"teamb_web_12000"} and not s.problems


def test_a_wildcard_finds_the_first_host_of_another_owner_under_it_as_before() -> None:
    """HostClaims keeps the held hosts under each domain by owner, so that a wildcard's
    claim looks at the other owners' hosts only: the host it answers (to wait on, and
    to name in the problem) is the first of the sorted hosts under it that another
    owner holds, as the pass over all of them answered; and the index is every held
    host under each domain, as apps of several groups claim and let go."""
    import random

    from servicerouter.admission import covering_wildcards, domains_above

    hosts = ["a.shop.test", "b.shop.test", "x.a.shop.test", "*.a.shop.test", "*.shop.test",
             "c.other.test", "*.other.test", "shop.test", "*.test", "d.shop.test"]
    rng = random.Random(5)
    s = ClusterState(Settings(http_port=0, https_port=0))
    claims = s._ownership._hosts
    ids = [f"/{g}/app{i}" for g in ("shop", "other", "evil") for i in range(4)]
    for step in range(400):
        app_id = rng.choice(ids)
        if rng.random() < 0.2:
            s.remove_app(app_id)
        else:
            s.set_app(app(app_id, 10000 + ids.index(app_id), f"2026-01-{1 + step % 28:02d}",
                          vhosts=tuple(rng.sample(hosts, rng.randrange(1, 3)))))
        held = {h for h, holders in claims.holders.items() if holders}
        assert {d: {h for by in keyed.values() for h in by}
                for d, keyed in claims.under.items()} == \
            {d: {h for h in held if d in domains_above(h)}
             for d in {d for h in held for d in domains_above(h)}}
        for probe in hosts:
            for key in ("/shop", "/other", "/evil", None):
                others = covering_wildcards(probe) + (
                    sorted(h for by in claims.under.get(probe[2:], {}).values() for h in by)
                    if probe.startswith("*.") else [])
                first = next(((o, claims.owner[o]) for o in others
                              if o in claims.owner and claims.owner[o][0] != key
                              and claims.holders.get(o)), None)
                assert claims._overlap(probe, key) == first, (step, probe, key)
