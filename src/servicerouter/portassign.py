"""Service ports for IP-per-task apps that have none, from a range. Pure.

marathon-lb gives an IP-per-task app whose port mappings carry no service
port (typically an app reached only by its ``HAPROXY_{n}_VHOST``) a port from
``--min-serv-port-ip-per-task`` to ``--max-serv-port-ip-per-task``. It hands
them out in arrival order, so a restart can shuffle them. Here the port is a
function of the whole set of such services: each (app id, port index) starts
at a hash of itself and probes linearly, taking the services in sorted order.
The same apps always get the same ports, across restarts and resyncs; a port
moves only when another service that probes through the same ports arrives
or leaves.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import replace

from .layout import Settings
from .model import App, NetworkMode


def needs_port(app: App) -> list[int]:
    """Indexes of an IP-per-task app's services that have no service port of their own."""
    if app.network is not NetworkMode.CONTAINER:
        return []
    return [s.index for s in app.services if s.auto_port or not s.port]


def assign_ports(apps: Sequence[App], low: int, high: int, reserved: Iterable[int] = ()
                 ) -> tuple[dict[tuple[str, int], int], list[str]]:
    """(app id, index) → port for every service that needs one, and warnings for
    those the range cannot hold. Ports of other services and ``reserved`` are skipped."""
    taken = set(reserved) | {s.port for a in apps for s in a.services
                             if s.port and not s.auto_port}
    keys = sorted((a.id, i) for a in apps for i in needs_port(a))
    size = high - low + 1 if low and high >= low else 0
    out: dict[tuple[str, int], int] = {}
    warnings = []
    for app_id, index in keys:
        start = zlib.crc32(f"{app_id}#{index}".encode()) % size if size else 0
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


def with_ports(app: App, ports: dict[tuple[str, int], int]) -> App:
    """``app`` with its assigned service ports filled in (marked ``auto_port``)."""
    if not needs_port(app):
        return app
    services = tuple(replace(s, port=ports.get((app.id, s.index), 0), auto_port=True)
                     if s.auto_port or not s.port else s for s in app.services)
    return app if services == app.services else replace(app, services=services)


def assign_all(apps: Sequence[App], settings: Settings) -> tuple[list[App], list[str]]:
    """Every app with its IP-per-task service ports filled in from the settings' range."""
    low, high = settings.ip_per_task_ports
    reserved = {settings.stats_port, settings.http_port, settings.https_port,
                settings.app_id_port} - {0}
    ports, warnings = assign_ports(apps, low, high, reserved)
    return [with_ports(a, ports) for a in apps], warnings


def assign_one(app: App, others: Sequence[App], settings: Settings
               ) -> tuple[App, list[App], list[str]]:
    """``app`` (re)defined among ``others``: its ports, the others whose ports moved
    because of it, and warnings. Ports are a function of all IP-per-task apps."""
    assigned, warnings = assign_all([*others, app], settings)
    moved = [after for before, after in zip(others, assigned, strict=False)
             if after is not before]
    return assigned[-1], moved, warnings
