"""Start, reload and supervise HAProxy (``haproxy -c`` and reload commands are in
:mod:`.children`; this module re-exports them).

``HAProxyProcess`` runs ``haproxy -W -db -S <master.sock> -f <config>``: master-worker,
with ``-db`` keeping the master in the foreground even if the config says ``daemon``, in
its own process group so that :meth:`HAProxyProcess.stop` can kill every process it ever
forked (master, current and old workers) with one ``killpg``. The master gets
``PR_SET_PDEATHSIG=SIGTERM``, so it stops if servicerouter dies; workers leave when
their master dies.

Measured on 2.6.12: when the current worker is SIGKILLed the master logs
``exit-on-failure: killing every processes with SIGTERM`` and exits with status 137,
even with ``master-worker no-exit-on-failure``. So the only recovery is to start
everything again, which :meth:`HAProxyProcess.supervise` does (bounded, with backoff).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from servicerouter.haproxy.children import (
    ValidationResult,
    kill_children,
    kill_group,
    pdeathsig,
    run_reload_command,
    validate,
)
from servicerouter.haproxy.files import atomic_write, keep_rejected
from servicerouter.haproxy.master_cli import (
    HAProxyProcessError,
    MasterCLI,
    MasterUnavailable,
    ProcInfo,
    ReloadError,
)

__all__ = [
    "HAProxyProcess",
    "HAProxyProcessError",
    "MasterCLI",
    "MasterUnavailable",
    "ProcInfo",
    "ReloadError",
    "StartError",
    "ValidationResult",
    "atomic_write",
    "keep_rejected",
    "kill_children",
    "run_reload_command",
    "validate",
]

log = logging.getLogger("servicerouter.haproxy")


_LEVELS = {"EMERG": logging.CRITICAL, "ALERT": logging.ERROR, "WARNING": logging.WARNING,
           "NOTICE": logging.INFO, "INFO": logging.INFO, "DIAG": logging.DEBUG,
           "DEBUG": logging.DEBUG}
_LEVEL = re.compile(r"^\[([A-Z]+)\]")
# Per-server state changes and per-proxy stop lines at a reload: one per slot or
# backend, routine in a cluster with churn (105 of 129 lines of a 60 s demo).
_ROUTINE = re.compile(r": (?:Server \S+/\S+ |Health check for server |Proxy \S+ stopped"
                      r"|Stopping (?:frontend|backend|proxy) )")
_ROUTINE_BYTES = re.compile(_ROUTINE.pattern.encode())
PUMP_CHUNK = 64 * 1024  # bytes of HAProxy's output read (and logged) per loop turn


def haproxy_log_level(line: str) -> int:
    """The level of one of HAProxy's own lines: its tag (``[ALERT]`` is ERROR,
    ``[WARNING]`` WARNING, ``[NOTICE]`` INFO), except routine per-server and
    per-proxy lines, which are DEBUG whatever their tag."""
    if _ROUTINE.search(line):
        return logging.DEBUG
    m = _LEVEL.match(line)
    return _LEVELS.get(m.group(1), logging.INFO) if m else logging.INFO


class StartError(HAProxyProcessError):
    """HAProxy did not come up (its log tail is in the message)."""


class HAProxyProcess:
    """One supervised HAProxy master-worker (the ``--start-haproxy`` mode).

    Usage: ``await p.start()``; ``await p.reload()`` after writing the new config;
    ``asyncio.create_task(p.supervise(on_restart=...))``; ``await p.stop()``.
    After a restart all runtime changes are gone: ``on_restart`` must re-apply state.
    """

    def __init__(
        self,
        config: str | os.PathLike[str],
        master_socket: str | os.PathLike[str],
        *,
        haproxy_bin: str = "haproxy",
        extra_args: Sequence[str] = (),
        start_timeout: float = 15.0,
        reload_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        log_lines: int = 200,
    ) -> None:
        self.config = os.fspath(config)
        self.master_socket = os.fspath(master_socket)
        self.haproxy_bin = haproxy_bin
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.reload_timeout = reload_timeout
        self.stop_timeout = stop_timeout
        self.master = MasterCLI(self.master_socket)
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._log_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()
        self._info: ProcInfo | None = None  # show proc after the last start or reload

    @property
    def argv(self) -> list[str]:
        # ",mode,600": the master socket otherwise follows the umask (0777 under umask
        # 000), and anyone who can connect to it can run ``show proc`` and ``reload``.
        return [self.haproxy_bin, "-W", "-db", "-S", f"{self.master_socket},mode,600",
                "-f", self.config, *self.extra_args]  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._log)[-lines:])

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> ProcInfo:
        """Start HAProxy; return once the master answers and a worker exists."""
        async with self._lock:
            if self.is_running():
                raise StartError(f"HAProxy already running (master pid {self.pid})")
            self._stopping = False
            return await self._start()

    async def _start(self) -> ProcInfo:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.master_socket)  # a stale socket would answer "refused" anyway
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pdeathsig(signal.SIGTERM),
            )
        except OSError as exc:
            raise StartError(f"cannot run {self.haproxy_bin}: {exc}") from exc
        self._log_task = asyncio.create_task(self._pump_log(self._proc))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                await self._drain_log()
                raise StartError(
                    f"HAProxy exited with status {self._proc.returncode} at start "
                    f"(config {self.config}):\n{self.log_tail()}"
                )
            with contextlib.suppress(HAProxyProcessError):
                info = await self.master.show_proc()
                if info.workers and info.master_pid == self._proc.pid:
                    log.info("HAProxy started: master %d, workers %s",
                             info.master_pid, info.worker_pids)  # fmt: skip
                    self._info = info
                    return info
            await asyncio.sleep(0.05)
        await self._terminate()
        raise StartError(
            f"HAProxy master socket {self.master_socket} did not answer with a worker within "
            f"{self.start_timeout}s:\n{self.log_tail()}"
        )

    async def _pump_log(self, proc: asyncio.subprocess.Process) -> None:
        """HAProxy's output into our log, a chunk at a time.

        A reload at 10,000 apps has the old worker write ~20,000 "Proxy ... stopped"
        lines at once. Line by line they held the event loop ~0.4 s (other apps'
        churn with it); now routine lines are dropped undecoded unless DEBUG is on,
        and the loop gets a turn after each chunk."""
        assert proc.stdout is not None
        partial = b""
        while chunk := await proc.stdout.read(PUMP_CHUNK):
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if len(partial) > PUMP_CHUNK:  # no newline in sight: log what there is
                lines.append(partial)
                partial = b""
            debug = log.isEnabledFor(logging.DEBUG)
            for raw in lines:
                if debug or not _ROUTINE_BYTES.search(raw):
                    self._log_line(raw)
            await asyncio.sleep(0)
        if partial:
            self._log_line(partial)

    def _log_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            return
        self._log.append(line)
        level = haproxy_log_level(line)
        if self._stopping:  # we asked it to exit: "Exiting Master process" is news only
            level = min(level, logging.INFO)
        log.log(level, "haproxy: %s", line)

    async def _drain_log(self) -> None:
        if self._log_task:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._log_task), 1.0)

    async def reload(self, timeout: float | None = None) -> ProcInfo:
        """Reload via the master CLI and confirm a new worker (ReloadError otherwise).

        Ends as soon as the master exits (its new worker killed, say): the confirmation
        would otherwise wait out its whole timeout on a dead socket while holding the
        lock :meth:`supervise` needs to start HAProxy again (30 s of no HAProxy)."""
        async with self._lock:
            proc = self._proc
            if proc is None or not self.is_running():
                raise ReloadError(f"HAProxy is not running (config {self.config})")
            timeout = timeout or self.reload_timeout
            if self.master.socket_gone():
                reloading = asyncio.ensure_future(
                    self.master.reload_by_signal(proc.pid, timeout=timeout))
            else:
                reloading = asyncio.ensure_future(self.master.reload(timeout=timeout))
            exited = asyncio.ensure_future(proc.wait())
            try:
                await asyncio.wait({reloading, exited}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for job in (reloading, exited):
                    job.cancel()
            if reloading.done() and not reloading.cancelled():
                try:
                    self._info = reloading.result()
                    return self._info
                except ReloadError as exc:
                    raise ReloadError(f"{exc}\n{self.log_tail(10)}") from None
            raise ReloadError(f"HAProxy's master exited (status {proc.returncode}) during the "
                              f"reload; it is started again\n{self.log_tail(10)}")

    async def wait(self) -> int:
        """Wait for the master to exit; return its status."""
        if self._proc is None:
            raise HAProxyProcessError("HAProxy was never started")
        return await self._proc.wait()

    async def supervise(
        self,
        *,
        max_restarts: int = 5,
        window: float = 300.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        on_restart: Callable[[ProcInfo], Awaitable[None]] | None = None,
        before_restart: Callable[[], None] | None = None,
        hold: contextlib.AbstractAsyncContextManager[Any] | None = None,
    ) -> None:
        """Restart HAProxy whenever the master exits (e.g. after its worker was killed),
        with exponential backoff; past ``max_restarts`` exits in ``window`` seconds, once
        every ``max_backoff`` seconds (said at CRITICAL). It never gives up: it did, and a
        load balancer whose HAProxy was OOM-killed six times in five minutes then served
        nothing until some app changed. Returns when :meth:`stop` is called.
        ``before_restart`` runs before each start (to put the config file right); ``hold``
        (a lock) is held from it until ``on_restart`` is done: whoever else changes the
        file takes it too, and neither changes the file under the other."""
        recent: collections.deque[float] = collections.deque()
        delay = backoff
        while True:
            status = await self.wait()
            if self._stopping:
                return
            await self._drain_log()
            await self._reap_group()
            now = time.monotonic()
            while recent and now - recent[0] > window:
                recent.popleft()
            if len(recent) >= max_restarts:
                delay = max_backoff
                log.critical("HAProxy exited %d times in %gs (last status %s); starting it "
                             "again every %gs while it keeps exiting:\n%s", len(recent) + 1,
                             window, status, delay, self.log_tail())
            else:
                log.error("HAProxy master exited with status %s; restarting in %.1fs",
                          status, delay)
            recent.append(now)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff) if len(recent) > 1 else backoff
            async with hold if hold is not None else contextlib.nullcontext():
                async with self._lock:
                    if self._stopping:
                        return
                    if before_restart is not None:
                        before_restart()
                    try:
                        info = await self._start()
                    except StartError as exc:
                        log.error("HAProxy restart failed: %s", exc)
                        continue
                    self.restarts += 1
                if on_restart is not None:
                    await on_restart(info)

    async def stop(self, graceful: bool = False, timeout: float | None = None) -> int | None:
        """Stop HAProxy and everything it forked. ``graceful`` first soft-stops (SIGUSR1:
        workers finish their connections) for up to ``timeout``; then SIGTERM, then
        SIGKILL to the whole process group. Returns the master's status."""
        self._stopping = True
        async with self._lock:
            if self._proc is None:
                return None
            timeout = self.stop_timeout if timeout is None else timeout
            if graceful and self._proc.returncode is None:
                self._signal(signal.SIGUSR1)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), timeout)
            await self._terminate(timeout)
            await self._drain_log()
            if self._log_task and not self._log_task.done():
                self._log_task.cancel()
            return self._proc.returncode

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def _terminate(self, timeout: float | None = None) -> None:
        assert self._proc is not None
        if self._proc.returncode is None:
            self._signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), timeout or self.stop_timeout)
        if self._proc.returncode is None:
            log.warning("HAProxy master %d ignored SIGTERM; killing its group", self._proc.pid)
        await self._reap_group()

    async def _reap_group(self) -> None:
        """SIGKILL whatever is left in the process group (old workers included)."""
        assert self._proc is not None
        await kill_group(self._proc, comm=os.path.basename(self.haproxy_bin)[:15])
