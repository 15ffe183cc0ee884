"""Real processes for integration tests: the simulator, the daemon, HAProxy.

Everything listens on loopback; every process started here is stopped by
the fixture that started it (process groups, so nothing is left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from servicerouter.demo.procs import Proc, claim, free_port, unclaim, wait_for
from servicerouter.haproxy.master_cli import MasterCLI, ProcInfo
from servicerouter.haproxy.runtime import RuntimeClient
from servicerouter.haproxy.runtime_parse import ServerState

PYTHON = sys.executable
# exec: the task must get SIGTERM itself; Mesos kills what a shell leaves behind.
BACKEND_CMD = f"exec {PYTHON} -m servicerouter.demo.backend"
# Made once, for every client here (``verify=TLS``): an httpx client made without one loads
# the CA bundle again, ~30 ms of CPU each, more than the requests of a routing check; the
# tests make one per simulator, daemon and routing check, and per httpx.get.
TLS = httpx.create_ssl_context()


# HAProxy's config before anything is configured (what Debian's package ships, less
# its listeners): a master-worker HAProxy can start on it and be reloaded.
EMPTY_CFG = """global
    log /dev/log local0
defaults
    log global
    mode tcp
    timeout connect 5s
    timeout client 50s
    timeout server 50s
"""


def _task_port_range() -> str:
    """The claim (procs.claim) of a simulator's 1,000 task ports, ``tasks-<first>``: two
    simulators of concurrent test workers on the same range handed their tasks the same
    ports. All ten taken (not with two workers): shared, as before (the simulator still
    checks each port free)."""
    starts = list(range(20000, 30000, 1000))
    random.shuffle(starts)
    return next((f"tasks-{low}" for low in starts if claim(f"tasks-{low}")),
                f"tasks-{starts[0]}")


class Simulator:
    def __init__(self, tmp: Path, *, kill_grace: float = 1.0, extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Task host ports of its own: concurrent runs sharing the default 31000-32000
        # raced for ports, and a task dying right after TASK_RUNNING broke routing checks.
        self._range = _task_port_range()
        low = int(self._range.split("-")[1])
        self.proc = Proc("simulator", [
            PYTHON, "-m", "servicerouter.simulator", "--listen", f"127.0.0.1:{self.port}",
            "--executor", "local", "--heartbeat-interval", "1", "--kill-grace", str(kill_grace),
            "--port-range", f"{low}-{low + 999}", "--task-log-dir", str(tmp / "tasks"),
            *(extra or []),
        ], tmp / "simulator.log")
        self.http = httpx.Client(base_url=self.url, timeout=10, verify=TLS)
        self._service_ports: set[int] = set()  # handed to apps of this simulator

    def service_port_for_new_app(self) -> int:
        """A port free now and not the service port of an app created before: an app
        left out (a bad label) binds nothing, so its port looks free, but Marathon still
        refuses it to another app."""
        for _ in range(100):
            port = free_port()
            if port not in self._service_ports:
                self._service_ports.add(port)
                return port
        raise RuntimeError("no free port that no app of this simulator holds")

    def start(self) -> Simulator:
        self.proc.start(lambda: self.http.get("/ping").status_code == 200,
                        what="simulator /ping")
        return self

    def stop(self) -> None:
        self.http.close()
        self.proc.stop()
        unclaim(self._range)

    def create_app(self, app_id: str, instances: int = 2, ports: int = 1,
                   labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        # Explicit free service ports: HAProxy binds with SO_REUSEPORT, so two runs
        # on one machine sharing a port would silently share its connections.
        body = {"id": app_id, "cmd": BACKEND_CMD, "instances": instances, "cpus": 0.1,
                "mem": 32, "portDefinitions": [{"port": self.service_port_for_new_app(),
                                                "protocol": "tcp"} for _ in range(ports)],
                "labels": labels or {}, **extra}
        r = self.http.post("/v2/apps", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def launch(self, app_id: str, instances: int = 2, **kw: Any) -> tuple[int, set[str]]:
        """Create an app and wait for its tasks: (service port 0, running task ids)."""
        self.create_app(app_id, instances=instances, **kw)
        live = self.wait_running(app_id, instances)
        return self.service_port(app_id), live

    def replace_one(self, app_id: str, live: set[str]) -> set[str]:
        """Kill one task; return the running set once Marathon has replaced it."""
        victim = sorted(live)[0]
        self.kill_task(app_id, victim)
        return self.wait_tasks(app_id, lambda t: len(t) == len(live) and victim not in t,
                               what="a replacement")

    def app(self, app_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v2/apps/{app_id.strip('/')}", params={"embed": "app.tasks"})
        r.raise_for_status()
        return dict(r.json()["app"])

    def service_port(self, app_id: str, index: int = 0) -> int:
        return int(self.app(app_id)["portDefinitions"][index]["port"])

    def running(self, app_id: str) -> set[str]:
        return {t["id"] for t in self.app(app_id).get("tasks", [])
                if t["state"] == "TASK_RUNNING"}

    def wait_tasks(self, app_id: str, ok: Callable[[set[str]], bool], timeout: float = 20.0,
                   what: str = "tasks") -> set[str]:
        """Wait until the app's running task ids satisfy ``ok``; return them."""
        def check() -> set[str] | None:
            tasks = self.running(app_id)
            return tasks if ok(tasks) else None

        return set(wait_for(check, timeout, what=f"{what} of {app_id}"))

    def wait_running(self, app_id: str, n: int, timeout: float = 20.0) -> set[str]:
        return self.wait_tasks(app_id, lambda t: len(t) == n, timeout, f"{n} running tasks")

    def kill_task(self, app_id: str, task_id: str) -> None:
        r = self.http.delete(f"/v2/apps/{app_id.strip('/')}/tasks/{task_id}",
                             params={"scale": "false"})
        assert r.status_code == 200, r.text

    def scale(self, app_id: str, instances: int) -> None:
        r = self.http.put(f"/v2/apps/{app_id.strip('/')}", json={"instances": instances},
                          params={"force": "true"})
        assert r.status_code == 200, r.text

    def delete_app(self, app_id: str) -> None:
        r = self.http.delete(f"/v2/apps/{app_id.strip('/')}")
        assert r.status_code == 200, r.text


class Daemon:
    """``servicerouter run --start-haproxy`` with everything in ``tmp``."""

    def __init__(self, tmp: Path, marathon: str, *extra: str, start_haproxy: bool = True) -> None:
        """``start_haproxy=False``: reload an HAProxy started elsewhere through
        ``master_socket`` (see :class:`ExternalHAProxy`)."""
        self.tmp = tmp
        self.config = tmp / "haproxy.cfg"
        self.socket = tmp / "admin.sock"
        self.master_socket = tmp / "master.sock"
        self.listen_port = free_port()
        self.url = f"http://127.0.0.1:{self.listen_port}"
        self.proc = Proc("servicerouter", [
            PYTHON, "-m", "servicerouter", "run", "--marathon", marathon,
            "--haproxy-config", str(self.config), "--haproxy-socket", str(self.socket),
            *(["--start-haproxy"] if start_haproxy else []),
            "--haproxy-master-socket", str(self.master_socket),
            "--stats-port", "0", "--http-port", "0", "--https-port", "0",
            "--listen", f"127.0.0.1:{self.listen_port}", "--min-reload-interval", "0.2",
            "--reconcile-interval", "1", "--resync-interval", "30", "--stall-timeout", "5",
            # Tests create app after app in one top-level group (one tenant); the reload
            # budget is tested where it is asked for (test_daemon_lifecycle).
            "--tenant-reload-interval", "0",
            "--log-level", "debug", *extra,
        ], tmp / "servicerouter.log")
        self.http = httpx.Client(base_url=self.url, timeout=10, verify=TLS)

    def start(self, wait_healthy: bool = True) -> Daemon:
        healthy = (lambda: self.http.get("/healthz").status_code == 200) if wait_healthy else None
        self.proc.start(healthy, 30, what="servicerouter /healthz 200")
        return self

    def stop(self) -> int | None:
        self.http.close()
        return self.proc.stop()

    def status(self, **params: str) -> dict[str, Any]:
        return dict(self.http.get("/status", params=params).json())

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    # HAProxy's own view ------------------------------------------------------
    def reloads(self) -> int:
        """The master's reload count, from HAProxy itself (``show proc``)."""
        return master_reloads(self.master_socket)

    def proc_info(self) -> ProcInfo:
        """``show proc``, waiting out the moment the master refuses after a reload."""
        return asyncio.run(MasterCLI(str(self.master_socket)).show_proc(patience=30))

    def servers(self, backend: str | None = None) -> list[ServerState]:
        return asyncio.run(RuntimeClient(str(self.socket)).show_servers_state(backend))

    def check_ports(self, backend: str) -> dict[int, int]:
        """Port → the port HAProxy health-checks it on (0: that port itself), of each
        server in use (``srv_check_port`` of ``show servers state``)."""
        text = asyncio.run(RuntimeClient(str(self.socket)).query(
            f"show servers state {backend}"))
        header = next(ln for ln in text.splitlines() if ln.startswith("# be_id")).split()[1:]
        out = {}
        for fields in (ln.split() for ln in text.splitlines()):
            if len(fields) == len(header) and not fields[0].startswith("#"):
                row = dict(zip(header, fields, strict=True))
                if row["srv_port"] != "1":
                    out[int(row["srv_port"])] = int(row["srv_check_port"])
        return out

    def ready_addresses(self, backend: str) -> set[str]:
        return {f"{s.addr}:{s.port}" for s in self.servers(backend) if s.ready}


class ExternalHAProxy:
    """A master-worker HAProxy the test starts itself (``haproxy -W -S sock -f cfg``), as an
    init system would, on the files a :class:`Daemon` in ``tmp`` uses. It starts from a
    config with only the admin socket; the daemon renders the real one."""

    def __init__(self, tmp: Path) -> None:
        self.config = tmp / "haproxy.cfg"
        self.master_socket = tmp / "master.sock"
        self.socket = tmp / "admin.sock"
        self.proc = Proc("haproxy", ["haproxy", "-W", "-db", "-S",
                                     f"{self.master_socket},mode,600", "-f", str(self.config)],
                         tmp / "haproxy.log")

    def start(self) -> ExternalHAProxy:
        if not self.config.exists():
            self.config.write_text(f"global\n    stats socket {self.socket} mode 600 level admin "
                                   "expose-fd listeners\n")
        self.proc.start(lambda: asyncio.run(MasterCLI(str(self.master_socket)).show_proc())
                        .workers, what="haproxy master with a worker")
        return self

    def stop(self) -> None:
        self.proc.stop()

    def reloads(self) -> int:
        return master_reloads(self.master_socket)


def master_reloads(master_socket: Path) -> int:
    """The master's reload count, from HAProxy itself (``show proc``), waiting out the
    moment its socket refuses while it re-executes itself for a reload."""
    return asyncio.run(MasterCLI(str(master_socket)).show_proc(patience=30)).reloads


def responders(port: int, requests: int = 20) -> set[str]:
    """Task ids answering through HAProxy's frontend on ``port`` (loopback)."""
    seen = set()
    with httpx.Client(timeout=5, verify=TLS) as c:
        for _ in range(requests):
            r = c.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"})
            r.raise_for_status()
            seen.add(r.text.strip())
    return seen


def wait_routed(port: int, expected: set[str], timeout: float = 30.0) -> None:
    """Wait until traffic through ``port`` reaches exactly ``expected`` tasks."""
    wait_for(lambda: responders(port, 4 * len(expected) + 4) == expected, timeout,
             what=f"traffic on :{port} reaching exactly {sorted(expected)}")


@contextlib.contextmanager
def running(*procs: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()


def open_tunnel(port: int, host: str) -> socket.socket:
    """A websocket-shaped connection through HAProxy's frontend on ``port`` for ``host``
    (the demo backend echoes what it is sent once upgraded)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def children_of(pid: int) -> list[int]:
    """The live (not zombie) children of ``pid``, read from /proc."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out
