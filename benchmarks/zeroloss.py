"""5. Zero loss: HTTP load through HAProxy's frontend (127.0.0.1) to real backends
(simulator ``--executor local`` running ``python -m servicerouter.demo.backend``) while
tasks churn, both strategies.

Load: Debian ``wrk`` (installed with apt-get when missing and root; otherwise a small
asyncio client). wrk is closed-loop; a Lua ``delay()`` paces each connection (one request
per connection every ``PACE_MS`` plus its latency), so the rate is steady but not fixed,
and latencies are not corrected for coordinated omission.

Phase ``churn``: one task killed through the Marathon API every 2 s (the simulator sends
TASK_KILLING, waits ``--kill-grace 1`` then SIGTERMs; servicerouter drains on TASK_KILLING,
and the replacement is routed once its Marathon HTTP health check passes). Phase
``new apps``: a new app created every 2 s (each one is a reload, in both strategies).
Failed = non-2xx/3xx responses + socket errors (connect, read, write, timeout).

:func:`run_range` (``--only zeroloss_range``, in ``--all``): the ``new apps`` phase again
with ``--service-port-range`` (issue #13): the loaded app and the new ones have service
ports in the range, so each new app takes a spare backend and a ``ports.map`` entry.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from servicerouter.demo.procs import free_port_range, wait_for

from .common import PYTHON, Context, Daemon, Simulator, Table, percentile

# The demo backend: buffered writes (one send per response) and a 0.5 s lame duck on
# SIGTERM. exec, so the task itself gets SIGTERM: the executor, like Mesos, kills what a
# shell leaves behind the moment the shell exits.
BACKEND_CMD = f"exec {PYTHON} -m servicerouter.demo.backend"

CONNECTIONS, THREADS, PACE_MS = 24, 2, 8
HEALTH = [{"protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 10,
           "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 3}]


def ensure_wrk() -> str | None:
    path = shutil.which("wrk")
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-qq", "wrk"],
                ["sh", "-c", "apt-get update -qq && apt-get install -y -qq wrk"]):
        if subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0:
            break
    return shutil.which("wrk")


def web_app(app_id: str, instances: int, port: int = 0) -> dict[str, Any]:
    return {"id": app_id, "cmd": BACKEND_CMD, "instances": instances, "cpus": 0.1, "mem": 32,
            "portDefinitions": [{"port": port, "protocol": "tcp"}],
            "labels": {"HAPROXY_0_MODE": "http"}, "healthChecks": HEALTH}


# ------------------------------------------------------------------ load
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {"requests": 0, "non2xx": 0, "socket errors": 0}
    if m := re.search(r"(\d+) requests in ([0-9.]+)(\w+)", out):
        res["requests"] = int(m.group(1))
        res["seconds"] = _ms(m.group(2) + m.group(3)) / 1000
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        res["socket errors"] = sum(int(g) for g in m.groups())
        res["socket detail"] = "c{} r{} w{} t{}".format(*m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        res["non2xx"] = int(m.group(1))
    for p in ("50", "90", "99"):
        if m := re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", out, re.M):
            res[f"p{p} ms"] = _ms(m.group(1))
    if m := re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out):
        res["max ms"] = _ms(m.group(1))
    return res


PACE_LUA = "function delay()\n  return {ms}\nend\n"


class Load:
    """wrk (or the asyncio fallback) in a background thread for ``seconds``."""

    def __init__(self, root: Path, port: int, seconds: float, wrk: str | None) -> None:
        self.root, self.port, self.seconds, self.wrk = root, port, seconds, wrk
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    def join(self) -> dict[str, Any]:
        self.thread.join(self.seconds + 60)
        return self.result

    def _run(self) -> None:
        if self.wrk:
            lua = self.root / "pace.lua"
            lua.write_text(PACE_LUA.format(ms=PACE_MS))
            out = subprocess.run(
                [self.wrk, "-t", str(THREADS), "-c", str(CONNECTIONS), "-d",
                 f"{int(self.seconds)}s", "--timeout", "5s", "--latency", "-s", str(lua),
                 f"http://127.0.0.1:{self.port}/"],
                capture_output=True, text=True, timeout=self.seconds + 60).stdout
            (self.root / "wrk.out").write_text(out)
            self.result = {"tool": "wrk", **parse_wrk(out)}
        else:
            self.result = {"tool": "asyncio", **asyncio.run(_async_load(self.port,
                                                                        self.seconds))}


async def _async_load(port: int, seconds: float) -> dict[str, Any]:
    """Fallback: CONNECTIONS keep-alive HTTP/1.1 connections, each paced like wrk's."""
    lat: list[float] = []
    counts = {"non2xx": 0, "socket errors": 0}
    deadline = time.monotonic() + seconds

    async def conn() -> None:
        reader = writer = None
        while time.monotonic() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                t0 = time.perf_counter()
                writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                n = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await asyncio.wait_for(reader.readexactly(n), 5)
                lat.append((time.perf_counter() - t0) * 1000)
                if head[9:10] not in (b"2", b"3"):
                    counts["non2xx"] += 1
                if b"connection: close" in head.lower():
                    writer.close()
                    writer = None
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, AttributeError):
                counts["socket errors"] += 1
                if writer is not None:
                    writer.close()
                writer = None
            await asyncio.sleep(PACE_MS / 1000)
        if writer is not None:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(conn() for _ in range(CONNECTIONS)))
    return {"requests": len(lat) + counts["socket errors"], **counts,
            "seconds": time.monotonic() - t0, "p50 ms": percentile(lat, 50),
            "p90 ms": percentile(lat, 90), "p99 ms": percentile(lat, 99),
            "max ms": max(lat) if lat else float("nan")}


# ------------------------------------------------------------------ phases
def _running(sim: Simulator, app_id: str) -> list[dict[str, Any]]:
    r = sim.http.get(f"/v2/apps/{app_id.strip('/')}", params={"embed": "app.tasks"})
    tasks = [t for t in r.json()["app"].get("tasks", []) if t["state"] == "TASK_RUNNING"
             and all(h.get("alive") for h in t.get("healthCheckResults", [{}]))]
    return sorted(tasks, key=lambda t: t.get("startedAt") or "")


def _strategy(ctx: Context, strategy: str, wrk: str | None,
              churn_s: float, newapps_s: float, ranged: bool = False) -> list[dict[str, Any]]:
    """Both phases; ``ranged``: only ``new apps``, with ``--service-port-range``."""
    # Quiet time before the first phase and between the two, so that one phase's
    # replacements are not measured in the next. The smoke run (--quick) measures nothing.
    before_s, between_s = (0.2, 0.5) if ctx.quick else (1.0, 2.0)
    root = ctx.dir(f"zeroloss-{strategy}{'-range' if ranged else ''}")
    low, high = free_port_range(32) if ranged else (0, 0)
    sim = Simulator(root, executor="local", kill_grace=1.0, port_range="31000-32000")
    daemon = Daemon(root, sim.url, strategy, extra=[
        "--min-reload-interval", "1",
        *(["--service-port-range", f"{low}-{high}"] if ranged else [])])
    label = f"{strategy} + range" if ranged else strategy
    rows = []
    try:
        sim.start()
        r = sim.http.post("/v2/apps", json=web_app("/bench/web", 4, low))
        assert r.status_code == 201, r.text
        port = int(r.json()["portDefinitions"][0]["port"])
        wait_for(lambda: len(_running(sim, "/bench/web")) == 4, 30, 0.1, what="4 healthy tasks")
        daemon.start()
        wait_for(lambda: daemon.ready_servers() == 4, 30, 0.1, what="4 servers ready")
        time.sleep(before_s)
        if not ranged:  # phase 1: churn with drain
            rows.append(_churn(root, sim, daemon, strategy, port, churn_s, wrk))
            time.sleep(between_s)
        # phase 2: new apps (reloads in both strategies; in range mode spares, map entries)
        reloads0 = daemon.reloads()
        load = Load(root, port, newapps_s, wrk).start()
        t0 = time.monotonic()
        created = 0
        while time.monotonic() - t0 < newapps_s - 3:
            time.sleep(max(0.0, t0 + 1 + 2 * created - time.monotonic()))
            r = sim.http.post("/v2/apps", json=web_app(f"/bench/new{created}", 1,
                                                       low + 1 + created if ranged else 0))
            created += r.status_code == 201
        res = load.join()
        rows.append({"strategy": label, "phase": f"new apps: {created} created",
                     "reloads": daemon.reloads() - reloads0, **res})
    finally:
        daemon.stop()
        sim.stop()
    return rows


def _frontend(daemon: Daemon, port: int) -> dict[str, int]:
    """HAProxy's own counters of the loaded app's frontend and backend (one worker:
    they restart at a reload, so they are read only in a phase without one)."""
    from servicerouter.haproxy.runtime import RuntimeClient
    from servicerouter.naming import service_name

    name = service_name("/bench/web", port)
    rows = asyncio.run(RuntimeClient(str(daemon.socket)).show_stat())
    out: dict[str, int] = {}
    for row in rows:
        if row.get("pxname") == name and row.get("svname") in ("FRONTEND", "BACKEND"):
            for key in ("stot", "hrsp_5xx", "cli_abrt", "srv_abrt", "ereq", "eresp"):
                value = row.get(key) or "0"
                out[f"{row['svname'].lower()} {key}"] = int(value) if value.isdigit() else 0
    return out


def _churn(root: Path, sim: Simulator, daemon: Daemon, strategy: str, port: int,
           seconds: float, wrk: str | None) -> dict[str, Any]:
    reloads0 = daemon.reloads()
    load = Load(root, port, seconds, wrk).start()
    t0 = time.monotonic()
    time.sleep(1.0)  # wrk's connections are open
    before, reloads_before = _frontend(daemon, port), daemon.reloads()
    kills = 0
    while time.monotonic() - t0 < seconds - 3:
        time.sleep(max(0.0, t0 + 1 + 2 * kills - time.monotonic()))
        victims = _running(sim, "/bench/web")
        if len(victims) >= 3:
            sim.http.delete(f"/v2/apps/bench/web/tasks/{victims[0]['id']}",
                            params={"scale": "false"})
            kills += 1
    # HAProxy's view up to 1 s before wrk stops (wrk's own count includes what happens
    # to its connections as it exits).
    time.sleep(max(0.0, t0 + seconds - 1 - time.monotonic()))
    after, reloads_after = _frontend(daemon, port), daemon.reloads()
    res = load.join()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    if reloads_after != reloads_before:  # a new worker's counters start from zero
        haproxy = "n/a (reloaded meanwhile)"
    else:
        haproxy = (f"{delta.get('frontend stot', 0)} reconnects, "
                   f"{delta.get('frontend hrsp_5xx', 0)} 5xx, "
                   f"{delta.get('backend cli_abrt', 0) + delta.get('backend srv_abrt', 0)} "
                   f"aborts, {delta.get('frontend ereq', 0) + delta.get('backend eresp', 0)} "
                   "errors")
    return {"strategy": strategy, "phase": f"churn: {kills} kills with drain",
            "reloads": daemon.reloads() - reloads0, "HAProxy's view": haproxy, **res}


def run_range(ctx: Context) -> list[Table]:
    """The ``new apps`` phase with ``--service-port-range`` (runtime strategy)."""
    return run(ctx, ranged=True)


def run(ctx: Context, ranged: bool = False) -> list[Table]:
    wrk = ensure_wrk()
    # >= 100,000 requests. Quick: two kills; one new app (at 1 s; apps are created until 3 s
    # before the load ends, and wrk runs whole seconds: 3).
    churn_s, newapps_s = (5.0, 3.5) if ctx.quick else (42.0, 14.0)
    name = "zeroloss_range" if ranged else "zeroloss"
    title = ("Zero loss with --service-port-range: keep-alive HTTP load while apps are "
             "created" if ranged else "Zero loss: HTTP load through HAProxy while tasks churn")
    table = Table(name, title,
                  ["strategy", "phase", "tool", "requests", "seconds", "req/s", "non2xx",
                   "socket errors", "socket detail", "failed", "HAProxy's view", "p50 ms",
                   "p90 ms", "p99 ms", "max ms", "reloads"])
    for strategy in ("runtime",) if ranged else ctx.strategies:
        for row in _strategy(ctx, strategy, wrk, churn_s, newapps_s, ranged):
            row["failed"] = row.get("non2xx", 0) + row.get("socket errors", 0)
            secs = row.get("seconds") or 0
            row["req/s"] = row.get("requests", 0) / secs if secs else 0.0
            table.rows.append(row)
    table.notes.append(
        f"{'wrk' if wrk else 'asyncio client'}: {CONNECTIONS} keep-alive connections, "
        f"each pacing one request per {PACE_MS} ms + latency (closed loop, steady but not "
        "fixed rate; no coordinated-omission correction). App: 4 instances of "
        "servicerouter.demo.backend, HTTP mode, Marathon HTTP health check (mirrored as an "
        "HAProxy check), simulator --kill-grace 1, daemon --min-reload-interval 1.")
    table.notes.append(
        "HAProxy's view (churn phases): the loaded frontend's new client connections "
        "(wrk reconnects after an error), 5xx answers, client and server aborts and "
        "request/response errors, from 1 s after wrk starts to 1 s before it stops, read "
        "from HAProxy's own counters (show stat). wrk's 'failed' also counts what happens "
        "to its 24 connections as it exits.")
    if ranged:
        table.notes.append(
            "Range mode: daemon --service-port-range (32 ports, default --pool-spares 8); "
            "the loaded app and each new one (1 instance, same HTTP shape) have service "
            "ports in the range, so a new app is a spare backend plus a ports.map entry. "
            "Compare with the zeroloss table's 'new apps' rows (a reload per app).")
    return [table]
