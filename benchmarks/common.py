"""Shared pieces of the benchmarks: result tables, machine facts and the processes
(simulator, daemon with HAProxy). Everything listens on 127.0.0.1 and every process
started here is stopped by whoever started it (``Proc.stop`` in ``finally``)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from servicerouter.demo.procs import Proc, free_port
from servicerouter.haproxy.master_cli import MasterCLI
from servicerouter.haproxy.runtime import RuntimeClient

PYTHON = sys.executable
# exec: the task must get SIGTERM itself; Mesos kills what a shell leaves behind.
BACKEND_CMD = f"exec {PYTHON} -m servicerouter.demo.backend"
STRATEGIES = ("runtime", "reload")


@dataclass
class Context:
    """What a benchmark gets from the runner."""

    tmp: Path
    quick: bool = False
    strategies: Sequence[str] = STRATEGIES

    def dir(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return d


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
               "|" + "---|" * len(self.columns)]
        for row in self.rows:
            out.append("| " + " | ".join(fmt(row.get(c, "")) for c in self.columns) + " |")
        out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "columns": self.columns,
                "rows": self.rows, "notes": self.notes}


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def machine() -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    return {
        "writing 1 GiB of new memory": f"{_fresh_memory_s():.2f} s",
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "haproxy": haproxy.splitlines()[0] if haproxy else "?",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": "yes" if shutil.which("wrk") else "no",
    }


def _fresh_memory_s() -> float:
    """Seconds a new process takes to write 1 GiB: the cost of memory the kernel must
    find pages for. HAProxy's start and ``haproxy -c`` at 10,000 apps (0.5-1 GB each)
    scale with it, not with the CPU: 0.3 s on most machines, several seconds on a VM
    whose host reclaims idle memory (2026-12-02: ``haproxy -c`` 1.6 s, run 7's 0.62 s,
    while every in-process step ran as fast as run 7's)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "b = b'\\x01' * (1 << 30)"], check=True, timeout=300)
    return time.perf_counter() - t0


def _status_kb(pid: int, field: str) -> int:
    """A KiB field of /proc/<pid>/status (``VmHWM``, ``VmRSS``); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def vm_hwm_kb(pid: int) -> int:
    """Peak RSS (VmHWM) of a live process, in KiB; 0 if gone."""
    return _status_kb(pid, "VmHWM")


def raise_nofile() -> None:
    """Raise this process's open-file limit to its hard limit (inherited by what it
    starts): 10,000 frontends are 10,000 file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_rss_kb(pid: int) -> int:
    """Current RSS (VmRSS) of a live process, in KiB; 0 if gone."""
    return _status_kb(pid, "VmRSS")


# ------------------------------------------------------------------ processes
class Simulator:
    def __init__(self, tmp: Path, *, executor: str = "none", kill_grace: float = 0.0,
                 apps_file: Path | None = None, port_range: str = "20000-60000",
                 extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [PYTHON, "-m", "servicerouter.simulator", "--listen", f"127.0.0.1:{self.port}",
                "--executor", executor, "--kill-grace", str(kill_grace),
                "--heartbeat-interval", "5", "--port-range", port_range,
                "--log-level", "warning", *extra]
        if apps_file is not None:
            argv += ["--apps", str(apps_file)]
        self.proc = Proc("simulator", argv, tmp / "simulator.log")
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self, timeout: float = 120.0) -> Simulator:
        self.proc.start(lambda: self.proc.alive() and self.http.get("/ping").status_code == 200,
                        timeout, 0.1, what="simulator /ping")
        return self

    def stop(self) -> None:
        self.http.close()
        self.proc.stop()

    def status(self) -> dict[str, Any]:
        return dict(self.http.get("/_sim/status").json())

    def apps(self) -> list[dict[str, Any]]:
        r = self.http.get("/v2/apps", params={"embed": "apps.tasks"})
        r.raise_for_status()
        return list(r.json()["apps"])

    def seq(self) -> int:
        return int(self.http.get("/_sim/events/log", params={"since": 1 << 62}).json()["seq"])


class Daemon:
    """``servicerouter run --start-haproxy`` with everything in ``tmp``."""

    def __init__(self, tmp: Path, marathon: str, strategy: str = "runtime",
                 extra: Sequence[str] = ()) -> None:
        self.tmp = tmp
        self.config = tmp / "haproxy.cfg"
        # Sockets in a short private folder: HAProxy refuses socket paths over 97
        # characters, and a run folder under pytest's tmp can be longer than that.
        # (Made by start(): a Daemon built but never started leaves nothing behind.)
        self.sockets = Path(tempfile.gettempdir(), f"srb-{os.getpid()}-{free_port()}")
        self.socket = self.sockets / "admin.sock"
        self.master_socket = self.sockets / "master.sock"
        self.listen_port = free_port()
        self.url = f"http://127.0.0.1:{self.listen_port}"
        self.log = tmp / "servicerouter.log"
        self.proc = Proc("servicerouter", [
            PYTHON, "-m", "servicerouter", "run", "--marathon", marathon,
            "--haproxy-config", str(self.config), "--haproxy-socket", str(self.socket),
            "--start-haproxy", "--haproxy-master-socket", str(self.master_socket),
            "--stats-port", "0", "--http-port", "0", "--https-port", "0",
            "--listen", f"127.0.0.1:{self.listen_port}", "--update-strategy", strategy,
            "--resync-interval", "3600", "--log-level", "info",
            # HAProxy's reload path is what is measured: one tenant ("/bench") creating
            # app after app would otherwise wait for reload tokens after 10 (README:
            # Reloads per tenant); marathon-lb has no such budget either.
            "--tenant-reload-interval", "0", *extra,
        ], self.log)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def pid(self) -> int:
        assert self.proc.popen is not None
        return self.proc.popen.pid

    def start(self, timeout: float = 60.0) -> Daemon:
        self.sockets.mkdir(mode=0o700)
        try:
            self.proc.start(lambda: self.proc.alive() and self.http.get("/healthz").status_code
                            == 200, timeout, 0.1, what="servicerouter /healthz 200")
        except BaseException:
            shutil.rmtree(self.sockets, ignore_errors=True)  # start stopped the process
            raise
        return self

    def stop(self) -> None:
        self.http.close()
        self.proc.stop(timeout=30)
        shutil.rmtree(self.sockets, ignore_errors=True)

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a metric's samples whose label text contains ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and (not labels or labels in line):
                head, _, value = line.rpartition(" ")
                if head.split("{")[0] == name:
                    total += float(value)
        return total

    def reloads(self) -> int:
        """HAProxy's own reload count (the master's ``show proc``)."""
        return asyncio.run(MasterCLI(str(self.master_socket)).show_proc(patience=30)).reloads

    def runtime(self) -> RuntimeClient:
        return RuntimeClient(str(self.socket))

    def ready_servers(self) -> int:
        states = asyncio.run(self.runtime().show_servers_state())
        return sum(1 for s in states if s.ready)

    def log_ms(self, pattern: str) -> list[float]:
        """Numbers ``N`` from log lines matching ``pattern ... N ms``."""
        rx = re.compile(pattern + r".*?([0-9.]+) ms")
        return [float(m.group(1)) for m in map(rx.search, self.proc.output().splitlines()) if m]


def write_apps(path: Path, apps: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"apps": apps}))
    return path


def fake_app(app_id: str, instances: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """An app for ``--executor none``: no cmd is run, no health checks (no probes of
    fake addresses)."""
    return {"id": app_id, "cmd": "sleep 3600", "instances": instances, "cpus": 0.01, "mem": 8,
            "portDefinitions": [{"port": 0, "protocol": "tcp"}], "labels": labels or {}}


def now() -> float:
    return time.time()
