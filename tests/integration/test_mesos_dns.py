"""Mesos-DNS mode end to end: ``render --mesos-dns`` against the simulator, a real
DNS server on loopback (dnslib) answering the app's SRV record, and the real
HAProxy following the record by itself while requests keep flowing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servicerouter.demo.procs import Proc, free_port

from .conftest import needs_haproxy
from .harness import TLS, Simulator, running, wait_for, wait_routed

dnslib = pytest.importorskip("dnslib", reason="pip install -e '.[test]'")
from dnslib import QTYPE, RR, SRV, A  # noqa: E402
from dnslib.server import BaseResolver, DNSLogger, DNSServer  # noqa: E402

pytestmark = [pytest.mark.integration, needs_haproxy]
DOMAIN = "marathon.mesos"


class MesosDNS(BaseResolver):
    """Answers ``_<app>._tcp.<domain>`` with the current task set, like Mesos-DNS:
    SRV records naming one host per task, their A records as additional answers."""

    def __init__(self, name: str) -> None:
        self.srv = f"_{name}._tcp.{DOMAIN}."
        self.lock = threading.Lock()
        self.tasks: dict[str, int] = {}  # task id -> port, all on 127.0.0.1
        self.queries = 0

    def serve(self, tasks: dict[str, int]) -> None:
        with self.lock:
            self.tasks = dict(tasks)

    @staticmethod
    def host(task_id: str) -> str:
        return f"web-{hashlib.sha1(task_id.encode()).hexdigest()[:12]}.slave.{DOMAIN}."

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).lower()
        with self.lock:
            self.queries += 1
            tasks = dict(self.tasks)
        hosts = {self.host(t): p for t, p in tasks.items()}
        if request.q.qtype == QTYPE.SRV and qname == self.srv:
            for host, port in sorted(hosts.items()):
                reply.add_answer(RR(qname, QTYPE.SRV, ttl=1,
                                    rdata=SRV(priority=0, weight=1, port=port, target=host)))
                reply.add_ar(RR(host, QTYPE.A, ttl=1, rdata=A("127.0.0.1")))
        elif request.q.qtype == QTYPE.A and qname in hosts:
            reply.add_answer(RR(qname, QTYPE.A, ttl=1, rdata=A("127.0.0.1")))
        elif qname != self.srv and qname not in hosts:
            reply.header.rcode = 3  # NXDOMAIN
        return reply


@pytest.fixture
def dns() -> Iterator[tuple[MesosDNS, int]]:
    resolver = MesosDNS("web-dnsmode")
    port = free_port()
    quiet = DNSLogger(log="-request,-reply,-truncated,-data,-recv,-send", prefix=False)
    server = DNSServer(resolver, port=port, address="127.0.0.1", logger=quiet)
    server.start_thread()
    try:
        yield resolver, port
    finally:
        server.stop()
        server.server.server_close()


class Load:
    """Requests through HAProxy, one connection each, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5, verify=TLS) as c:
            while not self._stop.is_set():
                try:
                    r = c.get(f"http://127.0.0.1:{self.port}/",
                              headers={"Connection": "close"})
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"HTTP {r.status_code}")
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


def render_dns_mode(simulator: Simulator, dns_port: int, tmp: Path,
                    cfg: Path) -> subprocess.CompletedProcess[str]:
    """``servicerouter render --mesos-dns`` against the simulator, into ``cfg``."""
    return subprocess.run(
        [sys.executable, "-m", "servicerouter", "render", "--marathon", simulator.url,
         "--mesos-dns", DOMAIN, "--dns-resolver", f"127.0.0.1:{dns_port}",
         "--haproxy-socket", str(tmp / "admin.sock"), "--stats-port", "0",
         "--http-port", "0", "--https-port", "0", "--output", str(cfg)],
        capture_output=True, text=True, timeout=60, check=False)


def assert_valid(cfg: Path) -> None:
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_haproxy_follows_srv_records_under_load(tmp_path: Path, simulator: Simulator,
                                                dns: tuple[MesosDNS, int]) -> None:
    resolver, dns_port = dns
    port, live = simulator.launch("/dnsmode/web", 3)
    ports = {t["id"]: t["ports"][0] for t in simulator.app("/dnsmode/web")["tasks"]}
    a, b, c = sorted(live)
    resolver.serve({a: ports[a], b: ports[b]})

    cfg = tmp_path / "haproxy.cfg"
    out = render_dns_mode(simulator, dns_port, tmp_path, cfg)
    assert out.returncode == 0, out.stderr
    text = cfg.read_text()
    assert f"server-template s 8 _web-dnsmode._tcp.{DOMAIN} resolvers mesos_dns" in text
    assert f"nameserver mesos_dns 127.0.0.1:{dns_port}" in text
    assert_valid(cfg)

    haproxy = Proc("haproxy", ["haproxy", "-db", "-f", str(cfg)], tmp_path / "haproxy.log")
    with running(haproxy.start(lambda: (tmp_path / "admin.sock").exists(),
                               what="HAProxy up")):
        wait_routed(port, {a, b}, timeout=30)
        with Load(port) as load:
            resolver.serve({b: ports[b], c: ports[c]})  # a leaves, c arrives
            wait_routed(port, {b, c}, timeout=30)
            resolver.serve({a: ports[a], b: ports[b], c: ports[c]})
            wait_routed(port, {a, b, c}, timeout=30)
            wait_for(lambda: load.ok >= 50, 30, what="50 requests under load")
        assert not load.failed, f"{len(load.failed)} failed of {load.ok}: {load.failed[:5]}"
        assert resolver.queries > 0
        assert haproxy.alive(), haproxy.output()


def test_mesos_dns_mode_refuses_bad_values_before_fetching() -> None:
    # Marathon at 127.0.0.1:1 never answers: the flags must be refused first.
    base = [sys.executable, "-m", "servicerouter", "render", "--marathon", "http://127.0.0.1:1"]
    for extra, message in [
        (["--mesos-dns", DOMAIN], "--mesos-dns needs --dns-resolver IP:PORT"),
        (["--mesos-dns", "bad domain", "--dns-resolver", "127.0.0.1:53"],
         "--mesos-dns 'bad domain' is not a DNS domain"),
        (["--mesos-dns", DOMAIN, "--dns-resolver", "mesos-dns:53"],
         "--dns-resolver 'mesos-dns:53' is not IP:PORT"),
    ]:
        out = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60,
                             check=False)
        assert out.returncode == 2 and out.stdout == "", out  # a usage error
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"servicerouter: error: {message}"), \
            out.stderr


def test_mesos_dns_mode_admits_apps_like_every_other_mode(
        tmp_path: Path, simulator: Simulator, dns: tuple[MesosDNS, int]) -> None:
    """Tenants' labels are checked here too: an app naming another's service port, or a
    file that is no certificate, is left out and named; the others are rendered, pass
    ``haproxy -c`` and serve exactly their tasks. (Every label used to reach the config
    unchecked: the port was bound twice, splitting its connections between two apps,
    and ``crt /etc/passwd`` failed the whole config.)"""
    resolver, dns_port = dns
    port, live = simulator.launch("/dnsmode/web", 2)
    ports = {t["id"]: t["ports"][0] for t in simulator.app("/dnsmode/web")["tasks"]}
    resolver.serve(ports)
    simulator.create_app("/evil/web", instances=0, labels={"HAPROXY_0_PORT": str(port)})
    simulator.create_app("/evil/cert", instances=0,
                         labels={"HAPROXY_0_SSL_CERT": "/etc/passwd"})

    cfg = tmp_path / "haproxy.cfg"
    out = render_dns_mode(simulator, dns_port, tmp_path, cfg)
    assert out.returncode == 0, out.stderr
    assert f"app /evil/web: HAPROXY_0_PORT='{port}' is already bound by app /dnsmode/web" \
        in out.stderr, out.stderr
    assert "app /evil/cert: HAPROXY_0_SSL_CERT='/etc/passwd' is not under an allowed " \
        "certificate folder" in out.stderr, out.stderr
    text = cfg.read_text()
    assert text.count(f":{port}\n") == 1 and "passwd" not in text and "evil" not in text
    assert_valid(cfg)

    haproxy = Proc("haproxy", ["haproxy", "-db", "-f", str(cfg)], tmp_path / "haproxy.log")
    with running(haproxy.start(lambda: (tmp_path / "admin.sock").exists(),
                               what="HAProxy up")):
        wait_routed(port, live, timeout=30)
        assert haproxy.alive(), haproxy.output()


def _crypt(password: str) -> str:
    out = subprocess.run(["openssl", "passwd", "-6", "-salt", "dnssalt1", password],
                         check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def test_mesos_dns_mode_enforces_auth_and_network_acls(
        tmp_path: Path, simulator: Simulator, dns: tuple[MesosDNS, int]) -> None:
    """AUTH and BACKEND_NETWORK_ALLOWED_ACL guard a service in every mode: Mesos-DNS
    mode's template left them out, so such a service was served open to anyone."""
    resolver, dns_port = dns
    port, live = simulator.launch("/dnsmode/web", 1, labels={
        "HAPROXY_0_MODE": "http", "HAPROXY_0_AUTH": f"dns:alice:{_crypt('s3cret')}"})
    resolver.serve({t["id"]: t["ports"][0] for t in simulator.app("/dnsmode/web")["tasks"]})
    url = f"http://127.0.0.1:{port}/"

    def serve(cfg: Path) -> Proc:
        out = render_dns_mode(simulator, dns_port, tmp_path, cfg)
        assert out.returncode == 0, out.stderr
        assert_valid(cfg)
        return Proc("haproxy", ["haproxy", "-db", "-f", str(cfg)], tmp_path / f"{cfg.stem}.log")

    with running(serve(tmp_path / "auth.cfg").start(
            lambda: (tmp_path / "admin.sock").exists(), what="HAProxy up")):
        r = wait_for(lambda: (r := httpx.get(url, timeout=5)).status_code != 503 and r, 30,
                     what="the task's server resolved")
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="dns"'
        assert httpx.get(url, auth=("alice", "wrong"), timeout=5).status_code == 401
        ok = httpx.get(url, auth=("alice", "s3cret"), timeout=5)
        assert ok.status_code == 200 and ok.text.strip() in live
    (tmp_path / "admin.sock").unlink(missing_ok=True)

    acl_port, _ = simulator.launch("/dnsmode/acl", 1, labels={
        "HAPROXY_0_MODE": "http", "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "10.0.0.0/8"})
    resolver.srv = f"_acl-dnsmode._tcp.{DOMAIN}."  # Mesos-DNS's name of /dnsmode/acl
    resolver.serve({t["id"]: t["ports"][0] for t in simulator.app("/dnsmode/acl")["tasks"]})
    url = f"http://127.0.0.1:{acl_port}/"
    with running(serve(tmp_path / "acl.cfg").start(
            lambda: (tmp_path / "admin.sock").exists(), what="HAProxy up")):
        r = wait_for(lambda: (r := httpx.get(url, timeout=5)).status_code != 503 and r, 30,
                     what="the task's server resolved")
        assert r.status_code == 403  # loopback is not in 10.0.0.0/8
