"""One servicerouter per HAProxy config and admin socket: a lock file next to each
(``<config>.lock``, ``<socket>.lock``).

Two daemons on one ``--haproxy-config`` fight: each rewrites the file, each reloads,
a second ``--start-haproxy`` starts a second HAProxy that takes over the admin and
master socket paths (the first daemon then drives the second's HAProxy), and the one
that stops first unlinks both sockets under the other. The lock is an ``flock`` on
``<config>.lock``, held while the daemon runs and released by the kernel when the
process dies however it dies (no stale lock after a SIGKILL). A ``servicerouter sync``
from cron takes it too. The file holds the holder's pid, for the error message, and
is removed by a holder that stops. Two daemons on two configs but one admin socket
(both left at the default /run/haproxy/admin.sock, say) fight the same way: the second
HAProxy takes the socket path, and the first daemon's runtime commands reach it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .files import make_dirs

__all__ = ["ConfigInUse", "ConfigLock", "lock_path"]

_TRIES = 10  # each lost race is a holder that released between our open and flock


class ConfigInUse(Exception):
    """Another servicerouter holds the config's lock; the message names it."""


def lock_path(config: Path) -> Path:
    return config.with_name(config.name + ".lock")


class ConfigLock:
    """An exclusive, non-blocking ``flock`` on ``<config>.lock``; :meth:`release` (or the
    process ending) gives it up."""

    def __init__(self, config: Path, flag: str = "--haproxy-config",
                 hint: str = "Stop that one first, or give this one its own "
                             "--haproxy-config and sockets") -> None:
        self.config = config
        self.flag = flag
        self.hint = hint
        self.path = lock_path(config)
        self._fd: int | None = None

    @property
    def subject(self) -> str:
        """What the messages name: the flag and the file, or the file alone (``flag`` "":
        a command with no flag for it, the bridge)."""
        return f"{self.flag} {self.config}" if self.flag else str(self.config)

    def acquire(self) -> ConfigLock:
        """Take the lock or raise :class:`ConfigInUse` at once (never waits); OSError
        (a folder that cannot be written) as it comes."""
        make_dirs(self.path.parent)
        for _ in range(_TRIES):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise ConfigInUse(
                    f"{self.subject}: another servicerouter "
                    f"({f'pid {holder}' if holder else 'pid unknown'}) manages it (lock "
                    f"{self.path} is held); nothing was done. {self.hint}") from None
            except BaseException:
                os.close(fd)
                raise
            # A holder that stopped unlinks the file after we opened it: our lock is then
            # on a name nobody else sees. Lock the file the path names now.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return self
            os.close(fd)
        raise ConfigInUse(f"{self.subject}: lock {self.path} changed hands {_TRIES} times "
                          "while taking it; nothing was done")

    @contextlib.contextmanager
    def held(self, error: type[Exception], unchanged: str) -> Iterator[ConfigLock]:
        """The lock, held for the ``with`` block and released after it; or ``error`` at
        once, saying why not: another servicerouter holds it (:class:`ConfigInUse`'s
        message), or the lock file cannot be made (its path, the reason, ``unchanged``,
        e.g. "nothing was written"): for one-shot commands, whose callers report
        ``error`` in one line."""
        try:
            self.acquire()
        except ConfigInUse as exc:
            raise error(str(exc)) from None
        except OSError as exc:
            raise error(f"{self.subject}: cannot create the lock {self.path}: "
                        f"{exc.strerror or exc}; {unchanged}") from None
        try:
            yield self
        finally:
            self.release()

    def release(self) -> None:
        """Remove the file (still holding the lock, so nobody takes a stale name) and
        close it. Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
