"""Range mode: what :mod:`.pool` derives from a whole layout, kept as the layout changes
entry by entry. Pure.

In range mode an app comes and goes at runtime (:mod:`.planrange`): each one changes a
few layout entries, and then its plan compared the vhost routes of the whole layout
before and after (:func:`.pool.host_routes`, twice), looked through every entry for
the free spares, and the engine wrote the map files from every entry again: ~80 ms
per app at 10,000 apps. The engine keeps a :class:`RangeIndex` beside its layout
(:meth:`put` for each entry it changes, :meth:`reset` with a new one after a reload)
and hands it to the planner and the map writer, which then look at the entries the
change touches: the answers are the same (tests/unit/test_rangeindex.py compares them
with pool's over random layouts and changes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from . import pool
from .haproxy.render import vhost_routes
from .layout import BackendShape, Layout, Settings
from .model import Options
from .sortedlines import SortedLines


def _dot_suffixes(host: str) -> list[str]:
    """The suffixes of ``host`` that start at a dot: what a wildcard route's ``h[1:]``
    must equal to match it (``str.endswith`` in :func:`.pool.host_routes`)."""
    return [host[i:] for i, c in enumerate(host) if c == "."]


class RangeIndex:
    def __init__(self, settings: Settings, layout: Layout | None = None) -> None:
        self.settings = settings
        self._mapped = pool.host_map_used(settings)
        self.reset(layout or {})

    def reset(self, layout: Mapping[str, BackendShape]) -> None:
        """Index ``layout`` from scratch (a reload, a takeover)."""
        self._shapes: dict[str, BackendShape] = {}
        self._came: dict[str, int] = {}  # layout key -> its place in the layout's order
        self._next = 0
        self._ports: dict[str, dict[str, int]] = {}  # port -> map-routed keys naming it
        self._port_map = SortedLines()  # ports.map
        self._spares: dict[Options, dict[str, BackendShape]] = {}  # shape -> free spares
        self._spare_json = SortedLines()  # spares.json's entries
        self._routes: dict[str, dict[str, Any]] = {}  # key -> its vhost route
        self._named: dict[str, int] = {}  # host (lower case) -> times routes name it
        self._by_host: dict[str, set[str]] = {}  # host (lower case) -> keys of routes naming it
        self._wild: dict[str, int] = {}  # ".example.com" of "*.example.com" -> routes
        self._under: dict[str, set[str]] = {}  # ".example.com" -> named hosts under it
        self.hosts: dict[str, str] = {}  # the host map: host -> backend
        self._host_map = SortedLines()  # hosts.map
        for key, shape in layout.items():
            self.put(key, shape)

    # ------------------------------------------------------------------ changes
    def put(self, key: str, shape: BackendShape | None) -> None:
        """``layout[key] = shape``, or (None) the entry is gone."""
        old = self._shapes.get(key)
        if old is shape:
            return
        hosts = self._hosts_near(old, shape)
        if old is not None:
            self._index(key, old, -1)
            del self._shapes[key]
        if shape is not None:
            self._shapes[key] = shape
            if key not in self._came:
                self._came[key] = self._next
                self._next += 1
            self._index(key, shape, 1)
        else:
            self._came.pop(key, None)
        for host in hosts:
            self._remap(host)

    def _index(self, key: str, shape: BackendShape, step: int) -> None:
        settings = self.settings
        if pool.map_routed(shape, settings):
            port = str(shape.service.port)
            keys = self._ports.setdefault(port, {})
            if step > 0:
                keys[key] = self._came[key]
            else:
                del keys[key]
                if not keys:
                    del self._ports[port]
            target = self._port_target(port)
            self._port_map.set(port, None if target is None else f"{port} {target}\n")
        if pool.is_spare(shape):
            spares = self._spares.setdefault(shape.service.options, {})
            if step > 0:
                spares[key] = shape
            else:
                del spares[key]
                if not spares:
                    del self._spares[shape.service.options]
        if pool.is_spare(shape) or pool.lives_elsewhere(key, shape):
            options = shape.service.options if pool.is_spare(shape) \
                else pool.shape_of(shape.service.options)
            if options is not None:  # keyed by its name first, as json.dumps sorts them
                self._spare_json.set(f"{shape.name}\0{key}", None if step < 0 else (
                    f"{json.dumps(shape.name)}: " + json.dumps(
                        {f.name: getattr(options, f.name) for f in fields(options)},
                        sort_keys=True, default=lambda v: v.value)))
        if shape.service.options.vhosts:
            self._route(key, shape, step)

    def _route(self, key: str, shape: BackendShape, step: int) -> None:
        if step > 0:
            (route,) = vhost_routes({key: shape})
            self._routes[key] = route
        else:
            route = self._routes.pop(key)
        for host in route["hosts"]:
            host = host.lower()
            count = self._named.get(host, 0) + step
            keys = self._by_host.setdefault(host, set())
            if step > 0:
                keys.add(key)
            else:
                keys.discard(key)
            if count:
                self._named[host] = count
            else:
                del self._named[host], self._by_host[host]
            if count == (1 if step > 0 else 0):  # named for the first time, or no more
                for suffix in _dot_suffixes(host):
                    under = self._under.setdefault(suffix, set())
                    if step > 0:
                        under.add(host)
                    else:
                        under.discard(host)
                        if not under:
                            del self._under[suffix]
        for wildcard in route["wildcards"]:
            wildcard = wildcard.lower()
            if count := self._wild.get(wildcard, 0) + step:
                self._wild[wildcard] = count
            else:
                del self._wild[wildcard]

    def _hosts_near(self, *shapes: BackendShape | None) -> set[str]:
        """The hosts (lower case) whose routing a change of these entries may change:
        the hosts they name, and the named hosts under their wildcards."""
        hosts: set[str] = set()
        for shape in shapes:
            if shape is None or not shape.service.options.vhosts:
                continue
            for vhost in shape.service.options.vhosts:
                vhost = vhost.lower()
                if vhost.startswith("*."):
                    hosts |= self._under.get(vhost[1:], set())
                else:
                    hosts.add(vhost)
        return hosts

    def _remap(self, host: str) -> None:
        """The host map's entry for ``host`` (lower case), as :func:`.pool.host_routes`
        has it: one route names it, once, with no paths, and no wildcard matches it."""
        key = self._map_target(host)
        if key is None:
            self.hosts.pop(host, None)
            self._host_map.set(host, None)
        else:
            backend = self.hosts[host] = self._routes[key]["backend"]
            self._host_map.set(host, f"{host} {backend}\n")

    def _map_target(self, host: str) -> str | None:
        """The layout key of the route the host map sends ``host`` to, or None."""
        if not self._mapped or self._named.get(host) != 1:
            return None
        (key,) = self._by_host[host]
        if self._routes[key]["paths"] or any(s in self._wild for s in _dot_suffixes(host)):
            return None
        return key

    # ------------------------------------------------------------------ answers
    def _port_target(self, port: str) -> str | None:
        """The backend the port map sends ``port`` to: of the entries routing it, the
        last in the layout's order (as :func:`.pool.ports_map`'s comprehension)."""
        keys = self._ports.get(port)
        return self._shapes[max(keys, key=keys.__getitem__)].name if keys else None

    def ports_map(self) -> dict[str, str]:
        """:func:`.pool.ports_map` of the layout."""
        return {port: name for port in self._ports if (name := self._port_target(port))}

    def spares(self, options: Options) -> list[BackendShape]:
        """The free spares of shape ``options``, lowest name last (as planrange takes
        them)."""
        return sorted(self._spares.get(options, {}).values(), key=lambda s: s.name,
                      reverse=True)

    def map_files(self) -> dict[str, str]:
        """:func:`.pool.map_files` of the layout."""
        return {pool.PORTS_MAP: self._port_map.join(), pool.HOSTS_MAP: self._host_map.join(),
                pool.SPARES_FILE: "{" + self._spare_json.join(", ") + "}\n"}

    def host_change(self, changes: Mapping[str, BackendShape | None]
                    ) -> tuple[bool, dict[str, str], dict[str, str]]:
        """What :func:`.planrange.plan_range` compares when ``changes`` (layout key ->
        the entry after, None: gone) touch vhosts: whether the vhost routes that stay
        ACLs are the same after (:func:`.pool.host_routes`), and the host map before
        and after, of the hosts whose entry may differ (the others' are the same)."""
        hosts = self._hosts_near(*(self._shapes.get(k) for k in changes), *changes.values())
        keys = {k for k in changes if k in self._routes
                or ((s := changes[k]) is not None and s.service.options.vhosts)}
        for host in hosts:
            keys |= self._by_host.get(host, set())
        before = (self._acls(keys), {h: self.hosts.get(h) for h in hosts})
        undo = [(k, self._shapes.get(k), self._came.get(k)) for k in changes]
        try:
            for key, shape in changes.items():
                self.put(key, shape)
            after = (self._acls(keys), {h: self.hosts.get(h) for h in hosts})
        finally:
            for key, shape, came in reversed(undo):
                if came is not None:
                    self._came[key] = came  # in its place again, not at the end
                self.put(key, shape)
        return before[0] == after[0], _present(before[1]), _present(after[1])

    def _acls(self, keys: set[str]) -> dict[str, dict[str, Any]]:
        """Backend -> its route as it stays in the ACLs (its hosts not in the host map),
        of the routes at ``keys`` that stay there at all."""
        out = {}
        for key in keys:
            route = self._routes.get(key)
            if route is None:
                continue
            rest = [h for h in route["hosts"] if self._map_target(h.lower()) != key]
            if rest or route["wildcards"]:
                out[route["backend"]] = {**route, "hosts": rest}
        return out


def _present(entries: Mapping[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in entries.items() if v is not None}
