"""Who holds which service port, virtual host and certificate file, who waits for
one, and who held them before this process.

First come, first served: an app that names what another owner holds is refused it
until it is let go, and is then offered it again. The rules for hosts and
certificate files are :mod:`.hostclaims` and :mod:`.claims` (pure); service ports
are kept here. :mod:`.owners` writes the owners to disk, and they are handed back at
the first full sync after a restart. Kept beside :class:`~.state.ClusterState`,
which owns it and says which app claims what, and when. No I/O, no time, and nothing
of deployment groups: a group claims as the one app it is routed as.
"""

from __future__ import annotations

from collections.abc import Callable, Container, KeysView, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from .admission import port_label, vhost_owner
from .claims import Claims
from .hostclaims import HostClaims
from .layout import DesiredService, Settings
from .model import App, Problem
from .owners import Owners

Freed = tuple[set[int], set[str], set[str]]
"""Ports, virtual hosts and certificate files let go."""
T = TypeVar("T")


def _forget(waiting: dict[T, set[str]], alive: Callable[[str], bool]) -> None:
    """Drop the apps not ``alive`` from ``waiting`` (thing -> apps waiting for it)."""
    for thing, apps in list(waiting.items()):
        apps -= {a for a in apps if not alive(a)}
        if not apps:
            del waiting[thing]


@dataclass
class Kept:
    """What :meth:`Ownership.seed` handed one app back from before a restart: held while
    its claims leave a service out for a problem of its own (``keep_prior``)."""

    ports: set[int] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    routes: dict[tuple[str, str], str] = field(default_factory=dict)  # -> its backend
    certs: set[str] = field(default_factory=set)


class Ownership:
    """Who holds each port, host and certificate file, and who waits for one.

    As an app's services are admitted the state calls :meth:`claim` (:meth:`release`
    when it is no longer routed under its id), reads what that let go in
    :attr:`freed` and offers it to the apps :meth:`waiters` names. Owners read from
    disk are kept by :meth:`restore` and handed back by :meth:`seed` at the first
    full sync; :meth:`owners` and :attr:`version` are what is written back."""

    def __init__(self, settings: Settings,
                 claim_order: Callable[[str], tuple[str, str]],
                 ports_changed: Callable[[str], None] = lambda app_id: None) -> None:
        self._settings = settings
        self._ports_changed = ports_changed  # told the app id whose held ports changed
        # One port, one app: HAProxy binds with SO_REUSEPORT, so two frontends on
        # a port would silently split its connections between two apps.
        self._port_owner: dict[int, str] = {}
        self._ports_of: dict[str, set[int]] = {}
        self._waiting: dict[int, set[str]] = {}  # port -> apps refused it
        # One virtual host, one owner (a top-level group, or an app: --vhost-policy);
        # one host and path, one service. Kept while a holder still claims it.
        self._hosts = HostClaims(claim_order)
        # Certificate file (resolved) -> its owner, like hosts (claims.py); not the files
        # the operator lists in --ssl-certs, which are everyone's.
        self._certs = Claims()
        self._shared_certs: set[str] = set()
        self.freed: Freed = (set(), set(), set())  # what the last claim let go
        # Bumped whenever a port, host or certificate file changes owner (kept on disk:
        # owners.py), and who owned what before this process: handed back by seed().
        self.version = 0
        self._prior: Owners | None = None
        # App id -> what seed() handed it back, until it claims with no service of its
        # own left out (or lets go): nothing else says what a service left out at the
        # first sync held before the restart.
        self._kept: dict[str, Kept] = {}

    def unclaimed_prior(self) -> KeysView[str]:
        """The apps :meth:`seed` handed something back that have not claimed whole since
        (left out for a problem of their own, or never parsed since the restart)."""
        return self._kept.keys()

    def claim(self, app: App, new: dict[str, DesiredService], keep_prior: bool = False
              ) -> list[Problem]:
        """``app`` now defines ``new``: drop the services naming a port, a host (or host
        and path) or a certificate file another owner holds, and return their
        problems. What the app let go is :attr:`freed` until the next claim.

        ``keep_prior``: a service of the app is left out for a problem of its own, so
        what :meth:`seed` handed it back and it still holds is kept, claimed or not
        (its services as last admitted are gone with the process that admitted them).
        Without it, the app lets go of what it does not claim, as always."""
        app_id, policy = app.id, self._settings.vhost_policy
        key = vhost_owner(app_id, policy)
        kind = "group" if policy == "group" else "app"
        kept = self._kept.get(app_id) if keep_prior else None
        if not keep_prior:
            self._kept.pop(app_id, None)  # admitted whole (or let go): held as claimed
        problems, freed_ports = self._claim_ports(app, new, kept.ports if kept else set())
        # Most apps name no certificate file and held none: no file claims to make.
        files = key is not None and (app_id in self._certs.held_by
                                     or any(d.service.options.ssl_cert for d in new.values()))
        # The file first: a service refused it claims none of its hosts (nor the names
        # its certificate presents, which would then be held by a service left out).
        keep_certs = kept.certs if kept else set()
        freed_certs = self._claim_certs(app, key, kind, new, problems, keep_certs) \
            if files and key is not None else set()
        version = self._hosts.version
        refused, freed_hosts = self._hosts.claim(
            app_id, key, kind, new, *((kept.hosts, kept.routes) if kept else ()))
        self.version += self._hosts.version != version
        problems += refused
        if files and refused and key is not None:  # ... nor does a service refused a host
            freed_certs |= self._claim_certs(app, key, kind, new, problems, keep_certs)
        self.freed = (freed_ports, freed_hosts, freed_certs)
        return problems

    def release(self, app_id: str) -> None:
        """``app_id`` is gone, or no longer routed under its id (a member of a deployment
        group, or refused): it lets go of all it held (:attr:`freed`)."""
        self.claim(App(app_id), {})

    def _claim_ports(self, app: App, new: dict[str, DesiredService], keep: set[int]
                     ) -> tuple[list[Problem], set[int]]:
        """Drop services whose port another app holds: their problems, and the ports
        the app let go (not those of ``keep`` it holds)."""
        app_id = app.id
        kept = keep & self._ports_of.get(app_id, set()) if keep else set()
        problems = []
        for name, d in sorted(new.items()):
            port = d.service.port
            owner = self._port_owner.get(port, app_id)
            if owner != app_id:
                del new[name]
                self._waiting.setdefault(port, set()).add(app_id)
                problems.append(Problem(
                    app_id, d.service.index, "port_taken", port_label(app, d.service.index),
                    str(port), f"is already bound by app {owner}; "
                    "service skipped until the port is free"))
                continue
            if port not in self._port_owner:
                self._port_owner[port] = app_id
                self.version += 1
            kept.add(port)
        before = self._ports_of.get(app_id, set())
        freed = before - kept
        if kept != before:
            self._ports_changed(app_id)
        if kept:
            self._ports_of[app_id] = kept
        else:
            self._ports_of.pop(app_id, None)
        for port in freed:
            del self._port_owner[port]
            self.version += 1
        return problems, freed

    def _claim_certs(self, app: App, key: str, kind: str, new: dict[str, DesiredService],
                     problems: list[Problem], keep: set[str]) -> set[str]:
        """Drop services naming a certificate file another owner holds (their problems
        added to ``problems``); return the files nobody holds any more (not those of
        ``keep`` the app holds)."""
        wanted = {c for d in new.values() if (c := d.service.options.ssl_cert)
                  and c not in self._shared_certs}
        if keep:
            wanted |= (keep & self._certs.held_by.get(app.id, set())) - self._shared_certs
        version = self._certs.version
        refused, freed = self._certs.update(app.id, key, wanted)
        self.version += self._certs.version != version
        for name, d in sorted(new.items()):
            cert = d.service.options.ssl_cert
            if cert in refused:
                del new[name]
                owner, first = refused[cert]
                problems.append(Problem(
                    app.id, d.service.index, "ssl_cert", f"HAPROXY_{d.service.index}_SSL_CERT",
                    cert, f"is the certificate of {kind} {owner} (app {first} named it "
                    "first); service left out, others applied"))
        return freed

    def share_certs(self, paths: set[str]) -> None:
        """The certificate files anyone may name (the operator's --ssl-certs), from the
        next claim on: nobody owns them."""
        self._shared_certs = paths

    def waiters(self, ports: set[int], hosts: set[str], certs: set[str]) -> set[str]:
        """The apps refused one of these ports, hosts or certificate files: they may have
        it now (and wait for it no more)."""
        waiters = {w for port in ports for w in self._waiting.pop(port, ())}
        waiters |= self._certs.waiters(certs)
        waiters |= self._hosts.waiters(hosts)
        return waiters

    def forget_waiters(self, alive: Callable[[str], bool]) -> None:
        """Stop keeping the apps that are not ``alive`` (gone from Marathon) among those
        waiting for a port, host or certificate file: nobody let go of what they waited
        for, and an app refused a taken host, deleted, stayed listed until the host was
        let go, one more id per such app (a CI build, say) for the daemon's lifetime."""
        _forget(self._waiting, alive)
        _forget(self._hosts.waiting, alive)
        _forget(self._certs.waiting, alive)

    def owners(self) -> Owners:
        """Who owns each service port, virtual host and certificate file now."""
        return Owners(dict(self._port_owner), dict(self._hosts.owner), dict(self._certs.owner),
                      self._hosts.routes())

    def ports_of(self, app_id: str) -> set[int]:
        """The ports ``app_id`` holds: the inverse of :meth:`held_ports` without prior."""
        return self._ports_of.get(app_id, set())

    def held_ports(self, with_prior: bool) -> Mapping[int, str]:
        """Port → the app holding it; ``with_prior`` (before the first full sync), and
        where none does, the app that held it before this process."""
        if with_prior and self._prior is not None:
            return {**self._prior.ports, **self._port_owner}
        return self._port_owner

    def restore(self, owners: Owners) -> None:
        """Who owned ports, hosts and certificate files before this process, handed back
        by :meth:`seed`."""
        self._prior = owners

    def restoring(self) -> bool:
        """Whether owners kept by :meth:`restore` wait for :meth:`seed`."""
        return self._prior is not None

    def seed(self, alive: Container[str] | None) -> None:
        """Hand the prior owners (:meth:`restore`) that are ``alive`` what they held,
        before any app claims (None: none is, this is not the first sync), then forget
        them; one that no longer claims it lets go when its turn comes (the apps
        refused meanwhile are then looked at again)."""
        prior, self._prior = self._prior, None
        if prior is None or alive is None:
            return
        policy = self._settings.vhost_policy

        def kept(app_id: str) -> Kept:
            return self._kept.setdefault(app_id, Kept())

        for port, app_id in prior.ports.items():
            if app_id in alive and port not in self._port_owner:
                self._port_owner[port] = app_id
                self._ports_of.setdefault(app_id, set()).add(port)
                kept(app_id).ports.add(port)
                self._ports_changed(app_id)
        for host, (key, app_id) in prior.hosts.items():
            # An owner under another --vhost-policy than now is no owner now.
            if app_id in alive and vhost_owner(app_id, policy) == key \
                    and self._hosts.seed(host, key, app_id):
                kept(app_id).hosts.add(host)
        for (host, path), (backend, app_id) in prior.routes.items():
            # Kept with its host's owner: not under another --vhost-policy either.
            owner = prior.hosts.get(host)
            if app_id in alive and owner and vhost_owner(app_id, policy) == owner[0] \
                    and self._hosts.seed_route(host, path, backend, app_id):
                kept(app_id).routes[(host, path)] = backend
        for cert, (key, app_id) in prior.certs.items():
            if app_id in alive and vhost_owner(app_id, policy) == key \
                    and self._certs.seed(cert, key, app_id):
                kept(app_id).certs.add(cert)
