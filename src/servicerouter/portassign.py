"""Service ports for IP-per-task apps that have none, from a range. Pure.

marathon-lb gives an IP-per-task app whose port mappings carry no service
port (typically an app reached only by its ``HAPROXY_{n}_VHOST``) a port from
``--min-serv-port-ip-per-task`` to ``--max-serv-port-ip-per-task``. It hands
them out in arrival order, so a restart can shuffle them. Here the port is a
function of the whole set of such services: each (app id, port index) starts
at a hash of itself and probes linearly, taking the services in sorted order.
The same apps always get the same ports, across restarts and resyncs.

A port a service holds stays its own (``held``: the port owners of state.py, kept
on disk by owners.py): an app that arrives later, with a label or a port
definition naming that port, or probing through it, does not move it, so no
tenant can take another's assigned port (it is refused as ``port_taken``).

A full sync assigns every app at once (:func:`assign_all`); a one-app refetch asks the
state's :class:`PortBook`, which gives :func:`assign_one`'s answer from what changed
since it last looked instead of from every app.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter

from .deployments import DeploymentError, deployment_of
from .layout import Settings
from .model import App, NetworkMode, Problem


def _key(app: App) -> str:
    """Whose port an app's services get: its deployment group's (deployments.py), as
    in marathon-lb, which assigns after the merge: the pair's port outlives the old app."""
    try:
        deployment = deployment_of(app)
    except DeploymentError:
        return app.id
    return deployment.group if deployment else app.id


def needs_port(app: App) -> list[int]:
    """Indexes of an IP-per-task app's services that have no service port of their own."""
    if app.network is not NetworkMode.CONTAINER:
        return []
    return [s.index for s in app.services if s.auto_port or not s.port]


def named_ports(app: App) -> list[int]:
    """The service ports ``app``'s services name themselves (not assigned here)."""
    return [s.port for s in app.services if s.port and not s.auto_port]


def assign_ports(apps: Sequence[App], low: int, high: int, reserved: Iterable[int] = (),
                 held: Mapping[int, str] | None = None
                 ) -> tuple[dict[tuple[str, int], int], list[str]]:
    """(app id, index) → port for every service that needs one, and warnings for
    those the range cannot hold. Ports of other services and ``reserved`` are skipped;
    a port in ``held`` (port → app id) that its app still needs stays with it."""
    skip = set(reserved)
    keys = sorted({(_key(a), i) for a in apps for i in needs_port(a)})
    size = high - low + 1 if low and high >= low else 0
    mine: dict[str, set[int]] = {}
    if size and held:
        for number, owner in held.items():
            if low <= number <= high and number not in skip:
                mine.setdefault(owner, set()).add(number)
    out: dict[tuple[str, int], int] = {}
    short: list[tuple[str, int]] = []  # in key order
    for app_id, group in itertools.groupby(keys, key=itemgetter(0)):
        kept, left = _keep(app_id, [i for _, i in group], mine.get(app_id, set()), low, size)
        out.update(((app_id, i), p) for i, p in kept.items())
        short += [(app_id, i) for i in left]
    taken = skip | set(out.values()) | {p for a in apps for p in named_ports(a)}
    warnings: list[str] = []
    for app_id, index in short:
        port = _probe(app_id, index, low, size, taken.__contains__)
        if port is None:
            warnings.append(f"app {app_id}: service port index {index} has no service port "
                            f"and the IP-per-task range {low}-{high} has none left (set label "
                            f"HAPROXY_{index}_PORT); no frontend for it")
            continue
        taken.add(port)
        out[(app_id, index)] = port
    return out, warnings


def _keep(app_id: str, indices: Iterable[int], mine: set[int], low: int, size: int
          ) -> tuple[dict[int, int], list[int]]:
    """The ports the services ``indices`` (ascending) of ``app_id`` keep of the ports it
    holds (``mine``: in the range, not reserved; used up): each the first of its own on
    its probe path. Returns index → port, and the indices left without one."""
    kept: dict[int, int] = {}
    short: list[int] = []
    for index in indices:
        if mine:
            start = low + _start(app_id, index, size)
            keep = min(mine, key=lambda p: (p - start) % size)
            mine.discard(keep)
            kept[index] = keep
        else:
            short.append(index)
    return kept, short


def _probe(app_id: str, index: int, low: int, size: int, taken: Callable[[int], bool]
           ) -> int | None:
    """The first port on the probe path of ``app_id``'s service ``index`` not ``taken``."""
    start = _start(app_id, index, size) if size else 0
    return next((low + (start + k) % size for k in range(size)
                 if not taken(low + (start + k) % size)), None)


def _start(app_id: str, index: int, size: int) -> int:
    return zlib.crc32(f"{app_id}#{index}".encode()) % size


def with_ports(app: App, ports: Mapping[tuple[str, int], int],
               span: tuple[int, int] = (0, 0)) -> App:
    """``app`` with its assigned service ports filled in (marked ``auto_port``); a
    service the range ``span`` had no port left for is a problem of the app (/status)."""
    if not needs_port(app):
        return app
    key = _key(app)
    if all(s.auto_port and s.port == ports.get((key, s.index), 0)
           for s in app.services if s.auto_port or not s.port):
        services = app.services  # (an app whose ports stay: nothing to copy and compare)
    else:
        services = tuple(replace(s, port=ports.get((key, s.index), 0), auto_port=True)
                         if s.auto_port or not s.port else s for s in app.services)
    # Recomputed each time: a port freed since (or a wider range) ends the problem.
    problems = tuple(p for p in app.problems if p.reason != "port_range")
    if span[0]:
        problems += tuple(Problem(
            app.id, s.index, "port_range", f"HAPROXY_{s.index}_PORT", "",
            f"is not set, and the IP-per-task range {span[0]}-{span[1]} has no port left; "
            f"no frontend for service port index {s.index} (set the label, or widen "
            "--min/--max-serv-port-ip-per-task)") for s in services if s.auto_port and not s.port)
    if services == app.services and problems == app.problems:
        return app
    return replace(app, services=services, problems=problems)


def _reserved(settings: Settings) -> set[int]:
    return {settings.stats_port, settings.http_port, settings.https_port,
            settings.app_id_port} - {0}


def assign_all(apps: Sequence[App], settings: Settings,
               held: Mapping[int, str] | None = None) -> tuple[list[App], list[str]]:
    """Every app with its IP-per-task service ports filled in from the settings' range
    (``held``: port → the app holding it now, which keeps it)."""
    low, high = settings.ip_per_task_ports
    ports, _ = assign_ports(apps, low, high, _reserved(settings), held)  # shortfalls: problems
    return [with_ports(a, ports, (low, high)) for a in apps], []


def assign_one(app: App, others: Sequence[App], settings: Settings,
               held: Mapping[int, str] | None = None) -> tuple[App, list[App], list[str]]:
    """``app`` (re)defined among ``others``: its ports, the others whose ports moved
    because of it, and warnings. Ports are a function of all IP-per-task apps and of
    who holds which port now."""
    assigned, warnings = assign_all([*others, app], settings, held)
    moved = [after for before, after in zip(others, assigned, strict=False)
             if after is not before]
    return assigned[-1], moved, warnings


@dataclass
class _Share:
    """One owner's part of the assignment (:func:`_keep`): index → the port it keeps of
    those it holds, and the indices left to probe for one."""

    ports: dict[int, int]
    short: list[int]


class PortBook:
    """:func:`assign_one` of one app among every other app a :class:`~.state.ClusterState`
    holds, worked out from what changed since the last one instead of from every app: a
    refetch of one app read every app's services (9.5 ms at 10,000 apps; 22 ms when half
    of them are IP-per-task apps needing ports).

    The state tells it as apps come, are redefined and go (:meth:`update`), and as the
    ports an owner holds change (:meth:`held_changed`). It keeps, for the apps that need
    ports, each owner's part (the ports its services keep of those it holds: a function
    of its own services and ports alone), the owners left with services to probe for a
    port (whose results depend on everyone's), and the apps whose ports may differ from
    what the assignment says now (``_check``). Answers equal :func:`assign_one`'s over
    every app (tests/unit/test_portassign.py compares them)."""

    def __init__(self) -> None:
        self._named: dict[int, int] = {}  # port -> the services naming it themselves
        self._needs: dict[str, tuple[str, tuple[int, ...]]] = {}  # app -> (owner, indices)
        self._members: dict[str, set[str]] = {}  # owner (_key) -> its apps needing ports
        self._shares: dict[str, _Share] = {}  # owner -> its part, while up to date
        self._kept: dict[int, str] = {}  # port -> the owner keeping it (of _shares)
        self._short: set[str] = set()  # owners (of _shares) with indices left to probe
        self._stale: set[str] = set()  # owners whose part is to be worked out again
        self._check: set[str] = set()  # apps needing ports that may have moved
        self._span: tuple[int, int, frozenset[int]] | None = None

    def update(self, before: App | None, after: App | None) -> None:
        """An app came (``before`` None), was redefined, or went (``after`` None)."""
        named = self._named
        if before is not None:
            for port in named_ports(before):
                if left := named[port] - 1:
                    named[port] = left
                else:
                    del named[port]
            if (need := self._needs.pop(before.id, None)) is not None:
                members = self._members[need[0]]
                members.discard(before.id)
                if members:
                    self._touch(need[0])
                else:  # no app of it needs ports: nothing of it is kept
                    del self._members[need[0]]
                    self._forget(need[0])
        if after is None:
            if before is not None:
                self._check.discard(before.id)
            return
        for port in named_ports(after):
            named[port] = named.get(port, 0) + 1
        if indices := needs_port(after):
            owner = _key(after)
            self._needs[after.id] = (owner, tuple(indices))
            self._members.setdefault(owner, set()).add(after.id)
            self._touch(owner)
        else:
            self._check.discard(after.id)

    def held_changed(self, owner: str) -> None:
        """The ports ``owner`` holds changed (Ownership's claims)."""
        if owner in self._members:
            self._touch(owner)

    def _touch(self, owner: str) -> None:
        """``owner``'s part is to be worked out again, and its apps looked at."""
        self._stale.add(owner)
        self._check |= self._members[owner]

    def _forget(self, owner: str) -> None:
        """``owner``'s part, worked out before (if it was)."""
        self._stale.discard(owner)
        self._short.discard(owner)
        old = self._shares.pop(owner, None)
        for port in old.ports.values() if old else ():
            if self._kept.get(port) == owner:
                del self._kept[port]

    def assign(self, app: App, apps: Mapping[str, App], order: Mapping[str, int],
               settings: Settings, held: Mapping[int, str] | None,
               held_of: Callable[[str], Iterable[int]] | None = None
               ) -> tuple[App, list[App], list[str]]:
        """:func:`assign_one` of ``app`` among every other app of ``apps`` (the state's,
        which this book follows; ``order``: app id -> its place there) with the ports
        ``held`` now; ``held_of`` gives the ports one owner holds (its inverse). Without
        it (before the first full sync, when the owners file's ports are held too, and
        there are no apps yet), :func:`assign_one` itself."""
        if held_of is None:
            return assign_one(app, [a for i, a in apps.items() if i != app.id], settings,
                              held)
        low, high = settings.ip_per_task_ports
        reserved = _reserved(settings)
        size = high - low + 1 if low and high >= low else 0
        if (low, high, frozenset(reserved)) != self._span:  # (the first time)
            self._span = (low, high, frozenset(reserved))
            self._shares.clear()
            self._kept.clear()
            self._short.clear()
            self._stale = set(self._members)
            self._check = set(self._needs)

        def share(owner: str, indices: Iterable[int]) -> _Share:
            mine = {p for p in held_of(owner) if low <= p <= high and p not in reserved} \
                if size else set()
            return _Share(*_keep(owner, indices, mine, low, size))

        for owner in list(self._stale):  # worked out again, as apps and held ports are now
            self._forget(owner)
            members = self._members[owner]
            new = self._shares[owner] = share(owner, sorted(
                {i for m in members for i in self._needs[m][1]}))
            self._kept.update(dict.fromkeys(new.ports.values(), owner))
            if new.short:
                self._short.add(owner)
        # The parts of the owners of ``app`` (before and now), with it in place of before.
        indices = needs_port(app)
        need = (_key(app), tuple(indices)) if indices else None
        ours: dict[str, _Share] = {}
        for owner in {n[0] for n in (self._needs.get(app.id), need) if n is not None}:
            wanted = {i for m in self._members.get(owner, ()) if m != app.id
                      for i in self._needs[m][1]}
            if need is not None and need[0] == owner:
                wanted.update(need[1])
            ours[owner] = share(owner, sorted(wanted))
        ours_kept = {p for s in ours.values() for p in s.ports.values()}
        named = _Named(self._named, apps.get(app.id), app)
        probed: set[int] = set()

        def taken(port: int) -> bool:
            owner = self._kept.get(port)
            return (port in reserved or (owner is not None and owner not in ours)
                    or port in ours_kept or port in probed or port in named)

        ports: dict[tuple[str, int], int] = {}
        short = [(o, i) for o in self._short if o not in ours for i in self._shares[o].short]
        short += [(o, i) for o, s in ours.items() for i in s.short]
        for owner, index in sorted(short):
            if (found := _probe(owner, index, low, size, taken)) is not None:
                probed.add(found)
                ports[(owner, index)] = found

        def ports_of(owner: str) -> None:
            if (s := ours.get(owner) or self._shares.get(owner)) is not None:
                ports.update(((owner, i), p) for i, p in s.ports.items())

        # Who may have moved: apps changed since they were looked at, of an owner whose
        # services probe (their ports depend on everyone's), or of ``app``'s owners.
        involved = {m for o in ours for m in self._members.get(o, ())}
        suspects = self._check | involved \
            | {m for o in self._short if o not in ours for m in self._members[o]}
        suspects.discard(app.id)
        moved = []
        for other in sorted(suspects, key=order.__getitem__):
            before = apps[other]
            ports_of(self._needs[other][0])
            after = with_ports(before, ports, (low, high))
            if after is not before:
                moved.append(after)
        for owner in ours:
            ports_of(owner)
        # Looked at again next time: the ones that moved (until the state has them), and
        # the apps of ``app``'s owners (judged with ``app`` as it is here).
        self._check = {a.id for a in moved} | involved | (self._check & {app.id})
        return with_ports(app, ports, (low, high)), moved, []


class _Named:
    """The ports a :class:`PortBook`'s apps name themselves, ``app`` in ``before``'s place."""

    def __init__(self, counts: Mapping[int, int], before: App | None, app: App) -> None:
        self._counts = counts
        self._less: dict[int, int] = {}
        for port in named_ports(before) if before is not None else ():
            self._less[port] = self._less.get(port, 0) + 1
        self._more = set(named_ports(app))

    def __contains__(self, port: int) -> bool:
        return port in self._more or self._counts.get(port, 0) > self._less.get(port, 0)
