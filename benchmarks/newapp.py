"""New app → routed, with and without ``--service-port-range`` (issue #13).

For each cluster size, a stack (simulator with ``--executor none``, daemon with
``--start-haproxy``) starts with that many fake apps, then new apps are created one at a
time through the Marathon API. Latency = from the POST to the first poll of HAProxy's
admin socket where the new app's task address is a ready server and, in range mode,
``ports.map`` routes its service port to that backend. Without the range the server
exists only in the worker the reload started, so the same poll sees the reload path.
New apps are 1.2 s apart, so ``--min-reload-interval`` (1 s) never holds one back.

Then a few of the new apps change their backend options (``HAPROXY_0_MODE`` tcp to
http), which Marathon deploys as a new task: latency = from the PUT to the first poll
where that new task is a ready server of the backend its port routes to. In range mode
the app moves into a spare of its new shape; without the range it is a reload.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from servicerouter.demo.procs import free_port_range
from servicerouter.haproxy.runtime import HAProxyRuntimeError, RuntimeClient
from servicerouter.naming import service_name

from .common import Context, Daemon, Simulator, Table, percentile, raise_nofile, write_apps

GAP = 1.2  # seconds between new apps


def _app(app_id: str, port: int) -> dict[str, Any]:
    return {"id": app_id, "cmd": "sleep 3600", "instances": 1, "cpus": 0.01, "mem": 8,
            "portDefinitions": [{"port": port, "protocol": "tcp"}], "labels": {}}


def _tasks(sim: Simulator, app_id: str) -> list[dict[str, Any]]:
    r = sim.http.get(f"/v2/apps{app_id}", params={"embed": "app.tasks"})
    tasks = r.json()["app"].get("tasks", []) if r.status_code == 200 else []
    return [t for t in tasks if t.get("state") == "TASK_RUNNING" and t.get("ports")]


def _task_address(sim: Simulator, app_id: str, old: frozenset[str] = frozenset()
                  ) -> tuple[str, int] | None:
    """A running task's address, of a task not in ``old`` (ids)."""
    running = [t for t in _tasks(sim, app_id) if t["id"] not in old]
    return (running[0]["host"], int(running[0]["ports"][0])) if running else None


async def _routed(client: RuntimeClient, app_id: str, addr: tuple[str, int], port: int,
                  ports_map: str | None, mode: str | None = None) -> bool:
    """The new task's address is a ready server of the backend its port routes to.

    Reads only that backend (and, with the range, the port's map entry): a whole
    ``show servers state`` is 13.6 MB at 10,000 apps, and the probe would measure
    itself."""
    if ports_map is None:
        backend = service_name(app_id, port)
    else:
        text = await client.query(f"show map {ports_map}")
        entry = [f for line in text.splitlines() if len(f := line.split()) >= 3
                 and f[1] == str(port)]
        if not entry:
            return False
        backend = entry[0][2]
    try:
        servers = await client.show_servers_state(backend)
        if mode is not None and servers and await _mode(client, servers[0].backend_id) != mode:
            return False  # the backend with the app's old options still routes it
    except HAProxyRuntimeError:
        return False  # not there yet (the reload that adds it is still coming)
    return any((s.addr, s.port) == addr and s.ready for s in servers)


async def _mode(client: RuntimeClient, backend_id: int) -> str | None:
    """The backend's proxy mode (``tcp``, ``http``) from ``show stat``'s ``mode`` column.
    By id: a name would pick the frontend of the same name."""
    lines = (await client.query(f"show stat {backend_id} 2 -1")).splitlines()
    if len(lines) < 2 or not lines[0].startswith("# "):
        return None
    header = lines[0][2:].split(",")
    row = lines[1].split(",")
    return row[header.index("mode")] if "mode" in header and len(row) == len(header) \
        else None


def _measure(ctx: Context, ranged: bool, size: int, count: int, changes: int
             ) -> dict[str, dict[str, Any]]:
    gap = 0.1 if ctx.quick else GAP  # the smoke test times nothing
    # Up to 32000 (below the ephemeral ports): 10,022 ports do not fit below 20000, and
    # these fake tasks (--executor none) listen nowhere, so none can hold a range port.
    low, high = free_port_range(size + count + 2, high=32000)
    tmp = ctx.dir(f"newapp-{'range' if ranged else 'reload'}-{size}")
    apps = [_app(f"/bench/old{i}", low + 1 + i) for i in range(size)]
    sim = Simulator(tmp, apps_file=write_apps(tmp / "apps.json", apps)).start()
    extra = ["--service-port-range", f"{low}-{high}"] if ranged else []
    if ctx.quick:  # the smoke test times nothing: the reload path need not wait 1 s per app
        extra += ["--min-reload-interval", "0.2"]
    daemon = Daemon(tmp, sim.url, extra=extra)
    latencies: list[float] = []
    try:
        daemon.start(timeout=300)
        client = RuntimeClient(str(daemon.socket))
        ports_map = f"{daemon.config.resolve()}.d/ports.map" if ranged else None
        before = daemon.reloads()
        for i in range(count):
            app_id, port = f"/bench/new{i}", low + 1 + size + i
            started = time.perf_counter()
            sim.http.post("/v2/apps", json=_app(app_id, port)).raise_for_status()
            addr = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                addr = addr or _task_address(sim, app_id)
                if addr and asyncio.run(_routed(client, app_id, addr, port, ports_map)):
                    latencies.append(1000 * (time.perf_counter() - started))
                    break
                time.sleep(0.002)
            time.sleep(gap)
        reloads = daemon.reloads() - before
        before = daemon.reloads()
        changed = _change_options(sim, client, ports_map, low + 1 + size, changes, gap)
        change_reloads = daemon.reloads() - before
    finally:
        daemon.stop()
        sim.stop()
    mode = "range" if ranged else "reload path"
    return {"new": {"mode": mode, "apps before": size, "new apps": count,
                    "routed": len(latencies), **_spread(latencies),
                    "HAProxy reloads": reloads},
            "changed": {"mode": mode, "apps before": size, "option changes": changes,
                        "routed": len(changed), **_spread(changed),
                        "HAProxy reloads": change_reloads}}


def _spread(latencies: list[float]) -> dict[str, float]:
    nan = float("nan")
    return {"p50 ms": percentile(latencies, 50) if latencies else nan,
            "p99 ms": percentile(latencies, 99) if latencies else nan,
            "max ms": max(latencies, default=nan)}


def _change_options(sim: Simulator, client: RuntimeClient, ports_map: str | None,
                    first_port: int, count: int, gap: float) -> list[float]:
    """PUT ``HAPROXY_0_MODE=http`` on ``/bench/new0``.. and time each until its port routes
    to an HTTP backend where its new task is ready (ms each). (The new task may reach the
    old backend first, by the event that says it runs, before the app's new definition is
    fetched: that is not the change yet.)"""
    latencies = []
    for i in range(count):
        app_id, port = f"/bench/new{i}", first_port + i
        old = frozenset(t["id"] for t in _tasks(sim, app_id))
        started = time.perf_counter()
        sim.http.put(f"/v2/apps{app_id}", json={"labels": {"HAPROXY_0_MODE": "http"}},
                     params={"force": "true"}).raise_for_status()
        addr = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            addr = addr or _task_address(sim, app_id, old)
            if addr and asyncio.run(_routed(client, app_id, addr, port, ports_map, "http")):
                latencies.append(1000 * (time.perf_counter() - started))
                break
            time.sleep(0.002)
        time.sleep(gap)
    return latencies


def run(ctx: Context) -> list[Table]:
    table = Table("newapp", "New app → routed, with and without --service-port-range",
                  ["mode", "apps before", "new apps", "routed", "p50 ms", "p99 ms", "max ms",
                   "HAProxy reloads"])
    changed = Table("optionchange", "An app's backend options change (tcp → http) → its "
                    "new task routed, with and without --service-port-range",
                    ["mode", "apps before", "option changes", "routed", "p50 ms", "p99 ms",
                     "max ms", "HAProxy reloads"])
    raise_nofile()  # 10,000 frontends (and the range's 10,022 ports) are file descriptors
    sizes, count, changes = ((10,), 3, 2) if ctx.quick else ((0, 1000, 10000), 20, 5)
    for size in sizes:
        for ranged in (True, False):
            rows = _measure(ctx, ranged, size, count, changes)
            table.rows.append(rows["new"])
            changed.rows.append(rows["changed"])
    table.notes.append(
        "Fake tasks (--executor none, no health checks); the latency includes the "
        "simulator starting the task and the poll (every ~2 ms: the port's map entry and "
        "that one backend's servers, so the probe costs the same at any size). Range mode: "
        "default pool "
        "(--pool-spares 8), so the 9th new app of a size finds the pool empty and reloads "
        "once; that reload is in the p99 and max.")
    changed.notes.append(
        "After the new apps, the first of them change HAPROXY_0_MODE to http, one at a "
        "time, 1.2 s apart; Marathon (the simulator) deploys each as a new task. Range mode "
        "moves the app into an HTTP spare (the default pool has 8) and its old backend "
        "back to the pool; without the range each change is a reload. Done = the port "
        "routes to a backend whose mode (show stat) is http and the new task is ready in "
        "it.")
    return [table, changed]
