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
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

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


def assign_ports(apps: Sequence[App], low: int, high: int, reserved: Iterable[int] = (),
                 held: Mapping[int, str] | None = None
                 ) -> tuple[dict[tuple[str, int], int], list[str]]:
    """(app id, index) → port for every service that needs one, and warnings for
    those the range cannot hold. Ports of other services and ``reserved`` are skipped;
    a port in ``held`` (port → app id) that its app still needs stays with it."""
    skip = set(reserved)
    keys = sorted({(_key(a), i) for a in apps for i in needs_port(a)})
    size = high - low + 1 if low and high >= low else 0
    out: dict[tuple[str, int], int] = {}
    if size and held:
        mine: dict[str, set[int]] = {}
        for number, owner in held.items():
            if low <= number <= high and number not in skip:
                mine.setdefault(owner, set()).add(number)
        for app_id, index in keys:
            if ports := mine.get(app_id):
                # The port it was given before: the first of its own on its probe path.
                start = low + _start(app_id, index, size)
                keep = min(ports, key=lambda p: (p - start) % size)
                ports.discard(keep)
                out[(app_id, index)] = keep
    kept = set(out.values())
    taken = skip | kept | {s.port for a in apps for s in a.services
                               if s.port and not s.auto_port and s.port not in kept}
    warnings: list[str] = []
    for app_id, index in keys:
        if (app_id, index) in out:
            continue
        start = _start(app_id, index, size) if size else 0
        port = next((low + (start + k) % size for k in range(size)
                     if low + (start + k) % size not in taken), None)
        if port is None:
            warnings.append(f"app {app_id}: service port index {index} has no service port "
                            f"and the IP-per-task range {low}-{high} has none left (set label "
                            f"HAPROXY_{index}_PORT); no frontend for it")
            continue
        taken.add(port)
        out[(app_id, index)] = port
    return out, warnings


def _start(app_id: str, index: int, size: int) -> int:
    return zlib.crc32(f"{app_id}#{index}".encode()) % size


def with_ports(app: App, ports: dict[tuple[str, int], int],
               span: tuple[int, int] = (0, 0)) -> App:
    """``app`` with its assigned service ports filled in (marked ``auto_port``); a
    service the range ``span`` had no port left for is a problem of the app (/status)."""
    if not needs_port(app):
        return app
    key = _key(app)
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


def assign_all(apps: Sequence[App], settings: Settings,
               held: Mapping[int, str] | None = None) -> tuple[list[App], list[str]]:
    """Every app with its IP-per-task service ports filled in from the settings' range
    (``held``: port → the app holding it now, which keeps it)."""
    low, high = settings.ip_per_task_ports
    reserved = {settings.stats_port, settings.http_port, settings.https_port,
                settings.app_id_port} - {0}
    ports, _ = assign_ports(apps, low, high, reserved, held)  # shortfalls: problems
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
