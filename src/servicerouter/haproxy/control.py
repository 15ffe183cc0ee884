"""How the daemon writes configs and reloads HAProxy: one interface, three modes.

- ``--start-haproxy``: servicerouter runs HAProxy (master-worker) itself,
  restarts it if it dies, and stops it on exit.
- ``--haproxy-master-socket PATH``: an HAProxy started elsewhere in
  master-worker mode, reloaded through its master CLI and confirmed with
  ``show proc``.
- ``--reload-command CMD``: anything else (``systemctl reload haproxy``);
  confirmed by the command's exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .detached import KeptHAProxy, running_master
from .files import CONFIG_MODE, atomic_write, keep_rejected, make_dirs, remove_leftovers
from .master_cli import MasterCLI
from .process import (
    HAProxyProcess,
    StartError,
    run_reload_command,
    validate,
)
from .render import prune_crt_lists

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("servicerouter.haproxy")

OTHER_MASTER_WAIT = 5.0
"""Seconds a starting --start-haproxy daemon waits for an HAProxy master already on its
master socket to exit before it refuses to start a second one beside it."""

STOP_GRACE = 5.0
"""Seconds a stopping daemon gives the HAProxy it started to finish its connections
(websockets, long downloads) before it stops it outright: well within systemd's
TimeoutStopSec (30 s in the unit) and a container's default stop timeout (10 s)."""


class ConfigFile:
    """The live config file: ``haproxy -c`` first, then an atomic replace.

    The candidate is piped to ``haproxy -c`` (never written to /tmp); :meth:`cleanup`
    removes what a killed daemon may have left of an ``atomic_write`` next to the
    config and in ``<config>.d`` (map files, crt-lists), at start and at exit, and the
    crt-lists in ``crt_list_dir`` the file does not name (candidates' of a run cut short).

    From :meth:`write` until :meth:`loaded`, ``<config>.unconfirmed`` says on disk that
    the file holds a config HAProxy was not (yet) confirmed to run. A daemon killed in
    between (SIGKILL during a reload) leaves it, and the next one reloads rather than
    adopt HAProxy as though it ran the file (:meth:`unconfirmed`, takeover.py)."""

    def __init__(self, path: Path, haproxy_bin: str = "haproxy",
                 check_timeout: float = 60.0, crt_list_dir: str = "") -> None:
        self.path = path
        self.haproxy_bin = haproxy_bin
        self.check_timeout = check_timeout
        self.crt_list_dir = crt_list_dir
        self.marker = path.with_name(path.name + ".unconfirmed")
        # The file's turn: held by the reload pipeline from a write until HAProxy loaded
        # it (or the file is put back), and by a restart of HAProxy from putting the file
        # right until HAProxy runs it, so that neither changes the file under the other.
        self.changes = asyncio.Lock()

    async def validate(self, text: str) -> tuple[bool, str]:
        result = await validate(text, self.haproxy_bin, self.check_timeout)
        # Name the file an operator can open: a rejected candidate is kept there.
        return result.ok, result.output.replace("/dev/stdin", f"{self.path}.rejected")

    def read(self) -> str | None:
        """The config HAProxy runs from, or None if there is none (yet)."""
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def restore(self, text: str | None) -> None:
        """Before HAProxy starts again from the file (it died): put ``text``, the config it
        ran, back if the file was removed or edited outside servicerouter. Started on the
        file as it is, HAProxy would fail at every restart (no file, not a config) or
        serve a hand-edited config the daemon never validated."""
        if text is None or self.read() == text:
            return
        what = "removed" if not self.path.exists() else "changed"
        log.warning("%s was %s outside servicerouter; putting back the config HAProxy ran "
                    "before starting it again", self.path, what)
        try:
            self.write(text)
        except OSError as exc:
            log.error("putting back %s failed (%s); HAProxy starts on what is there",
                      self.path, exc.strerror or exc)

    def cleanup(self) -> None:
        """Remove the temp files a killed daemon may have left next to the config and in
        its map folder (files.remove_leftovers), and the crt-lists that only candidates
        named: the file on disk is the config HAProxy runs (or is restarted on)."""
        remove_leftovers(self.path)
        text = self.read()
        if text is not None:  # else nothing tells which one is in use
            prune_crt_lists(self.crt_list_dir, text)

    def write(self, text: str) -> None:
        """Replace the file with ``text``, unconfirmed until :meth:`loaded`: the marker
        is on disk before the file changes, so no kill leaves a change without it."""
        self.unconfirm()
        atomic_write(self.path, text, new_mode=CONFIG_MODE)

    def unconfirm(self) -> None:
        """Put the marker on disk (before the file or its map files change): until
        :meth:`loaded`, the file may hold what HAProxy does not run."""
        make_dirs(self.path.parent)
        fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                     CONFIG_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{self.path} was written by servicerouter (pid {os.getpid()}), which "
                    "had not seen HAProxy load it; the next servicerouter reloads HAProxy "
                    "rather than take it for the config HAProxy runs.\n")

    def loaded(self) -> None:
        """HAProxy runs what the file holds (a confirmed reload, a start on the file):
        the next daemon may adopt it."""
        try:
            self.marker.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s (%s): the next start reloads HAProxy rather than "
                        "adopt it", self.marker, exc.strerror or exc)

    def unconfirmed(self) -> str | None:
        """Why the file may not be what HAProxy runs (the marker a daemon stopped during
        a reload left), or None."""
        if not self.marker.exists():
            return None
        return (f"{self.marker} is there: the last servicerouter stopped before HAProxy "
                f"was seen to load {self.path}")

    def keep_rejected(self, text: str) -> Path | str:
        """The candidate kept next to the config for inspection; best effort: a disk that
        is full (or a folder in the way) must not stop the candidate being judged."""
        try:
            return keep_rejected(self.path, text)
        except OSError as exc:
            return f"nowhere: writing {self.path}.rejected failed: {exc.strerror or exc}"

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.marker.unlink()  # no file: none that HAProxy might not run

    def read_map_file(self, directory: str, name: str) -> str | None:
        """Range mode: a file :meth:`write_maps` wrote, or None."""
        try:
            return (Path(directory) / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def write_maps(self, directory: str, files: Mapping[str, str | None]) -> None:
        """Range mode: the map files the config names (pool.py), each replaced atomically
        (None: removed, as one that was not there is put back)."""
        make_dirs(Path(directory))
        for name, text in files.items():
            if text is None:
                (Path(directory) / name).unlink(missing_ok=True)
            else:
                atomic_write(Path(directory) / name, text)


def _alerts(exc: Exception) -> str:
    """HAProxy's ALERT lines of a failed start, on one line."""
    lines = str(exc).splitlines()
    alerts = [ln.split(" : ", 1)[-1].strip() for ln in lines if "[ALERT]" in ln]
    return "; ".join(alerts) or lines[0]


class _Reloader:
    async def start(self, engine: Engine) -> None:
        """Called once before the engine runs."""

    def starts_haproxy(self) -> bool:
        """True when the next reload starts HAProxy: none of ours runs yet."""
        return False

    def problem(self) -> str | None:
        """Why HAProxy cannot be reloaded now, as far as this reloader knows, or None."""
        return None

    async def reload(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Called once when the daemon stops."""


class CommandReloader(_Reloader):
    def __init__(self, command: str) -> None:
        self.command = command

    async def reload(self) -> None:
        await run_reload_command(self.command)


class MasterReloader(_Reloader):
    def __init__(self, socket: str) -> None:
        self.master = MasterCLI(socket)

    async def reload(self) -> None:
        await self.master.reload()


class StartedHAProxy(_Reloader):
    """HAProxy as the daemon's child: started at the first good config, supervised."""

    def __init__(self, config: ConfigFile, master_socket: str, socket_path: str) -> None:
        self.config = config
        self.socket_path = Path(socket_path)
        self.process = HAProxyProcess(config.path, master_socket,
                                      haproxy_bin=config.haproxy_bin)
        self._engine: Engine | None = None
        self._supervisor: asyncio.Task[None] | None = None

    async def start(self, engine: Engine) -> None:
        self._engine = engine
        # An HAProxy left by --keep-haproxy-on-exit (or started elsewhere) on our master
        # socket: a second one would share its ports and take its socket paths, and it
        # would serve its last config for ever, managed by no one. One that a daemon
        # killed a moment ago takes along (parent-death signal) may still be exiting.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OTHER_MASTER_WAIT
        while (other := running_master(self.process.master_socket, self.config.haproxy_bin)
               ) is not None and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if other is not None:
            raise StartError(
                f"--start-haproxy: HAProxy master {other.pid} already runs with the master "
                f"socket {self.process.master_socket} (left by --keep-haproxy-on-exit, or "
                "started elsewhere); not starting a second "
                f"HAProxy on its ports: add --keep-haproxy-on-exit to adopt it, or stop it "
                f"(kill {other.pid}) first")
        # A config left by an earlier run keeps serving while Marathon is unreachable.
        if self.config.path.exists() and (await validate(self.config.path,
                                                         self.config.haproxy_bin)).ok:
            log.info("starting HAProxy on the existing %s until Marathon answers",
                     self.config.path)
            try:
                await self._start()
            except StartError as exc:
                raise StartError(f"--start-haproxy: HAProxy did not start on the existing "
                                 f"--haproxy-config {self.config.path}: {_alerts(exc)}"
                                 ) from None

    async def _start(self) -> None:
        make_dirs(self.socket_path.parent)
        await self.process.start()
        self.config.loaded()  # HAProxy started on the file: it runs what is there
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def _supervise(self) -> None:
        # In the file's turn: a candidate the pipeline wrote, not yet reloaded, is not put
        # back under it, nor written while HAProxy starts (ConfigFile.changes).
        await self.process.supervise(on_restart=self._restarted, before_restart=self._restore,
                                     hold=self.config.changes)

    def _restore(self) -> None:
        self.config.restore(self._engine.running_config if self._engine else None)

    async def _restarted(self, _: Any) -> None:
        # A restarted HAProxy starts from the file: runtime changes since the last
        # reload are gone until reconcile puts them back.
        self.config.loaded()  # from the file
        log.warning("HAProxy restarted; reconciling its servers with the slot table")
        if self._engine is not None:
            self._engine.request_reconcile()

    def starts_haproxy(self) -> bool:
        return not self.process.is_running()

    async def reload(self) -> None:
        if self.process.is_running():
            await self.process.reload()
        else:
            supervised = self._supervisor is not None
            if self._supervisor is not None:
                self._supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._supervisor
                self._supervisor = None
            try:
                await self._start()
            except StartError:
                # HAProxy is down (it exited, its restart was pending) and the candidate
                # did not start: supervised again, it is started on the last good config
                # (put back before each start), as after any exit. Left alone it stayed
                # down while the candidate kept failing.
                if supervised and self._supervisor is None:
                    self._supervisor = asyncio.ensure_future(self._supervise())
                raise

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self.process.is_running():
            log.info("stopping HAProxy gracefully: connections in progress get up to %gs "
                     "to finish", STOP_GRACE)
        # A soft stop (SIGUSR1): HAProxy stops listening at once and ends when its last
        # connection does; SIGTERM alone was its hard stop, every request cut.
        await self.process.stop(graceful=True, timeout=STOP_GRACE)
        # HAProxy leaves its sockets behind. Until it started they are not ours: they may
        # be another HAProxy's (one that start() refused to start beside).
        if self.process.pid is not None:
            for stale in (self.process.master_socket, self.socket_path):
                with contextlib.suppress(OSError):
                    os.unlink(stale)
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor


def build_reloader(args: argparse.Namespace, config: ConfigFile) -> _Reloader | KeptHAProxy:
    if args.start_haproxy and getattr(args, "keep_haproxy_on_exit", False):
        return KeptHAProxy(config, args.haproxy_master_socket, args.haproxy_socket)
    if args.start_haproxy:
        return StartedHAProxy(config, args.haproxy_master_socket, args.haproxy_socket)
    if args.reload_command:
        return CommandReloader(args.reload_command)
    return MasterReloader(args.haproxy_master_socket)
