"""``--start-haproxy --keep-haproxy-on-exit``: an HAProxy that outlives the daemon.

HAProxy is started detached (``haproxy -W -D``: the master daemonizes into its own
session, with no ``PR_SET_PDEATHSIG``), so a daemon that stops, crashes or is
upgraded leaves it serving its last config and runtime state. A starting daemon
that finds the master answering on ``--haproxy-master-socket`` adopts it instead of
starting another (and the engine adopts its slot table: no reload). While the daemon
runs it watches the master and starts a new one if it is gone.

A master that does not answer its socket is not taken for dead while its process
lives (it may be busy, or stopped with SIGSTOP): a second master would bind the same
ports beside it (``SO_REUSEPORT``) and take over its socket. The daemon waits for it,
and says why, instead.

The price: HAProxy's own messages are not relayed to the daemon's log after the
start (declare a ``log`` target in a template for them), and stopping HAProxy is
the operator's job (``kill`` the master pid from ``show proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .children import kill_group, processes
from .files import make_dirs
from .master_cli import HAProxyProcessError, MasterCLI, MasterUnavailable, ProcInfo, ReloadError
from .process import StartError, validate

if TYPE_CHECKING:
    from ..engine import Engine
    from .control import ConfigFile

log = logging.getLogger("servicerouter.haproxy")

WATCH_INTERVAL = 2.0  # seconds between looks at the master
START_TIMEOUT = 15.0
KILL_TIMEOUT = 10.0  # for the processes of a failed launch to be gone after SIGKILL
ANSWER_TIMEOUT = 60.0  # how long a starting daemon waits for a kept master that is silent


@dataclass(frozen=True)
class HAProxyPid:
    pid: int
    ppid: int
    state: str  # the letter of /proc/<pid>/stat: R, S, D, T (stopped), ...

    def describe(self) -> str:
        return {"T": "stopped", "t": "stopped", "D": "blocked in the kernel"}.get(
            self.state, "running but busy")


def _started_with_socket(argv: list[str], master_socket: str) -> bool:
    """Whether ``argv`` has ``-S master_socket[,options]``."""
    return any(prev == "-S" and arg.split(",", 1)[0] == master_socket
               for prev, arg in itertools.pairwise(argv))


def haproxy_processes(master_socket: str, names: Collection[str]) -> list[HAProxyPid]:
    """Live processes named ``names`` started with ``-S master_socket``: the master, its
    workers and a launcher still running. A zombie is dead. None where /proc is not."""
    found = []
    for pid, name, fields in processes():
        if len(fields) < 2 or name not in names or fields[0] in ("Z", "X"):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if _started_with_socket(argv, master_socket):
            found.append(HAProxyPid(pid, int(fields[1]), fields[0]))
    return found


def running_master(master_socket: str, haproxy_bin: str) -> HAProxyPid | None:
    """The live HAProxy master started with ``-S master_socket`` (a kept one, or one
    started elsewhere), judged by the process: one busy or stopped does not answer, yet
    is not dead. (Workers of a master just killed count until they exit.)"""
    names = {"haproxy", Path(haproxy_bin).name[:15]}  # comm: 15 characters
    found = haproxy_processes(master_socket, names)
    pids = {p.pid for p in found}
    return next((p for p in found if p.ppid not in pids), None)


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
        self._info: ProcInfo | None = None  # the master's last show proc
        self.answer_timeout = ANSWER_TIMEOUT
        # The live master that does not answer, and its error, as the watch last saw it.
        self._silent_since: tuple[HAProxyPid, str] | None = None

    def _processes(self) -> list[HAProxyPid]:
        names = {"haproxy", Path(self.config.haproxy_bin).name[:15]}  # comm: 15 chars
        return haproxy_processes(self.master_socket, names)

    def live_master(self) -> HAProxyPid | None:
        """The HAProxy process holding our master socket (:func:`running_master`)."""
        return running_master(self.master_socket, self.config.haproxy_bin)

    def _silent(self, proc: HAProxyPid, error: Exception) -> str:
        return (f"HAProxy master {proc.pid} ({proc.describe()}) holds the master socket "
                f"{self.master_socket} but does not answer on it ({error})")

    def problem(self) -> str | None:
        """The live master that does not answer, as the watch last saw it: HAProxy's
        workers may still serve, but no reload can happen until it answers."""
        if self._silent_since is None:
            return None
        proc, error = self._silent_since
        return (f"HAProxy master {proc.pid} ({proc.describe()}) does not answer on "
                f"{self.master_socket} ({error}); no reload until it does")

    async def _kept_master(self) -> ProcInfo | None:
        """The master a previous daemon left, if any. One that is alive but silent is
        waited for, up to ``answer_timeout``; then StartError, not a second master."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.answer_timeout
        waiting = False
        while True:
            try:
                return await self.master.show_proc()
            except HAProxyProcessError as exc:
                error = exc
            proc = self.live_master()
            if proc is None:
                return None
            if loop.time() >= deadline:
                raise StartError(
                    f"{self._silent(proc, error)} for {self.answer_timeout:g}s; not starting "
                    f"a second HAProxy on its ports: resume it (kill -CONT {proc.pid}) or "
                    f"stop it (kill {proc.pid}), then start servicerouter again")
            if not waiting:
                log.warning("%s; waiting up to %gs for it rather than starting a second "
                            "HAProxy on its ports", self._silent(proc, error),
                            self.answer_timeout)
                waiting = True
            await asyncio.sleep(0.2)

    async def start(self, engine: Engine) -> None:
        self._engine = engine
        info = await self._kept_master()
        if info is not None:
            self._master_pid, self._info = info.master_pid, info
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
        """``haproxy -W -D``: returns once the detached master answers with a worker.
        Never beside a live master of this socket (whose socket it would remove)."""
        running = self.live_master()
        if running is not None:
            raise StartError(f"HAProxy master {running.pid} ({running.describe()}) already "
                             f"runs with the master socket {self.master_socket}; not starting "
                             "a second HAProxy on its ports")
        make_dirs(self.socket_path.parent)
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
            await self._kill_launched(proc)
            raise StartError(f"HAProxy did not detach within {START_TIMEOUT}s; what it "
                             "started was killed") from None
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
                    self._master_pid, self._info = info.master_pid, info
                    self.config.loaded()  # HAProxy started on the file: it runs it
                    log.info("HAProxy started detached: master %d, workers %s; it keeps "
                             "serving when servicerouter stops", info.master_pid,
                             info.worker_pids)
                    return info
            await asyncio.sleep(0.05)
        await self._kill_launched(proc)
        raise StartError(f"HAProxy master socket {self.master_socket} did not answer with a "
                         f"worker within {START_TIMEOUT}s; what HAProxy started was killed")

    async def _kill_launched(self, proc: asyncio.subprocess.Process) -> None:
        """SIGKILL all a failed launch started, so that nothing of it serves or holds the
        ports: the launcher's process group, and the master, which ``-D`` made a session
        of its own, with its workers (its process group). Every live HAProxy started
        with our socket is this launch's: ``_launch`` starts none beside another."""
        await kill_group(proc)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_TIMEOUT
        while (found := self._processes()) and loop.time() < deadline:
            for p in found:
                with contextlib.suppress(OSError):  # gone meanwhile, or not ours to kill
                    if os.getpgid(p.pid) == p.pid:
                        os.killpg(p.pid, signal.SIGKILL)
                    else:
                        os.kill(p.pid, signal.SIGKILL)
            await asyncio.sleep(0.05)
        if found:
            log.error("HAProxy processes %s of a failed launch are still alive after "
                      "SIGKILL", [p.pid for p in found])

    async def _watch_master(self) -> None:
        """Start a new HAProxy if the one we run or adopted is gone (bounded backoff)."""
        delay = WATCH_INTERVAL
        while True:
            await asyncio.sleep(delay)
            if self._master_pid is None:
                continue  # nothing started yet: the first reload starts it
            try:  # a reload re-executes the master: its socket refuses for a moment
                info = await self.master.show_proc(patience=2.0)
                self._master_pid, self._info = info.master_pid, info
                if self._silent_since is not None:
                    log.info("HAProxy's master %d answers again", info.master_pid)
                    self._silent_since = None
                delay = WATCH_INTERVAL
                continue
            except HAProxyProcessError as exc:
                error = exc
            proc = self.live_master()
            if proc is not None:  # busy or stopped: another would share its ports
                if self._silent_since is None:
                    log.error("%s; not starting a second HAProxy on its ports, waiting for "
                              "it to answer", self._silent(proc, error))
                self._silent_since = (proc, str(error))
                continue
            self._silent_since = None
            log.error("HAProxy's master %s does not answer; starting HAProxy again",
                      self.master_socket)
            # In the file's turn (ConfigFile.changes): a candidate the pipeline wrote, not
            # yet reloaded, is not put back under it, nor written while HAProxy starts.
            async with self.config.changes:
                if self.live_master() is not None:  # a reload launched one meanwhile
                    continue
                self.config.restore(self._engine.running_config if self._engine else None)
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
        proc = self.live_master() if self.master.socket_gone() else None
        if proc is not None and proc.pid == self._master_pid:
            self._info = await self.master.reload_by_signal(proc.pid)
            return
        try:
            self._info = await self.master.reload()
        except MasterUnavailable as exc:  # none running yet (the first config), or it died
            proc = self.live_master()
            if proc is not None:  # or it is busy or stopped: not a second one beside it
                raise ReloadError(f"{self._silent(proc, exc)}; not starting a second "
                                  "HAProxy on its ports") from None
            await self._launch()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        if self._master_pid is not None:
            log.info("leaving HAProxy (master %d) running (--keep-haproxy-on-exit)",
                     self._master_pid)
