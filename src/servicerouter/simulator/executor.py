"""Executors: where tasks "run". One interface, two implementations.

* :class:`FakeExecutor` (``--executor none``) starts nothing. Tasks get host
  127.0.0.1 and ports from the range (not checked, may repeat beyond the range
  size) and go STAGING -> STARTING -> RUNNING after ``task_start_delay``; a kill
  goes KILLING -> KILLED after ``kill_grace``. Apps with health checks get
  alive results as soon as they run (flip them with ``/_sim/tasks/{id}/health``).
* :class:`~.local_executor.LocalExecutor` (``--executor local``) really runs
  ``cmd`` on 127.0.0.1 (see that module).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from .model import TASK_KILLED, TASK_RUNNING, TASK_STAGING, TASK_STARTING, App, Task

LOCALHOST = "127.0.0.1"
Placement = tuple[str, list[int], list[dict[str, str]]]


class TaskSink(Protocol):
    """What an executor reports to (the scheduler)."""

    def task_update(self, task: Task, state: str, message: str = "") -> None: ...

    def health_result(
        self, task: Task, index: int, alive: bool, cause: str | None = None
    ) -> None: ...


class _NullSink:
    def task_update(self, task: Task, state: str, message: str = "") -> None:
        pass

    def health_result(self, task: Task, index: int, alive: bool, cause: str | None = None) -> None:
        pass


class LoopbackIPs:
    """Distinct 127.x.y.z addresses for IP-per-task (container network) tasks."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def next(self) -> str:
        n = next(self._counter) % (250 * 254 * 254)
        a, rest = divmod(n, 254 * 254)
        b, c = divmod(rest, 254)
        return f"127.{a + 2}.{b + 1}.{c + 1}"


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Executor(ABC):
    """Runs tasks and reports their states to a :class:`TaskSink`."""

    def __init__(self, *, kill_grace: float = 1.0, task_start_delay: float = 0.0) -> None:
        self.sink: TaskSink = _NullSink()
        self.kill_grace = kill_grace
        self.task_start_delay = task_start_delay
        self._ips = LoopbackIPs()

    def attach(self, sink: TaskSink) -> None:
        self.sink = sink

    @abstractmethod
    def place(self, app: App) -> Placement:
        """Choose (host, host ports, ipAddresses) for a new task of ``app``."""

    @abstractmethod
    def launch(self, task: Task) -> None:
        """Start the task (it is TASK_STAGING); report later states to the sink."""

    @abstractmethod
    def kill(self, task: Task) -> None:
        """Stop the task (it is TASK_KILLING now); report a terminal state later."""

    def release(self, task: Task) -> None:  # noqa: B027 - optional hook
        """The task is terminal: free what :meth:`place` reserved."""

    def health_check_indices(self, app: App) -> list[int]:
        """Indexes of the app's health checks that this executor produces results for."""
        return list(range(len(app.health_checks)))

    async def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Stop everything (no process may survive)."""

    def ip_addresses(self, app: App, host: str) -> list[dict[str, str]]:
        ip = self._ips.next() if app.network_mode == "container" else host
        return [{"ipAddress": ip, "protocol": "IPv4"}]


class FakeExecutor(Executor):
    def __init__(
        self,
        *,
        kill_grace: float = 1.0,
        task_start_delay: float = 0.0,
        port_range: tuple[int, int] = (31000, 32000),
    ) -> None:
        super().__init__(kill_grace=kill_grace, task_start_delay=task_start_delay)
        self.port_range = port_range
        self._next_port = port_range[0]
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._batch: list[Task] = []

    def _fake_port(self) -> int:
        lo, hi = self.port_range
        port = self._next_port
        self._next_port = lo if port >= hi else port + 1
        return port

    def place(self, app: App) -> Placement:
        ports = [p or self._fake_port() for p in app.host_port_requests()]
        return LOCALHOST, ports, self.ip_addresses(app, LOCALHOST)

    def _later(self, task: Task, delay: float, fn: Callable[[Task], Any]) -> None:
        old = self._timers.pop(task.id, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(task.id, None)
            fn(task)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            fn(task)
            return
        self._timers[task.id] = loop.call_later(max(0.0, delay), fire)

    def launch(self, task: Task) -> None:
        if self.task_start_delay > 0:
            self._later(task, self.task_start_delay, self._start)
            return
        # No delay: start in the next loop iteration, all launches in one batch.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._start(task)
            return
        self._batch.append(task)
        if len(self._batch) == 1:
            loop.call_soon(self._start_batch)

    def _start_batch(self) -> None:
        batch, self._batch = self._batch, []
        for task in batch:
            self._start(task)

    def _start(self, task: Task) -> None:
        if task.state != TASK_STAGING:
            return
        self.sink.task_update(task, TASK_STARTING)
        self.sink.task_update(task, TASK_RUNNING)
        for index in self.health_check_indices(task.app):
            if task.state == TASK_RUNNING:
                self.sink.health_result(task, index, True)

    def kill(self, task: Task) -> None:
        self._later(
            task,
            self.kill_grace,
            lambda t: self.sink.task_update(t, TASK_KILLED, "Container exited with status 143"),
        )

    def release(self, task: Task) -> None:
        handle = self._timers.pop(task.id, None)
        if handle is not None:
            handle.cancel()

    async def shutdown(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._batch.clear()
