"""``make demo``: the simulator, real HAProxy and the daemon, under steady churn.

Starts a Marathon simulator whose executor runs real tasks on 127.0.0.1,
servicerouter with ``--start-haproxy``, a few apps, and then scales and kills
tasks at random. It prints each action, the service ports to curl, and a live
line comparing HAProxy's own reload count (``show proc``) with the runtime
updates servicerouter applied. Ctrl-C stops everything; so does ``--duration``.

With ``--service-port-range LOW-HIGH`` (or SERVICEROUTER_SERVICE_PORT_RANGE) the daemon
runs in range mode and the churn also creates and deletes whole apps in the range:
each new app is routed through the port map and a spare backend, with no reload.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ..haproxy.master_cli import HAProxyProcessError, MasterCLI
from ..pool import parse_port_range
from .procs import Proc, free_port, wait_for

APPS = {  # id -> (service port, instances)
    "/demo/web": (10001, 3),
    "/demo/api": (10002, 2),
    "/demo/search": (10003, 2),
}
# exec: the task must get SIGTERM itself; Mesos kills what a shell leaves behind.
BACKEND = f"exec {sys.executable} -m servicerouter.demo.backend"


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _app_body(app_id: str, port: int, instances: int) -> dict[str, object]:
    return {"id": app_id, "cmd": BACKEND, "instances": instances, "cpus": 0.1, "mem": 32,
            "portDefinitions": [{"port": port, "protocol": "tcp", "name": "http"}],
            "labels": {"HAPROXY_GROUP": "demo", "HAPROXY_0_MODE": "http"},
            "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0,
                              "intervalSeconds": 2, "gracePeriodSeconds": 10,
                              "timeoutSeconds": 1, "maxConsecutiveFailures": 3}]}


# The churn never takes an app below this many tasks: a curl of its port keeps being
# answered while one task is killed (drained first) and its replacement starts.
MIN_INSTANCES = 2


def churn(sim: httpx.Client, rng: random.Random) -> str:
    """One random action through the Marathon API, as an operator would."""
    app_id = rng.choice(sorted(APPS))
    app = sim.get(f"/v2/apps{app_id}", params={"embed": "app.tasks"}).json()["app"]
    running = [t["id"] for t in app.get("tasks", []) if t["state"] == "TASK_RUNNING"]
    roll = rng.random()
    if roll < 0.6 and len(running) >= MIN_INSTANCES:
        victim = rng.choice(running)
        sim.delete(f"/v2/apps{app_id}/tasks/{victim}", params={"scale": "false"})
        return f"killed task {victim} of {app_id} (Marathon replaces it)"
    instances = int(app["instances"])
    # One up or down, inside MIN_INSTANCES..6: never a "scale" from 2 to 2.
    step = 1 if instances <= MIN_INSTANCES else -1 if instances >= 6 else rng.choice([-1, 1])
    target = instances + step
    r = sim.put(f"/v2/apps{app_id}", json={"instances": target}, params={"force": "true"})
    if r.status_code >= 400:
        return f"scaling {app_id} to {target} was refused: {r.status_code} {r.text[:80]}"
    return f"scaled {app_id} from {instances} to {target} instances"


class AppChurn:
    """Range mode: new apps arrive on free ports of the range, old ones leave."""

    def __init__(self, low: int, high: int, taken: set[int]) -> None:
        self.free = [p for p in range(low, high + 1) if p not in taken]
        self.mine: dict[str, int] = {}
        self.count = 0

    def step(self, sim: httpx.Client, rng: random.Random) -> str:
        if self.mine and (len(self.mine) >= 4 or not self.free or rng.random() < 0.3):
            app_id = rng.choice(sorted(self.mine))
            sim.delete(f"/v2/apps{app_id}").raise_for_status()
            self.free.append(self.mine.pop(app_id))
            return f"deleted app {app_id}"
        self.count += 1
        app_id, port = f"/demo/new{self.count}", self.free.pop(0)
        sim.post("/v2/apps", json=_app_body(app_id, port, 1)).raise_for_status()
        self.mine[app_id] = port
        started = time.monotonic()
        wait_for(functools.partial(serving, port, 2), 60, interval=0.05,
                 what=f"{app_id} to serve on port {port}")
        return (f"new app {app_id}: curl http://127.0.0.1:{port}/ served "
                f"{time.monotonic() - started:.1f} s after its creation (task start included)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serving(port: int, requests: int) -> bool:
    """Whether ``requests`` requests in a row through HAProxy's ``port`` all succeed."""
    with httpx.Client(timeout=2) as c:
        return all(c.get(f"http://127.0.0.1:{port}/",
                         headers={"Connection": "close"}).status_code == 200
                   for _ in range(requests))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servicerouter.demo", description=__doc__)
    parser.add_argument("--duration", type=float, default=1800,
                        help="stop after this many seconds (default 1800)")
    parser.add_argument("--interval", type=float, default=1.5,
                        help="seconds between churn actions (default 1.5)")
    parser.add_argument("--workdir", help="keep configs and logs here (default: a temp dir)")
    parser.add_argument("--service-port-range", metavar="LOW-HIGH",
                        default=os.environ.get("SERVICEROUTER_SERVICE_PORT_RANGE"),
                        help="range mode: the demo's apps, and new apps created and deleted "
                             "without reloads, on ports of LOW-HIGH (all free)")
    args = parser.parse_args(argv)
    apps: AppChurn | None = None
    if args.service_port_range:
        try:
            low, high = parse_port_range(args.service_port_range)
        except ValueError as exc:
            parser.error(f"--service-port-range: {exc}")
        if high - low < 8:
            parser.error(f"--service-port-range {args.service_port_range}: needs at least 9 "
                         "ports (e.g. 10000-10049)")
        # The demo's own apps move into the range too: LOW+1, LOW+2, LOW+3.
        for i, (app_id, (_, instances)) in enumerate(sorted(APPS.items())):
            APPS[app_id] = (low + 1 + i, instances)
        apps = AppChurn(low, high, {port for port, _ in APPS.values()})
    if shutil.which("haproxy") is None:
        print("demo: haproxy is not installed; run 'make install' first", file=sys.stderr)
        return 1
    # SIGTERM (kill, a CI runner) stops everything as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    temporary = not args.workdir
    work = Path(args.workdir or tempfile.mkdtemp(prefix="servicerouter-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    sim_port, listen_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    simulator = Proc("simulator", [sys.executable, "-m", "servicerouter.simulator",
                                   "--listen", f"127.0.0.1:{sim_port}", "--executor", "local",
                                   "--kill-grace", "1"], work / "simulator.log")
    daemon = Proc("servicerouter", [
        sys.executable, "-m", "servicerouter", "run", "--marathon", sim_url,
        "--haproxy-config", str(work / "haproxy.cfg"),
        "--haproxy-socket", str(work / "admin.sock"),
        "--start-haproxy", "--haproxy-master-socket", str(work / "master.sock"),
        "--http-port", "0", "--https-port", "0", "--stats-port", "0",
        "--listen", f"127.0.0.1:{listen_port}", "--drain-seconds", "1",
        *(["--service-port-range", args.service_port_range] if apps else []),
    ], work / "servicerouter.log")
    procs = [simulator, daemon]
    try:
        print(f"demo: working in {work} (logs: simulator.log, servicerouter.log"
              f"{'; removed at the end' if temporary else ''})")
        simulator.start()
        sim = httpx.Client(base_url=sim_url, timeout=10)
        wait_for(lambda: sim.get("/ping").status_code == 200, 15, what="the simulator")
        print(f"demo: Marathon simulator on {sim_url}")
        for app_id, (port, instances) in APPS.items():
            sim.post("/v2/apps", json=_app_body(app_id, port, instances)).raise_for_status()
        daemon.start()
        web = httpx.Client(base_url=f"http://127.0.0.1:{listen_port}", timeout=10)
        wait_for(lambda: web.get("/healthz").status_code == 200, 60, what="servicerouter")
        print(f"demo: servicerouter on http://127.0.0.1:{listen_port} "
              "(/metrics /healthz /status /config)")
        # A port is shown once its tasks are healthy and routed, so the first curl works.
        for app_id, (port, instances) in APPS.items():
            wait_for(functools.partial(serving, port, 2 * instances), 60, interval=0.2,
                     what=f"{app_id} to serve on port {port}")
            print(f"demo: {app_id:14} curl http://127.0.0.1:{port}/", flush=True)
        print("demo: churning" + (" tasks and whole apps (range mode "
                                  f"{args.service_port_range})" if apps else "")
              + "; Ctrl-C stops everything")
        master = MasterCLI(str(work / "master.sock"))
        baseline = asyncio.run(master.show_proc(patience=30)).reloads
        rng = random.Random()
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline:
            action = apps.step(sim, rng) if apps and rng.random() < 0.5 else churn(sim, rng)
            time.sleep(args.interval)
            metrics = web.get("/metrics").text
            updates = int(_metric(metrics, "servicerouter_runtime_batches_total"))
            commands = int(_metric(metrics, "servicerouter_runtime_commands_total"))
            reloads = asyncio.run(master.show_proc(patience=30)).reloads - baseline
            print(f"  {action}\n    HAProxy reloads since start: {reloads}   "
                  f"runtime updates: {updates} ({commands} commands)", flush=True)
            if apps:
                print(f"    apps created: {apps.count}   reloads: {reloads}", flush=True)
    except KeyboardInterrupt:
        print("\ndemo: stopping")
    except (TimeoutError, httpx.HTTPError, HAProxyProcessError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        for p in procs:  # the logs go with a temporary workdir: show their ends
            tail = p.output().splitlines()[-15:]
            print(f"demo: last lines of {p.log.name}:", *tail, sep="\n  ", file=sys.stderr)
        return 1
    finally:
        for p in reversed(procs):
            p.stop()
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
