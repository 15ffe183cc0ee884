"""5. Tail at scale: 10,000 apps x 5 tasks, the daemon with its defaults (reconcile every
10 s included), tasks of 50 of those apps replaced while the periodic reconcile reads
all 80,000 server slots.

Phases, one stack: 10/s for 22 s (at least two reconcile intervals), with ``/healthz``
probed every 20 ms meanwhile; 100/s for 10 s (the daemon's CPU, /healthz every 1 s), and
again with /healthz every 20 ms; 10/s for 15 s with a new
app created 2 s in (a reload of the 10,000-app config while other apps' tasks keep being
replaced). Latency = task replaced (its ``TASK_RUNNING``) → new server ready, from a
poller that reads only the 50 churned backends. Then: the daemon's peak RSS and the
HAProxy worker's RSS.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx

from servicerouter.demo.procs import wait_for

from .churn import ChurnStack
from .common import Context, Table, fake_app, vm_hwm_kb, vm_rss_kb

APPS, INSTANCES, CHURNED = 10000, 5, 50


class HealthProbe:
    """GET /healthz every ``interval`` s in a thread: latency and non-200 answers."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        self.url, self.interval = url, interval
        self.latencies_ms: list[float] = []
        self.started: list[float] = []  # time.time() each request was sent
        self.bad = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                self.started.append(time.time())
                try:
                    ok = c.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                self.bad += not ok
                self._stop.wait(self.interval)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def keep(self, path: Path, phase: str) -> None:
        """Append each request's send time and latency (kept with --keep)."""
        with path.open("a") as f:
            f.writelines(f"{t:.6f}\t{ms:.1f}\t{phase}\n"
                         for t, ms in zip(self.started, self.latencies_ms, strict=True))


def haproxy_worker_rss_mb(stack: ChurnStack) -> float:
    from servicerouter.haproxy.master_cli import MasterCLI

    info = asyncio.run(MasterCLI(str(stack.daemon.master_socket)).show_proc(patience=30))
    return sum(vm_rss_kb(p) for p in info.worker_pids) / 1024


def run(ctx: Context) -> list[Table]:
    apps, churned = (300, 10) if ctx.quick else (APPS, CHURNED)
    table = Table("tail", f"Tail at scale: {apps:,} apps x {INSTANCES} tasks, default "
                  "settings (reconcile every 10 s)",
                  ["phase", "rate/s", "replacements", "seconds", "p50 ms", "p99 ms", "max ms",
                   "not ready", "ready lost", "lost max ms", "HAProxy reloads",
                   "daemon CPU %", "/healthz max ms", "/healthz non-200"])
    mem = Table("tail_memory", f"Memory at {apps:,} apps x {INSTANCES} tasks",
                ["daemon peak RSS MB", "HAProxy worker RSS MB", "config MB", "config lines"])
    with ChurnStack(ctx, "tail", "runtime", apps, INSTANCES, churn_apps=churned,
                    timeout=60 if ctx.quick else 400) as stack:
        # (phase, rate/s, replacements, /healthz probe interval s)
        phases: list[tuple[str, float, int, float]] = [
            ("steady, across reconciles", 10.0, int(220 * (0.1 if ctx.quick else 1)), 0.02),
            ("100/s (CPU), /healthz every 1 s", 100.0, int(1000 * (0.1 if ctx.quick else 1)),
             1.0),
            ("100/s, /healthz every 20 ms", 100.0, int(1000 * (0.1 if ctx.quick else 1)), 0.02),
        ]
        for name, rate, count, interval in phases:
            with HealthProbe(stack.daemon.url, interval) as probe:
                phase = stack.replace(rate, count, 10.0)
            probe.keep(stack.root / "healthz.tsv", name)
            row = phase.row()
            table.rows.append({"phase": name, **row, "seconds": phase.seconds,
                               "/healthz max ms": max(probe.latencies_ms, default=float("nan")),
                               "/healthz non-200": probe.bad})

        async def new_app(c: httpx.AsyncClient) -> None:
            await asyncio.sleep(1.0 if ctx.quick else 2.0)
            app = fake_app("/bench/new-during-churn", 2)
            r = await c.post("/v2/apps", json=app)
            r.raise_for_status()

        reloads0 = stack.daemon.reloads()
        with HealthProbe(stack.daemon.url) as probe:
            phase = stack.replace(10.0, int(150 * (0.2 if ctx.quick else 1)), 30.0,
                                  during=new_app)
            wait_for(lambda: stack.daemon.reloads() > reloads0, 120, 0.2,
                     what="the new app's reload")
        probe.keep(stack.root / "healthz.tsv", "a new app's reload in flight")
        phase.reloads = stack.daemon.reloads() - reloads0
        table.rows.append({"phase": "a new app's reload in flight", **phase.row(),
                           "seconds": phase.seconds,
                           "/healthz max ms": max(probe.latencies_ms, default=float("nan")),
                           "/healthz non-200": probe.bad})
        text = stack.daemon.config.read_text()
        mem.rows.append({"daemon peak RSS MB": vm_hwm_kb(stack.daemon.pid) / 1024,
                         "HAProxy worker RSS MB": haproxy_worker_rss_mb(stack),
                         "config MB": len(text) / 1e6, "config lines": text.count("\n")})
    table.notes.append(
        f"Tasks of {churned} of the {apps:,} apps are replaced (oldest first); the poller "
        f"reads only their backends. p99 over each phase; 'HAProxy reloads' from the "
        "master's show proc. 'ready lost': servers of tasks still running that stopped "
        "being ready (a new worker started from a config rendered before they came), and "
        "the longest until they were ready again. /healthz is probed from another process "
        "during each phase (max = its slowest answer): every 20 ms, to catch a stall, but "
        "every 1 s in the CPU row, as an orchestrator's health check would (each answer "
        "costs the daemon ~0.8 ms of CPU: 50 a second are the 20 ms row's extra points). "
        "daemon CPU % = the daemon's user+system CPU over the phase's span, as % of one "
        "core.")
    return [table, mem]
