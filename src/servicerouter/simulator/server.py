"""Run the simulator: :class:`SimulatorServer` (inside the current event loop) and
:class:`SimulatorThread` (in a background thread, for synchronous code)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import uvicorn

from .app import create_app
from .context import SimContext
from .events import EventBus
from .executor import Executor, FakeExecutor
from .local_executor import LocalExecutor
from .middleware import LeaderProxy
from .model import JsonDict
from .scheduler import Scheduler
from .state import MarathonState

T = TypeVar("T")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handling: the owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def make_executor(
    kind: str | Executor,
    *,
    kill_grace: float = 1.0,
    task_start_delay: float = 0.0,
    port_range: tuple[int, int] = (31000, 32000),
    health_first_delay: float = 0.2,
    task_log_dir: str | None = None,
) -> Executor:
    if isinstance(kind, Executor):
        return kind
    if kind in ("none", "fake"):
        return FakeExecutor(
            kill_grace=kill_grace, task_start_delay=task_start_delay, port_range=port_range
        )
    if kind == "local":
        return LocalExecutor(
            kill_grace=kill_grace,
            task_start_delay=task_start_delay,
            port_range=port_range,
            health_first_delay=health_first_delay,
            task_log_dir=task_log_dir,
        )
    raise ValueError(f"unknown executor {kind!r} (expected 'local' or 'none')")


def bound_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound (port 0: any free one). IPPROTO_TCP, not 0, so that
    asyncio sets TCP_NODELAY on each connection: else every keep-alive answer (headers
    and body are two writes) waits ~40 ms for the client's delayed ACK, which real
    Marathon does not add."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class SimulatorServer:
    """A simulated Marathon served by uvicorn in the running event loop.

    ``async with SimulatorServer(executor="none") as sim:`` then use ``sim.url``,
    ``sim.state`` (a :class:`MarathonState`), ``sim.scheduler`` (create/update/
    kill like the API does) and ``sim.bus``. ``port=0`` picks a free port.
    Leaving the block closes event streams, stops the server and kills every
    task process.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        executor: str | Executor = "local",
        apps: Iterable[JsonDict] = (),
        standby_of: str | None = None,
        credentials: str | None = None,
        heartbeat_interval: float = 10.0,
        kill_grace: float = 1.0,
        task_start_delay: float = 0.0,
        port_range: tuple[int, int] = (31000, 32000),
        service_port_range: tuple[int, int] = (10000, 20000),
        relaunch_backoff: float = 1.0,
        health_first_delay: float = 0.2,
        log_level: str = "warning",
        task_log_dir: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.log_level = log_level
        self.executor = make_executor(
            executor,
            kill_grace=kill_grace,
            task_start_delay=task_start_delay,
            port_range=port_range,
            health_first_delay=health_first_delay,
            task_log_dir=task_log_dir,
        )
        self.bus = EventBus()
        self.state = MarathonState(self.bus, service_port_range)
        self.scheduler = Scheduler(self.state, self.executor, relaunch_backoff=relaunch_backoff)
        self.initial_apps = list(apps)
        self.standby_of = standby_of
        self.credentials = credentials
        self.heartbeat_interval = heartbeat_interval
        self._server: _EmbeddedServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._proxy: LeaderProxy | None = None
        self.ctx: SimContext | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> SimulatorServer:
        if self.standby_of is None:
            for definition in self.initial_apps:  # may raise ValidationError: before binding
                self.scheduler.create_app(definition)
        sock = bound_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        advertised = f"{self.host}:{self.port}"
        self.ctx = SimContext(
            state=self.state,
            scheduler=self.scheduler,
            heartbeat_interval=self.heartbeat_interval,
            advertised=advertised,
            standby_of=self.standby_of,
            credentials=self.credentials,
        )
        if self.standby_of is not None:
            self._proxy = LeaderProxy(self.standby_of, advertised)
        config = uvicorn.Config(
            create_app(self.ctx, self._proxy),
            log_level=self.log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=5,
        )
        self._server = _EmbeddedServer(config)
        self._serve_task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        for _ in range(1000):  # bounded wait for startup (10 s)
            if self._server.started or self._serve_task.done():
                break
            await asyncio.sleep(0.01)
        if not self._server.started:
            await self.stop()
            raise RuntimeError(f"simulator did not start on {self.url}")
        return self

    async def stop(self) -> None:
        self.bus.close_all("shutdown")
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._serve_task), 5.0)
            except (asyncio.TimeoutError, Exception):
                self._server.force_exit = True
                self._serve_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._serve_task
        await self.scheduler.shutdown()
        if self._proxy is not None:
            await self._proxy.aclose()
        self._server = None
        self._serve_task = None

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set or the server ends, then stop cleanly."""
        assert self._serve_task is not None
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, self._serve_task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await self.stop()

    async def __aenter__(self) -> SimulatorServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class SimulatorThread:
    """The same simulator in a background thread with its own event loop.

    ``with SimulatorThread(executor="none") as sim: httpx.get(sim.url + "/v2/apps")``.
    Touch ``sim.state``/``sim.scheduler`` only through :meth:`call`, which runs a
    function in the simulator's loop and returns its result.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.server: SimulatorServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def state(self) -> MarathonState:
        assert self.server is not None
        return self.server.state

    @property
    def scheduler(self) -> Scheduler:
        assert self.server is not None
        return self.server.scheduler

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                self.server = await SimulatorServer(**self._kwargs).start()
            except BaseException as exc:
                self._error = exc
                self._started.set()
                return
            self._started.set()
            await self.server.serve_until(self._stop)

        asyncio.run(run())

    def start(self, timeout: float = 15.0) -> SimulatorThread:
        self._thread = threading.Thread(target=self._main, name="marathon-sim", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("simulator thread did not start")
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Run ``fn(*args)`` in the simulator's loop; return its result."""
        assert self._loop is not None
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
