"""``HAPROXY_*`` labels into :class:`~servicerouter.model.Options`, validated.

Labels are written by app owners, not by the operator running HAProxy, so
every value is checked against a strict whitelist or pattern before it can
reach the rendered configuration: nothing in a label can add a line, a
keyword or an argument to ``haproxy.cfg``. Labels that carried raw HAProxy
configuration in marathon-lb (``HAPROXY_0_FRONTEND_HEAD`` and friends) are
deliberately not supported; operators customise through ``--templates``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .model import Mode, Options

GROUP_LABEL = "HAPROXY_GROUP"
_SERVICE_LABEL = re.compile(r"^HAPROXY_(\d+)_([A-Z_]+)$")

BALANCE_ALGORITHMS = ("roundrobin", "static-rr", "leastconn", "first", "source", "random")
_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})
_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*$")
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PATH = re.compile(r"^/[A-Za-z0-9._~%/-]{0,255}$")
_FILE_PATH = re.compile(r"^/[A-Za-z0-9._/-]{1,1023}$")

class LabelError(ValueError):
    """A label value that cannot be used; the message names label and value."""

    def __init__(self, label: str, value: str, problem: str) -> None:
        self.label = label
        self.value = value
        super().__init__(f"label {label}={value!r} {problem}")


@dataclass(frozen=True, slots=True)
class ServiceLabels:
    """What the labels say about one service port index."""

    options: Options = field(default_factory=Options)
    port: int | None = None  # HAPROXY_{n}_PORT overrides the service port


@dataclass(frozen=True, slots=True)
class AppLabels:
    services: Mapping[int, ServiceLabels]
    warnings: tuple[str, ...] = ()

    def for_index(self, index: int) -> ServiceLabels:
        return self.services.get(index) or self.services.get(-1) or ServiceLabels()


def parse_bool(label: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise LabelError(label, value, "is not a boolean (true or false)")


def parse_port(label: str, value: str) -> int:
    v = value.strip()
    if not (v.isascii() and v.isdigit()) or not 1 <= int(v) <= 65535:
        raise LabelError(label, value, "is not a port (1-65535)")
    return int(v)


def parse_groups(label: str, value: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in value.split(",") if g.strip())
    for g in groups:
        if not _GROUP.match(g):
            raise LabelError(label, value, "is not a comma-separated list of group names")
    return groups


def parse_vhosts(label: str, value: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in value.split(",") if h.strip())
    if not hosts:
        raise LabelError(label, value, "names no host")
    for h in hosts:
        if len(h) > 253 or not _HOSTNAME.match(h):
            raise LabelError(label, value, f"has {h!r}, which is not a host name")
    return hosts


def parse_bind_address(label: str, value: str) -> str:
    v = value.strip()
    if v == "*":
        return v
    if "%" in v:  # an IPv6 zone may hold any text, newlines included
        raise LabelError(label, value, "is not an IP address or '*' (no IPv6 zone)")
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise LabelError(label, value, "is not an IP address or '*'") from None


def parse_path(label: str, value: str, pattern: re.Pattern[str] = _PATH) -> str:
    v = value.strip()
    if not pattern.match(v) or "/../" in f"{v}/":
        raise LabelError(label, value, "is not an absolute path of [A-Za-z0-9._~%/-]")
    return v


def _choice(label: str, value: str, choices: tuple[str, ...]) -> str:
    v = value.strip().lower()
    if v not in choices:
        raise LabelError(label, value, f"is not one of {', '.join(choices)}")
    return v


def _mode(label: str, value: str) -> Mode:
    return Mode(_choice(label, value, ("tcp", "http")))


def _balance(label: str, value: str) -> str:
    return _choice(label, value, BALANCE_ALGORITHMS)


def _ssl_cert(label: str, value: str) -> str:
    return parse_path(label, value, _FILE_PATH)


# Label suffix -> (Options field, parser). HAPROXY_{n}_PORT is handled apart.
_OPTION_LABELS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "ENABLED": ("enabled", parse_bool),
    "GROUP": ("groups", parse_groups),
    "MODE": ("mode", _mode),
    "BALANCE": ("balance", _balance),
    "BIND_ADDR": ("bind_address", parse_bind_address),
    "VHOST": ("vhosts", parse_vhosts),
    "PATH": ("path", parse_path),
    "STICKY": ("sticky", parse_bool),
    "REDIRECT_TO_HTTPS": ("redirect_to_https", parse_bool),
    "SSL_CERT": ("ssl_cert", _ssl_cert),
}
SERVICE_LABELS = ("PORT", *_OPTION_LABELS)


def _apply(current: ServiceLabels, key: str, label: str, value: str) -> ServiceLabels:
    """Apply one per-service label; raises LabelError on a bad value."""
    if key == "PORT":
        return replace(current, port=parse_port(label, value))
    field_name, parse = _OPTION_LABELS[key]
    change: dict[str, Any] = {field_name: parse(label, value)}
    return replace(current, options=replace(current.options, **change))


def parse_labels(labels: Mapping[str, object] | None, service_count: int) -> AppLabels:
    """Read an app's labels. Raises :class:`LabelError` for the first bad value.

    ``HAPROXY_GROUP`` applies to every service; ``HAPROXY_{n}_*`` to index n.
    Labels for an index the app does not have, and unknown ``HAPROXY_``
    labels, become warnings.
    """
    labels = labels or {}
    warnings: list[str] = []
    base = Options()
    if GROUP_LABEL in labels:
        base = replace(base, groups=parse_groups(GROUP_LABEL, str(labels[GROUP_LABEL])))

    per_index: dict[int, ServiceLabels] = {-1: ServiceLabels(base)}
    for label in sorted(labels):
        if not label.startswith("HAPROXY_") or label == GROUP_LABEL:
            continue
        value = labels[label]
        if not isinstance(value, str):
            raise LabelError(label, str(value), "is not a string")
        m = _SERVICE_LABEL.match(label)
        if not m or m.group(2) not in SERVICE_LABELS:
            warnings.append(
                f"label {label} is not supported (labels cannot carry HAProxy configuration; "
                "use --templates); ignored"
            )
            continue
        index, key = int(m.group(1)), m.group(2)
        if index >= max(service_count, 1):
            warnings.append(f"label {label} names service port index {index}, which the app "
                            f"does not have ({service_count} ports); ignored")
            continue
        current = per_index.get(index) or ServiceLabels(base)
        per_index[index] = _apply(current, key, label, value)

    for index, sl in list(per_index.items()):
        opts = sl.options
        http_only = opts.vhosts or opts.path or opts.redirect_to_https or opts.sticky
        if http_only and opts.mode is Mode.TCP:
            # Virtual hosts, paths, redirects and cookies are HTTP features.
            per_index[index] = replace(sl, options=replace(opts, mode=Mode.HTTP))
    return AppLabels(per_index, tuple(warnings))
