"""HAProxy master CLI (``-S <socket>``): ``show proc``, confirmed ``reload``, worker commands.

Measured on 2.6.12:

* A command gets its reply only after the client half-closes (``shutdown(SHUT_WR)``);
  the master then answers and closes.
* ``reload`` answers nothing and closes (2.7+ prints ``Success=1``). While the master
  re-executes itself its socket briefly refuses connections, and that window can outlast
  the new worker's start: right after the new worker first answered on its own stats
  socket, the master refused in 58 of 60 reloads. A caller that reads the master after a
  reload it did not wait for itself asks with ``show_proc(patience=…)``.
* ``show proc`` after a good reload: the master's ``reloads`` count is +1 and the
  ``# workers`` section lists a new pid; the previous worker moves to ``# old workers``
  while it still serves connections. After a rejected configuration: ``reloads`` is +1,
  ``[failed: N]`` is +1 and the worker is unchanged (its own count goes +1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import stat
import time
from dataclasses import dataclass, field

log = logging.getLogger("servicerouter.haproxy")


class HAProxyProcessError(Exception):
    """Base class for the master CLI and process supervision errors."""


class MasterUnavailable(HAProxyProcessError):
    """The master CLI socket could not be reached."""


class ReloadError(HAProxyProcessError):
    """A reload was not confirmed (rejected configuration, timeout, failing command)."""


@dataclass(frozen=True)
class WorkerInfo:
    pid: int
    reloads: int  # reloads this worker has seen since it was forked
    uptime: str  # e.g. "0d00h05m36s"
    version: str

    @property
    def uptime_seconds(self) -> int:
        return parse_uptime(self.uptime)


@dataclass(frozen=True)
class ProcInfo:
    master_pid: int
    reloads: int
    failed_reloads: int
    uptime: str
    version: str
    workers: list[WorkerInfo] = field(default_factory=list)
    old_workers: list[WorkerInfo] = field(default_factory=list)

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    @property
    def all_pids(self) -> list[int]:
        return [self.master_pid, *self.worker_pids, *(w.pid for w in self.old_workers)]


_UPTIME = re.compile(r"^(\d+)d(\d+)h(\d+)m(\d+)s$")
_MASTER = re.compile(r"^(\d+)\s+master\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?\s+(\S+)\s+(\S+)")
_WORKER = re.compile(r"^(\d+)\s+worker\s+(?:\[was:\s*\d+\]\s+)?(\d+)\s+(\S+)\s+(\S+)")


def parse_uptime(text: str) -> int:
    m = _UPTIME.match(text)
    if not m:
        raise ValueError(f"bad uptime {text!r}")
    d, h, mi, s = (int(g) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def parse_show_proc(text: str) -> ProcInfo:
    """Parse the master CLI's ``show proc`` (2.6 layout; tolerant of 2.7+ extras)."""
    master: re.Match[str] | None = None
    workers: list[WorkerInfo] = []
    old: list[WorkerInfo] = []
    section = "master"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            title = stripped.lstrip("# ").lower()
            if title.startswith("old workers"):
                section = "old"
            elif title.startswith("workers"):
                section = "workers"
            elif title.startswith("programs"):
                section = "programs"
            continue
        if section == "master":
            master = master or _MASTER.match(stripped)
            continue
        m = _WORKER.match(stripped)
        if m and section in ("workers", "old"):
            info = WorkerInfo(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4))
            (workers if section == "workers" else old).append(info)
    if master is None:
        if text.lstrip().startswith("Unknown command"):  # what a worker's stats socket says
            raise ValueError("this is not HAProxy's master CLI (the socket of -S) but a "
                             "worker's stats socket (the config's 'stats socket', which "
                             "--haproxy-socket names): it does not know 'show proc'")
        raise ValueError(f"no master line in 'show proc' output: {text[:200]!r}")
    return ProcInfo(
        master_pid=int(master.group(1)),
        reloads=int(master.group(2)),
        failed_reloads=int(master.group(3) or 0),
        uptime=master.group(4),
        version=master.group(5),
        workers=workers,
        old_workers=old,
    )


MAX_REPLY = 1 << 20
"""Bytes of one master CLI reply (``show proc`` is a few hundred): a socket that
answers without end within the timeout is not held in memory."""


class _ReplyTooLong(Exception):
    pass


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    """The reply until the master closes, at most MAX_REPLY bytes (else _ReplyTooLong)."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > MAX_REPLY:
            raise _ReplyTooLong(f"{size} bytes read")
        parts.append(chunk)


class MasterCLI:
    """Client for the master CLI socket (unix path), e.g. ``--haproxy-master-socket``."""

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"MasterCLI({self.path!r})"

    async def command(self, line: str, *, timeout: float | None = None) -> str:
        """Send one line, half-close, read the reply until the master closes (within
        ``timeout``, default :attr:`timeout`, for the connection and again for the reply)."""
        if "\n" in line or "\r" in line:
            raise ValueError(f"master CLI command contains a line break: {line!r}")
        timeout = self.timeout if timeout is None else timeout
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path), timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or f"timed out after {timeout:g}s"
            raise MasterUnavailable(
                f"cannot connect to HAProxy master socket {self.path}: {reason}"
            ) from exc
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            data = await asyncio.wait_for(_read_reply(reader), timeout)
        except _ReplyTooLong as exc:
            raise MasterUnavailable(
                f"HAProxy master socket {self.path}: reply to {line!r} longer than "
                f"{MAX_REPLY} bytes ({exc}); not read further"
            ) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise MasterUnavailable(
                f"HAProxy master socket {self.path}: no complete reply to {line!r}: {exc!r}"
            ) from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        return data.decode("utf-8", "replace")

    async def show_proc(self, *, patience: float = 0.0,
                        timeout: float | None = None) -> ProcInfo:
        """``show proc``. With ``patience``, a refused connection (the master re-executing
        itself for a reload) is asked again every 50 ms for up to that many seconds.
        ``timeout``: as :meth:`command`'s."""
        deadline = time.monotonic() + patience
        while True:
            try:
                text = await self.command("show proc", timeout=timeout)
                break
            except MasterUnavailable:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.05)
        try:
            return parse_show_proc(text)
        except ValueError as exc:
            raise HAProxyProcessError(f"HAProxy master socket {self.path}: {exc}") from exc

    async def worker_command(self, command: str, worker: str = "1") -> str:
        """Run a Runtime API command on a worker: ``@1`` = current worker, ``!<pid>``
        for an explicit pid, ``master`` for the master itself."""
        return await self.command(f"@{worker} {command}")

    async def reload(self, timeout: float = 30.0, poll: float = 0.05) -> ProcInfo:
        """Reload and confirm: wait until the master's ``reloads`` count goes up and a new
        worker pid appears. Raises ReloadError (rejected config, or not confirmed in time)."""
        before = await self.show_proc()
        with contextlib.suppress(MasterUnavailable):  # 2.6 closes without a reply
            await self.command("reload")
        return await self.wait_reloaded(before, timeout=timeout, poll=poll)

    def socket_gone(self) -> bool:
        """Whether the socket file is gone (or is no socket any more)."""
        try:
            return not stat.S_ISSOCK(os.stat(self.path).st_mode)
        except OSError:
            return True

    async def reload_by_signal(self, pid: int, *, timeout: float = 30.0,
                               poll: float = 0.05) -> ProcInfo:
        """Reload master ``pid`` with SIGUSR2 when :meth:`socket_gone`, and confirm it
        against the master as it is right before the signal: a worker it did not have
        then, or a rejection (ReloadError).

        Removed (a cleaner of /tmp or /run, an operator), the socket cannot be reached,
        so every reload through it failed for good. A master takes SIGUSR2 as a reload,
        and binds its -S socket anew as it re-executes; the caller has made sure ``pid``
        is its own HAProxy's master.

        The master cannot be asked before the signal, so what it has is read from /proc:
        its children, current and old workers. A ``show proc`` kept from earlier was
        judged against before: an operator's reload since then (a worker the snapshot
        did not have, a failure count HAProxy resets at a good reload) made a rejected
        config look loaded."""
        if not self.socket_gone():  # back meanwhile (an operator's reload): ask it
            return await self.reload(timeout=timeout, poll=poll)
        before = _children(pid)
        log.warning("HAProxy's master socket %s is gone; reloading master %d with "
                    "SIGUSR2, which binds it again", self.path, pid)
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        last: ProcInfo | None = None
        last_error: Exception | None = None
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(poll, left))
            try:  # none answers until the master has re-executed for the signal
                last = await self.show_proc(timeout=max(0.05, min(self.timeout, left)))
            except HAProxyProcessError as exc:
                last_error = exc
                continue
            if last.master_pid != pid:
                raise ReloadError(f"HAProxy master {last.master_pid}, not {pid}, answers on "
                                  f"{self.path} since the SIGUSR2: the reload is not "
                                  "confirmed")
            if set(last.worker_pids) - before:
                return last
            if last.failed_reloads > 0:  # re-executed with no new worker: a rejection
                raise ReloadError(
                    f"HAProxy (master {pid}, reloaded with SIGUSR2) rejected the new "
                    f"configuration: {last.failed_reloads} failed reload(s); worker(s) "
                    f"{last.worker_pids} keep serving the previous one")
        state = (f"workers {last.worker_pids}, none new" if last
                 else f"master unreachable: {last_error}")
        raise ReloadError(f"HAProxy reload of master {pid} by SIGUSR2 not confirmed within "
                          f"{timeout:g}s ({state})")

    async def wait_reloaded(
        self, before: ProcInfo, *, timeout: float = 30.0, poll: float = 0.05
    ) -> ProcInfo:
        deadline = time.monotonic() + timeout
        last: ProcInfo | None = None
        last_error: Exception | None = None
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(poll, left))
            try:
                last = await self.show_proc(timeout=max(0.05, min(self.timeout, left)))
            except HAProxyProcessError as exc:  # the master is re-executing itself
                last_error = exc
                continue
            if last.reloads <= before.reloads:
                continue
            if last.failed_reloads > before.failed_reloads:
                raise ReloadError(
                    f"HAProxy (master socket {self.path}) rejected the new configuration: "
                    f"failed reloads {before.failed_reloads} -> {last.failed_reloads}; "
                    f"worker(s) {last.worker_pids} keep serving the previous one"
                )
            if set(last.worker_pids) - set(before.worker_pids):
                return last
        state = (
            f"reloads {before.reloads} -> {last.reloads}, workers {last.worker_pids}"
            if last
            else f"master unreachable: {last_error}"
        )
        raise ReloadError(
            f"HAProxy reload via master socket {self.path} not confirmed within "
            f"{timeout:g}s ({state})"
        )


def _children(pid: int) -> set[int]:
    """The pids whose parent is ``pid`` (an HAProxy master's workers, old ones too)."""
    from .children import processes  # it imports this module

    return {child for child, _, fields in processes()
            if len(fields) > 1 and fields[1] == str(pid)}
