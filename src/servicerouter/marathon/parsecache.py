"""The parsed apps of the last full sync, reused where an app's JSON did not change.

A full sync at 10,000 apps decodes and parses ~30 MB into 10,000 apps and 50,000
tasks; on a resync nearly all of them are what they were. Each app's slice of the
body (:meth:`.appsdecode.DecodedApps.raw_json`) is hashed, and an app whose bytes
hash as last time is the :class:`~servicerouter.model.App` parsed last time, the
very same object: no decode, no parse, and :meth:`.ClusterState.replace_all`
sees it unchanged by identity. Any change to the app (definition, labels, a task's
state, health, port) changes its bytes, so it is decoded and parsed again.

Parsing is a function of the bytes, ``allow_templates`` and the agents' IPs: the
key holds the first two, and an entry is reused only while every agent host its
tasks name still resolves to the IP it had (asked of this sync's resolver, which
resolves each host once per sync). Apps that failed to parse are not kept (they
are parsed again, and report the same error).

The key is the slice's length and Python's ``hash`` of it: SipHash with this
process's random key (measured 9 ms for 30 MB, against 23 ms for SHA-1), so a
tenant cannot craft bytes that collide with another app's. Only apps of the last
sync are kept: memory is one small entry per app, the apps themselves being held
by the desired state anyway. One full sync at a time uses a cache (the engine's
full-sync lock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..model import App, NetworkMode

Key = tuple[int, int, bool]


@dataclass(frozen=True, slots=True)
class _Entry:
    app: App
    warnings: tuple[str, ...]
    hosts: tuple[tuple[str, str | None], ...]  # agent host -> the IP its tasks got


class ParseCache:
    def __init__(self) -> None:
        self._last: dict[Key, _Entry] = {}
        self._next: dict[Key, _Entry] = {}
        self.reused = 0  # apps reused by the last parse
        self.parsed = 0  # apps parsed (again) by it

    @staticmethod
    def key(raw: bytes | memoryview, allow_templates: bool) -> Key:
        return (len(raw), hash(bytes(raw)), allow_templates)

    def begin(self) -> None:
        self._next, self.reused, self.parsed = {}, 0, 0

    def get(self, key: Key, resolve: Callable[[str], str | None]) -> tuple[App, list[str]] | None:
        """The app parsed from these bytes last time, if its agents' IPs still hold."""
        entry = self._last.get(key)
        if entry is None:
            return None
        for host, ip in entry.hosts:
            if resolve(host) != ip:
                return None
        self._next[key] = entry
        self.reused += 1
        return entry.app, list(entry.warnings)

    def put(self, key: Key, app: App, warnings: list[str]) -> None:
        hosts: dict[str, str | None] = {}
        if app.network is not NetworkMode.CONTAINER:  # IP-per-task: no agent lookups
            for task in app.tasks:
                if task.host:
                    hosts[task.host] = task.ip
        self._next[key] = _Entry(app, tuple(warnings), tuple(hosts.items()))
        self.parsed += 1

    def finish(self) -> None:
        """This parse's apps become the ones the next parse may reuse."""
        self._last, self._next = self._next, {}

    def __len__(self) -> int:
        return len(self._last)
