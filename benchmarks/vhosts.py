"""Vhost routing: request latency through the shared HTTP frontend at N virtual hosts,
one ACL per host (today's render) against the host map (``--service-port-range``).

The config is the project's own render of N HTTP services with one vhost each, with an
operator template in front that leaves out the per-service frontends and has each
backend answer itself (``http-request return``), so only the routing is measured. wrk
(keep-alive, 1 thread, 8 connections) asks for the first host in route order and for the
last one (the worst case for a linear ACL scan).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from servicerouter import pool
from servicerouter.demo.procs import Proc, free_port, wait_for
from servicerouter.haproxy.render import render
from servicerouter.layout import DesiredService, Settings, build_layout
from servicerouter.model import Mode, Options, Service
from servicerouter.naming import service_name

from .common import Context, Table
from .zeroloss import parse_wrk

SERVICE_J2 = """backend {{ b.name }}
    mode http
    http-request return status 200 content-type text/plain string {{ b.name }}
"""


def _stack(root: Path, count: int, ranged: bool) -> tuple[Proc, int]:
    templates = root / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    (templates / "service.j2").write_text(SERVICE_J2)
    (templates / "range.j2").write_text("")  # no port-range frontend: vhosts only
    port = free_port()
    settings = Settings(socket_path=str(root / "admin.sock"), stats_port=0, http_port=port,
                        https_port=0, map_dir=str(root / "maps"),
                        service_port_range=(1, 65535) if ranged else (0, 0))
    desired = {}
    for i in range(count):
        app = f"/v/h{i:05d}"
        desired[service_name(app, 10000 + i)] = DesiredService(
            Service(app, 0, 10000 + i, Options(mode=Mode.HTTP, vhosts=(f"h{i:05d}.test",))), ())
    layout, table = build_layout(desired, {}, settings)
    (root / "maps").mkdir(exist_ok=True)
    for name, text in pool.map_files(layout, settings).items():
        (root / "maps" / name).write_text(text)
    config = root / "haproxy.cfg"
    config.write_text(render(layout, table, settings, templates))
    proc = Proc("haproxy", ["haproxy", "-db", "-f", str(config)], root / "haproxy.log")
    proc.start()
    return proc, port


def _load(port: int, host: str, seconds: float) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        return {}
    out = subprocess.run([wrk, "-t", "1", "-c", "8", "-d", f"{max(int(seconds), 1)}s",
                          "--latency", "-H", f"Host: {host}", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    return parse_wrk(out)


def run(ctx: Context) -> list[Table]:
    table = Table("vhosts", "Vhost routing at N virtual hosts: ACLs against the host map",
                  ["vhosts", "routing", "host", "requests/s", "p50 ms", "p99 ms",
                   "non-2xx"])
    sizes, seconds = ((10, 100), 1.0) if ctx.quick else ((10, 1000, 10000), 5.0)
    for count in sizes:
        for ranged in (False, True):
            root = ctx.dir(f"vhosts-{count}-{'map' if ranged else 'acl'}")
            proc, port = _stack(root, count, ranged)
            try:
                for host in (f"h{0:05d}.test", f"h{count - 1:05d}.test"):
                    wait_for(lambda h=host, p=port: _probe(p, h), 30, what=f"{host} answering")
                    got = _load(port, host, seconds)
                    table.rows.append({
                        "vhosts": count, "routing": "host map" if ranged else "ACL per host",
                        "host": "first" if host.startswith("h00000") else "last",
                        "requests/s": round(got.get("requests", 0) / max(
                            got.get("seconds", seconds), 1e-9)),
                        "p50 ms": got.get("p50 ms"), "p99 ms": got.get("p99 ms"),
                        "non-2xx": got.get("non2xx")})
            finally:
                proc.stop()
    table.notes.append(
        "HAProxy answers from the backend itself (no server), 1 wrk thread, 8 keep-alive "
        "connections; 'last' is the host the ACLs test last. Without wrk: empty rows.")
    return [table]


def _probe(port: int, host: str) -> bool:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": host},
                     timeout=5).status_code == 200
