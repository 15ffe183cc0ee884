"""The daemon's short-lived children: ``haproxy -c`` and ``--reload-command``.

Each runs in its own process group, is bounded by a timeout, is killed with its group
when the daemon stops (:func:`kill_children`), and dies with the daemon if the daemon is
killed outright (``PR_SET_PDEATHSIG``, set by :func:`pdeathsig`, which the supervised
HAProxy master of :mod:`.process` uses too).

``haproxy -c`` runs at a lower CPU priority (:data:`CHECK_NICE`): at 10,000 services it
parses the whole configuration for one to three seconds of a core, on the very host
whose HAProxy worker serves every client and takes the daemon's runtime updates. The
check only decides when the next reload can start; it uses what the worker leaves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shlex
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from servicerouter.haproxy.master_cli import ReloadError

CHECK_NICE = 10
"""Niceness added to ``haproxy -c`` (not to HAProxy itself, nor to reload commands).
Where the worker leaves a core idle, the check runs as fast as before; where both are
busy, Linux gives it about a tenth of a core against the worker (the kernel's weights
for nice 0 and 10 are 1024 and 110): a 10,000-service check, ~3 s alone, then takes
~30 s, still within its 60 s timeout."""


@dataclass(frozen=True)
class ValidationResult:
    ok: bool
    output: str


def brief(output: str, limit: int = 8192) -> str:
    """``haproxy -c``'s output for a log line or an error: its head, with how much was
    left out. A broken template over 10,000 services is an alert each (megabytes),
    logged again at every retry of the backoff."""
    output = output.strip()
    if len(output) <= limit:
        return output
    cut = output.rfind("\n", 0, limit)
    head = output[:cut if cut > 0 else limit]
    return (f"{head}\n... ({len(output) - len(head)} more characters of haproxy -c's "
            "output not shown)")


def _tail(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def processes() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, comm, the fields of ``/proc/<pid>/stat`` after comm: state, ppid, pgrp, ...)
    of every process; one that exits meanwhile is skipped. Nothing without /proc."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(entry), stat[stat.find("(") + 1 : stat.rfind(")")], \
            stat[stat.rfind(")") + 2 :].split()


def _group_members(pgid: int, comm: str | None) -> list[int]:
    """Pids in process group ``pgid`` (optionally only those whose comm is ``comm``)."""
    return [pid for pid, name, fields in processes()
            if len(fields) > 2 and int(fields[2]) == pgid and (comm is None or name == comm)]


REAP_TIMEOUT = 5.0  # seconds for SIGKILLed orphans to exit, to be reaped


async def _reap_orphans(pgid: int, comm: str | None) -> None:
    """Reap the members of group ``pgid`` that became our children when their parent
    died. As PID 1 (the container's ENTRYPOINT) or a child subreaper the daemon inherits
    the workers of an HAProxy master killed -9, and asyncio waits only for the children
    it started: each was a zombie for ever. Called once its leader, our own child, is
    reaped; no member is a child asyncio waits for (each of those leads its group).
    Waits (bounded) only for the zombies and the members it killed (``comm``)."""
    me = os.getpid()
    deadline = asyncio.get_running_loop().time() + REAP_TIMEOUT
    while True:
        ours = [pid for pid, name, fields in processes()
                if len(fields) > 2 and int(fields[2]) == pgid and int(fields[1]) == me
                and pid != pgid and (comm is None or name == comm or fields[0] == "Z")]
        left = []
        for pid in ours:
            with contextlib.suppress(ChildProcessError):  # reaped meanwhile: gone
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    left.append(pid)  # still exiting
        if not left or asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(0.05)


async def kill_group(proc: asyncio.subprocess.Process, comm: str | None = None) -> None:
    """SIGKILL the process group led by ``proc`` (started with ``start_new_session``).

    Once the leader is reaped its pid could be reused, so then only members whose
    ``comm`` matches are killed, one by one."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        comm = None  # every member was killed
    else:
        with contextlib.suppress(OSError):
            for pid in _group_members(proc.pid, comm):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
    await _reap_orphans(proc.pid, comm)


# Short-lived children (``haproxy -c``, reload commands) still running: killed with their
# process groups by :func:`kill_children` when the daemon stops. If the daemon is killed
# outright, PR_SET_PDEATHSIG kills them instead (the direct child only: a reload
# command's own children are bounded by its timeout, not by the daemon's life).
_children: set[asyncio.subprocess.Process] = set()


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, resolved in the daemon: importing or ``dlopen``-ing in a child
    between fork and exec can deadlock on a lock another thread held at the fork."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return None


def pdeathsig(sig: int, nice: int = 0) -> Callable[[], None]:
    """A ``preexec_fn`` that sends ``sig`` to the child when the daemon dies (and adds
    ``nice`` to its niceness).

    The signal only covers a parent that dies *after* the ``prctl``. A daemon killed
    between the fork and it (a window of microseconds, but one a supervisor that kills
    at the first sight of a child does hit) would leave HAProxy running for good, so the
    child checks its parent afterwards and gives up if it was orphaned meanwhile."""
    parent = os.getpid()
    prctl = _prctl()

    def preexec() -> None:  # runs in the child between fork and exec
        if prctl is not None:
            prctl(1, sig)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(128 + sig)
        if nice:
            os.nice(nice)

    return preexec


async def _spawn(argv: Sequence[str], sig: int, nice: int = 0,
                 **kw: Any) -> asyncio.subprocess.Process:
    """A child in its own process group that dies with the daemon (``sig`` on our death)."""
    kw.setdefault("stdin", asyncio.subprocess.DEVNULL)
    proc = await asyncio.create_subprocess_exec(
        *argv, start_new_session=True, preexec_fn=pdeathsig(sig, nice), **kw)  # fmt: skip
    _children.add(proc)
    return proc


async def kill_children() -> None:
    """SIGKILL every ``haproxy -c`` and reload command still running (at shutdown)."""
    for proc in list(_children):
        await kill_group(proc)
        _children.discard(proc)


async def validate(
    config: str | os.PathLike[str], haproxy_bin: str = "haproxy", timeout: float = 60.0
) -> ValidationResult:
    """``haproxy -c -f <config>``. ``config`` is a path (``Path``, or a ``str`` naming an
    existing file without a newline) or the configuration text itself, which is piped
    to ``haproxy -c -f /dev/stdin``: a candidate never touches the disk, so no temporary
    file can outlive the daemon. The check runs at :data:`CHECK_NICE`, is killed after
    ``timeout`` seconds, and when the daemon dies."""
    text: str | None = None
    if isinstance(config, str) and ("\n" in config or not os.path.isfile(config)):
        text = config
    path = "/dev/stdin" if text is not None else os.fspath(config)
    try:
        proc = await _spawn([haproxy_bin, "-c", "-f", path], signal.SIGKILL, CHECK_NICE,
                            stdin=asyncio.subprocess.PIPE if text is not None
                            else asyncio.subprocess.DEVNULL,
                            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return ValidationResult(False, f"cannot run {haproxy_bin} -c: {exc}")
    try:
        data = text.encode("utf-8") if text is not None else None
        out, _ = await asyncio.wait_for(proc.communicate(data), timeout)
    except asyncio.TimeoutError:
        await kill_group(proc)
        return ValidationResult(False, f"{haproxy_bin} -c timed out after {timeout}s")
    except asyncio.CancelledError:  # nobody waits for this check any more (a stop)
        await kill_group(proc)
        raise
    except (BrokenPipeError, ConnectionResetError):  # exited before reading it all
        out = await proc.stdout.read() if proc.stdout else b""
        await proc.wait()
    finally:
        _children.discard(proc)
    output = out.decode("utf-8", "replace").strip()
    return ValidationResult(proc.returncode == 0, output)


async def run_reload_command(cmd: str | Sequence[str], timeout: float = 60.0) -> None:
    """Run an external reload command (``--reload-command``); a ``str`` goes through
    ``/bin/sh -c``. Success is exit status 0; otherwise ReloadError with the output tail."""
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    shown = cmd if isinstance(cmd, str) else shlex.join(argv)
    try:
        proc = await _spawn(argv, signal.SIGTERM, stdout=asyncio.subprocess.PIPE,
                            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise ReloadError(f"reload command {shown!r} could not start: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        await kill_group(proc)
        raise ReloadError(f"reload command {shown!r} timed out after {timeout}s") from None
    except asyncio.CancelledError:  # the daemon stops: the command and all it started go
        await kill_group(proc)  # (only its direct child has the parent-death signal)
        raise
    finally:
        _children.discard(proc)
    if proc.returncode != 0:
        detail = _tail(err.decode("utf-8", "replace")) or _tail(out.decode("utf-8", "replace"))
        raise ReloadError(f"reload command {shown!r} exited with {proc.returncode}"
                          + (f": {detail}" if detail else " and printed nothing"))
