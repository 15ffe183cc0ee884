"""6. Scale-out: what N event-stream subscribers (one servicerouter per load-balancer
host) cost the Marathon side per event, measured on the simulator.

For N in 0, 10, 100, 500: N raw ``GET /v2/events`` connections (the event types
servicerouter asks for), held by one client process that only counts bytes and notes
when each new task's ``TASK_RUNNING`` arrives. Tasks are then replaced at a fixed rate.
Per event: the simulator's CPU (user+system, from /proc) and the bytes it sent; per
``TASK_RUNNING``: the fan-out lag from the event's emit time to its arrival at the
LAST of the N subscribers. The simulator is a Python stand-in for Marathon (asyncio,
one queue per subscriber, the frame encoded once): Marathon's JVM costs differ, the
shape (cost linear in N per event) is what carries over.
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import urlencode

from servicerouter.demo.procs import wait_for
from servicerouter.marathon.events import DEFAULT_EVENT_TYPES

from .churn import ChurnStack
from .common import Context, Simulator, Table, cpu_seconds, fake_app, percentile, write_apps

TASK = re.compile(rb'"taskId":"([^"]+)"')


class Subscribers:
    def __init__(self, url: str, n: int) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.n = n
        self.bytes = 0
        self.arrivals: dict[bytes, list[float]] = {}  # task id -> arrival time per stream
        self.tasks: list[asyncio.Task[None]] = []
        self.attached = 0

    async def _one(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        query = urlencode([("event_type", t) for t in DEFAULT_EVENT_TYPES])
        writer.write(f"GET /v2/events?{query} HTTP/1.1\r\nHost: {self.host}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        self.attached += 1
        tail = b""
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    return
                self.bytes += len(chunk)
                if b"TASK_RUNNING" not in chunk and b"TASK_RUNNING" not in tail + chunk[:16]:
                    tail = chunk[-16:]
                    continue
                now = time.time()
                data = tail + chunk
                for line in data.split(b"\n"):
                    if b'"TASK_RUNNING"' in line and line.startswith(b"data:"):
                        m = TASK.search(line)
                        if m:
                            self.arrivals.setdefault(m.group(1), []).append(now)
                tail = data[-16:]
        finally:
            writer.close()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tasks = [loop.create_task(self._one()) for _ in range(self.n)]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _measure(stack: ChurnStack, n: int, rate: float, count: int, quick: bool = False
                   ) -> dict[str, float | int]:
    # Fixed waits for what has no end to wait for (heartbeats only; the fan-out of the last
    # replacements): the smoke run (--quick) measures nothing, and 10 replacements of
    # fake tasks to 3 subscribers on loopback fan out in milliseconds.
    attach_s, fanout_s = (0.3, 0.5) if quick else (1.0, 2.0)
    subs = Subscribers(stack.sim.url, n)
    subs.start(asyncio.get_running_loop())
    deadline = time.monotonic() + 60
    while subs.attached < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(attach_s)  # attach events delivered; heartbeats only from here
    pid = stack.sim.proc.popen.pid if stack.sim.proc.popen else 0
    seq0 = stack.sim.seq()
    cpu0, bytes0, t0 = cpu_seconds(pid), subs.bytes, time.monotonic()
    replaced = await stack._kill_paced(rate, count)
    await asyncio.sleep(fanout_s)  # the last replacements and their fan-out
    cpu, sent, span = cpu_seconds(pid) - cpu0, subs.bytes - bytes0, time.monotonic() - t0
    log = stack.sim.http.get("/_sim/events/log", params={"since": seq0, "limit": 100000}).json()
    events = [e for e in log["events"] if e.get("eventType") in DEFAULT_EVENT_TYPES]
    lags = []
    for e in events:
        if e.get("taskStatus") == "TASK_RUNNING":
            got = subs.arrivals.get(str(e.get("taskId")).encode(), [])
            if n and len(got) == n:
                lags.append((max(got) - e["time"]) * 1000)
    await subs.stop()
    return {"subscribers": n, "replacements": replaced, "events": len(events),
            "simulator CPU ms/event": 1000 * cpu / max(len(events), 1),
            "simulator CPU %": 100 * cpu / span,
            "KB sent/event": sent / 1024 / max(len(events), 1),
            "lag to last p50 ms": percentile(lags, 50) if n else float("nan"),
            "lag to last p99 ms": percentile(lags, 99) if n else float("nan"),
            "RUNNING seen by all": len(lags)}


def run(ctx: Context) -> list[Table]:
    table = Table("subscribers", "Scale-out: N event-stream subscribers, cost per event on "
                  "the Marathon side (simulator)",
                  ["subscribers", "replacements", "events", "simulator CPU ms/event",
                   "simulator CPU %", "KB sent/event", "lag to last p50 ms",
                   "lag to last p99 ms", "RUNNING seen by all"])
    sizes = (0, 3) if ctx.quick else (0, 10, 100, 500)
    rate, count = (10.0, 10) if ctx.quick else (20.0, 200)
    root = ctx.dir("subscribers")
    apps = write_apps(root / "apps.json", [fake_app(f"/bench/c{i}", 5) for i in range(20)])
    stack = ChurnStack.__new__(ChurnStack)
    ChurnStack.__init__(stack, ctx, "subscribers", "runtime", 20, 5)
    stack.sim = Simulator(root, apps_file=apps, kill_grace=0.0)
    try:
        stack.sim.start()
        wait_for(lambda: stack.sim.status()["tasks"] == 100, 60, 0.1, what="tasks placed")
        stack.seq = stack.sim.seq()
        for a in stack.sim.apps():
            stack.pool.extend((a["id"], t["id"]) for t in a["tasks"])
        for n in sizes:
            table.rows.append(asyncio.run(_measure(stack, n, rate, count, ctx.quick)))
    finally:
        stack.sim.stop()
    table.notes.append(
        f"{rate:.0f} replacements/s, {count} per row, 20 apps x 5 tasks, --executor none; "
        "'events' counts those of the types servicerouter subscribes to. All subscribers "
        "are one asyncio process on the same 2 cores; each only counts bytes and notes "
        "TASK_RUNNING arrivals. lag = emit time (simulator clock) to arrival at the last "
        "subscriber.")
    return [table]
