"""Virtual hosts, owned by the first claimer's owner: who holds each, who waits. Pure.

One virtual host, one owner (``--vhost-policy``: the top-level group, or the app),
for as long as an app of that owner still names it; one host and path, one service.
A wildcard counts as a claim on every name it matches, in both directions: on the
shared frontends ``*.example.com`` would otherwise take ``shop.example.com``'s
traffic from its owner (or the other way round). The names a service's certificate
presents (``HAPROXY_{n}_SSL_CERT``: its subjectAltName and common names, set by
admission) are claimed as its hosts too, with no route: on any frontend, its own port
included, HAProxy presents it to clients lured to ``https://<name>:<port>/``, whose
cookies for that name (not port-scoped) follow. Used by :mod:`.ownership`, whose
owners :mod:`.owners` keeps on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet

from .admission import covering_wildcards, domains_above
from .layout import DesiredService
from .model import Problem, shown


class HostClaims:
    def __init__(self, claim_order: Callable[[str], tuple[str, str]]) -> None:
        self.owner: dict[str, tuple[str, str]] = {}  # host -> (owner key, first app)
        self.holders: dict[str, set[str]] = {}  # host -> apps claiming it
        self.route_owner: dict[tuple[str, str], str] = {}  # (host, path) -> backend name
        self.hosts_of: dict[str, set[str]] = {}
        self.routes_of: dict[str, set[tuple[str, str]]] = {}
        self.waiting: dict[str, set[str]] = {}  # host -> apps refused it
        # domain -> owner key -> held hosts under it: a wildcard over another owner's host
        # (or a host under another owner's wildcard) would take its traffic on the vhost
        # frontends. By owner: a wildcard's claim looks at the other owners' hosts only
        # (sorting every host under it was 2 ms a claim with 10,000 of its own there).
        self.under: dict[str, dict[str, set[str]]] = {}
        self.version = 0  # bumped when an owner changes (kept on disk: owners.py)
        self._claim_order = claim_order  # who gets a host first: the oldest definition

    def claim(self, app_id: str, key: str | None, kind: str,
              new: dict[str, DesiredService], keep_hosts: AbstractSet[str] = frozenset(),
              keep_routes: Mapping[tuple[str, str], str] | None = None
              ) -> tuple[list[Problem], set[str]]:
        """``app_id`` (of owner ``key``, a ``kind``) now defines ``new``: drop the services
        naming a host (or host and path) another owner holds. Returns their problems,
        and the hosts let go: nobody holds them any more, or a path of them the app
        routed is free (the apps refused that host and path wait on the host).

        ``keep_hosts`` and ``keep_routes`` (host and path -> backend): what the app held
        from before a restart and keeps, claimed or not (a service of its own left out,
        :meth:`~.ownership.Ownership.claim`), as long as it still holds it."""
        if app_id not in self.hosts_of and app_id not in self.routes_of \
                and not any(d.service.options.vhosts or d.presents for d in new.values()):
            return [], set()  # claims nothing, held nothing (most apps: ~3 µs a sync each)
        old_hosts = self.hosts_of.pop(app_id, set())
        old_routes = self.routes_of.pop(app_id, set())
        old_backends = {route: self.route_owner.pop(route) for route in old_routes}
        for host in old_hosts:
            self.holders[host].discard(app_id)
        hosts: set[str] = set()
        routes: dict[tuple[str, str], str] = {}  # this app's: (host, path) -> backend
        problems = []
        for name, d in sorted(new.items()):
            opts = d.service.options
            if key is None or not (opts.vhosts or d.presents):
                continue
            problem = None
            paths = opts.paths or ("",)
            for host in opts.vhosts:
                taken = [(host, p) for p in paths
                         if (host, p) in routes or (host, p) in self.route_owner]
                other = self._other_owner(host, key, kind)
                if other is not None and other[0] == host:  # held as it is named
                    wait_on, problem = other
                    problem = f"names host {host}, {problem}"
                elif taken:
                    wait_on, route = host, taken[0]
                    problem = (f"names host {host} and path {route[1] or '/'}, which "
                               f"{self.route_owner.get(route) or routes[route]} already "
                               "routes")
                elif other is not None:
                    wait_on, problem = other
                    problem = f"names host {host}, {problem}"
                if problem:
                    self.waiting.setdefault(wait_on, set()).add(app_id)
                    break
            if problem:
                del new[name]
                problems.append(Problem(app_id, d.service.index, "vhost_taken",
                                        f"HAPROXY_{d.service.index}_VHOST",
                                        ",".join(opts.vhosts),
                                        f"{problem}; service left out, others applied"))
                continue
            # The names its certificate presents are claimed as hosts too: on its own port
            # as on the shared one, HAProxy would present it to clients lured to
            # https://<name>:<port>/, and their cookies for that name would follow.
            routed = set(opts.vhosts) if d.presents else ()  # up to 1,000 x 1,000 names
            for host in d.presents:
                other = self._other_owner(host, key, kind) if host not in routed else None
                if other is not None:
                    wait_on, problem = other
                    self.waiting.setdefault(wait_on, set()).add(app_id)
                    problem = f"is a certificate for {host}, {problem}"
                    break
            if problem:
                del new[name]
                problems.append(Problem(
                    app_id, d.service.index, "ssl_cert", f"HAPROXY_{d.service.index}_SSL_CERT",
                    shown(opts.ssl_cert), f"{problem}: a certificate may name only hosts of "
                    "its own owner; service left out, others applied"))
                continue
            for host in opts.vhosts:
                for path in paths:
                    routes[(host, path)] = name
                hosts.add(host)
            hosts.update(d.presents)
        if keep_routes or keep_hosts:  # still its owner's: nobody else's meanwhile
            ours = key or ""
            for route, backend in (keep_routes or {}).items():
                if route in old_routes and route not in routes \
                        and self.owner.get(route[0], (ours,))[0] == ours:
                    routes[route] = backend
                    hosts.add(route[0])
            hosts |= {h for h in keep_hosts & old_hosts
                      if self.owner.get(h, (ours,))[0] == ours}
        for host in hosts:
            holders = self.holders.setdefault(host, set())
            if not holders and self.owner.get(host) != (key or "", app_id):
                self.owner[host] = (key or "", app_id)
                self.version += 1
            holders.add(app_id)
            self._index(host, True)
        self.route_owner.update(routes)
        if hosts:
            self.hosts_of[app_id] = hosts
        if routes:
            self.routes_of[app_id] = set(routes)
        if old_backends != routes:  # (a backend too: the app's ports swapped paths)
            self.version += 1  # who routes a host and path is kept on disk too (owners.py)
        freed = {h for h in old_hosts if not self.holders.get(h)}
        for host in freed:
            self._index(host, False)
            self.owner.pop(host, None)
            self.holders.pop(host, None)
            self.version += 1
        for host in old_hosts - freed - hosts:  # still held by others of its group
            owner_key, first = self.owner[host]
            if first == app_id:
                self.owner[host] = (owner_key, min(self.holders[host],
                                                         key=self._claim_order))
                self.version += 1
        # A host and path let go while the host is still held: its waiters look again.
        return problems, freed | {h for h, _ in old_routes - routes.keys()}

    def _index(self, host: str, add: bool) -> None:
        """``host`` is held (``add``), or let go, by its owner (whose key does not change
        while anyone holds it)."""
        key = self.owner[host][0]
        for domain in domains_above(host):
            if add:
                self.under.setdefault(domain, {}).setdefault(key, set()).add(host)
            elif (hosts := self.under.get(domain, {}).get(key)) is not None:
                hosts.discard(host)
                if not hosts:
                    del self.under[domain][key]
                    if not self.under[domain]:
                        del self.under[domain]

    def _other_owner(self, host: str, key: str, kind: str) -> tuple[str, str] | None:
        """Whether another owner holds ``host``, or a host it would match or be matched
        by: (the host to wait on, why, as "which ...") or None. A wildcard is checked for
        overlaps even when it has an owner: owners kept from before wildcards were
        checked may overlap, and then the exact host keeps it."""
        owner = self.owner.get(host)
        if owner is not None and self.holders.get(host) and owner[0] != key:
            return host, f"which belongs to {kind} {owner[0]} ({self._first(host, owner[1])})"
        if owner is not None and not host.startswith("*."):
            return None
        overlap = self._overlap(host, key)
        if overlap is None:
            return None
        wait_on, (okey, first) = overlap
        how = "is under" if wait_on in covering_wildcards(host) else "covers"
        return wait_on, f"which {how} host {wait_on} of {kind} {okey} " \
                        f"({self._first(wait_on, first)})"

    def _first(self, host: str, app_id: str) -> str:
        """Who claimed ``host`` first, and how: routing it, or presenting a certificate."""
        if any(h == host for h, _ in self.routes_of.get(app_id, ())):
            return f"app {app_id} claimed it first"
        return f"app {app_id} claimed it first, presenting a certificate for it"

    def _overlap(self, host: str, key: str | None) -> tuple[str, tuple[str, str]] | None:
        """A host of another owner that ``host`` would match or be matched by: a
        wildcard above it, or (``host`` a wildcard) a host under it."""
        for other in covering_wildcards(host):
            owner = self.owner.get(other)
            if owner is not None and owner[0] != key and self.holders.get(other):
                return other, owner
        if host.startswith("*."):  # the first, in order, of the other owners' hosts
            others = [h for k, hosts in self.under.get(host[2:], {}).items() if k != key
                      if (h := min((h for h in hosts if self.holders.get(h)), default=None))]
            if others:
                other = min(others)
                return other, self.owner[other]
        return None

    def seed(self, host: str, key: str, app_id: str) -> bool:
        """An owner kept from before a restart (owners.py): it holds ``host`` again
        (False: someone already does)."""
        if host in self.owner:
            return False
        self.owner[host] = (key, app_id)
        self.holders[host] = {app_id}
        self.hosts_of.setdefault(app_id, set()).add(host)
        self._index(host, True)
        return True

    def seed_route(self, host: str, path: str, backend: str, app_id: str) -> bool:
        """A host and path routed by ``app_id``'s ``backend`` before a restart (owners.py):
        its again, until the app's own claim says otherwise (False: already someone's)."""
        if (host, path) in self.route_owner:
            return False
        self.route_owner[(host, path)] = backend
        self.routes_of.setdefault(app_id, set()).add((host, path))
        return True

    def routes(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(host, path) → (the backend routing it, its app)."""
        return {route: (self.route_owner[route], app_id)
                for app_id, routes in self.routes_of.items() for route in routes}

    def waiters(self, freed: set[str]) -> set[str]:
        """The apps refused one of the ``freed`` hosts: they may have it now."""
        return {w for host in freed for w in self.waiting.pop(host, ())}
