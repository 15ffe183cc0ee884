"""Builders for Runtime API commands that validate every argument.

Nothing that reaches the socket can contain ``;``, a newline, a space inside a name, or an
out-of-range number: every builder raises :class:`ValueError` first. (HAProxy 2.6 itself
accepts ``port 70000`` and silently wraps it to 4464, measured.)
"""

from __future__ import annotations

import functools
import ipaddress
import re

_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_TOKEN = re.compile(r"[A-Za-z0-9_.:%/@\[\]-]+")
STATES = ("ready", "drain", "maint")
HEALTH = ("up", "stopping", "down")


def check_name(value: str, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: must match [A-Za-z0-9_.:-]+")
    return value


@functools.lru_cache(maxsize=4096)
def _normal_ip(value: str) -> str:
    return str(ipaddress.ip_address(value))


def check_ip(value: str) -> str:
    try:  # cached: the same few hosts come back with every task (parsing: ~5 µs)
        return _normal_ip(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid IP address {value!r}") from exc


def check_port(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"invalid port {value!r}: must be an int in 1-65535")
    return value


def _srv(backend: str, server: str) -> str:
    return f"{check_name(backend, 'backend name')}/{check_name(server, 'server name')}"


def set_server_addr(backend: str, server: str, ip: str, port: int | None = None) -> str:
    cmd = f"set server {_srv(backend, server)} addr {check_ip(ip)}"
    return cmd if port is None else f"{cmd} port {check_port(port)}"


def set_check_port(backend: str, server: str, port: int) -> str:
    return f"set server {_srv(backend, server)} check-port {check_port(port)}"


def set_server_state(backend: str, server: str, state: str) -> str:
    if state not in STATES:
        raise ValueError(f"invalid server state {state!r}: one of {', '.join(STATES)}")
    return f"set server {_srv(backend, server)} state {state}"


def set_server_health(backend: str, server: str, health: str) -> str:
    """``set server B/S health up``: the check's health to its top (rise + fall - 1).

    Measured on 2.6.12: a server that leaves maintenance, or starts with its worker,
    has health ``rise``, so its first failed check takes it DOWN."""
    if health not in HEALTH:
        raise ValueError(f"invalid server health {health!r}: one of {', '.join(HEALTH)}")
    return f"set server {_srv(backend, server)} health {health}"


def set_weight(backend: str, server: str, weight: int) -> str:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
        raise ValueError(f"invalid weight {weight!r}: must be an int in 0-256")
    return f"set server {_srv(backend, server)} weight {weight}"


def add_server(backend: str, server: str, ip: str, port: int, *keywords: str) -> str:
    """``add server B/S <ip>:<port> [kw ...]`` (2.6: dynamic LB algorithms only).

    ``keywords`` are single tokens, e.g. ``("check", "weight", "5")``. Measured on 2.6.12:
    a new server starts in maintenance; prefer NOT to pass ``disabled``: a server added
    with it and then set ``ready`` keeps its health checks paused even after
    ``enable health``. ``enabled`` puts it in rotation at once.
    """
    for kw in keywords:
        if not isinstance(kw, str) or not _TOKEN.fullmatch(kw):
            raise ValueError(f"invalid add server keyword {kw!r}")
    addr = check_ip(ip)
    host = f"[{addr}]" if ":" in addr else addr
    tail = "".join(f" {kw}" for kw in keywords)
    return f"add server {_srv(backend, server)} {host}:{check_port(port)}{tail}"


def del_server(backend: str, server: str) -> str:
    """2.6: the server must be in maintenance, with no connection and an empty queue."""
    return f"del server {_srv(backend, server)}"


def enable_health(backend: str, server: str) -> str:
    return f"enable health {_srv(backend, server)}"


def disable_health(backend: str, server: str) -> str:
    return f"disable health {_srv(backend, server)}"


def show_servers_state(backend: str | None = None) -> str:
    return (
        "show servers state"
        if backend is None
        else (f"show servers state {check_name(backend, 'backend name')}")
    )
