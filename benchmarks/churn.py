"""Task replacement at a fixed rate against simulator (``--executor none``) + daemon +
HAProxy, with the dedicated admin-socket poller timing when each new task is ready.
Shared by ``convergence`` and ``reloads``."""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from servicerouter.demo.procs import Proc, wait_for
from servicerouter.naming import service_name

from .common import (
    Context,
    Daemon,
    Simulator,
    cpu_seconds,
    fake_app,
    percentile,
    write_apps,
)


@dataclass
class Phase:
    rate: float
    requested: int
    replaced: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    missing: int = 0
    reloads: int = 0
    commands: float = 0.0
    cpu_seconds: float = 0.0  # the daemon's user+system CPU while the kills were sent
    # A server HAProxy had ready for a task still running that stopped being ready (a new
    # worker without a change made while its config was loaded): ms until ready again.
    lost_ms: list[float] = field(default_factory=list)

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_seconds / self.seconds if self.seconds else float("nan")

    def row(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {"rate/s": self.rate, "replacements": self.replaced,
                "achieved/s": (self.replaced - 1) / self.seconds if self.seconds else 0.0,
                "p50 ms": percentile(lat, 50), "p99 ms": percentile(lat, 99),
                "max ms": max(lat) if lat else float("nan"), "not ready": self.missing,
                "HAProxy reloads": self.reloads,
                "reloads/1000": self.reloads * 1000 / self.replaced if self.replaced else 0.0,
                "runtime cmds": int(self.commands), "daemon CPU %": self.cpu_percent,
                "ready lost": len(self.lost_ms),
                "lost max ms": max(self.lost_ms) if self.lost_ms else 0.0}


class ChurnStack:
    """``apps`` apps x ``instances`` fake tasks, the daemon with ``strategy``, the poller."""

    def __init__(self, ctx: Context, name: str, strategy: str, apps: int, instances: int,
                 daemon_args: tuple[str, ...] = (), churn_apps: int | None = None,
                 timeout: float = 60.0) -> None:
        """``churn_apps``: replace tasks of the first this many apps only, and poll only
        their backends (a whole ``show servers state`` at 10,000 apps is 13.6 MB)."""
        self.root = ctx.dir(f"{name}-{strategy}")
        self.strategy = strategy
        self.n_tasks = apps * instances
        self.timeout = timeout
        # How often replace() looks whether the replacements are seen ready: a look is an
        # HTTP GET and a read of the poller's file; --quick (the smoke test) looks often.
        self.settle_poll = 0.05 if ctx.quick else 0.2
        self.churn_ids = {f"/bench/c{i}" for i in range(churn_apps if churn_apps else apps)}
        f = write_apps(self.root / "apps.json",
                       [fake_app(f"/bench/c{i}", instances) for i in range(apps)])
        self.sim = Simulator(self.root, apps_file=f, kill_grace=0.0)
        self.daemon = Daemon(self.root, self.sim.url, strategy, extra=daemon_args)
        self.poll_out = self.root / "poller.out"
        self.backends_file = self.root / "poller.backends"
        only = ["--backends", str(self.backends_file)] if churn_apps else []
        self.poller = Proc("poller", [sys.executable, "-m", "benchmarks.poller", "--socket",
                                      str(self.daemon.socket), "--out", str(self.poll_out),
                                      "--duration", "1200", *only], self.root / "poller.log",
                           env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        self.backend: dict[str, str] = {}
        self.pool: collections.deque[tuple[str, str]] = collections.deque()
        self.running: dict[str, dict[str, Any]] = {}  # new task id -> RUNNING log entry
        # (backend, addr, port) -> [(running since, task id)]; when each task was killed
        self.tasks_at: dict[tuple[str, str, int], list[tuple[float, str]]] = {}
        self.killed_at: dict[str, float] = {}
        self.seq = 0
        self._span = 0.0  # seconds from the first kill sent to the last

    def __enter__(self) -> ChurnStack:
        try:
            self.sim.start(timeout=max(self.timeout, 120))
            wait_for(lambda: self.sim.status()["tasks"] == self.n_tasks, self.timeout, 0.1,
                     what="tasks placed")
            wait_for(lambda: sum(1 for a in self.sim.apps() for t in a["tasks"]
                                 if t["state"] == "TASK_RUNNING") == self.n_tasks,
                     self.timeout, 0.5, what="tasks running")
            apps = self.sim.apps()
            self.seq = self.sim.seq()
            for a in apps:
                self.backend[a["id"]] = service_name(a["id"], a["portDefinitions"][0]["port"])
                if a["id"] in self.churn_ids:
                    self.pool.extend((a["id"], t["id"]) for t in a["tasks"])
                    for t in a["tasks"]:
                        self.tasks_at.setdefault((self.backend[a["id"]], "127.0.0.1",
                                                  int(t["ports"][0])), []).append((0.0, t["id"]))
            self.backends_file.write_text("".join(
                f"{self.backend[a]}\n" for a in sorted(self.churn_ids)))
            self.daemon.start(timeout=self.timeout)
            wait_for(lambda: self.daemon.ready_servers() == self.n_tasks, self.timeout, 0.5,
                     what="all tasks ready in HAProxy")
            self.poller.start()
            wait_for(lambda: self.poll_out.exists() and self.poll_out.stat().st_size > 0, 30,
                     0.05, what="poller output")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.poller.stop()
        self.daemon.stop()
        self.sim.stop()

    def poller_summary(self) -> dict[str, Any]:
        self.poller.stop()
        p = Path(str(self.poll_out) + ".summary")
        return dict(json.loads(p.read_text())) if p.exists() else {}

    # -------------------------------------------------------------------------
    def _learn(self) -> None:
        """New RUNNING tasks from the simulator's event log (bounded ring: read often)."""
        r = self.sim.http.get("/_sim/events/log", params={"since": self.seq, "limit": 10000})
        self._absorb(r.json())

    def _absorb(self, body: dict[str, Any]) -> None:
        for e in body["events"]:
            self.seq = max(self.seq, e["seq"])
            if e.get("eventType") == "status_update_event" and \
                    e.get("taskStatus") == "TASK_RUNNING" and e.get("taskId") not in self.running \
                    and e.get("appId") in self.churn_ids:
                self.running[e["taskId"]] = e
                self.pool.append((e["appId"], e["taskId"]))
                if e["appId"] in self.backend:
                    self.tasks_at.setdefault(self._key(e), []).append((e["time"], e["taskId"]))

    def _seen(self) -> dict[tuple[str, str, int], float]:
        seen: dict[tuple[str, str, int], float] = {}
        for line in self.poll_out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:
                key = (parts[2], parts[3], int(parts[4]))
                seen.setdefault(key, float(parts[0]))
        return seen

    def _lost(self, since: float) -> list[float]:
        """ms each server stayed not ready after it stopped being ready while its task
        still ran (its task not killed by then), for the poller's lines after ``since``."""
        ups: dict[tuple[str, str, int], list[float]] = {}
        downs: list[tuple[float, tuple[str, str, int]]] = []
        for line in self.poll_out.read_text().splitlines():
            parts = line.split()
            if len(parts) < 5 or float(parts[0]) < since:
                continue
            key = (parts[2], parts[3], int(parts[4]))
            if len(parts) == 6:
                downs.append((float(parts[0]), key))
            else:
                ups.setdefault(key, []).append(float(parts[0]))
        end = time.time()
        lost = []
        for t, key in downs:
            owners = [task for since_t, task in self.tasks_at.get(key, ()) if since_t <= t]
            if not owners or self.killed_at.get(owners[-1], end) <= t:
                continue  # unknown, or its task was killed: meant to go
            back = min((u for u in ups.get(key, ()) if u > t), default=end)
            lost.append((back - t) * 1000)
        return lost

    def _key(self, e: dict[str, Any]) -> tuple[str, str, int]:
        return (self.backend[e["appId"]], "127.0.0.1", int(e["ports"][0]))

    async def _kill_paced(self, rate: float, count: int,
                          during: Callable[[httpx.AsyncClient], Awaitable[Any]] | None = None
                          ) -> int:
        """Send the kills on schedule without waiting for each answer (so a slow reply
        never lowers the rate); learn new tasks from the event log every 0.25 s."""
        ok = 0

        async def kill(c: httpx.AsyncClient, app_id: str, task_id: str) -> None:
            nonlocal ok
            self.killed_at[task_id] = time.time()
            r = await c.delete(f"/v2/apps/{app_id.strip('/')}/tasks/{task_id}",
                               params={"scale": "false"})
            ok += r.status_code == 200

        async with httpx.AsyncClient(base_url=self.sim.url, timeout=30) as c:
            pending = []
            if during is not None:  # e.g. a new app (a reload) while tasks are replaced
                pending.append(asyncio.ensure_future(during(c)))
            t0 = time.monotonic()
            next_learn = t0 + 0.25
            for i in range(count):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.monotonic() >= next_learn or not self.pool:
                    r = await c.get("/_sim/events/log", params={"since": self.seq,
                                                                "limit": 10000})
                    self._absorb(r.json())
                    next_learn = time.monotonic() + 0.25
                if not self.pool:
                    break
                app_id, task_id = self.pool.popleft()
                pending.append(asyncio.ensure_future(kill(c, app_id, task_id)))
                self._span = time.monotonic() - t0
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 60)
        return ok

    def replace(self, rate: float, count: int, settle: float,
                during: Callable[[httpx.AsyncClient], Awaitable[Any]] | None = None) -> Phase:
        """Kill ``count`` tasks (oldest first) at ``rate``/s through the Marathon API;
        Marathon replaces each. Then wait up to ``settle`` s for the replacements."""
        phase = Phase(rate, count)
        started = time.time()
        self._learn()
        before = set(self.running)
        reloads0 = self.daemon.reloads()
        cmds0 = self.daemon.metric("servicerouter_runtime_commands_total")
        cpu0 = cpu_seconds(self.daemon.pid)
        phase.replaced = asyncio.run(self._kill_paced(rate, count, during))
        phase.seconds = self._span
        phase.cpu_seconds = cpu_seconds(self.daemon.pid) - cpu0

        def new() -> list[str]:
            return [t for t in self.running if t not in before]

        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            self._learn()
            seen = self._seen()
            if len(new()) >= phase.replaced and all(self._key(self.running[t]) in seen
                                                    for t in new()):
                break
            time.sleep(self.settle_poll)
        self._learn()
        seen = self._seen()
        timeline: list[str] = []  # kept with --keep: what each latency is made of
        for t in new():
            e = self.running[t]
            key = self._key(e)
            got = seen.get(key)
            if got is None:
                phase.missing += 1
            else:
                ms = (got - e["time"]) * 1000
                phase.latencies_ms.append(ms)
                timeline.append(f"{e['time']:.6f}\t{got:.6f}\t{ms:.1f}\t{t}"
                                f"\t{'/'.join(map(str, key))}\n")
        with (self.root / "replacements.tsv").open("a") as f:  # running at, seen at, ms
            f.writelines(sorted(timeline))
        phase.missing += max(0, phase.replaced - len(new()))
        phase.lost_ms = self._lost(started)
        phase.reloads = self.daemon.reloads() - reloads0
        phase.commands = self.daemon.metric("servicerouter_runtime_commands_total") - cmds0
        return phase
