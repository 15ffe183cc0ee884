"""4. Scale: N apps x 5 tasks in the simulator (``--executor none``).

In-process (the daemon's own functions, timed one by one): fetch ``/v2/apps?embed=
apps.tasks`` (includes the simulator serializing it), JSON decode, parse, state + layout
(plan), render. Then the real daemon (``servicerouter run --start-haproxy``) against the
same simulator: its logged full-sync time, its peak RSS (VmHWM), the config size, and
HAProxy's own reload time on that config (``reload`` on the master CLI until ``show proc``
confirms a new worker), plus ``haproxy -c``. Finally: planning one task event
(``state.update_task`` + ``planner.plan``) at each N, many repetitions.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import time
from dataclasses import replace
from typing import Any

from servicerouter.haproxy.master_cli import MasterCLI
from servicerouter.haproxy.render import render
from servicerouter.layout import Settings, build_layout
from servicerouter.marathon.appsdecode import decode_apps
from servicerouter.marathon.parse import parse_apps
from servicerouter.marathon.parsecache import ParseCache
from servicerouter.planner import plan
from servicerouter.resolve import CachingResolver
from servicerouter.state import ClusterState

from .common import (
    Context,
    Daemon,
    Simulator,
    Table,
    fake_app,
    percentile,
    raise_nofile,
    vm_hwm_kb,
    write_apps,
)

TASKS = 5


def _in_process(sim: Simulator, n: int) -> tuple[dict[str, Any], ClusterState, Any, Any]:
    settings = Settings(socket_path="/tmp/admin.sock", stats_port=0, http_port=0, https_port=0)
    r = sim.http.get("/v2/apps", params={"embed": "apps.tasks"})
    content = r.content
    gc.collect()
    t0 = time.perf_counter()
    json.loads(content)  # the decoder before issue #11, for comparison
    json_ms = (time.perf_counter() - t0) * 1000
    gc.collect()
    gc.disable()  # as the daemon's full sync does (servicerouter.heap.quiet_gc)
    try:
        t0 = time.perf_counter()
        r = sim.http.get("/v2/apps", params={"embed": "apps.tasks"})
        t1 = time.perf_counter()
        data = decode_apps(r.content)
        del r
        t2 = time.perf_counter()
        cache, resolver = ParseCache(), CachingResolver()  # as the daemon's full sync
        result = parse_apps(data, sim.url, resolver, consume=True, cache=cache)
        del data
        t3 = time.perf_counter()
        state = ClusterState(settings)
        state.replace_all(result.apps)
        layout, table = build_layout(state.desired, {}, settings)
        t4 = time.perf_counter()
        text = render(layout, table, settings)
        t5 = time.perf_counter()
        # A resync of the same body: apps whose JSON did not change are reused.
        t6 = time.perf_counter()
        again = parse_apps(decode_apps(content), sim.url, resolver, consume=True, cache=cache)
        state.replace_all(again.apps)
        resync_ms = (time.perf_counter() - t6) * 1000
        del again
        labelled = _labelled(content)
        t7 = time.perf_counter()
        parse_apps(decode_apps(labelled), sim.url, CachingResolver(), consume=True,
                   cache=ParseCache())
        labelled_ms = (time.perf_counter() - t7) * 1000
        del labelled
    finally:
        gc.freeze()
        gc.enable()
    row = {"apps": n, "payload MB": len(content) / 1e6, "fetch ms": (t1 - t0) * 1000,
           "decode ms": (t2 - t1) * 1000, "json.loads ms": json_ms,
           "parse ms": (t3 - t2) * 1000, "decode+parse, 4 labels ms": labelled_ms,
           "plan ms": (t4 - t3) * 1000, "render ms": (t5 - t4) * 1000,
           "total ms": (t5 - t0) * 1000, "endpoints": state.endpoint_count,
           "resync decode+parse+state ms": resync_ms,
           "config MB": len(text) / 1e6}
    return row, state, layout, table


def _labelled(content: bytes) -> bytes:
    """The same body with four marathon-lb labels on every app, as on a typical cluster
    (the apps of the fake executor have none)."""
    body = json.loads(content)
    for i, app in enumerate(body["apps"]):
        app["labels"] = {"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "http",
                         "HAPROXY_0_VHOST": f"app{i}.scale.example.com",
                         "HAPROXY_0_BALANCE": "leastconn"}
    return json.dumps(body).encode()


def plan_one_event(state: ClusterState, layout: Any, table: Any, reps: int) -> list[float]:
    """µs per (update_task + plan) for one task moving to a new port; the plan is committed
    so the next repetition sees the result, as in the engine."""
    apps = list(state.apps.values())
    times: list[float] = []
    gc.collect()
    for i in range(reps):
        app = apps[(i * 7919) % len(apps)]
        task = app.tasks[i % len(app.tasks)]
        moved = replace(task, ports=tuple(p + 1 for p in task.ports))
        t0 = time.perf_counter()
        dirty = state.update_task(moved)
        p = plan(layout, table, state.desired, dirty)
        t1 = time.perf_counter()
        table.update(p.slots)
        times.append((t1 - t0) * 1e6)
    return times


async def _reload_times(master: str, n: int) -> list[float]:
    cli = MasterCLI(master, timeout=60)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await cli.reload(timeout=120, poll=0.01)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _one(ctx: Context, n: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    root = ctx.dir(f"scale-{n}")
    apps = write_apps(root / "apps.json",
                      [fake_app(f"/scale/g{i // 100}/app{i}", TASKS) for i in range(n)])
    sim = Simulator(root, apps_file=apps, port_range="20000-60000")
    daemon: Daemon | None = None
    try:
        t0 = time.perf_counter()
        sim.start(timeout=300)
        from servicerouter.demo.procs import wait_for
        wait_for(lambda: sim.status()["tasks"] == n * TASKS, 120, 0.2, what="tasks placed")
        pause = 0.1 if ctx.quick else 0.5  # quiet time before measuring; quick measures nothing
        time.sleep(pause)
        sim_start = time.perf_counter() - t0
        inproc, state, layout, table = _in_process(sim, n)
        inproc["sim start s"] = sim_start
        reps = 2000 if ctx.quick else 20000
        times = plan_one_event(state, layout, table, reps)
        planrow = {"apps": n, "repetitions": reps, "p50 µs": percentile(times, 50),
                   "p99 µs": percentile(times, 99), "max µs": max(times)}
        del state, layout, table
        gc.collect()
        daemon = Daemon(root, sim.url, "runtime", extra=["--min-reload-interval", "0"])
        t0 = time.perf_counter()
        daemon.start(timeout=300)
        ready_s = time.perf_counter() - t0
        syncs = daemon.log_ms("full sync from")
        first_reload = daemon.log_ms(r"reloaded HAProxy \(\w+[;)]")
        cfg_bytes = daemon.config.stat().st_size
        cfg_lines = daemon.config.read_text().count("\n")
        t0 = time.perf_counter()
        chk = subprocess.run(["haproxy", "-c", "-q", "-f", str(daemon.config)],
                             capture_output=True, text=True)
        check_ms = (time.perf_counter() - t0) * 1000
        reloads = asyncio.run(_reload_times(str(daemon.master_socket), 1 if ctx.quick else 3))
        time.sleep(pause)
        hwm = vm_hwm_kb(daemon.pid)
        drow = {"apps": n, "full sync ms (daemon log)": syncs[0] if syncs else float("nan"),
                "start → healthy s": ready_s,
                "first render+validate+reload ms": first_reload[0] if first_reload else
                float("nan"),
                "daemon peak RSS MB": hwm / 1024, "config MB": cfg_bytes / 1e6,
                "config lines": cfg_lines,
                "haproxy -c ms": check_ms if chk.returncode == 0 else f"failed: {chk.stderr[:80]}",
                "HAProxy reload ms (median)": percentile(reloads, 50)}
        return inproc, drow, planrow
    finally:
        if daemon is not None:
            daemon.stop()
        sim.stop()


def run(ctx: Context) -> list[Table]:
    raise_nofile()
    sizes = (50, 200) if ctx.quick else (1000, 10000)
    t1 = Table("scale_inprocess", f"Full sync in-process (apps x {TASKS} tasks)",
               ["apps", "endpoints", "payload MB", "fetch ms", "decode ms", "json.loads ms",
                "parse ms", "decode+parse, 4 labels ms",
                "plan ms", "render ms", "total ms", "resync decode+parse+state ms",
                "config MB"])
    t2 = Table("scale_daemon", f"The daemon at scale (apps x {TASKS} tasks, runtime strategy)",
               ["apps", "full sync ms (daemon log)", "start → healthy s",
                "first render+validate+reload ms", "daemon peak RSS MB", "config MB",
                "config lines", "haproxy -c ms", "HAProxy reload ms (median)"])
    t3 = Table("scale_plan", "Planning one task event (state.update_task + planner.plan)",
               ["apps", "repetitions", "p50 µs", "p99 µs", "max µs"])
    for n in sizes:
        a, b, c = _one(ctx, n)
        t1.rows.append(a)
        t2.rows.append(b)
        t3.rows.append(c)
    t1.notes.append("fetch = HTTP GET /v2/apps?embed=apps.tasks from the simulator on loopback "
                    "(includes the simulator serializing it); plan = ClusterState.replace_all + "
                    "build_layout; total = fetch+decode+parse+plan+render. decode is msgspec "
                    "(marathon/appsdecode.py), json.loads ms the old decoder on the same "
                    "bytes; the cyclic GC is paused through the sync as in the daemon. "
                    "resync: the same body decoded, parsed and applied again, as a periodic "
                    "resync with nothing changed (marathon/parsecache.py reuses every app). "
                    "4 labels: the same body with HAPROXY_GROUP, _0_MODE, _0_VHOST and "
                    "_0_BALANCE on every app, decoded and parsed cold (a first full sync).")
    t2.notes.append("full sync ms is what the daemon logs for fetch+decode+parse+state (render, "
                    "haproxy -c and the first start are in the next column). Peak RSS is "
                    "VmHWM of the daemon process after start-up and the reloads.")
    t2.notes.append("The update strategy does not change any of these (same code path); "
                    "only the runtime strategy is run here.")
    return [t1, t2, t3]
