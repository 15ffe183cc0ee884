"""7. Pre-allocated slots: what the slot defaults cost HAProxy at 10,000 apps x 5 tasks.

For each (min free, increment): ``servicerouter render`` of the same synthetic
``/v2/apps`` (10,000 apps, 5 running tasks each), then ``haproxy -c`` on it, then HAProxy
started on it (``-W``, master CLI) until the master reports its worker, the worker's RSS,
and a reload (master CLI ``reload`` until ``show proc`` confirms the new worker). Fewer
slots mean less config to parse and hold; growth past them is ``add server`` at runtime
on 2.6 (no reload) for the dynamic algorithms, a reload otherwise.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from servicerouter.demo.procs import Proc, free_port_range, wait_for
from servicerouter.haproxy.master_cli import MasterCLI

from .common import Context, Table, percentile, vm_rss_kb

TASKS = 5
VARIANTS = ((4, 8), (2, 4), (2, 1))  # (min free, increment); (2, 4) is the default


def payload(n: int, base: int = 10000) -> dict[str, Any]:
    apps = []
    for i in range(n):
        app_id = f"/slots/g{i // 100}/app{i}"
        apps.append({"id": app_id, "labels": {"HAPROXY_0_BIND_ADDR": "127.0.0.1"},
                     "portDefinitions": [{"port": base + i, "protocol": "tcp"}],
                     "tasks": [{"id": f"{app_id[1:].replace('/', '_')}.t{k}", "host": "127.0.0.1",
                                "ports": [20000 + (i * TASKS + k) % 40000],
                                "state": "TASK_RUNNING"} for k in range(TASKS)]})
    return {"apps": apps}


async def _start_and_reload(root: Path, cfg: Path) -> tuple[float, float, float]:
    master = root / "master.sock"
    proc = Proc("haproxy", ["haproxy", "-W", "-db", "-S", str(master), "-f", str(cfg)],
                root / "haproxy.log")
    t0 = time.perf_counter()
    try:
        proc.start()

        def worker() -> list[int]:
            return asyncio.run(MasterCLI(str(master)).show_proc()).worker_pids \
                if master.exists() else []

        pids = await asyncio.to_thread(wait_for, worker, 300, 0.02, "HAProxy's worker")
        started = time.perf_counter() - t0
        rss = sum(vm_rss_kb(p) for p in pids) / 1024
        t1 = time.perf_counter()
        await MasterCLI(str(master), timeout=120).reload(timeout=300, poll=0.02)
        reload_s = time.perf_counter() - t1
        return started, rss, reload_s
    finally:
        proc.stop()


def run(ctx: Context) -> list[Table]:
    n = 300 if ctx.quick else 10000
    table = Table("slots", f"Server slots at {n:,} apps x {TASKS} tasks: config, haproxy -c, "
                  "HAProxy start, worker RSS",
                  ["min free", "increment", "slots", "config MB", "haproxy -c ms",
                   "start → worker s", "worker RSS MB", "reload s"])
    root = ctx.dir("slots")
    apps = root / "apps.json"
    # Quick (the smoke test): ports found free now, as other runs may share the machine.
    base = free_port_range(n)[0] if ctx.quick else 10000
    apps.write_text(json.dumps(payload(n, base)))
    for min_free, increment in VARIANTS:
        cfg = root / f"haproxy-{min_free}-{increment}.cfg"
        subprocess.run([sys.executable, "-m", "servicerouter", "render", "--apps-json",
                        str(apps), "--output", str(cfg), "--haproxy-socket",
                        str(root / "admin.sock"), "--stats-port", "0", "--http-port", "0",
                        "--https-port", "0", "--slots-min-free", str(min_free),
                        "--slots-increment", str(increment)],
                       check=True, capture_output=True, timeout=300)
        text = cfg.read_text()
        checks = []
        for _ in range(1 if ctx.quick else 2):
            t0 = time.perf_counter()
            subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], check=True,
                           capture_output=True, timeout=300)
            checks.append((time.perf_counter() - t0) * 1000)
        started, rss, reload_s = asyncio.run(_start_and_reload(root, cfg))
        table.rows.append({"min free": min_free, "increment": increment,
                           "slots": text.count("\n    server "), "config MB": len(text) / 1e6,
                           "haproxy -c ms": percentile(checks, 50), "start → worker s": started,
                           "worker RSS MB": rss, "reload s": reload_s})
    table.notes.append("(2, 4) is the default: 8 slots for 5 tasks (it was (4, 8): 16). (2, 1) "
                       f"is exact plus two free. Frontends bind 127.0.0.1:{base}+i; the tasks "
                       "are never contacted (no health checks).")
    return [table]
