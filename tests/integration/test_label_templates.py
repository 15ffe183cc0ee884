"""--allow-label-templates through the real HAProxy: a broken template leaves only
its own app out, and the others keep being routed and updated."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .conftest import needs_haproxy
from .harness import TLS, Daemon, Simulator, responders, running, wait_for, wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]

GOOD = ("\nbackend {backend}\n  balance {balance}\n  mode {mode}\n"
        "  http-response set-header X-Raw {backend}\n")
BROKEN = "backend {backend}\n  mode http\n  no-such-keyword here\n"


def test_a_broken_label_template_leaves_only_its_app_out(tmp_path: Path,
                                                          simulator: Simulator) -> None:
    good_port, good = simulator.launch("/raw/good", 1, labels={
        "HAPROXY_0_MODE": "http", "HAPROXY_0_BACKEND_HEAD": GOOD})
    simulator.create_app("/raw/broken", instances=1, labels={"HAPROXY_0_BACKEND_HEAD": BROKEN})
    plain_port, plain = simulator.launch("/raw/plain", 1)
    daemon = Daemon(tmp_path, simulator.url, "--allow-label-templates").start()
    with running(daemon):
        wait_routed(good_port, good)
        wait_routed(plain_port, plain)
        r = httpx.get(f"http://127.0.0.1:{good_port}/", timeout=5, verify=TLS)
        assert r.headers["x-raw"].startswith("raw_good_")
        problems = daemon.status(app="/raw/broken")["problems"]
        assert any("no-such-keyword" in p["error"] for p in problems), problems
        broken_port = simulator.service_port("/raw/broken")
        assert f":{broken_port}" not in daemon.config.read_text()
        # The others keep being updated.
        plain = simulator.replace_one("/raw/plain", plain)
        wait_routed(plain_port, plain)
        # Fixing the template brings the app in.
        r = simulator.http.put("/v2/apps/raw/broken", params={"force": "true"}, json={
            "labels": {"HAPROXY_0_BACKEND_HEAD": GOOD}})
        assert r.status_code == 200, r.text
        wait_for(lambda: f":{broken_port}" in daemon.config.read_text(), 30,
                 what="the fixed app rendered")


def test_a_label_template_cannot_bind_another_apps_port(tmp_path: Path,
                                                         simulator: Simulator) -> None:
    """A second bind line in FRONTEND_HEAD passes haproxy -c (it binds nothing), and with
    SO_REUSEPORT the kernel would split the other app's connections between the two."""
    victim_port, victim = simulator.launch("/raw/victim", 1)
    daemon = Daemon(tmp_path, simulator.url, "--allow-label-templates").start()
    with running(daemon):
        wait_routed(victim_port, victim)
        simulator.launch("/raw/thief", 1, labels={"HAPROXY_0_FRONTEND_HEAD": (
            "frontend {backend}\n  bind {bindAddr}:{servicePort}\n"
            f"  bind *:{victim_port}\n  mode {{mode}}\n")})
        problems = wait_for(lambda: daemon.status(app="/raw/thief")["problems"], 30,
                            what="the thief's template refused")
        assert any("may bind only the service's own address" in p["error"]
                   for p in problems), problems
        assert daemon.config.read_text().count(f"bind *:{victim_port}") == 1
        new_port, new = simulator.launch("/raw/new", 1)
        wait_routed(new_port, new)
        wait_routed(victim_port, victim)
        assert responders(victim_port, 12) == victim


def test_render_with_templates_leaves_out_only_the_broken_apps(tmp_path: Path) -> None:
    """render and sync vet each template app alone, as the daemon does: one broken (or
    refused) template used to fail the whole run, so no other app was ever updated."""
    import json
    import subprocess
    import sys

    def app(app_id: str, port: int, labels: dict[str, str]) -> dict[str, object]:
        return {"id": app_id, "portDefinitions": [{"port": port}], "labels": labels,
                "tasks": [{"id": f"{app_id[1:]}.1", "host": "127.0.0.1", "ports": [31000],
                           "state": "TASK_RUNNING"}]}

    apps = tmp_path / "apps.json"
    apps.write_text(json.dumps({"apps": [
        app("/raw/good", 10001, {"HAPROXY_0_MODE": "http", "HAPROXY_0_BACKEND_HEAD": GOOD}),
        app("/raw/broken", 10002, {"HAPROXY_0_BACKEND_HEAD": BROKEN}),
        app("/raw/refused", 10003, {"HAPROXY_0_BACKEND_HEAD":
                                    "backend {backend}\n  server x 127.0.0.1:1\n"}),
        app("/raw/plain", 10004, {})]}))
    out = subprocess.run([sys.executable, "-m", "servicerouter", "render", "--apps-json",
                          str(apps), "--allow-label-templates"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "backend raw_good_10001" in out.stdout and "backend raw_plain_10004" in out.stdout
    assert "raw_broken" not in out.stdout and "raw_refused" not in out.stdout
    assert "app /raw/broken: its template labels do not validate alone" in out.stderr
    assert "no-such-keyword" in out.stderr
    assert "app /raw/refused: " in out.stderr and "uses 'server'" in out.stderr
    (tmp_path / "haproxy.cfg").write_text(out.stdout)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_marathon_lb_documented_backend_http_options_is_served(tmp_path: Path,
                                                               simulator: Simulator) -> None:
    """marathon-lb's Longhelp example label for BACKEND_HTTP_OPTIONS holds `{ ssl_fc }`
    in single braces, as marathon-lb inserted it without str.format; it was refused
    (KeyError: ' ssl_fc ') and the app left out."""
    import json

    options = ("  option forwardfor\n  http-request set-header X-Forwarded-Port %[dst_port]\n"
               "  http-request add-header X-Forwarded-Proto https if { ssl_fc }\n"
               "  http-request set-header X-Team web\n")
    port, tasks = simulator.launch("/raw/options", 1, labels={
        "HAPROXY_0_MODE": "http", "HAPROXY_0_BACKEND_HTTP_OPTIONS": options})
    daemon = Daemon(tmp_path, simulator.url, "--allow-label-templates").start()
    with running(daemon):
        wait_routed(port, tasks)
        r = httpx.get(f"http://127.0.0.1:{port}/_echo", timeout=5, verify=TLS)
        headers = {k.lower(): v for k, v in json.loads(r.text)["headers"].items()}
        assert (headers["x-team"], headers["x-forwarded-port"]) == ("web", str(port))
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert "x-forwarded-proto" not in headers  # plain HTTP: the `if { ssl_fc }` held
        assert daemon.status(app="/raw/options")["problems"] == []
