"""The shape of the HAProxy configuration, and the slot table.

The *layout* is everything a reload decides: which backends exist, their
frontend options and how many server slots each has. The *slot table* is
what each slot holds right now; it changes at runtime, through the stats
socket, without a reload. Both are plain values: the engine owns them, the
planner computes changes to them, and render turns them into ``haproxy.cfg``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .model import App, Endpoint, Service, endpoints
from .naming import capacity, service_name


@dataclass(frozen=True, slots=True)
class Settings:
    """Operator settings that shape the rendered config (flags of ``render``/``run``)."""

    socket_path: str = "/run/haproxy/admin.sock"
    stats_port: int = 9090
    stats_address: str = "127.0.0.1"
    http_port: int = 80
    https_port: int = 443
    ssl_certs: tuple[str, ...] = ()
    slots_min_free: int = 2  # issue #11: half the slots, half HAProxy's RSS and start
    slots_increment: int = 4
    health_check: bool = True
    groups: tuple[str, ...] = ()  # empty: every app
    hard_stop_after: str = "5m"
    # HAProxy's `grace` (--haproxy-grace): see grace_ms(); -1 = auto.
    grace_ms: int = -1
    maxconn: int = 0  # 0: HAProxy's own default
    # Multi-tenant safety (admission): see the README, "Multi-tenant safety".
    ssl_cert_dirs: tuple[str, ...] = ()  # folders app certificates (SSL_CERT) may come from
    vhost_policy: str = "group"  # group | exclusive | open
    max_servers_per_backend: int = 2000  # 0: no cap
    reserved_ports: tuple[int, ...] = ()  # the daemon's own (--listen); never an app's
    # marathon-lb parity (README: Migrating from marathon-lb).
    strict_mode: bool = False  # services need HAPROXY_{n}_ENABLED=true
    syslog_socket: str | None = None  # HAProxy `log` target; None: no logging
    app_id_port: int = 0  # frontend routing by X-Marathon-App-Id; 0 = none
    daemon_address: str = ""  # host:port of the daemon's web server (stats-port endpoints)
    snippets: tuple[str, ...] = ()  # names of snippets/<name>.j2 in --templates
    ip_per_task_ports: tuple[int, int] = (10050, 10100)  # range for portassign; (0, 0): off
    allow_label_templates: bool = False  # marathon-lb template labels, each app vetted alone
    # Range mode (README: Service port range): (0, 0) = off. See pool.py.
    service_port_range: tuple[int, int] = (0, 0)
    map_dir: str = ""  # absolute folder of the map files (<config>.d)
    # Absolute folder of the shared HTTPS frontend's crt-list (<config>.d; "": apps'
    # certificates go on its bind line, which HAProxy cuts at 64 words).
    crt_list_dir: str = ""
    pool_spares: int = 8  # at least this many spare backends per pool shape
    # The haproxy admission asks about a certificate file OpenSSL's loader is unsure of
    # (certcheck): --haproxy-bin.
    haproxy_bin: str = "haproxy"

    @property
    def own_ports(self) -> frozenset[int]:
        """Ports servicerouter and its HAProxy use themselves: no app may bind them."""
        return frozenset(p for p in (self.stats_port, self.http_port, self.https_port,
                                     self.app_id_port, *self.reserved_ports) if p)


# --haproxy-grace auto: from this many services on, an old worker keeps accepting for
# AUTO_GRACE_MS after a reload. Measured on 2.6.12 (a probe, HAProxy alone): while the new
# worker starts, nobody accepts a connection for ~15 ms per 1,000 services (14-24 ms at
# 1,000, 42-53 at 3,000, 143-346 at 10,000); below this, a pause that short costs less
# than clients reaching the old config for a second.
AUTO_GRACE_SERVICES = 2000
AUTO_GRACE_MS = 1000


def grace_ms(settings: Settings, services: int) -> int:
    """HAProxy's ``grace`` in a config of ``services`` services: the time an old worker
    keeps accepting connections after a reload told it to stop, so that the new
    worker's start is no pause for clients; 0 = none."""
    if settings.grace_ms >= 0:
        return settings.grace_ms
    return AUTO_GRACE_MS if services >= AUTO_GRACE_SERVICES else 0


@dataclass(frozen=True, slots=True)
class BackendShape:
    """One service as it appears in the config: frontend + backend with N slots."""

    name: str
    service: Service
    slots: int

    @property
    def app_id(self) -> str:
        return self.service.app_id

    @property
    def dynamic(self) -> bool:
        """Whether ``add server`` works here. HAProxy 2.6 refuses it for static-rr and
        hashing algorithms, and refuses ``cookie`` on dynamic servers (sticky sessions)."""
        opts = self.service.options
        algorithm = opts.balance.split("(")[0].split()[0]
        return algorithm not in _STATIC_ALGORITHMS and not opts.sticky


# Algorithms whose servers HAProxy 2.6 cannot add at runtime (static or map-based hashing).
_STATIC_ALGORITHMS = frozenset({"static-rr", "source", "uri", "url_param", "hdr",
                                "rdp-cookie"})


# A slot holds an endpoint or nothing (a free slot: disabled, 127.0.0.1:1).
SlotTable = dict[str, list[Endpoint | None]]
Layout = dict[str, BackendShape]


@dataclass(frozen=True, slots=True)
class DesiredService:
    service: Service
    endpoints: tuple[Endpoint, ...]
    # The host names its certificate (HAPROXY_{n}_SSL_CERT) presents, claimed like its
    # vhosts (hostclaims.py); set by admission for an app's own file under --vhost-policy
    # group or exclusive, empty otherwise (the operator's --ssl-certs are everyone's).
    presents: tuple[str, ...] = ()


def selected(service: Service, settings: Settings) -> bool:
    """Whether a service gets a frontend: enabled, in a selected group, with a port.

    Without an ENABLED label a service is enabled unless ``--strict-mode``. A
    load balancer of group ``*`` takes every group, as marathon-lb's does.
    """
    opts = service.options
    enabled = opts.enabled if opts.enabled is not None else not settings.strict_mode
    if not enabled or not service.port:
        return False
    if not settings.groups or "*" in settings.groups:
        return True
    return any(g in settings.groups for g in opts.groups)


def https_available(service: Service, settings: Settings) -> bool:
    """Whether the shared HTTPS frontend serves this service, so that a redirect to
    https:// (the same host, on --https-port) reaches it."""
    opts = service.options
    return bool(opts.vhosts and settings.https_port and (settings.ssl_certs or opts.ssl_cert))


def service_problem(service: Service, settings: Settings) -> str | None:
    """Why a selected service must not be exposed (fail closed), or None."""
    opts = service.options
    if opts.refused:
        return opts.refused
    i = service.index
    if opts.redirect_to_https and not https_available(service, settings):
        return (f"label HAPROXY_{i}_REDIRECT_TO_HTTPS=true, but no HTTPS frontend can serve "
                f"the redirect (needs HAPROXY_{i}_VHOST, --https-port, and --ssl-certs or "
                f"HAPROXY_{i}_SSL_CERT); "
                "service not exposed rather than served over plain HTTP")
    if opts.snippet and opts.snippet not in settings.snippets:
        return (f"label HAPROXY_{i}_SNIPPET={opts.snippet!r} names no snippet in the "
                f"templates folder (snippets/{opts.snippet}.j2); service not exposed")
    return None


def desired_services(app: App, settings: Settings) -> dict[str, DesiredService]:
    """Backend name → desired service and endpoints, for one app."""
    out = {}
    for service in app.services:
        if selected(service, settings) and service_problem(service, settings) is None:
            name = service_name(app.id, service.port, service.index)
            out[name] = DesiredService(service, endpoints(app, service, settings.health_check))
    return out


def desired_state(apps: Iterable[App], settings: Settings) -> dict[str, DesiredService]:
    out: dict[str, DesiredService] = {}
    for app in apps:
        out.update(desired_services(app, settings))
    return out


def fill_slots(
    want: tuple[Endpoint, ...], current: list[Endpoint | None] | None, size: int
) -> list[Endpoint | None]:
    """Place endpoints into ``size`` slots, keeping each task in the slot it has.

    Used when (re)building the layout; ``size`` must be at least ``len(want)``.
    """
    slots: list[Endpoint | None] = [None] * size
    placed: set[str] = set()
    by_task = {e.task_id: e for e in want}
    for i, held in enumerate(current or ()):
        if (held is not None and held.task_id in by_task and held.task_id not in placed
                and i < size):
            slots[i] = by_task[held.task_id]
            placed.add(held.task_id)
    free = (i for i, s in enumerate(slots) if s is None)
    for e in want:
        if e.task_id not in placed:
            slots[next(free)] = e
    return slots


def build_layout(
    desired: Mapping[str, DesiredService], previous: SlotTable, settings: Settings
) -> tuple[Layout, SlotTable]:
    """A fresh layout for ``desired``, keeping tasks in their current slots.

    Capacity: the endpoints plus at least ``slots_min_free`` free slots, in
    whole ``slots_increment`` blocks, and never below the highest slot a
    kept task occupies (so nothing moves).
    """
    layout: Layout = {}
    table: SlotTable = {}
    for name, d in sorted(desired.items()):
        current = previous.get(name) or []
        wanted = {e.task_id for e in d.endpoints}
        highest = max((i + 1 for i, s in enumerate(current)
                       if s is not None and s.task_id in wanted), default=0)
        size = capacity(len(d.endpoints), settings.slots_min_free, settings.slots_increment)
        if settings.max_servers_per_backend:  # admission capped the endpoints already
            size = min(size, max(settings.max_servers_per_backend, len(d.endpoints)))
        size = max(size, highest)
        layout[name] = BackendShape(name, d.service, size)
        table[name] = fill_slots(d.endpoints, current, size)
    return layout, table


def slot_counts(table: SlotTable) -> tuple[int, int]:
    """(used, free) slots over all backends."""
    used = sum(1 for slots in table.values() for s in slots if s is not None)
    total = sum(len(slots) for slots in table.values())
    return used, total - used

