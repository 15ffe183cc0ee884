"""The local executor: really runs each task's ``cmd`` on 127.0.0.1.

* ``/bin/sh -c <cmd>`` in its own process group (session), with ``PORT``,
  ``PORT0..n``, ``PORTS``, ``PORT_<NAME>``, ``HOST``, ``MARATHON_APP_ID``,
  ``MARATHON_APP_VERSION``, ``MESOS_TASK_ID`` and the app's ``env``. Host ports
  come from ``port_range`` and are checked free by binding. Container-network
  (IP-per-task) tasks get their own loopback address (127.x.y.z) as ``HOST`` and
  listen on their container ports there.
* TASK_STAGING -> TASK_STARTING -> TASK_RUNNING once the process is spawned;
  HTTP/HTTPS/TCP (and MESOS_*) health checks are really probed every
  ``intervalSeconds`` (first probe after ``health_first_delay``), failures during
  ``gracePeriodSeconds`` before a first success are ignored, as in Marathon.
* Kill: TASK_KILLING, SIGTERM to the group, wait up to ``kill_grace``, SIGKILL,
  TASK_KILLED. A process that exits by itself is TASK_FINISHED/TASK_FAILED and
  the scheduler replaces it after a backoff.
* No orphans: every group is SIGKILLed on :meth:`shutdown`, at interpreter exit
  (atexit) and, where ``setpriv`` exists, when the simulator dies (PDEATHSIG).
* Apps without ``cmd`` are run like the fake executor (nothing is started).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Coroutine
from typing import IO, Any

from .executor import LOCALHOST, FakeExecutor, Placement, port_is_free
from .health import SUPPORTED, probe, probe_target
from .model import (
    TASK_FAILED,
    TASK_FINISHED,
    TASK_KILLED,
    TASK_RUNNING,
    TASK_STAGING,
    TASK_STARTING,
    App,
    JsonDict,
    Task,
)

_LIVE_GROUPS: set[int] = set()


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@atexit.register
def _kill_all_groups() -> None:
    for pgid in list(_LIVE_GROUPS):
        _kill_group(pgid)
    _LIVE_GROUPS.clear()


def _command_of(check: JsonDict) -> str | None:
    """The shell command of a COMMAND health check, or None for any other check."""
    command = check.get("command")
    value = command.get("value") if isinstance(command, dict) else None
    return value if check.get("protocol") == "COMMAND" and isinstance(value, str) else None


def _pdeathsig_prefix() -> list[str]:
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return []
    try:
        ok = (
            subprocess.run(
                [setpriv, "--pdeathsig", "KILL", "true"], capture_output=True, timeout=5
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        ok = False
    return [setpriv, "--pdeathsig", "KILL"] if ok else []


class LocalExecutor(FakeExecutor):
    def __init__(
        self,
        *,
        kill_grace: float = 1.0,
        task_start_delay: float = 0.0,
        port_range: tuple[int, int] = (31000, 32000),
        health_first_delay: float = 0.2,
        task_log_dir: str | None = None,
    ) -> None:
        super().__init__(
            kill_grace=kill_grace, task_start_delay=task_start_delay, port_range=port_range
        )
        self.health_first_delay = health_first_delay
        self.task_log_dir = task_log_dir
        self._prefix = _pdeathsig_prefix()
        self._reserved: set[int] = set()
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._jobs: dict[str, set[asyncio.Future[None]]] = {}
        self._spawning: set[str] = set()
        self._kill_requested: set[str] = set()
        self._runners: dict[str, asyncio.Future[None]] = {}
        self._closing = False

    # --- placement ---------------------------------------------------------------

    def _free_port(self) -> int:
        lo, hi = self.port_range
        for _ in range(hi - lo + 1):
            port = self._fake_port()
            if port not in self._reserved and port_is_free(port):
                return port
        raise OSError(f"no free port in {lo}-{hi}")

    def place(self, app: App) -> Placement:
        ports: list[int] = []
        try:
            for request in app.host_port_requests():
                port = request or self._free_port()
                self._reserved.add(port)
                ports.append(port)
        except OSError:
            self._reserved.difference_update(ports)
            raise
        return LOCALHOST, ports, self.ip_addresses(app, LOCALHOST)

    @staticmethod
    def _runs(task: Task) -> bool:
        return bool(task.app.definition.get("cmd"))

    def health_check_indices(self, app: App) -> list[int]:
        if not app.definition.get("cmd"):
            return super().health_check_indices(app)
        return [i for i, c in enumerate(app.health_checks)
                if c.get("protocol") in SUPPORTED or _command_of(c) is not None]

    # --- running -----------------------------------------------------------------

    def _job(self, task: Task, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.ensure_future(coro)
        jobs = self._jobs.setdefault(task.id, set())
        jobs.add(fut)
        fut.add_done_callback(jobs.discard)
        return fut

    def _env(self, task: Task) -> dict[str, str]:
        app = task.app
        env = dict(os.environ)
        env.update(
            {k: v for k, v in (app.definition.get("env") or {}).items() if isinstance(v, str)}
        )
        if app.network_mode == "container":
            ports = [int(m["containerPort"]) for m in app.port_mappings]
            host = task.ip_addresses[0]["ipAddress"] if task.ip_addresses else LOCALHOST
            names = [m.get("name") for m in app.port_mappings]
        else:
            ports, host = list(task.ports), LOCALHOST
            items = app.definition.get("portDefinitions") or app.port_mappings
            names = [item.get("name") for item in items]
        if ports:
            env["PORT"] = str(ports[0])
            env["PORTS"] = ",".join(str(p) for p in ports)
        for i, port in enumerate(ports):
            env[f"PORT{i}"] = str(port)
            if i < len(names) and names[i]:
                env[f"PORT_{str(names[i]).upper().replace('-', '_')}"] = str(port)
        env.update(
            HOST=host,
            MARATHON_APP_ID=app.id,
            MARATHON_APP_VERSION=task.version,
            MESOS_TASK_ID=task.id,
            MARATHON_APP_LABELS=" ".join(app.labels),
        )
        return env

    def _output(self, task: Task) -> IO[bytes] | int:
        if self.task_log_dir is None:
            return subprocess.DEVNULL
        os.makedirs(self.task_log_dir, exist_ok=True)
        return open(os.path.join(self.task_log_dir, f"{task.id}.log"), "ab")

    def launch(self, task: Task) -> None:
        if not self._runs(task):
            super().launch(task)
            return
        self._runners[task.id] = self._job(task, self._run(task))

    async def _run(self, task: Task) -> None:
        if self.task_start_delay > 0:
            await asyncio.sleep(self.task_start_delay)
        if task.state != TASK_STAGING or self._closing:
            return
        self.sink.task_update(task, TASK_STARTING)
        output = self._output(task)
        self._spawning.add(task.id)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._prefix,
                "/bin/sh",
                "-c",
                str(task.app.definition["cmd"]),
                env=self._env(task),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        except OSError as exc:
            self.sink.task_update(task, TASK_FAILED, f"Failed to launch: {exc}")
            return
        finally:
            self._spawning.discard(task.id)
            if not isinstance(output, int):
                output.close()
        self._procs[task.id] = proc
        _LIVE_GROUPS.add(proc.pid)
        if task.id in self._kill_requested or self._closing:
            self._job(task, self._terminate(proc))
        else:
            self.sink.task_update(task, TASK_RUNNING)
            for index in self.health_check_indices(task.app):
                self._job(task, self._health_loop(task, index, task.app.health_checks[index]))
        rc = await proc.wait()
        _kill_group(proc.pid)  # whatever the shell left behind
        _LIVE_GROUPS.discard(proc.pid)
        self._procs.pop(task.id, None)
        self._runners.pop(task.id, None)
        if self._closing:
            return
        code = rc if rc >= 0 else 128 - rc
        message = f"Command exited with status {code}"
        if task.id in self._kill_requested:
            self.sink.task_update(task, TASK_KILLED, message)
        else:
            self.sink.task_update(task, TASK_FINISHED if rc == 0 else TASK_FAILED, message)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if not _kill_group(proc.pid, signal.SIGTERM):
            return
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self.kill_grace)
        except asyncio.TimeoutError:
            _kill_group(proc.pid)

    async def _health_loop(self, task: Task, index: int, check: JsonDict) -> None:
        command = _command_of(check)
        target = probe_target(task, check) if command is None else None
        if target is None and command is None:
            return
        interval = max(0.05, float(check.get("intervalSeconds", 60)))
        grace = float(check.get("gracePeriodSeconds", 300))
        started = time.monotonic()
        had_success = False
        await asyncio.sleep(self.health_first_delay)
        while task.state == TASK_RUNNING and not self._closing:
            if command is not None:
                alive, cause = await self._run_check(task, command, check)
            else:
                assert target is not None
                alive, cause = await probe(target[0], target[1], check)
            if task.state != TASK_RUNNING or self._closing:
                return
            had_success = had_success or alive
            if alive or had_success or time.monotonic() - started > grace:
                self.sink.health_result(task, index, alive, cause)
            await asyncio.sleep(interval)

    async def _run_check(self, task: Task, command: str,
                         check: JsonDict) -> tuple[bool, str | None]:
        """A COMMAND check, as Mesos runs it: the command in a shell with the task's
        environment, alive when it exits 0 within ``timeoutSeconds``."""
        timeout = float(check.get("timeoutSeconds", 20))
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._prefix, "/bin/sh", "-c", command, env=self._env(task),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return False, f"Failed to run the health check command: {exc}"
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            rc = None
        finally:
            _kill_group(proc.pid)  # a timed-out command, or what it left behind
            if proc.returncode is None:
                await proc.wait()
        if rc == 0:
            return True, None
        return False, (f"Command exited with status {rc}" if rc is not None
                       else f"Command timed out after {timeout:g}s")

    def kill(self, task: Task) -> None:
        if not self._runs(task):
            super().kill(task)
            return
        self._kill_requested.add(task.id)
        proc = self._procs.get(task.id)
        if proc is not None:
            self._job(task, self._terminate(proc))
        elif task.id not in self._spawning:
            # Not started yet (waiting for task_start_delay): nothing to stop.
            for fut in self._jobs.get(task.id, set()):
                fut.cancel()
            asyncio.get_running_loop().call_soon(
                self.sink.task_update, task, TASK_KILLED, "Killed before it started"
            )

    def release(self, task: Task) -> None:
        super().release(task)
        self._reserved.difference_update(task.ports)
        self._kill_requested.discard(task.id)
        proc = self._procs.get(task.id)
        runner = self._runners.pop(task.id, None)
        if proc is not None and proc.returncode is None:
            _kill_group(proc.pid)  # e.g. /_sim/tasks/{id}/fail on a live process
        # Health probes and terminators stop; a runner still reaps its process.
        current = asyncio.current_task()
        for fut in list(self._jobs.get(task.id, ())):
            if fut is not current and (fut is not runner or proc is None):
                fut.cancel()
        if runner is None or runner.done() or proc is None:
            self._jobs.pop(task.id, None)

    def live_pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.returncode is None]

    async def shutdown(self) -> None:
        self._closing = True
        procs = list(self._procs.values())
        for proc in procs:
            _kill_group(proc.pid)
        for proc in procs:
            with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
                await asyncio.wait_for(proc.wait(), 5.0)
            _LIVE_GROUPS.discard(proc.pid)
        jobs = [f for futs in self._jobs.values() for f in futs]
        for fut in jobs:
            fut.cancel()
        for fut in jobs:
            with contextlib.suppress(BaseException):
                await fut
        self._jobs.clear()
        self._procs.clear()
        self._runners.clear()
        await super().shutdown()
