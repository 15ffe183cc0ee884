"""The local executor really runs tasks on 127.0.0.1 and leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from servicerouter.simulator import SimulatorServer

from .harness import TLS

pytestmark = pytest.mark.timeout(60)

HTTP_SERVER = f"exec {sys.executable} -m http.server $PORT --bind 127.0.0.1"


def procs_with_env(needle: str) -> list[int]:
    """PIDs of live processes whose environment contains ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if needle.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    for _ in range(int(timeout / 0.05)):
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def app_doc(client: httpx.AsyncClient, app_id: str) -> dict[str, Any]:
    r = await client.get(f"/v2/apps{app_id}")
    doc: dict[str, Any] = r.json()["app"]
    return doc


def http_ok(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1,
                         verify=TLS).status_code == 200
    except httpx.HTTPError:
        return False


async def test_task_serves_http_on_port_is_health_checked_and_killed(tmp_path: Path) -> None:
    app_id = f"/web-{uuid.uuid4().hex[:8]}"
    async with (
        SimulatorServer(
            executor="local", kill_grace=0.5, health_first_delay=0.1, heartbeat_interval=0.5
        ) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=5, verify=TLS) as client,
    ):
        definition = {
            "id": app_id,
            "cmd": HTTP_SERVER,
            "instances": 1,
            "healthChecks": [
                {"protocol": "HTTP", "path": "/", "intervalSeconds": 0.2, "gracePeriodSeconds": 5}
            ],
        }
        assert (await client.post("/v2/apps", json=definition)).status_code == 201

        async def healthy() -> dict[str, Any] | None:
            doc = await app_doc(client, app_id)
            return doc if doc["tasksHealthy"] == 1 and not doc["deployments"] else None

        doc = None
        for _ in range(200):
            doc = await healthy()
            if doc:
                break
            await asyncio.sleep(0.05)
        assert doc, "task never became healthy"
        task = doc["tasks"][0]
        port = task["ports"][0]
        assert 31000 <= port <= 32000
        assert await asyncio.to_thread(http_ok, port)
        result = task["healthCheckResults"][0]
        assert result["alive"] is True and result["instanceId"] in task["id"]
        pids = procs_with_env(f"MESOS_TASK_ID={task['id']}")
        assert pids

        stream_request = client.build_request(
            "GET", "/v2/events", headers={"Accept": "text/event-stream"}
        )
        response = await client.send(stream_request, stream=True)
        data = b""

        async def read() -> None:
            nonlocal data
            async for chunk in response.aiter_raw():
                data += chunk

        reader = asyncio.ensure_future(read())
        r = await client.delete(f"/v2/apps{app_id}/tasks/{task['id']}?scale=true")
        assert r.status_code == 200
        await wait_for(lambda: b'"taskStatus":"TASK_KILLED"' in data)
        killing = data.index(b'"taskStatus":"TASK_KILLING"')
        assert killing < data.index(b'"taskStatus":"TASK_KILLED"')
        assert not await asyncio.to_thread(http_ok, port)
        assert not procs_with_env(f"MESOS_TASK_ID={task['id']}")
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await response.aclose()


async def test_environment_exit_replacement_and_no_orphans(tmp_path: Path) -> None:
    marker = f"SIMTEST={uuid.uuid4().hex}"
    env_file = tmp_path / "env"
    apps = [
        {
            "id": "/envdump",
            "cmd": f'echo "$PORT $PORT0 $PORT1 $PORTS $HOST $MARATHON_APP_ID $MESOS_TASK_ID" '
            f"> {env_file}; exec sleep 30",
            "instances": 1,
            "env": {"SIMTEST": marker.split("=")[1]},
            "portDefinitions": [{"port": 0}, {"port": 0}],
        },
        {
            "id": "/crashy",
            "cmd": "sleep 0.2; exit 3",
            "instances": 1,
            "env": {"SIMTEST": marker.split("=")[1]},
        },
        {  # ignores SIGTERM: needs the SIGKILL after the grace
            "id": "/stubborn",
            "cmd": "trap '' TERM; sleep 30 & wait; sleep 30",
            "instances": 1,
            "env": {"SIMTEST": marker.split("=")[1]},
        },
    ]
    async with SimulatorServer(
        executor="local", apps=apps, kill_grace=0.3, relaunch_backoff=0.1
    ) as sim:
        await wait_for(lambda: env_file.exists() and env_file.read_text().strip())
        task = next(iter(sim.state.get_app("/envdump").tasks.values()))
        p0, p1 = task.ports
        assert env_file.read_text().split() == [
            str(p0), str(p0), str(p1), f"{p0},{p1}", "127.0.0.1", "/envdump", task.id
        ]  # fmt: skip
        # A task that exits by itself is TASK_FAILED and replaced.
        await wait_for(
            lambda: any(
                e["eventType"] == "status_update_event" and e.get("taskStatus") == "TASK_FAILED"
                for e in sim.bus.log
            )
        )
        crashy = sim.state.get_app("/crashy")
        await wait_for(lambda: crashy.tasks)
        # The stubborn task is SIGKILLed after the grace period.
        stubborn = next(iter(sim.state.get_app("/stubborn").tasks.values()))
        await wait_for(lambda: stubborn.state == "TASK_RUNNING")
        sim.scheduler.kill_task("/stubborn", stubborn.id, scale=True)
        await wait_for(lambda: stubborn.terminal, timeout=5)
        assert stubborn.state == "TASK_KILLED" and stubborn.message.endswith("137")
        assert procs_with_env(marker)
    # Leaving the context killed every process of every task.
    await wait_for(lambda: not procs_with_env(marker), timeout=5)


def test_cli_serves_apps_and_sigterm_kills_everything(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    apps_file = tmp_path / "apps.json"
    hello = {"id": "/hello", "cmd": HTTP_SERVER, "instances": 2, "env": {"SIMTEST": marker}}
    apps_file.write_text(json.dumps({"apps": [hello]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "servicerouter.simulator", "--listen", "127.0.0.1:0",
         "--apps", str(apps_file), "--kill-grace", "0.2", "--log-level", "info"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        url = ""
        for _ in range(50):
            line = proc.stderr.readline()
            if " on http://" in line:
                url = line.rsplit(" on ", 1)[1].strip()
                break
        assert url.startswith("http://127.0.0.1:")
        tasks: list[dict[str, Any]] = []
        for _ in range(100):
            tasks = httpx.get(url + "/v2/tasks", params={"status": "running"},
                              verify=TLS).json()["tasks"]
            if len(tasks) == 2 and all(http_ok(t["ports"][0]) for t in tasks):
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert len(tasks) == 2 and all(http_ok(t["ports"][0]) for t in tasks)
        assert procs_with_env(f"SIMTEST={marker}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not procs_with_env(f"SIMTEST={marker}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in procs_with_env(f"SIMTEST={marker}"):
            os.kill(pid, signal.SIGKILL)


async def test_ip_per_task_tasks_get_their_own_loopback_address() -> None:
    definition = {
        "id": "/ipt",
        "cmd": f"exec {sys.executable} -m http.server $PORT0 --bind $HOST",
        "instances": 2,
        "networks": [{"mode": "container", "name": "dcos"}],
        "container": {"type": "DOCKER", "portMappings": [{"containerPort": 8080, "name": "web"}]},
    }
    async with SimulatorServer(executor="local", apps=[definition], kill_grace=0.2) as sim:
        app = sim.state.get_app("/ipt")
        await wait_for(lambda: sum(t.state == "TASK_RUNNING" for t in app.tasks.values()) == 2)
        tasks = list(app.tasks.values())
        ips = [t.ip_addresses[0]["ipAddress"] for t in tasks]
        assert len(set(ips)) == 2 and all(ip.startswith("127.") for ip in ips)
        assert all(t.ports == [] for t in tasks)
        assert app.service_ports == [10000]

        def serving(ip: str) -> bool:
            try:
                return httpx.get(f"http://{ip}:8080/", timeout=1,
                                     verify=TLS).status_code == 200
            except httpx.HTTPError:
                return False

        for ip in ips:
            await wait_for(lambda ip=ip: serving(ip))


async def test_command_checks_run_in_the_task_environment(tmp_path: Path) -> None:
    """A COMMAND check is run as Mesos runs it (a shell, the task's environment): alive
    while it exits 0, dead once it fails; Marathon reports it like any other check."""
    app_id = f"/cmd-{uuid.uuid4().hex[:8]}"
    flag = tmp_path / "ready"
    flag.write_text("")
    async with (
        SimulatorServer(executor="local", kill_grace=0.5, health_first_delay=0.1) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=5, verify=TLS) as client,
    ):
        definition = {
            "id": app_id, "cmd": "exec sleep 600", "instances": 1,
            "healthChecks": [{"protocol": "COMMAND", "intervalSeconds": 0.2,
                              "gracePeriodSeconds": 0,
                              "command": {"value": f'test -e {flag} && test -n "$PORT0"'}}],
        }
        assert (await client.post("/v2/apps", json=definition)).status_code == 201

        async def health() -> list[bool]:
            doc = await app_doc(client, app_id)
            return [r["alive"] for t in doc["tasks"] for r in t.get("healthCheckResults", [])]

        for _ in range(200):
            if await health() == [True]:
                break
            await asyncio.sleep(0.05)
        assert await health() == [True]
        flag.unlink()
        for _ in range(200):
            if await health() == [False]:
                break
            await asyncio.sleep(0.05)
        assert await health() == [False]
        assert (await app_doc(client, app_id))["tasksUnhealthy"] == 1
