"""/metrics, /healthz, /status and /config against a real run.

HAProxy is started by the test (master-worker, as a systemd unit would) and
the daemon reloads it through ``--haproxy-master-socket``, so the test can
stop and restart HAProxy behind the daemon's back and cross-check the reload
count with HAProxy's own.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from servicerouter.demo.procs import Proc, free_port
from servicerouter.naming import service_name

from .conftest import needs_haproxy
from .harness import TLS, Simulator, master_reloads, running, wait_for, wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]


def scrape(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_endpoints_and_healthz_follow_haproxy(tmp_path: Path,
                                                      simulator: Simulator) -> None:
    port, live = simulator.launch("/mon/web", 2)
    cfg, admin, master = tmp_path / "haproxy.cfg", tmp_path / "admin.sock", tmp_path / "m.sock"
    common = ["--marathon", simulator.url, "--haproxy-socket", str(admin),
              "--stats-port", "0", "--http-port", "0", "--https-port", "0"]
    subprocess.run([sys.executable, "-m", "servicerouter", "render", *common, "-o", str(cfg)],
                   check=True, timeout=30)
    haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-S", str(master), "-f", str(cfg)],
                   tmp_path / "haproxy.log").start()
    wait_for(lambda: admin.exists(), what="HAProxy's admin socket")
    listen = free_port()
    daemon = Proc("servicerouter", [
        sys.executable, "-m", "servicerouter", "run", *common, "--haproxy-config", str(cfg),
        "--haproxy-master-socket", str(master), "--listen", f"127.0.0.1:{listen}",
        "--reconcile-interval", "0.5", "--min-reload-interval", "0.2",
    ], tmp_path / "servicerouter.log").start()
    base = f"http://127.0.0.1:{listen}"
    import httpx

    web = httpx.Client(base_url=base, timeout=10, verify=TLS)
    with running(haproxy, daemon):
        wait_for(lambda: web.get("/healthz").status_code == 200, 30, what="healthz 200")
        wait_routed(port, live)
        live = simulator.replace_one("/mon/web", live)
        wait_routed(port, live)
        simulator.create_app("/mon/api", instances=1)
        simulator.wait_running("/mon/api", 1)
        wait_for(lambda: web.get("/status", params={"app": "/mon/api"}).json()["counts"]
                 ["endpoints"] == 3, 15, what="/mon/api's task in /status")

        m = scrape(web.get("/metrics").text)
        haproxy_reloads = master_reloads(master)
        ours = sum(v for k, v in m.items() if k.startswith("servicerouter_reloads_total{"))
        # HAProxy runs on the daemon's own render: adopted, no reload; then /mon/api.
        assert ours == haproxy_reloads == 1
        assert m['servicerouter_reloads_total{reason="new_app"}'] >= 1
        assert m['servicerouter_runtime_commands_total{command="set_server_addr"}'] >= 1
        assert m["servicerouter_runtime_batches_total"] >= 1
        assert m["servicerouter_event_to_apply_seconds_count"] >= 1
        assert m['servicerouter_marathon_events_total{event_type="status_update_event"}'] >= 3
        assert m['servicerouter_sync_duration_seconds_count{kind="full"}'] >= 1
        assert m["servicerouter_reload_duration_seconds_count"] == 1
        assert m["servicerouter_apps"] == 2 and m["servicerouter_services"] == 2
        assert m['servicerouter_slots{state="used"}'] == 3
        assert m["servicerouter_marathon_up"] == 1 and m["servicerouter_haproxy_up"] == 1
        assert any(k.startswith("servicerouter_build_info{") for k in m)
        assert m['servicerouter_marathon_requests_total{endpoint="apps",outcome="success"}'] >= 1

        status = web.get("/status", params={"app": "/mon/web"}).json()
        (svc,) = status["services"]
        assert svc["backend"] == service_name("/mon/web", port)
        assert {e["task_id"] for e in svc["endpoints"]} == live
        assert all(e["haproxy"] == "ready" for e in svc["endpoints"])
        assert web.get("/status", params={"app": "/mon"}).json()["total"] == 2
        assert web.get("/status", params={"limit": "x"}).status_code == 400
        assert web.get("/config").text == cfg.read_text()

        # Bad input is named in /status and the others keep routing.
        simulator.create_app("/mon/badlabel", instances=0, labels={"HAPROXY_0_MODE": "udp"})
        simulator.create_app("/mon/dup", instances=0, labels={"HAPROXY_0_PORT": str(port)})

        def two_problems() -> dict[str, str] | None:
            found = {p["app_id"]: p["error"] for p in web.get("/status").json()["problems"]}
            return found if len(found) == 2 else None

        found = wait_for(two_problems, 15, what="two problems in /status")
        assert "HAPROXY_0_MODE='udp'" in found["/mon/badlabel"]
        assert f"HAPROXY_0_PORT='{port}' is already bound by app /mon/web" in found["/mon/dup"]
        wait_routed(port, live)

        # HAProxy stops behind the daemon's back: healthz says so, in one line of JSON.
        haproxy.stop()
        r = wait_for(lambda: (resp := web.get("/healthz")).status_code == 503 and resp, 10,
                     what="healthz 503")
        assert "HAProxy" in r.json()["reason"]
        assert re.search(r"^servicerouter_haproxy_up 0\.0$", web.get("/metrics").text, re.M)

        # It comes back from the file (without the runtime changes since): repaired.
        haproxy = Proc("haproxy", ["haproxy", "-W", "-db", "-S", str(master), "-f", str(cfg)],
                       tmp_path / "haproxy2.log").start()
        try:
            wait_for(lambda: web.get("/healthz").status_code == 200, 15, what="healthz 200")
            wait_routed(port, live)
        finally:
            haproxy.stop()
