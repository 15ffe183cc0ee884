"""Admission: what one app's service may have on this host. Pure.

``marathon/parse`` checks the syntax of one app; admission decides what a
service's values will *do* here: a port the daemon uses itself, a bind address
the host lacks, a certificate from outside the operator's folders, a task port
HAProxy cannot connect to, more servers than one backend may hold. The facts
about the host (certificate files, local addresses) are gathered at the edge
(:mod:`servicerouter.hostfacts`) and passed in.

Who owns a port or a virtual host across apps is decided in
:class:`~servicerouter.ownership.Ownership`, which remembers who claimed it
first; the rules it applies (:func:`vhost_owner`) are here.

Every refusal is a :class:`~servicerouter.model.Problem` naming app, label
and value; the service is left out and everything else goes on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from publicsuffixlist import PublicSuffixList

from .label_values import MAX_VHOSTS, too_deep
from .layout import DesiredService, Settings
from .model import App, Problem, shown, valid_port

# Why a service is left out (or limited): the values of the
# servicerouter_services_excluded{reason} metric.
REASONS = (
    "invalid_app",  # the app definition could not be read at all (every port of it)
    "port",  # a service port outside 1-65535
    "health_check",  # a health check interval HAProxy cannot hold
    "task_port",  # a task (backend) port outside 1-65535, or the one health-checked
    "port_reserved",  # the daemon's own ports
    "port_taken",  # another app holds the service port
    "vhost_taken",  # another group (or app) owns the virtual host, or host+path
    "bind_address",  # HAPROXY_{n}_BIND_ADDR is not an address of this host
    "ssl_cert",  # HAPROXY_{n}_SSL_CERT refused
    "bind_failed",  # the frontend address could not be bound just before a reload
    "haproxy_rejected",  # haproxy -c rejected what the service renders to
    "too_many_servers",  # capped at --max-servers-per-backend (still routed)
    "label_invalid",  # a HAPROXY_{n}_* value that does not parse (HAPROXY_{n}_PORT: "port")
    "label_refused",  # a label that cannot be honoured safely (AUTH on TCP, ...): fail closed
    "deployment_group",  # HAPROXY_DEPLOYMENT_* refused (deployments.py): the app is left out
    "port_range",  # no IP-per-task port left in --min/--max-serv-port-ip-per-task
)
VHOST_POLICIES = ("group", "exclusive", "open")


@dataclass(frozen=True, slots=True)
class CertFact:
    """What the edge found for one ``SSL_CERT`` path: the file HAProxy should load
    (symlinks resolved), or why it may not."""

    path: str | None
    problem: str | None = None
    stamp: tuple[int, int] = (0, 0)  # (mtime ns, size): a file replaced is a new fact
    shared: bool = False  # listed in --ssl-certs: the operator's, any app may name it
    # The host names HAProxy indexes the certificate under for SNI (its subjectAltName
    # DNS names and common names, lowercased): on the shared HTTPS frontend it is
    # presented to every client asking for one of them.
    names: tuple[str, ...] | None = ()  # None: the certificate could not be read here


@dataclass(frozen=True, slots=True)
class Facts:
    """Host facts admission needs, gathered at the edge for the values apps name."""

    certs: Mapping[str, CertFact] = field(default_factory=dict)
    addresses: Mapping[str, bool] = field(default_factory=dict)  # bind address -> host has it

    def merged(self, other: Facts) -> Facts:
        return Facts({**self.certs, **other.certs}, {**self.addresses, **other.addresses})


def top_group(app_id: str) -> str:
    """The top-level Marathon group of an app: ``/shop/web/api`` → ``/shop``; an app at
    the root is its own group (``/web`` → ``/web``)."""
    return "/" + app_id.strip("/").split("/")[0]


def vhost_owner(app_id: str, policy: str) -> str | None:
    """The key that owns a virtual host an app claims first; None: nobody owns hosts."""
    if policy == "group":
        return top_group(app_id)
    if policy == "exclusive":
        return app_id
    return None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(1, len(parts))]


def covering_wildcards(host: str) -> list[str]:
    """The wildcards that match ``host`` (or, for a wildcard, every name it matches):
    ``*.b.c`` and ``*.c`` for ``a.b.c`` and for ``*.a.b.c``."""
    return ["*." + a for a in _ancestors(host.removeprefix("*."))]


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    """The Public Suffix List bundled with publicsuffixlist (~0.1 s and ~2.5 MB, loaded
    at the first wildcard)."""
    return PublicSuffixList()


def over_public_suffix(wildcard: str) -> bool:
    """Whether ``*.<domain>`` spans a public suffix: ``*.com``, ``*.co.uk``,
    ``*.github.io``, or an unlisted top-level domain (``*.mesos``). Such a wildcard
    claims every other tenant's host under it, registered by anyone."""
    domain = wildcard.removeprefix("*.")
    return "." not in domain or _public_suffixes().is_public(domain)


def domains_above(host: str) -> list[str]:
    """The domains ``host`` lies under (a claim of ``*.<domain>`` would match it):
    ``b.c`` and ``c`` for ``a.b.c``; ``a.b.c``, ``b.c`` and ``c`` for ``*.a.b.c``."""
    base = host.removeprefix("*.")
    return ([base] if host.startswith("*.") else []) + _ancestors(base)


def _routes(vhosts: Iterable[str], name: str) -> bool:
    """Whether every SNI a certificate's ``name`` matches is a host these vhosts route
    (an exact name, or names under one of their wildcards)."""
    base = name.removeprefix("*.")
    return any(name == v or (v.startswith("*.") and base.endswith(v[1:])) for v in vhosts)


def _stray_names(names: tuple[str, ...] | None, vhosts: Iterable[str]) -> str | None:
    """The first certificate name these vhosts do not route, or what stands for one when
    the names could not be read (fail closed); None when every name is routed."""
    if names is None:
        return "names that could not be read"
    stray = next((n for n in names if not _routes(vhosts, n)), None)
    return shown(stray) if stray is not None else None


def _unclaimable(names: tuple[str, ...] | None) -> str | None:
    """Why a certificate's names cannot be claimed as hosts of the service presenting it
    (None: they can). Its names are host names: presenting it is a claim on each, like a
    VHOST's, so they are held to a VHOST's limits, and names that cannot be read fail
    closed (HAProxy would present the file for whatever they are)."""
    if names is None:
        return ("is a certificate whose host names (subjectAltName, common name) could not "
                "be read, so whether it names another tenant's host cannot be told")
    if len(names) > MAX_VHOSTS:
        return f"is a certificate for {len(names)} host names; at most {MAX_VHOSTS}"
    for n in names:
        deep = too_deep(n)
        if deep:
            return f"is a certificate for {shown(n)}, {deep}"
        if n.startswith("*.") and over_public_suffix(n):
            return (f"is a certificate for {shown(n)}, a wildcard over a public suffix "
                    f"({shown(n[2:])}: every other tenant's host under it)")
    return None


def _label(app: App, index: int, suffix: str, fallback: str) -> str:
    label = f"HAPROXY_{index}_{suffix}"
    return label if label in app.labels else fallback


def port_label(app: App, index: int) -> str:
    """The label (or definition field) a service port came from."""
    return _label(app, index, "PORT", f"service port index {index}")


def _checked_port(index: int, check_index: int | None) -> str:
    """Why a health-checked port outside 1-65535 leaves service port ``index`` out."""
    how = (f"HAPROXY_{index}_BACKEND_HEALTHCHECK_PORT_INDEX={check_index} health-checks it"
           if check_index is not None else "the service's health check is sent there")
    return f"is not a port HAProxy can connect to (1-65535), and {how}"


def check_service(app: App, d: DesiredService, settings: Settings, facts: Facts
                  ) -> tuple[DesiredService | None, list[Problem]]:
    """Admit one desired service: the service as HAProxy should have it (certificate
    path resolved, endpoints capped), or None when it is left out; and the problems."""
    svc, opts, index = d.service, d.service.options, d.service.index
    notes: list[Problem] = []  # served, but limited
    presents = d.presents

    def refuse(reason: str, label: str, value: object, message: str
               ) -> tuple[DesiredService | None, list[Problem]]:
        return None, [Problem(app.id, index, reason, label, shown(value),
                              f"{message}; service left out, others applied")]

    if svc.port in settings.own_ports:
        return refuse("port_reserved", port_label(app, index), svc.port,
                      "is a port servicerouter or its HAProxy uses itself")
    broad = next((h for h in opts.vhosts if h.startswith("*.") and over_public_suffix(h)),
                 None) if settings.vhost_policy != "open" else None
    if broad:
        return refuse("label_refused", f"HAPROXY_{index}_VHOST", ",".join(opts.vhosts),
                      f"has {broad}, a wildcard over a public suffix ({broad[2:]}: every "
                      "other tenant's host under it); a wildcard needs a registrable "
                      "domain after '*.' (as *.example.com or *.example.co.uk) unless "
                      "--vhost-policy open")
    if opts.bind_address != "*" and facts.addresses.get(opts.bind_address) is False:
        return refuse("bind_address", f"HAPROXY_{index}_BIND_ADDR", opts.bind_address,
                      "is not an address of this host")
    if opts.ssl_cert is not None:
        fact = facts.certs.get(opts.ssl_cert)
        label = f"HAPROXY_{index}_SSL_CERT"
        if fact is None or fact.path is None:
            why = fact.problem if fact and fact.problem else "was not checked"
            return refuse("ssl_cert", label, opts.ssl_cert, why)
        if not fact.shared and settings.vhost_policy != "open":
            # Presenting it claims its names as hosts (ownership.py): on any frontend,
            # a certificate for another tenant's host lures that host's clients (and
            # their cookies, which are not port-scoped) to this service.
            unclaimable = _unclaimable(fact.names)
            if unclaimable:
                return refuse("ssl_cert", label, opts.ssl_cert, unclaimable)
            presents = fact.names or ()
        stray = _stray_names(fact.names, opts.vhosts) \
            if opts.vhosts and settings.https_port and not fact.shared \
            and settings.vhost_policy != "open" else None
        if stray:  # the service and its own port keep it; the shared frontend does not
            opts = replace(opts, sni_cert=False)
            notes.append(Problem(app.id, index, "ssl_cert", label, shown(opts.ssl_cert), (
                f"is a certificate for {stray}, a host HAPROXY_{index}_VHOST "
                f"({','.join(opts.vhosts)}) does not route, so it is not offered on the "
                "shared HTTPS frontend (there HAProxy would present it to that host's "
                "clients, whichever app owns the host); the service's vhosts are served "
                "with the operator's --ssl-certs there, its own port keeps it. Name only "
                "the service's hosts in it, or have the operator list it in --ssl-certs")))
        if fact.path != opts.ssl_cert or opts is not svc.options:
            svc = replace(svc, options=replace(opts, ssl_cert=fact.path))
    # The port HAProxy health-checks is a task port too: with
    # HAPROXY_{n}_BACKEND_HEALTHCHECK_PORT_INDEX, each task's own port at that index (for
    # IP-per-task, the container port there, the same for every task). HAProxy takes
    # `port 70000` in a config and wraps it to 4464; the runtime API's check-port refuses
    # it. 0 there means none (the traffic port is checked), as in the planner and render.
    opts = svc.options
    check_index = opts.health_check_port_index
    fixed = opts.health_check_port
    if opts.health_check and fixed and not valid_port(fixed):
        return refuse("task_port", "health check port" if check_index is None
                      else f"container port index {check_index}", fixed,
                      _checked_port(index, check_index))
    bad = bad_check = None
    for e in d.endpoints:  # (a plain loop: 50,000 endpoints at 10,000 apps)
        port, check = e.port, e.check_port
        if not (type(port) is int and 0 < port < 65536) and not valid_port(port):
            bad = e
            break
        if check and not (type(check) is int and 0 < check < 65536) \
                and not valid_port(check):
            bad_check = e
            break
    if bad is not None:
        return refuse("task_port", f"tasks[{bad.task_id}].port", bad.port,
                      "is not a port HAProxy can connect to (1-65535)")
    if bad_check is not None:
        return refuse("task_port", f"tasks[{bad_check.task_id}].ports[{check_index}]",
                      bad_check.check_port, _checked_port(index, check_index))
    endpoints, problems = d.endpoints, notes
    cap = settings.max_servers_per_backend
    if cap and len(endpoints) > cap:
        keep = set(sorted(e.task_id for e in endpoints)[:cap])  # stable: by task id
        endpoints = tuple(e for e in endpoints if e.task_id in keep)
        problems.append(Problem(
            app.id, index, "too_many_servers", "instances", str(len(d.endpoints)),
            f"tasks are more than --max-servers-per-backend {cap}; only the first {cap} "
            "by task id are routed"))
    if svc is d.service and endpoints is d.endpoints and presents is d.presents:
        return d, problems
    return DesiredService(svc, endpoints, presents), problems
