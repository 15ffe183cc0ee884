"""Agent host names to IPs, resolved once and cached (HAProxy servers need IPs)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time

log = logging.getLogger("servicerouter.resolve")


class CachingResolver:
    """A :data:`~servicerouter.marathon.parse.Resolver` with a cache.

    IP literals are returned as they are. A name is looked up once and kept
    for ``ttl`` seconds; a failure is remembered for ``negative_ttl`` so a
    dead name does not block every event. Agents are few and stable, so
    lookups are rare; they run inline (blocking) and are bounded by the
    system resolver's own timeout.
    """

    def __init__(self, ttl: float = 3600.0, negative_ttl: float = 30.0) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cache: dict[str, tuple[str | None, float]] = {}

    def __call__(self, host: str) -> str | None:
        now = time.monotonic()
        hit = self._cache.get(host)  # first: a full sync asks for each agent ~5x per app
        if hit is not None and hit[1] > now:
            return hit[0]
        ip: str | None
        try:
            ip = str(ipaddress.ip_address(host))
            self._cache[host] = (ip, float("inf"))
            return ip
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            v4 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET]
            ip = (v4 or [str(infos[0][4][0])])[0]
            expires = now + self.ttl
        except (OSError, IndexError) as exc:
            log.warning("cannot resolve agent host %r: %s; its tasks are not routed", host, exc)
            ip, expires = None, now + self.negative_ttl
        self._cache[host] = (ip, expires)
        return ip
