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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import Layout, Settings, build_layout, desired_state
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
    if not domain or len(domain) > 253 or not all(_LABEL.match(p) for p in domain.split(".")):
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
    return name if _LABEL.match(name) else None


def srv_record(app_id: str, domain: str) -> str | None:
    name = task_name(app_id)
    return f"_{name}._tcp.{domain}" if name else None


def admit(apps: list[App]) -> tuple[list[App], list[str]]:
    """The apps Mesos-DNS can serve, and why each other one is left out."""
    kept, problems = [], []
    for app in apps:
        if task_name(app.id) is None:
            problems.append(f"app {app.id}: Mesos-DNS mode: the id does not make a DNS name "
                            "(letters, digits and '-', 63 characters at most); app left out")
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


def render_config(apps: list[App], settings: Settings, dns: MesosDNS,
                  templates: str | Path | None = None) -> tuple[str, list[str]]:
    """The whole config in Mesos-DNS mode, and the apps left out (messages)."""
    from .haproxy.render import render

    kept, problems = admit(apps)
    layout, table = build_layout(desired_state(kept, settings), {}, settings)
    text = render(layout, table, settings, templates, mode_templates="mesosdns",
                  extra=template_context(layout, dns))
    return text, problems
