"""``--start-haproxy --keep-haproxy-on-exit``: an HAProxy that outlives the daemon.

HAProxy is started detached (``haproxy -W -D``: the master daemonizes into its own
session, with no ``PR_SET_PDEATHSIG``), so a daemon that stops, crashes or is
upgraded leaves it serving its last config and runtime state. A starting daemon
that finds the master answering on ``--haproxy-master-socket`` adopts it instead of
starting another (and the engine adopts its slot table: no reload). While the daemon
runs it watches the master and starts a new one if it is gone.

The price: HAProxy's own messages are not relayed to the daemon's log after the
start (declare a ``log`` target in a template for them), and stopping HAProxy is
the operator's job (``kill`` the master pid from ``show proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .master_cli import HAProxyProcessError, MasterCLI, MasterUnavailable, ProcInfo
from .process import StartError, validate

if TYPE_CHECKING:
    from ..engine import Engine
    from .control import ConfigFile

log = logging.getLogger("servicerouter.haproxy")

WATCH_INTERVAL = 2.0  # seconds between looks at the master
START_TIMEOUT = 15.0


class KeptHAProxy:
    """The reloader for ``--keep-haproxy-on-exit`` (see the module docstring)."""

    def __init__(self, config: ConfigFile, master_socket: str, socket_path: str) -> None:
        self.config = config
        self.master_socket = master_socket
        self.socket_path = Path(socket_path)
        self.master = MasterCLI(master_socket)
        self._engine: Engine | None = None
        self._watch: asyncio.Task[None] | None = None
        self._master_pid: int | None = None

    async def start(self, engine: Engine) -> None:
        self._engine = engine
        with contextlib.suppress(HAProxyProcessError):
            info = await self.master.show_proc()
            self._master_pid = info.master_pid
            log.info("adopting the HAProxy master %d left running on %s (workers %s)",
                     info.master_pid, self.master_socket, info.worker_pids)
        if self._master_pid is None and self.config.path.exists() and (
                await validate(self.config.path, self.config.haproxy_bin)).ok:
            log.info("starting HAProxy (detached) on the existing %s until Marathon answers",
                     self.config.path)
            try:
                await self._launch()
            except StartError as exc:
                raise StartError(f"--start-haproxy: {exc}") from None
        self._watch = asyncio.ensure_future(self._watch_master())

    async def _launch(self) -> ProcInfo:
        """``haproxy -W -D``: returns once the detached master answers with a worker."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            Path(self.master_socket).unlink()  # a stale socket would answer "refused"
        argv = [self.config.haproxy_bin, "-W", "-D", "-S", f"{self.master_socket},mode,600",
                "-f", str(self.config.path)]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise StartError(f"cannot run {self.config.haproxy_bin}: {exc}") from exc
        try:  # the launcher exits once the master has forked; the master quiets its stdio
            out, _ = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise StartError(f"HAProxy did not detach within {START_TIMEOUT}s") from None
        alerts = "; ".join(ln.split(" : ", 1)[-1] for ln in out.decode(errors="replace")
                           .splitlines() if "[ALERT]" in ln)
        if proc.returncode != 0:
            raise StartError(f"HAProxy did not start on --haproxy-config {self.config.path} "
                             f"(status {proc.returncode}): {alerts or 'no alert printed'}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            with contextlib.suppress(HAProxyProcessError):
                info = await self.master.show_proc()
                if info.workers:
                    self._master_pid = info.master_pid
                    log.info("HAProxy started detached: master %d, workers %s; it keeps "
                             "serving when servicerouter stops", info.master_pid,
                             info.worker_pids)
                    return info
            await asyncio.sleep(0.05)
        raise StartError(f"HAProxy master socket {self.master_socket} did not answer with a "
                         f"worker within {START_TIMEOUT}s")

    async def _watch_master(self) -> None:
        """Start a new HAProxy if the one we run or adopted is gone (bounded backoff)."""
        delay = WATCH_INTERVAL
        while True:
            await asyncio.sleep(delay)
            if self._master_pid is None:
                continue  # nothing started yet: the first reload starts it
            try:  # a reload re-executes the master: its socket refuses for a moment
                await self.master.show_proc(patience=2.0)
                delay = WATCH_INTERVAL
                continue
            except HAProxyProcessError:
                pass
            log.error("HAProxy's master %s does not answer; starting HAProxy again",
                      self.master_socket)
            try:
                await self._launch()
            except StartError as exc:
                log.error("HAProxy restart failed: %s", exc)
                delay = min(delay * 2, 30.0)
                continue
            if self._engine is not None:
                self._engine.request_reconcile()  # it starts from the file

    def starts_haproxy(self) -> bool:
        return self._master_pid is None  # none adopted, none started yet

    async def reload(self) -> None:
        try:
            await self.master.reload()
        except MasterUnavailable:  # none running yet (the first config), or it died
            await self._launch()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        if self._master_pid is not None:
            log.info("leaving HAProxy (master %d) running (--keep-haproxy-on-exit)",
                     self._master_pid)
