"""Marathon tasks into :class:`~servicerouter.model.Task`: from ``/v2/apps`` (plain or
msgspec-typed) and from ``status_update_event``. Pure, with the resolver injected."""

from __future__ import annotations

import functools
import ipaddress
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from ..model import App, Health, NetworkMode, Task, shown
from .appsdecode import TaskJSON
from .fields import AppParseError, Resolver, get


def task_health(raw_task: Mapping[str, Any], has_health_checks: bool) -> Health:
    """Healthy when the task has results and every one is alive."""
    if not has_health_checks:
        return Health.NONE
    return _health(get(raw_task, "healthCheckResults", []))


def _health(results: Any) -> Health:
    if not isinstance(results, list) or not results:
        return Health.NONE
    for r in results:
        alive = get(r, "alive")
        if alive is None:  # older payloads: compare the timestamps
            last_ok, last_fail = get(r, "lastSuccess", ""), get(r, "lastFailure", "")
            alive = bool(last_ok) and str(last_ok) > str(last_fail)
        if not alive:
            return Health.UNHEALTHY
    return Health.HEALTHY


def _ip(value: Any) -> str | None:
    """``value`` as a plain IP address (no IPv6 zone), or None: it is printed in haproxy.cfg."""
    if not isinstance(value, str) or "%" in value:
        return None
    return _canonical_ip(value)


@functools.lru_cache(maxsize=65536)
def _canonical_ip(value: str) -> str | None:
    # Cached: a cluster has few agent addresses, and ipaddress parsing was a third of a
    # full sync's parse time (50,000 tasks).
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def task_address(
    app: App, host: str, ip_addresses: Iterable[Any], ports: Iterable[Any], resolve: Resolver
) -> tuple[str | None, tuple[int, ...]]:
    """The backend IP and per-index ports of a task (marathon-api.md, "Which address")."""
    if app.network is NetworkMode.CONTAINER:
        ips = [ip for ip in (_ip(get(a, "ipAddress")) for a in ip_addresses) if ip]
        v4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
        return next(iter(v4 or ips), None), app.container_ports
    return (_ip(resolve(host)) if host else None), tuple(
        p for p in ports if isinstance(p, int) and not isinstance(p, bool)
    )


class HostIPs(dict[str, "str | None"]):
    """Agent host → backend IP, for one payload: each host is resolved (and its IP
    checked) once per parse, then found with one dict lookup (5 tasks an app share a
    handful of agents)."""

    def __init__(self, resolve: Resolver) -> None:
        super().__init__()
        self.resolve = resolve

    def __missing__(self, host: str) -> str | None:
        ip = self[host] = _ip(self.resolve(host))
        return ip

    def __call__(self, host: str) -> str | None:  # a Resolver too
        return self[host]


def parse_task(app: App, raw: Mapping[str, Any], resolve: Resolver, index: int) -> Task:
    """One task of ``app``'s ``tasks[index]``. Raises :class:`AppParseError` naming the field.

    A full sync at 10,000 apps parses 50,000 tasks: this is written for the plain
    ``dict`` both decoders give (one ``get`` per field, field paths formatted only
    for an error), and takes any other mapping through the same checks."""
    if type(raw) is TaskJSON:
        return _typed_task(app, raw, resolve, index)
    if type(raw) is dict:
        get = raw.get
    elif isinstance(raw, Mapping):
        get = functools.partial(_get, raw)
    else:  # null, a number, a string: say so (not a TypeError from inside the parser)
        raise AppParseError(f"tasks[{index}]", f"expected an object, got {type(raw).__name__}")
    task_id = get("id")
    if not isinstance(task_id, str) or not task_id:
        raise AppParseError(f"tasks[{index}].id", "missing")
    host = get("host")
    # Interned: a few agents and states shared by 50,000 tasks, not one copy each.
    host = "" if host is None else _intern(host if type(host) is str else str(host))
    ip_addresses = get("ipAddresses")
    if ip_addresses is not None and type(ip_addresses) is not list:
        ip_addresses = _task_list(ip_addresses, index, "ipAddresses")
    ports = get("ports")
    if ports is not None and type(ports) is not list:
        ports = _task_list(ports, index, "ports")
    if app.network is NetworkMode.CONTAINER:
        ip, task_ports = task_address(app, host, ip_addresses or (), ports or (), resolve)
    else:  # task_address's host-network branch, inlined for the common case
        ip = (resolve[host] if type(resolve) is HostIPs else _ip(resolve(host))) \
            if host else None
        task_ports = tuple(ports) if ports else ()
        for i, p in enumerate(task_ports):  # dropping one would shift the others: the
            if type(p) is not int:  # next port would serve this index's service port
                raise AppParseError(f"tasks[{index}].ports[{i}]",
                                    f"expected a port number, got {shown(repr(p))}")
    state = get("state")
    return Task(task_id, app.id, ip, task_ports,
                "TASK_UNKNOWN" if state is None else
                _intern(state if type(state) is str else str(state)),
                task_health(raw, True) if app.has_health_checks else Health.NONE,
                host)


_intern = sys.intern
_get = get  # fields.get: parse_task's local `get` shadows it


def _typed_task(app: App, raw: TaskJSON, resolve: Resolver, index: int) -> Task:
    """:func:`parse_task` of a task msgspec decoded (:class:`.appsdecode.TaskJSON`): every
    field is already of its JSON type (a task with another type is decoded as a dict and
    takes the general path), so only the values are checked here, as there."""
    task_id = raw.id
    if not task_id:
        raise AppParseError(f"tasks[{index}].id", "missing")
    host = raw.host
    host = "" if host is None else _intern(host)
    ports = raw.ports
    if app.network is NetworkMode.CONTAINER:
        ip_addresses = [_json(a) for a in raw.ipAddresses or ()]
        ip, task_ports = task_address(app, host, ip_addresses, ports or (), resolve)
    else:
        ip = (resolve[host] if type(resolve) is HostIPs else _ip(resolve(host))) \
            if host else None
        task_ports = tuple(ports) if ports else ()
    state = raw.state
    return Task(task_id, app.id, ip, task_ports,
                "TASK_UNKNOWN" if state is None else _intern(state),
                _health(raw.healthCheckResults) if app.has_health_checks else Health.NONE,
                host)


_json = msgspec.json.decode


def _task_list(value: Any, index: int, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise AppParseError(f"tasks[{index}].{key}",
                            f"expected a list, got {type(value).__name__}")
    return value


def task_from_event(app: App, event: Mapping[str, Any], resolve: Resolver,
                    previous: Task | None) -> Task:
    """A ``status_update_event`` into a :class:`Task` of ``app`` (the fast path).

    The event carries no health results; a task keeps the health it had, and
    a new task of a health-checked app starts with none (not yet routable).
    """
    ip, ports = task_address(app, str(get(event, "host", "")), get(event, "ipAddresses", []),
                             get(event, "ports", []), resolve)
    return Task(
        id=str(event["taskId"]),
        app_id=app.id,
        ip=ip,
        ports=ports,
        state=str(get(event, "taskStatus", "TASK_UNKNOWN")),
        health=previous.health if previous else Health.NONE,
        host=str(get(event, "host", "")),
    )


def instance_of(task_id: str) -> str:
    """The instance id of a task id (current ``<instance>._app.<n>``; legacy: itself)."""
    head, sep, _ = task_id.rpartition("._app.")
    return head if sep else task_id
