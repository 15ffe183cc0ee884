"""marathon-lb's label language end to end: simulator → servicerouter → real HAProxy →
real tasks, one test per feature, with real HTTP(S) requests on loopback.

The apps are marathon-lb's documented examples (its README and Longhelp), rebuilt
here as label sets. One daemon serves the whole module: every test adds its own
apps, so the tests also show that one app's labels never leak into another's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from servicerouter.haproxy.render import builtin_templates
from servicerouter.haproxy.runtime import RuntimeClient
from servicerouter.haproxy.runtime_parse import ServerState
from servicerouter.naming import service_name

from .conftest import needs_haproxy
from .harness import (
    TLS,
    Daemon,
    Simulator,
    free_port,
    open_tunnel,
    responders,
    wait_for,
    wait_routed,
)

pytestmark = [pytest.mark.integration, needs_haproxy]

SECRET = "correct horse"


@dataclass
class Cluster:
    sim: Simulator
    daemon: Daemon
    http: int
    https: int
    stats: int
    app_id: int
    tmp: Path

    def launch(self, app_id: str, labels: dict[str, str], instances: int = 1,
               **extra: Any) -> set[str]:
        self.sim.create_app(app_id, instances=instances, labels=labels, **extra)
        return self.sim.wait_running(app_id, instances)

    def backend(self, app_id: str) -> str:
        return service_name(app_id, self.sim.service_port(app_id))


def _cert(tmp: Path) -> Path:
    """A self-signed certificate for *.sni.test and friends, made with the openssl CLI."""
    key, crt, pem = tmp / "key.pem", tmp / "crt.pem", tmp / "site.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=sni.test",
                    "-addext", "subjectAltName=DNS:*.sni.test,DNS:*.mlb.test"],
                   check=True, capture_output=True, timeout=60)
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    return pem


def _templates(tmp: Path) -> Path:
    """The operator's templates: one named snippet, and timeout client cut to 1 s so a
    tunnel outliving it is seen in seconds (everything else is the built-in file)."""
    folder = tmp / "templates"
    (folder / "snippets").mkdir(parents=True)
    (folder / "snippets" / "tagged.j2").write_text(
        "    http-response set-header X-Snippet tagged\n")
    defaults = (builtin_templates() / "defaults.j2").read_text()
    assert "timeout tunnel" in defaults and "timeout client 50s" in defaults
    (folder / "defaults.j2").write_text(defaults.replace("timeout client 50s",
                                                         "timeout client 1s"))
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("mlb")
    pem = _cert(tmp)
    sim = Simulator(tmp).start()
    http, https, stats, app_id = free_port(), free_port(), free_port(), free_port()
    daemon = Daemon(tmp, sim.url, "--http-port", str(http), "--https-port", str(https),
                    "--ssl-certs", str(pem), "--stats-port", str(stats),
                    "--app-id-port", str(app_id), "--templates", str(_templates(tmp)))
    try:
        daemon.start()
        yield Cluster(sim, daemon, http, https, stats, app_id, tmp)
    finally:
        daemon.stop()
        sim.stop()


# Made once (each one loads the system's CA certificates, ~30 ms): the test certificate
# is self-signed, nothing is verified.
_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE


def _get(url: str, host: str | None = None, sni: str | None = None,
         **kw: Any) -> httpx.Response:
    headers = {"Connection": "close", **({"Host": host} if host else {}),
               **kw.pop("headers", {})}
    extensions = {"sni_hostname": sni} if sni else None
    with httpx.Client(verify=_UNVERIFIED, timeout=5, follow_redirects=False) as c:
        return c.get(url, headers=headers, extensions=extensions, **kw)


def _wait_status(url: str, status: int, what: str, task: str | None = None,
                 **kw: Any) -> httpx.Response:
    """The first response with ``status`` (and from ``task``, if given). Apps arrive
    one reload at a time, so a route may answer before its neighbours exist."""
    def check() -> httpx.Response | None:
        r = _get(url, **kw)
        ok = r.status_code == status and (task is None or _app(r) == _owner(task))
        return r if ok else None

    return wait_for(check, 30, what=what)


def _task(r: httpx.Response) -> str:
    return r.text.strip()


def _owner(task_id: str) -> str:
    """The app part of a task id (``mlb_sni_a.instance-…._app.1`` → ``mlb_sni_a``): routing
    is checked per app, so a task the machine's load makes Marathon replace still counts."""
    return task_id.split(".instance-")[0]


def _app(r: httpx.Response) -> str:
    return _owner(_task(r))


def test_host_and_path_routing_follow_backend_weight(cluster: Cluster) -> None:
    # marathon-lb's Longhelp: shared vhosts and paths are ordered by BACKEND_WEIGHT,
    # larger first, whatever the paths' lengths.
    (api,) = cluster.launch("/mlb/weight/api", {"HAPROXY_0_VHOST": "w.mlb.test",
                                                "HAPROXY_0_PATH": "/api",
                                                "HAPROXY_0_BACKEND_WEIGHT": "10"})
    (v2,) = cluster.launch("/mlb/weight/v2", {"HAPROXY_0_VHOST": "w.mlb.test",
                                              "HAPROXY_0_PATH": "-i /api/v2 /v2"})
    (other,) = cluster.launch("/mlb/weight/other", {"HAPROXY_0_VHOST": "other.mlb.test"})
    base = f"http://127.0.0.1:{cluster.http}"
    _wait_status(f"{base}/", 200, "other.mlb.test routed", host="other.mlb.test")
    assert _app(_get(f"{base}/anything", host="Other.MLB.test:80")) == _owner(other)
    # Wait until all three routes are live, then check the order.
    _wait_status(f"{base}/V2/x", 200, "-i path to v2", task=v2, host="w.mlb.test")
    _wait_status(f"{base}/api/v2/x", 200, "weight 10 first", task=api, host="w.mlb.test")
    assert _app(_get(f"{base}/api/v2/x", host="w.mlb.test")) == _owner(api)
    assert _app(_get(f"{base}/v2/x", host="w.mlb.test")) == _owner(v2)
    assert _get(f"{base}/elsewhere", host="w.mlb.test").status_code == 503


def test_https_routes_by_sni_with_host_as_fallback(cluster: Cluster) -> None:
    (a,) = cluster.launch("/mlb/sni/a", {"HAPROXY_0_VHOST": "a.sni.test"})
    (b,) = cluster.launch("/mlb/sni/b", {"HAPROXY_0_VHOST": "b.sni.test"})
    url = f"https://127.0.0.1:{cluster.https}/"
    # Both routes live (each by its own name) ...
    _wait_status(url, 200, "a routed", task=a, host="a.sni.test", sni="a.sni.test")
    _wait_status(url, 200, "b routed", task=b, host="b.sni.test", sni="b.sni.test")
    # ... then SNI names a, Host names b: SNI decides.
    assert _app(_get(url, host="b.sni.test", sni="a.sni.test")) == _owner(a)
    assert _app(_get(url, host="a.sni.test", sni="b.sni.test")) == _owner(b)
    # No SNI at all (an IP address sends none): Host decides.
    assert _app(_get(url, host="b.sni.test")) == _owner(b)
    assert _app(_get(url, host="a.sni.test")) == _owner(a)


def test_redirect_to_https_is_a_301_keeping_host_path_and_query(cluster: Cluster) -> None:
    (task,) = cluster.launch("/mlb/redirect", {"HAPROXY_0_VHOST": "r.mlb.test",
                                               "HAPROXY_0_REDIRECT_TO_HTTPS": "true"})
    r = _wait_status(f"http://127.0.0.1:{cluster.http}/a/b?c=1", 301, "redirect",
                     host="r.mlb.test:80")
    assert r.headers["location"] == f"https://r.mlb.test:{cluster.https}/a/b?c=1"
    # As marathon-lb, whose rule sat in its shared HTTP frontend: the service's own port
    # (and the app-id frontend) serve plain HTTP, for the vhost's Host too. A load
    # balancer that ends TLS and forwards to the service port would otherwise be sent
    # round in a redirect loop.
    own = f"http://127.0.0.1:{cluster.sim.service_port('/mlb/redirect')}/a"
    for host in ("r.mlb.test", None):
        r = _get(own, host=host)
        assert r.status_code == 200 and _app(r) == _owner(task), host
    r = _get(f"http://127.0.0.1:{cluster.app_id}/a", host="r.mlb.test",
             headers={"X-Marathon-App-Id": "/mlb/redirect"})
    assert r.status_code == 200 and _app(r) == _owner(task)
    # With AUTH, every plain request is redirected, on every frontend: credentials
    # never cross plain HTTP.
    cluster.launch("/mlb/redirect-auth", {"HAPROXY_0_VHOST": "ra.mlb.test",
                                          "HAPROXY_0_REDIRECT_TO_HTTPS": "true",
                                          "HAPROXY_0_AUTH": f"r:alice:{_crypt(SECRET)}"})
    own = f"http://127.0.0.1:{cluster.sim.service_port('/mlb/redirect-auth')}/a"
    r = _wait_status(own, 301, "auth port redirected", host="ra.mlb.test")
    assert r.headers["location"] == f"https://ra.mlb.test:{cluster.https}/a"
    url = f"https://127.0.0.1:{cluster.https}/a/b?c=1"
    r = _wait_status(url, 200, "https", host="r.mlb.test", sni="r.mlb.test")
    assert _app(r) == _owner(task)


def test_empty_values_are_read_as_marathon_lb_read_them(cluster: Cluster) -> None:
    # marathon-lb served these ports as if the empty labels were absent, and left out a
    # port whose ENABLED was empty. Refusing the values took the ports away on migration.
    off = "/mlb/empty/off"
    cluster.launch(off, {"HAPROXY_0_ENABLED": ""})
    (tcp,) = cluster.launch("/mlb/empty/tcp", {
        "HAPROXY_0_VHOST": "", "HAPROXY_0_STICKY": "", "HAPROXY_0_BALANCE": "",
        "HAPROXY_0_BIND_ADDR": "", "HAPROXY_0_SSL_CERT": ""})
    (web,) = cluster.launch("/mlb/empty/web", {
        "HAPROXY_0_VHOST": "empty.mlb.test", "HAPROXY_0_PATH": "",
        "HAPROXY_0_REDIRECT_TO_HTTPS": "", "HAPROXY_0_USE_HSTS": "",
        "HAPROXY_0_HTTP_BACKEND_REDIR": "", "HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH": ""})
    own = f"http://127.0.0.1:{cluster.sim.service_port('/mlb/empty/tcp')}/"
    _wait_status(own, 200, "the port with empty labels", task=tcp)
    r = _wait_status(f"http://127.0.0.1:{cluster.http}/", 200, "vhost, not redirected",
                     task=web, host="empty.mlb.test")
    assert "strict-transport-security" not in r.headers
    for app in (off, "/mlb/empty/tcp", "/mlb/empty/web"):
        assert cluster.daemon.status(app=app)["problems"] == [], app
    with pytest.raises(httpx.ConnectError):  # ENABLED="": not exposed, as marathon-lb
        _get(f"http://127.0.0.1:{cluster.sim.service_port(off)}/")


def test_space_separated_vhosts_route_every_name(cluster: Cluster) -> None:
    # marathon-lb wrote VHOST into `hdr(host) -i <value>`: HAProxy took each word as a
    # name, so "a b" routed both (and "a, b" too).
    (task,) = cluster.launch("/mlb/spaced", {"HAPROXY_0_VHOST": "sp1.mlb.test SP2.mlb.test,\t"
                                                                "sp3.mlb.test"})
    for host in ("sp1.mlb.test", "sp2.mlb.test", "sp3.mlb.test"):
        _wait_status(f"http://127.0.0.1:{cluster.http}/", 200, f"{host} over HTTP", task=task,
                     host=host)
        _wait_status(f"https://127.0.0.1:{cluster.https}/", 200, f"{host} by SNI", task=task,
                     host=host, sni=host)


def _raw(port: int, data: bytes) -> bytes:
    """Send ``data`` to a port, then read until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_http_labels_without_a_vhost_leave_a_tcp_port_tcp(cluster: Cluster) -> None:
    # marathon-lb made a port HTTP for a VHOST (or an HTTP health check) only: STICKY,
    # PATH, USE_HSTS and the HTTP_BACKEND_* labels did nothing on a TCP port. Turned
    # into HTTP, a database or TLS-passthrough port had HAProxy answer its clients 400.
    app = "/mlb/tcp-sticky"
    (task,) = cluster.launch(app, {"HAPROXY_0_STICKY": "true", "HAPROXY_0_USE_HSTS": "true",
                                   "HAPROXY_0_PATH": "/a"})
    port = cluster.sim.service_port(app)
    r = _wait_status(f"http://127.0.0.1:{port}/_echo", 200, "tcp port")
    seen = json.loads(r.text)
    assert _owner(seen["task"]) == _owner(task)
    assert "set-cookie" not in r.headers and "strict-transport-security" not in r.headers
    assert not any(h.lower().startswith("x-forwarded")
                   for h in seen["headers"])  # the client's bytes, as sent
    # A request HAProxy's HTTP parser would refuse reaches the task, which answers it.
    assert b"Bad request syntax" in _raw(port, b"PING\r\n\r\n")
    # The owner is told why the labels did nothing.
    log = cluster.tmp / "servicerouter.log"
    wait_for(lambda: f"app {app}: labels HAPROXY_0_PATH, HAPROXY_0_STICKY, HAPROXY_0_USE_HSTS "
             "need HTTP mode" in log.read_text(errors="replace"), 20, what="the warning")


def test_hsts_header(cluster: Cluster) -> None:
    cluster.launch("/mlb/hsts", {"HAPROXY_0_VHOST": "hsts.mlb.test", "HAPROXY_0_USE_HSTS": "t"})
    cluster.launch("/mlb/nohsts", {"HAPROXY_0_VHOST": "nohsts.mlb.test"})
    base = f"http://127.0.0.1:{cluster.http}/"
    r = _wait_status(base, 200, "hsts app", host="hsts.mlb.test")
    assert r.headers["strict-transport-security"] == "max-age=15768000"
    assert "strict-transport-security" not in _wait_status(base, 200, "other",
                                                           host="nohsts.mlb.test").headers


def _crypt(password: str) -> str:
    out = subprocess.run(["openssl", "passwd", "-6", "-salt", "mlbsalt1", password],
                         check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def test_basic_auth_challenges_accepts_and_refuses(cluster: Cluster) -> None:
    app = "/mlb/auth"
    (task,) = cluster.launch(app, {"HAPROXY_0_VHOST": "auth.mlb.test",
                                   "HAPROXY_0_AUTH": f"Team Realm:alice:{_crypt(SECRET)}"})
    base = f"http://127.0.0.1:{cluster.http}/"
    r = _wait_status(base, 401, "auth challenge", host="auth.mlb.test")
    assert r.headers["www-authenticate"] == 'Basic realm="Team Realm"'
    assert _get(base, host="auth.mlb.test", auth=("alice", "wrong")).status_code == 401
    ok = _get(base, host="auth.mlb.test", auth=("alice", SECRET))
    assert ok.status_code == 200 and _app(ok) == _owner(task)
    # The service's own port enforces the same auth: no open side door.
    own = f"http://127.0.0.1:{cluster.sim.service_port(app)}/"
    assert _get(own).status_code == 401
    assert _get(own, auth=("alice", SECRET)).status_code == 200


def test_auth_takes_an_e_mail_user_and_a_realm_with_punctuation(cluster: Cluster) -> None:
    # marathon-lb took any user name and realm (it quoted the realm): the team's
    # e-mail address and "Ops (EU), team/web" were left out of the port here.
    app = "/mlb/auth-mail"
    (task,) = cluster.launch(app, {
        "HAPROXY_0_VHOST": "mail.mlb.test",
        "HAPROXY_0_AUTH": f"Ops (EU), team/web:alice+ops@example.com:{_crypt(SECRET)}"})
    base = f"http://127.0.0.1:{cluster.http}/"
    r = _wait_status(base, 401, "auth challenge", host="mail.mlb.test")
    assert r.headers["www-authenticate"] == 'Basic realm="Ops (EU), team/web"'
    assert _get(base, host="mail.mlb.test", auth=("alice", SECRET)).status_code == 401
    ok = _get(base, host="mail.mlb.test", auth=("alice+ops@example.com", SECRET))
    assert ok.status_code == 200 and _app(ok) == _owner(task)
    assert cluster.daemon.status(app=app)["problems"] == []


def test_auth_that_cannot_be_enforced_is_not_exposed(cluster: Cluster) -> None:
    app = "/mlb/auth-tcp"
    cluster.launch(app, {"HAPROXY_0_MODE": "tcp",
                         "HAPROXY_0_AUTH": f"r:alice:{_crypt(SECRET)}"})
    port = cluster.sim.service_port(app)

    def problem() -> str | None:
        found = [p["error"] for p in cluster.daemon.status(app=app)["problems"]]
        return found[0] if found else None

    assert "HAPROXY_0_AUTH needs HTTP mode" in wait_for(problem, 20, what="problem listed")
    with pytest.raises(httpx.ConnectError):
        _get(f"http://127.0.0.1:{port}/")


def test_network_allowed_acl_403_outside_the_ranges(cluster: Cluster) -> None:
    (task,) = cluster.launch("/mlb/acl/open", {
        "HAPROXY_0_VHOST": "acl-in.mlb.test",
        "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "10.1.40.0/24 127.0.0.0/8"})
    cluster.launch("/mlb/acl/closed", {
        "HAPROXY_0_VHOST": "acl-out.mlb.test",
        "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "10.0.0.0/8, 192.168.0.0/16"})
    base = f"http://127.0.0.1:{cluster.http}/"
    assert _app(_wait_status(base, 200, "allowed", host="acl-in.mlb.test")) == _owner(task)
    _wait_status(base, 403, "denied", host="acl-out.mlb.test")


def test_a_hundred_vhosts_and_networks_all_route_redirect_and_filter(cluster: Cluster) -> None:
    # HAProxy reads 64 words of a config line; a list this long was cut there and the
    # whole config failed to validate, for every app. Now each name and range counts.
    hosts = [f"h{i}.many.test" for i in range(100)] + [f"*.w{i}.many.test" for i in range(60)]
    ranges = [f"10.{i}.0.0/16" for i in range(99)] + ["127.0.0.0/8"]
    (task,) = cluster.launch("/mlb/many", {
        "HAPROXY_0_VHOST": ",".join(hosts), "HAPROXY_0_REDIRECT_TO_HTTPS": "true",
        "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": " ".join(ranges)})
    (closed,) = cluster.launch("/mlb/many/closed", {
        "HAPROXY_0_VHOST": "closed.many.test",
        "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": " ".join(ranges[:99])})
    http, https = f"http://127.0.0.1:{cluster.http}/x", f"https://127.0.0.1:{cluster.https}/x"
    for host in ("h0.many.test", "h99.many.test", "a.w0.many.test", "b.w59.many.test"):
        r = _wait_status(http, 301, f"{host} redirected", host=host)
        assert r.headers["location"] == f"https://{host}:{cluster.https}/x"
        assert _app(_wait_status(https, 200, f"{host} by SNI", host=host, sni=host)) == \
            _owner(task)
    assert _get(http, host="h100.many.test").status_code == 503  # not one of its names
    # The last range lets loopback in; the neighbour without it keeps loopback out.
    _wait_status(http, 403, "loopback not allowed", host="closed.many.test")
    assert _owner(closed) not in _get(http, host="closed.many.test").text


def test_proxypass_revproxy_and_redir(cluster: Cluster) -> None:
    (task,) = cluster.launch("/mlb/proxy", {
        "HAPROXY_0_VHOST": "proxy.mlb.test,*.w.mlb.test", "HAPROXY_0_PATH": "/api",
        "HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH": "/api",
        "HAPROXY_0_HTTP_BACKEND_REVPROXY_PATH": "/api"})
    cluster.launch("/mlb/redir", {"HAPROXY_0_VHOST": "redir.mlb.test",
                                  "HAPROXY_0_HTTP_BACKEND_REDIR": "/my/content"})
    base = f"http://127.0.0.1:{cluster.http}"
    echo = _wait_status(f"{base}/api/_echo/x?y=1", 200, "proxypass", host="proxy.mlb.test")
    assert echo.text.startswith("{"), echo.text
    seen = json.loads(echo.text)
    assert _owner(seen["task"]) == _owner(task) and seen["path"] == "/_echo/x?y=1"
    # The task redirects to /elsewhere; the client is sent back under /api.
    r = _get(f"{base}/api/_location/elsewhere", host="proxy.mlb.test")
    assert r.status_code == 302 and r.headers["location"] == "/api/elsewhere"
    # Absolute ones too when they name one of its vhosts (any case, any port, under its
    # wildcard); another host's are left alone.
    for to, seen in (("http://proxy.mlb.test/e?q=1", "http://proxy.mlb.test/api/e?q=1"),
                     ("https://PROXY.mlb.test:8443/e", "https://PROXY.mlb.test:8443/api/e"),
                     ("http://a.w.mlb.test/", "http://a.w.mlb.test/api/"),
                     ("http://other.mlb.test/e", "http://other.mlb.test/e"),
                     ("http://proxy.mlb.test.evil/e", "http://proxy.mlb.test.evil/e"),
                     ("ftp://proxy.mlb.test/e", "ftp://proxy.mlb.test/e")):
        r = _get(f"{base}/api/_location?to={quote(to, safe='')}", host="proxy.mlb.test")
        assert (r.status_code, r.headers["location"]) == (302, seen), to
    r = _wait_status(f"{base}/", 301, "redir", host="redir.mlb.test")
    assert r.headers["location"] == "/my/content"
    assert _get(f"{base}/other", host="redir.mlb.test").status_code == 200
    # As marathon-lb (is_domain is_root): only / of the vhost, on any frontend; the
    # service port asked by another name serves / itself.
    own = f"http://127.0.0.1:{cluster.sim.service_port('/mlb/redir')}/"
    assert _get(own).status_code == 200
    assert _get(own, host="redir.mlb.test").status_code == 301


def test_sticky_cookie_keeps_a_client_and_moves_it_when_its_task_dies(cluster: Cluster) -> None:
    app = "/mlb/sticky"
    cluster.launch(app, {"HAPROXY_0_VHOST": "sticky.mlb.test", "HAPROXY_0_STICKY": "y"},
                   instances=2)
    url = f"http://127.0.0.1:{cluster.http}/"
    wait_for(lambda: {_task(_get(url, host="sticky.mlb.test")) for _ in range(10)}
             == cluster.sim.running(app), 30, what="both tasks routed")
    with httpx.Client(timeout=5, verify=TLS) as client:
        first = client.get(url, headers={"Host": "sticky.mlb.test"})
        pinned = _task(first)
        assert "SRVID" in client.cookies
        assert {_task(client.get(url, headers={"Host": "sticky.mlb.test"}))
                for _ in range(10)} == {pinned}
        cluster.sim.kill_task(app, pinned)

        def moved() -> str | None:
            r = client.get(url, headers={"Host": "sticky.mlb.test", "Connection": "close"})
            return _task(r) if r.status_code == 200 and _task(r) != pinned else None

        new = wait_for(moved, 20, what="client moved off the dead task")
        assert {_task(client.get(url, headers={"Host": "sticky.mlb.test"}))
                for _ in range(5)} == {new}


def test_websocket_outlives_timeout_client(cluster: Cluster) -> None:
    # timeout client is 1 s in this module's templates; timeout tunnel (1 h) takes
    # over once the connection is upgraded.
    cluster.launch("/mlb/ws", {"HAPROXY_0_VHOST": "ws.mlb.test"})
    _wait_status(f"http://127.0.0.1:{cluster.http}/", 200, "ws app", host="ws.mlb.test")
    with open_tunnel(cluster.http, "ws.mlb.test") as s:
        for i in range(3):  # silent for longer than timeout client, three times
            time.sleep(1.5)  # the thing under test is an idle period, not a condition
            s.sendall(f"ping {i}".encode())
            assert s.recv(100) == f"ping {i}".encode()


def test_forwarding_headers_reach_the_task(cluster: Cluster) -> None:
    # An HTTP health check alone makes the port HTTP (no MODE label), as in marathon-lb.
    app = "/mlb/xff"
    cluster.launch(app, {"HAPROXY_0_VHOST": "xff.mlb.test"}, healthChecks=[
        {"protocol": "HTTP", "path": "/", "portIndex": 0, "intervalSeconds": 1,
         "timeoutSeconds": 1, "maxConsecutiveFailures": 2}])
    port = cluster.sim.service_port(app)
    own = _wait_status(f"http://127.0.0.1:{port}/_echo", 200, "own port, HTTP mode",
                       headers={"X-Forwarded-Proto": "https", "X-Forwarded-Port": "1"})
    h = {k.lower(): v for k, v in json.loads(own.text)["headers"].items()}
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-port"] == str(port)
    assert h["x-forwarded-proto"] == "http"  # a client cannot claim https
    r = _wait_status(f"https://127.0.0.1:{cluster.https}/_echo", 200, "via https_in",
                     host="xff.mlb.test", sni="xff.mlb.test")
    h = {k.lower(): v for k, v in json.loads(r.text)["headers"].items()}
    assert (h["x-forwarded-proto"], h["x-forwarded-port"]) == ("https", str(cluster.https))
    assert "check inter 1000 fall 3" in cluster.daemon.config.read_text()
    # A service port with its own certificate (SSL offload) says https too.
    tls_app = "/mlb/xff-tls"
    cluster.launch(tls_app, {"HAPROXY_0_MODE": "http",
                             "HAPROXY_0_SSL_CERT": str(cluster.tmp / "site.pem")})
    tls_port = cluster.sim.service_port(tls_app)
    r = _wait_status(f"https://127.0.0.1:{tls_port}/_echo", 200, "own TLS port",
                     sni="x.mlb.test")
    h = {k.lower(): v for k, v in json.loads(r.text)["headers"].items()}
    assert (h["x-forwarded-proto"], h["x-forwarded-port"]) == ("https", str(tls_port))


def test_app_id_header_routing(cluster: Cluster) -> None:
    (task,) = cluster.launch("/mlb/appid", {"HAPROXY_0_MODE": "http"})
    url = f"http://127.0.0.1:{cluster.app_id}/"
    r = _wait_status(url, 200, "app-id route", headers={"X-Marathon-App-Id": "/mlb/appid"})
    assert _app(r) == _owner(task)
    assert _get(url, headers={"X-Marathon-App-Id": "/mlb/nope"}).status_code == 503


def test_stats_port_endpoints(cluster: Cluster) -> None:
    cluster.launch("/mlb/endpoints", {"HAPROXY_0_VHOST": "ep.mlb.test"})
    base = f"http://127.0.0.1:{cluster.stats}"
    assert _get(f"{base}/_haproxy_health_check").status_code == 200
    backend = cluster.backend("/mlb/endpoints")
    wait_for(lambda: f"ep.mlb.test {backend}" in _get(f"{base}/_haproxy_getvhostmap").text,
             20, what="vhost map")
    assert f"frontend {backend}" in _get(f"{base}/_haproxy_getconfig").text
    assert _get(f"{base}/_haproxy_getpids").text.strip().isdigit()
    before = cluster.daemon.reloads()
    assert _get(f"{base}/_mlb_signal/usr1").status_code == 200
    wait_for(lambda: cluster.daemon.reloads() > before, 20, what="reload by /_mlb_signal/usr1")
    syncs = _full_syncs(cluster.daemon)
    assert _get(f"{base}/_mlb_signal/hup").status_code == 200
    wait_for(lambda: _full_syncs(cluster.daemon) > syncs, 20, what="resync by /_mlb_signal/hup")


def _full_syncs(daemon: Daemon) -> float:
    for line in daemon.metrics().splitlines():
        if line.startswith('servicerouter_sync_duration_seconds_count{kind="full"}'):
            return float(line.split()[-1])
    return 0.0


def test_named_snippet_applies_to_its_app_only(cluster: Cluster) -> None:
    cluster.launch("/mlb/snippet/on", {"HAPROXY_0_VHOST": "snip.mlb.test",
                                       "HAPROXY_0_SNIPPET": "tagged"})
    cluster.launch("/mlb/snippet/off", {"HAPROXY_0_VHOST": "nosnip.mlb.test"})
    cluster.launch("/mlb/snippet/missing", {"HAPROXY_0_VHOST": "missing.mlb.test",
                                            "HAPROXY_0_SNIPPET": "nosuch"})
    base = f"http://127.0.0.1:{cluster.http}/"
    assert _wait_status(base, 200, "snippet app", host="snip.mlb.test").headers.get(
        "x-snippet") == "tagged"
    assert "x-snippet" not in _wait_status(base, 200, "other", host="nosnip.mlb.test").headers
    problems = cluster.daemon.status(app="/mlb/snippet/missing")["problems"]
    assert any("names no snippet" in p["error"] for p in problems)
    assert _get(base, host="missing.mlb.test").status_code == 503


def _check_ports(cluster: Cluster, backend: str) -> dict[str, int]:
    """``addr:port`` → health-check port of each server in use, from HAProxy itself."""
    text = asyncio.run(RuntimeClient(str(cluster.daemon.socket)).query(
        f"show servers state {backend}"))
    header = next(ln for ln in text.splitlines() if ln.startswith("# be_id")).split()[1:]
    out = {}
    for fields in (ln.split() for ln in text.splitlines()):
        if len(fields) != len(header) or fields[0].startswith("#"):
            continue  # the format version line, the header
        row = dict(zip(header, fields, strict=True))
        if row["srv_addr"] != "127.0.0.1" or row["srv_port"] != "1":
            out[f"{row['srv_addr']}:{row['srv_port']}"] = int(row["srv_check_port"])
    return out


@pytest.mark.parametrize("borrowed", [False, True])
def test_healthcheck_port_index_checks_each_tasks_own_port(cluster: Cluster,
                                                           borrowed: bool) -> None:
    """The service of port index ``traffic`` is checked on each task's port ``health``.
    ``borrowed`` is marathon-lb #198's case: the check is defined on the health port
    only, and the traffic port takes it (it was left unchecked). The demo task listens
    on its first port only, which Marathon's own check asks."""
    app = f"/mlb/checkport-{'borrowed' if borrowed else 'own'}"
    traffic, health = (1, 0) if borrowed else (0, 1)
    cluster.launch(app, {f"HAPROXY_{traffic}_BACKEND_HEALTHCHECK_PORT_INDEX": str(health)},
                   ports=2, healthChecks=[{"protocol": "TCP", "portIndex": 0,
                                           "intervalSeconds": 1}])
    backend = service_name(app, cluster.sim.service_port(app, traffic))

    def expected() -> dict[str, int]:
        tasks = [t for t in cluster.sim.app(app)["tasks"] if t["state"] == "TASK_RUNNING"]
        return {f"127.0.0.1:{t['ports'][traffic]}": t["ports"][health] for t in tasks}

    wait_for(lambda: (e := expected()) and _check_ports(cluster, backend) == e, 30,
             what=f"each server checked on its task's port {health}")
    reloads = cluster.daemon.reloads()
    cluster.sim.replace_one(app, cluster.sim.wait_running(app, 1))
    wait_for(lambda: (e := expected()) and _check_ports(cluster, backend) == e, 30,
             what=f"the replacement checked on its own port {health}")
    assert cluster.daemon.reloads() == reloads, "a task replacement reloaded HAProxy"




def test_a_zdd_blue_green_deploy_moves_traffic_without_a_reload(cluster: Cluster) -> None:
    """zdd.py's labels: the green app joins the blue one's deployment group, blue's tasks
    drain as green's run, and blue's deletion leaves green on the same port, all at
    runtime. (zdd.py itself also scales and deletes through Marathon, as done here.)"""
    port, alt = cluster.sim.service_port_for_new_app(), cluster.sim.service_port_for_new_app()

    def deploy(colour: str, started: str) -> set[str]:
        return cluster.launch(f"/mlb/bg-{colour}", {
            "HAPROXY_DEPLOYMENT_GROUP": "mlb/bg", "HAPROXY_0_PORT": str(port),
            "HAPROXY_DEPLOYMENT_COLOUR": colour, "HAPROXY_DEPLOYMENT_STARTED_AT": started,
            "HAPROXY_DEPLOYMENT_TARGET_INSTANCES": "2", "HAPROXY_DEPLOYMENT_NEW_INSTANCES": "0",
            "HAPROXY_DEPLOYMENT_ALT_PORT": str(alt), "HAPROXY_APP_ID": "/mlb/bg"}, instances=2)

    backend = service_name("/mlb/bg", port)  # named after the group, whoever serves
    blue = deploy("blue", "2024-05-01T10:00:00")
    wait_routed(port, blue)
    reloads = cluster.daemon.reloads()
    green = deploy("green", "2024-05-01T11:00:00")
    wait_routed(port, green)  # both green tasks run: both blue tasks drain

    def admin() -> dict[int, str]:  # task port -> ready/drain, of the slots in use
        return {s.port: s.admin for s in cluster.daemon.servers(backend) if s.admin != "maint"}

    ports = {t["id"]: t["ports"][0] for a in ("/mlb/bg-blue", "/mlb/bg-green")
             for t in cluster.sim.app(a)["tasks"]}
    assert admin() == {**{ports[t]: "drain" for t in blue}, **{ports[t]: "ready" for t in green}}
    (service,) = cluster.daemon.status(app="/mlb/bg")["services"]
    assert service["deployment"] == {"members": ["/mlb/bg-blue", "/mlb/bg-green"],
                                     "definition": "/mlb/bg-blue"}
    r = cluster.sim.http.delete("/v2/apps/mlb/bg-blue")
    assert r.status_code == 200, r.text
    wait_for(lambda: admin() == {ports[t]: "ready" for t in green}, 30,
             what="blue's servers gone, green's serving")
    assert responders(port) == green
    assert cluster.daemon.reloads() == reloads, "the deploy reloaded HAProxy"


def test_a_deployment_group_outside_its_folder_takes_nothing(cluster: Cluster) -> None:
    (task,) = cluster.launch("/mlb/owned", {"HAPROXY_0_MODE": "http"})
    port = cluster.sim.service_port("/mlb/owned")
    wait_routed(port, {task})
    # Another tenant's app names /mlb/owned as its deployment group, on the same port.
    cluster.sim.create_app("/tenant/intruder", instances=1, labels={
        "HAPROXY_DEPLOYMENT_GROUP": "mlb/owned", "HAPROXY_0_PORT": str(port),
        "HAPROXY_DEPLOYMENT_STARTED_AT": "2099-01-01T00:00:00"})
    problems = wait_for(lambda: cluster.daemon.status(app="/tenant/intruder")["problems"], 30,
                        what="the intruder reported")
    (problem,) = problems
    assert problem["reason"] == "deployment_group" and "folder" in problem["error"]
    assert responders(port) == {task}


def test_a_root_deployment_group_takes_no_other_root_app(cluster: Cluster) -> None:
    # At the root every app is a tenant of its own, yet the folder rule let any root app
    # join a root group: /evil naming "web", deployed "later", drained the pair's tasks
    # and had the port (and its vhosts) served by its own task only.
    port = cluster.sim.service_port_for_new_app()
    blue = cluster.launch("/rootbg-blue", {
        "HAPROXY_DEPLOYMENT_GROUP": "rootbg", "HAPROXY_0_PORT": str(port),
        "HAPROXY_DEPLOYMENT_STARTED_AT": "2024-05-01T10:00:00",
        "HAPROXY_DEPLOYMENT_TARGET_INSTANCES": "1"})
    wait_routed(port, blue)
    cluster.sim.create_app("/rootevil", instances=1, labels={
        "HAPROXY_DEPLOYMENT_GROUP": "rootbg", "HAPROXY_0_PORT": str(port),
        "HAPROXY_DEPLOYMENT_STARTED_AT": "2099-01-01T00:00:00",
        "HAPROXY_DEPLOYMENT_TARGET_INSTANCES": "1"})
    cluster.sim.wait_running("/rootevil", 1)
    problems = wait_for(lambda: cluster.daemon.status(app="/rootevil")["problems"], 30,
                        what="the root app naming another's group reported")
    (problem,) = problems
    assert (problem["reason"], problem["label"]) == ("deployment_group",
                                                     "HAPROXY_DEPLOYMENT_GROUP")
    assert "/rootbg-blue and /rootbg-green" in problem["error"]
    assert responders(port) == blue
    # zdd.py's own green app still joins, and takes over from blue.
    green = cluster.launch("/rootbg-green", {
        "HAPROXY_DEPLOYMENT_GROUP": "rootbg", "HAPROXY_0_PORT": str(port),
        "HAPROXY_DEPLOYMENT_STARTED_AT": "2024-05-01T11:00:00",
        "HAPROXY_DEPLOYMENT_TARGET_INSTANCES": "1"})
    wait_routed(port, green)


def _checked_app(cluster: Cluster, app: str, fail_first: float, timeout: float = 2) -> int:
    """An app of one task with an HTTP health check every second. With ``fail_first``
    > 0 the task answers HAProxy's first check 503 after that many seconds; Marathon's
    probes answer 200 at once, so Marathon calls it healthy."""
    cluster.launch(app, {}, env={"FAIL_FIRST_CHECK": str(fail_first)}, healthChecks=[
        {"protocol": "HTTP", "path": "/", "portIndex": 0, "intervalSeconds": 1,
         "timeoutSeconds": timeout, "maxConsecutiveFailures": 3}])
    return cluster.sim.service_port(app)


def _only_task(cluster: Cluster, app: str) -> tuple[str, int]:
    (task,) = [t for t in cluster.sim.app(app)["tasks"] if t["state"] == "TASK_RUNNING"]
    return task["id"], task["ports"][0]


def _checks(host_port: int) -> tuple[int, int]:
    """HAProxy's checks the task saw, and how many of them it failed."""
    seen, failed = httpx.get(f"http://127.0.0.1:{host_port}/_checks", timeout=5,
                             verify=TLS).text.split()
    return int(seen), int(failed)


def _server(cluster: Cluster, app: str, host_port: int) -> ServerState:
    (server,) = [s for s in cluster.daemon.servers(cluster.backend(app))
                 if s.port == host_port and s.ready]
    return server


def _answers_until_the_second_check(port: int, task: str, host_port: int) -> list[str]:
    """What requests through HAProxy's ``port`` got, from ``task``'s first answer until
    HAProxy's second check of it (the first one failed): by then a server at health
    "rise" is DOWN, until two more good checks."""
    answers: list[str] = []

    def second_check_came() -> bool:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"},
                          timeout=5, verify=TLS)
            if answers or r.text.strip() == task:
                answers.append(f"{r.status_code} {r.text.strip()}")
        except httpx.HTTPError as exc:
            if answers:
                answers.append(repr(exc))
        seen, failed = _checks(host_port)
        return bool(answers) and seen >= 2 and failed == 1

    wait_for(second_check_came, 60, interval=0.02, what=f"HAProxy's second check of {task}")
    return answers


def test_a_task_marathon_calls_healthy_stays_up_through_a_failed_first_check(
        cluster: Cluster) -> None:
    """HAProxy starts a server that leaves maintenance at check health "rise": one failed
    first check took the app's only task DOWN for two intervals of 503, though Marathon
    had just called it healthy. Now it enters rotation at full health and it takes
    "fall" (maxConsecutiveFailures + 1) failed checks in a row, as the app asks."""
    app = "/mlb/firstcheck"
    port = _checked_app(cluster, app, fail_first=1)
    task, host_port = _only_task(cluster, app)
    answers = _answers_until_the_second_check(port, task, host_port)
    assert set(answers) == {f"200 {task}"}, answers
    reloads = cluster.daemon.reloads()
    cluster.sim.replace_one(app, {task})  # its replacement goes in at runtime
    task, host_port = _only_task(cluster, app)
    answers = _answers_until_the_second_check(port, task, host_port)
    assert set(answers) == {f"200 {task}"}, answers
    server = _server(cluster, app, host_port)
    assert server.up and server.check_health >= 4, server
    assert cluster.daemon.reloads() == reloads, "a task replacement reloaded HAProxy"


def test_after_a_reload_a_healthy_task_is_checked_from_full_health(cluster: Cluster) -> None:
    """A new worker starts every server at health "rise" as well, where one failed check
    takes it DOWN: servicerouter raises the routed servers of checked apps to full
    health right after a reload."""
    app = "/mlb/reloadcheck"
    port = _checked_app(cluster, app, fail_first=0, timeout=5)
    task, host_port = _only_task(cluster, app)
    wait_for(lambda: responders(port, 2) == {task}, 30, what=f"{app} routed")
    # From now on no check of HAProxy's passes (nor fails before its timeout): the new
    # worker's health can only come from its start, or from servicerouter.
    httpx.get(f"http://127.0.0.1:{host_port}/_checks/hang", timeout=5, verify=TLS)
    reloads = cluster.daemon.reloads()
    cluster.daemon.proc.popen.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_for(lambda: cluster.daemon.reloads() > reloads, 30, what="the reload SIGHUP asks for")
    # At full health (rise 2 + fall 4 - 1 = 5), one less per hung check that timed out
    # (one every ~6 s): it stays above 2 for two of them. HAProxy's own start leaves it
    # at 2, and DOWN (0) after the first.
    wait_for(lambda: _server(cluster, app, host_port).check_health >= 3, 30,
             what="the server at full check health in the new worker")
    assert responders(port, 2) == {task}


def test_a_task_failing_its_command_check_leaves_rotation(cluster: Cluster) -> None:
    """HAProxy cannot run a COMMAND check, but Marathon reports its results: a task
    failing it was still routed (only other protocols gated routing)."""
    app = "/mlb/command"
    down = cluster.tmp / "command-down"
    down.mkdir()
    live = cluster.launch(app, {}, instances=2, healthChecks=[{
        "protocol": "COMMAND", "intervalSeconds": 0.2, "gracePeriodSeconds": 0,
        "maxConsecutiveFailures": 1000,  # failing, not killed: only routing changes
        "command": {"value": f'test ! -e "{down}/$MESOS_TASK_ID"'}}])
    port = cluster.sim.service_port(app)
    wait_routed(port, live)
    sick, well = sorted(live)
    (down / sick).touch()
    wait_routed(port, {well})
    (down / sick).unlink()
    wait_routed(port, live)
