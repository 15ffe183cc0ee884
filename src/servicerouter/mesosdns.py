"""Mesos-DNS mode (``render --mesos-dns DOMAIN --dns-resolver IP:PORT``). Pure.

Marathon still says which apps and service ports exist and how to route them
(labels); the tasks behind each port come from Mesos-DNS. Each backend is a
``server-template`` of N slots resolved from the app's SRV record
``_<name>._tcp.<DOMAIN>`` through an HAProxy ``resolvers`` section, so HAProxy
follows tasks by itself and no daemon is needed; only a new app or a backend
outgrowing its slots needs a new render.

``<name>`` is Mesos-DNS's name for the app's tasks: the app id's segments in
reverse order joined by ``-`` (``/shop/web`` -> ``web-shop``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .deployments import GROUP as DEPLOYMENT_GROUP
from .layout import DesiredService, Layout, Settings, build_layout
from .model import App

RESOLVERS_NAME = "mesos_dns"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class MesosDNSError(ValueError):
    """A bad --mesos-dns or --dns-resolver value."""


@dataclass(frozen=True)
class MesosDNS:
    domain: str
    resolver: str  # "ip:port" as HAProxy's nameserver line takes it
    interval: str = "1s"


def parse_domain(value: str) -> str:
    domain = value.strip().strip(".").lower()
    if not domain or len(domain) > 253 or not all(_LABEL.fullmatch(p)
                                                  for p in domain.split(".")):
        raise MesosDNSError(f"--mesos-dns {value!r} is not a DNS domain (e.g. marathon.mesos)")
    return domain


def parse_resolver(value: str) -> str:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if not sep or ip is None or not port.isdigit() or not 0 < int(port) < 65536:
        raise MesosDNSError(f"--dns-resolver {value!r} is not IP:PORT (e.g. 10.0.0.5:53)")
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def task_name(app_id: str) -> str | None:
    """Mesos-DNS's name for an app's tasks, or None if it is not a DNS label."""
    name = "-".join(reversed([s for s in app_id.lower().split("/") if s]))
    return name if _LABEL.fullmatch(name) else None  # match: "x\n" passed ($ before \n)


def srv_record(app_id: str, domain: str) -> str | None:
    name = task_name(app_id)
    return f"_{name}._tcp.{domain}" if name else None


def admit(apps: list[App]) -> tuple[list[App], list[str]]:
    """The apps Mesos-DNS can serve, and why each other one is left out. What is kept
    then goes through the same admission as every other mode (ports, hosts,
    certificates: README "Multi-tenant safety")."""
    kept, problems = [], []
    named: dict[str, list[str]] = {}  # Mesos-DNS name -> the apps whose tasks it lists
    for app in apps:
        if (name := task_name(app.id)) is not None:
            named.setdefault(name, []).append(app.id)
    for app in apps:
        name = task_name(app.id)
        others = [a for a in named.get(name or "", ()) if a != app.id]
        if name is None:
            problems.append(f"app {app.id}: Mesos-DNS mode: the id does not make a DNS name "
                            "(letters, digits and '-', 63 characters at most); app left out")
        elif others:
            # /shop/web and /web-shop are both web-shop: one record lists the tasks of
            # both, so either app's port would also reach the other tenant's tasks.
            problems.append(f"app {app.id}: Mesos-DNS mode: its Mesos-DNS name {name} is "
                            f"also app {', '.join(sorted(others))}'s: its SRV record "
                            f"_{name}._tcp lists the tasks of both; app left out (rename one "
                            "of them)")
        elif DEPLOYMENT_GROUP in app.labels:
            problems.append(f"app {app.id}: Mesos-DNS mode: {DEPLOYMENT_GROUP} is not "
                            "supported (Mesos-DNS lists each member's tasks under the member's "
                            "own name, none under the group's); app left out")
        elif len(app.services) > 1:
            problems.append(f"app {app.id}: Mesos-DNS mode: {len(app.services)} service ports, "
                            "but Mesos-DNS lists the ports of all of them under one SRV record; "
                            "only single-port apps can be routed this way; app left out")
        else:
            kept.append(app)
    return kept, problems


def template_context(layout: Layout, dns: MesosDNS) -> dict[str, Any]:
    """What templates/mesosdns/ sees as ``mesos_dns``."""
    srv: dict[str, str] = {}
    params: dict[str, str] = {}
    for name, shape in layout.items():
        record = srv_record(shape.app_id, dns.domain)
        assert record is not None, shape.app_id  # admit() left such apps out
        srv[name] = record
        opts = shape.service.options
        params[name] = f" check inter {opts.health_check_interval_ms}" if opts.health_check \
            else ""
    return {"mesos_dns": {
        "domain": dns.domain, "resolver": dns.resolver, "interval": dns.interval,
        "resolvers_name": RESOLVERS_NAME, "srv": srv, "params": params,
        "slots": {name: shape.slots for name, shape in layout.items()},
    }}


def render_config(desired: Mapping[str, DesiredService], settings: Settings, dns: MesosDNS,
                  templates: str | Path | None = None) -> str:
    """The whole config in Mesos-DNS mode for the services of the apps :func:`admit`
    kept, once admitted like every other mode's (the caller's ``ClusterState``)."""
    from .haproxy.render import render

    layout, table = build_layout(desired, {}, settings)
    return render(layout, table, settings, templates, mode_templates="mesosdns",
                  extra=template_context(layout, dns))
