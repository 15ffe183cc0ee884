"""Agent host names to IPs, resolved once and cached (HAProxy servers need IPs)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("servicerouter.resolve")

MAX_HOSTS = 65536
"""Names kept in the cache: agents are few; a stream of invented names must not grow it
without end (the oldest entries go first)."""


class CachingResolver:
    """A :data:`~servicerouter.marathon.parse.Resolver` with a cache.

    IP literals are returned as they are. A name is looked up once and kept
    for ``ttl`` seconds; a failure is remembered for ``negative_ttl`` so a
    dead name is not looked up on every event.

    With ``background`` (the daemon), a lookup never blocks the event loop:
    called on the loop's thread (a task event, a refetched app), a name that is
    not cached, or whose answer expired, is looked up in the background (at most
    ``max_lookups`` at once, each name once), and the call answers now with what
    the cache had (None for a new name: its tasks wait). When the background
    answer is a new IP, ``on_resolved`` is called on the
    loop (the daemon asks for a full sync, which routes those tasks). Otherwise,
    or called off the loop (a full sync's parse thread), the lookup is inline,
    bounded by the system resolver's own timeout (``render`` waits for it).
    """

    def __init__(self, ttl: float = 3600.0, negative_ttl: float = 30.0, *,
                 background: bool = False, max_lookups: int = 4, max_pending: int = 256,
                 on_resolved: Callable[[], None] | None = None) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.background = background
        self.on_resolved = on_resolved
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._max_lookups = max_lookups
        self._max_pending = max_pending
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, host: str) -> str | None:
        now = time.monotonic()
        hit = self._cache.get(host)  # first: a full sync asks for each agent ~5x per app
        if hit is not None and hit[1] > now:
            return hit[0]
        ip: str | None
        try:
            ip = str(ipaddress.ip_address(host))
            self._store(host, ip, float("inf"))
            return ip
        except ValueError:
            pass
        if not self.background:
            return self._lookup(host)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop's thread: waiting here blocks no one
            return self._lookup(host)
        self._start(host, loop)
        return hit[0] if hit is not None else None  # the stale answer while it refreshes

    def close(self) -> None:
        """Drop the lookups not started; the running ones end with the system resolver."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        """Background lookups queued or running."""
        return len(self._pending)

    def _lookup(self, host: str) -> str | None:
        now = time.monotonic()
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            v4 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET]
            ip: str | None = (v4 or [str(infos[0][4][0])])[0]
            expires = now + self.ttl
        except (OSError, IndexError, UnicodeError) as exc:
            log.warning("cannot resolve agent host %r: %s; its tasks are not routed", host, exc)
            ip, expires = None, now + self.negative_ttl
        self._store(host, ip, expires)
        return ip

    def _store(self, host: str, ip: str | None, expires: float) -> None:
        cache = self._cache
        if host not in cache and len(cache) >= MAX_HOSTS:
            for old in list(cache)[: MAX_HOSTS // 16]:  # oldest first (insertion order)
                cache.pop(old, None)
        cache[host] = (ip, expires)

    def _start(self, host: str, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if host in self._pending:
                return
            if len(self._pending) >= self._max_pending:
                log.warning("%d agent host lookups pending; %r is looked up later",
                            len(self._pending), host)
                return
            self._pending.add(host)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_lookups, "resolve")
            pool = self._pool
        try:
            pool.submit(self._background, host, loop)
        except RuntimeError:  # closed: shutting down
            with self._lock:
                self._pending.discard(host)

    def _background(self, host: str, loop: asyncio.AbstractEventLoop) -> None:
        before = self._cache.get(host)
        try:
            ip = self._lookup(host)
        finally:
            with self._lock:
                self._pending.discard(host)
        if self.on_resolved is not None and (before is None or before[0] != ip) and ip:
            with contextlib.suppress(RuntimeError):  # the loop is closed: daemon gone
                loop.call_soon_threadsafe(self.on_resolved)
