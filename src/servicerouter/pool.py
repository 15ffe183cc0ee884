"""Range mode (``--service-port-range``): apps come and go through maps. Pure.

One TCP frontend binds the whole range and picks the backend by destination port
through ``ports.map``; the shared HTTP(S) frontends pick it by host through
``hosts.map``. Both maps are functions of the layout (:func:`ports_map`,
:func:`host_routes`), so the rendered config plus the map files always reproduce
what HAProxy holds, and reconcile compares ``show map`` with them.

A new app takes a *spare*: a backend rendered ahead of time in a pool *shape* (the
backend options of the apps it can serve: mode, balance, health checks ...). The
planner fills its slots and then adds the map entry; a removed app's map entry
goes first, then its slots are set to maint and its backend returns to the pool,
whether it was a spare or the app's own backend from a reload (then a free spare
under its old name, keyed :func:`spare_key`). The pool is refilled at each reload
(:func:`with_pool`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from .haproxy.runtime_parse import QUERY_ERROR_PREFIXES
from .layout import BackendShape, Layout, Settings, SlotTable
from .model import Mode, Options, Service
from .naming import capacity

SPARE_PREFIX = "_pool_"  # a service name never starts with "_" (naming.py escapes it)
PORTS_MAP = "ports.map"
HOSTS_MAP = "hosts.map"
SPARES_FILE = "spares.json"  # the spare backends' shapes, for adoption at a restart
SPARE_RATIO = 0.10  # spares per shape: at least this share of the shape's services
MAX_SPARES = 2000  # per shape, whatever the demand
GROWTH = 2  # spares after a reload: this many times the apps that took one since the last
# A shape new apps arrived in since the last reload gets room for this many more: a
# steady stream of new apps then costs at most one reload per RUNWAY creations.
RUNWAY = 100
# All shapes together hold at most GROWTH spares per routed service, plus room for a
# runway in each default shape (TCP, HTTP) and --pool-spares more in each: shapes are
# the tenants' to choose (a health check path, a balance argument), and without this a
# tenant with 100 apps of 100 shapes made every config carry 10,000 spare backends.


def parse_port_range(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` → (low, high); ValueError naming the value."""
    low, sep, high = text.strip().partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise ValueError(f"{text!r} is not LOW-HIGH (two port numbers)") from None
    if not sep or not 1 <= lo <= hi <= 65535:
        raise ValueError(f"{text!r} is not LOW-HIGH with 1 <= LOW <= HIGH <= 65535")
    return lo, hi


def range_on(settings: Settings) -> bool:
    return settings.service_port_range != (0, 0)


def map_path(settings: Settings, name: str) -> str:
    return f"{settings.map_dir.rstrip('/')}/{name}"


def is_spare(shape: BackendShape) -> bool:
    """A free backend of the pool: no app (a ``_pool_N`` one, or a removed app's own
    backend returned to the pool under its old name)."""
    return not shape.service.app_id


def spare_key(backend: str) -> str:
    """The layout key of a free spare backend. ``_pool_N`` keys itself; a removed app's
    backend is keyed apart from its service name, so that the app coming back is a new
    app (which then takes that backend first, see planrange.plan_range)."""
    return backend if backend.startswith(SPARE_PREFIX) else SPARE_PREFIX + backend


def lives_elsewhere(key: str, shape: BackendShape) -> bool:
    """An app's service living in a backend not of its own name (a spare it took, or a
    removed app's backend returned to the pool) since the last reload."""
    return bool(shape.service.app_id) and shape.name != key


def own_frontend(service: Service, settings: Settings) -> str | None:
    """Why a service needs a frontend of its own (which only a reload creates), or None
    when the range frontend routes it through the port map."""
    if not range_on(settings):
        return "no --service-port-range"
    low, high = settings.service_port_range
    opts, i = service.options, service.index
    if not low <= service.port <= high:
        return f"service port {service.port} is outside --service-port-range {low}-{high}"
    if opts.bind_address != "*":
        return f"a bind address (HAPROXY_{i}_BIND_ADDR={opts.bind_address})"
    if opts.ssl_cert:
        return f"a per-port certificate (HAPROXY_{i}_SSL_CERT={opts.ssl_cert})"
    if any(key == "FRONTEND_HEAD" for key, _ in opts.raw_templates):
        return f"a frontend template (HAPROXY_{i}_FRONTEND_HEAD)"
    return None


def shape_of(options: Options) -> Options | None:
    """The pool shape of a backend: its options without what only routes to it (vhosts,
    paths, weight, groups). None when a spare cannot take those options: anything that
    names the app or its hosts inside the backend.

    Which port index is checked is per task (each server gets ``check-port``), but
    *whether* one is: a check port set at runtime outlives its app (there is no command
    that resets it to the traffic port), so servers checked on their own port never
    serve an app checked on its traffic port."""
    if (options.auth or options.snippet or options.raw_templates or options.proxypass_path
            or options.revproxy_path or options.refused or options.ssl_cert
            or options.bind_address != "*"):
        return None
    own_check_port = (options.health_check and options.health_check_port is None
                      and options.health_check_port_index is not None)
    return replace(options, enabled=None, groups=(), vhosts=(), paths=(),
                   path_ignore_case=False, backend_weight=0,
                   health_check_port_index=0 if own_check_port else None)


def outside_shapes_reason(service: Service) -> str:
    o, i = service.options, service.index
    labels = [name for name, on in (("AUTH", o.auth), ("SNIPPET", o.snippet),
                                    ("*_HEAD/HTTP_OPTIONS templates", o.raw_templates),
                                    ("PROXYPASS_PATH", o.proxypass_path),
                                    ("REVPROXY_PATH", o.revproxy_path)) if on]
    return ("options outside the pool's shapes (" + ", ".join(f"HAPROXY_{i}_{n}" for n in labels)
            + ")") if labels else "options outside the pool's shapes"


def host_map_used(settings: Settings) -> bool:
    """Whether the config has a shared frontend that reads the host map (range mode with
    --http-port, or --https-port with --ssl-certs)."""
    return range_on(settings) and bool(settings.http_port
                                       or (settings.https_port and settings.ssl_certs))


def map_routed(shape: BackendShape, settings: Settings) -> bool:
    """Whether the port map routes to this backend (it has an app and no own frontend)."""
    return not is_spare(shape) and own_frontend(shape.service, settings) is None


def ports_map(layout: Layout, settings: Settings) -> dict[str, str]:
    """Destination port → backend, for every service the range frontend routes."""
    if not range_on(settings):
        return {}
    return {str(s.service.port): s.name for s in layout.values() if map_routed(s, settings)}


def host_routes(layout: Layout, settings: Settings) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(host map, the vhost routes that stay ACLs), in route order.

    A host goes in the map when exactly one route names it, that route has no paths,
    and no wildcard route matches it: then no ordering rule (BACKEND_WEIGHT, longest
    path first) can be at stake, and a map lookup gives the same answer as the ACLs.
    Everything else keeps today's ACL routes. Without the range mode: no map."""
    from .haproxy.render import vhost_routes  # render imports this module

    routes = vhost_routes(layout)
    if not host_map_used(settings):
        return {}, routes
    named: dict[str, int] = {}
    for r in routes:
        for h in r["hosts"]:
            named[h.lower()] = named.get(h.lower(), 0) + 1
    wildcards = tuple(w.lower() for r in routes for w in r["wildcards"])
    hosts: dict[str, str] = {}
    acl_routes = []
    for r in routes:
        mapped = [h for h in r["hosts"] if not r["paths"] and named[h.lower()] == 1
                  and not h.lower().endswith(wildcards or ("\0",))]
        hosts.update((h.lower(), r["backend"]) for h in mapped)
        rest = [h for h in r["hosts"] if h not in mapped]
        if rest or r["wildcards"]:
            acl_routes.append({**r, "hosts": rest})
    return hosts, acl_routes


def map_files(layout: Layout, settings: Settings) -> dict[str, str]:
    """File name → text of every map file (empty when the range mode is off)."""
    if not range_on(settings):
        return {}
    hosts, _ = host_routes(layout, settings)
    return {PORTS_MAP: map_text(ports_map(layout, settings)), HOSTS_MAP: map_text(hosts),
            SPARES_FILE: spares_text(layout)}


def spares_text(layout: Layout) -> str:
    """JSON: spare backend name → its shape (free or holding an app), so that a restarted
    daemon can render the running config's pool again and adopt it without a reload."""
    out = {}
    for key, s in layout.items():
        if is_spare(s) or lives_elsewhere(key, s):
            shape = s.service.options if is_spare(s) else shape_of(s.service.options)
            if shape is not None:
                out[s.name] = {f.name: getattr(shape, f.name) for f in fields(shape)}
    return json.dumps(out, sort_keys=True, default=lambda v: v.value) + "\n"


def parse_spares(text: str) -> dict[str, Options]:
    """:func:`spares_text` back; ValueError (or TypeError) when it is not ours."""
    out = {}
    for name, raw in json.loads(text).items():
        values: dict[str, Any] = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
                  if isinstance(v, list) else v for k, v in raw.items()}
        values["mode"] = Mode(values["mode"])
        out[str(name)] = Options(**values)
    return out


def used_maps(layout: Layout, settings: Settings) -> dict[str, dict[str, str]]:
    """File name → entries, for each map the config reads (what reconcile compares)."""
    if not range_on(settings):
        return {}
    out = {PORTS_MAP: ports_map(layout, settings)}
    if host_map_used(settings):
        out[HOSTS_MAP] = host_routes(layout, settings)[0]
    return out


def map_text(entries: Mapping[str, str]) -> str:
    return "".join(f"{k} {v}\n" for k, v in sorted(entries.items()))


def range_bind(layout: Layout, settings: Settings) -> str:
    """The range frontend's bind list: the range without the ports some other frontend
    binds (an in-range service with its own frontend, the daemon's own ports)."""
    low, high = settings.service_port_range
    holes = sorted({p for p in settings.own_ports if low <= p <= high}
                   | {s.service.port for s in layout.values() if not is_spare(s)
                      and low <= s.service.port <= high and not map_routed(s, settings)})
    parts, start = [], low
    for h in [*holes, high + 1]:
        if start <= h - 1:
            parts.append(f"*:{start}" if start == h - 1 else f"*:{start}-{h - 1}")
        start = h + 1
    return ",".join(parts)


def parse_show_map(text: str) -> dict[str, str]:
    """``show map <file>`` (``0x55.. key value`` per line) → key → value. A key listed
    twice maps to its first value: the one HAProxy answers (measured on 2.6, ``map_int``),
    whatever an ``add map`` of the same key appended after it."""
    if text.strip().startswith(QUERY_ERROR_PREFIXES):
        raise ValueError(text.strip())
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.setdefault(parts[1], parts[2])
    return out


def map_diff(path: str, have: Mapping[str, str], want: Mapping[str, str]
             ) -> tuple[list[str], list[str]]:
    """(commands to run before the servers change: deletions; after: additions, moves)."""
    before = [f"del map {path} {k}" for k in sorted(have.keys() - want.keys())]
    after = [f"{'set' if k in have else 'add'} map {path} {k} {v}"
             for k, v in sorted(want.items()) if have.get(k) != v]
    return before, after


def spare(name: str, shape: Options, slots: int) -> BackendShape:
    return BackendShape(name, Service(app_id="", index=0, port=0, options=shape), slots)


def with_pool(layout: Layout, table: SlotTable, previous: Layout, settings: Settings
              ) -> tuple[Layout, SlotTable]:
    """Add the spare backends to a freshly built layout (range mode only).

    Shapes: plain TCP and HTTP, plus the shape of every service the port map routes.
    Per shape: ``max(--pool-spares, 10% of its services, 2 x the apps that took a
    spare since the last reload)``, and at least RUNWAY (100) for a shape new apps
    arrived in since the last reload: a steady stream of new apps reloads once when
    the default pool runs out, then at most once per 100 creations, and rarer as the
    stream doubles the pool at each reload it causes. A shape no new app came in
    costs only --pool-spares. All together, at most GROWTH spares per service plus a
    runway and --pool-spares per default shape (:func:`_budgeted`)."""
    if not range_on(settings):
        return layout, table
    in_use: dict[Options, int] = {Options(mode=Mode.TCP): 0, Options(mode=Mode.HTTP): 0}
    demand: dict[Options, int] = {}
    for name, s in layout.items():
        key = shape_of(s.service.options)
        if key is None or not map_routed(s, settings):
            continue
        in_use[key] = in_use.get(key, 0) + 1
        old = previous.get(name)
        if previous and (old is None or lives_elsewhere(name, old)):
            demand[key] = demand.get(key, 0) + 1
    layout, table = dict(layout), dict(table)
    size = capacity(0, settings.slots_min_free, settings.slots_increment)
    counts = _budgeted({key: min(MAX_SPARES, max(
        settings.pool_spares, math.ceil(SPARE_RATIO * used), GROWTH * demand.get(key, 0),
        RUNWAY if demand.get(key) else 0)) for key, used in in_use.items()},
        in_use, demand, settings.pool_spares)
    number = 0
    for key in sorted(in_use, key=repr):
        for _ in range(counts[key]):
            number += 1
            name = f"{SPARE_PREFIX}{number}"
            layout[name] = spare(name, key, size)
            table[name] = [None] * size
    return layout, table


def _budgeted(wanted: Mapping[Options, int], in_use: Mapping[Options, int],
              demand: Mapping[Options, int], minimum: int) -> dict[Options, int]:
    """``wanted`` spares per shape, cut to the pool's budget: GROWTH per routed service,
    plus RUNWAY and ``minimum`` for each default shape (TCP, HTTP). The default shapes
    get theirs first, then the others up to ``minimum`` each, then the rest; among
    those, the shapes with the most new apps since the last reload, then the most
    services, first. A shape left without spares costs its next new app a reload
    (``pool_exhausted``), which is all a tenant's odd shapes can cost the others."""
    budget = GROWTH * sum(in_use.values()) + 2 * (RUNWAY + minimum)
    defaults = [k for k in (Options(mode=Mode.TCP), Options(mode=Mode.HTTP)) if k in wanted]
    others = sorted(wanted.keys() - set(defaults),
                    key=lambda k: (-demand.get(k, 0), -in_use[k], repr(k)))
    out = dict.fromkeys(wanted, 0)
    for keys, cap in ((defaults, None), (others, minimum), (others, None)):
        for key in keys:
            target = wanted[key] if cap is None else min(cap, wanted[key])
            more = max(0, min(target - out[key], budget))
            out[key] += more
            budget -= more
    return out
