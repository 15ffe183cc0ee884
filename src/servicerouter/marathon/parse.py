"""Marathon JSON (current 1.5+ and legacy ≤1.4) into the model. Pure.

Handles host networking, ``container/bridge`` (and legacy
``docker.network: BRIDGE``) and IP-per-task (``networks[].mode: container``
and legacy ``ipAddress.discovery.ports``). Explicit ``null`` is treated as
absent everywhere. A malformed app becomes an :class:`AppError` naming the
app and the field; it never stops the other apps.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from ..labels import LabelError, parse_labels, parse_path
from ..model import (
    App,
    Health,
    Mode,
    NetworkMode,
    Options,
    Problem,
    Service,
    Task,
    shown,
    valid_port,
)
from .appsdecode import DecodedApps, TaskJSON
from .parsecache import ParseCache

_CHECK_PROTOCOLS = ("HTTP", "MESOS_HTTP", "HTTPS", "MESOS_HTTPS", "TCP", "MESOS_TCP")

# host name -> IP (None when it cannot be resolved). Injected, so parsing stays pure.
Resolver = Callable[[str], "str | None"]


class PayloadError(ValueError):
    """The response as a whole is unusable (not JSON, no ``apps`` list)."""


class AppParseError(ValueError):
    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        super().__init__(f"field {field_name}: {problem}")


@dataclass(frozen=True, slots=True)
class AppError:
    app_id: str
    message: str

    def __str__(self) -> str:
        return f"app {self.app_id}: {self.message}"


@dataclass
class ParseResult:
    apps: list[App] = field(default_factory=list)
    errors: list[AppError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _get(obj: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    """``obj[key]``, treating a missing object, a missing key and null alike."""
    if type(obj) is not dict and not isinstance(obj, Mapping):  # dict: skip the ABC check
        return default
    value = obj.get(key)
    return default if value is None else value


def _list(obj: Mapping[str, Any] | None, key: str, where: str) -> list[Any]:
    value = _get(obj, key, [])
    if not isinstance(value, list):
        raise AppParseError(where, f"expected a list, got {type(value).__name__}")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AppParseError(where, f"expected an integer, got {value!r}")
    return value


def network_mode(app: Mapping[str, Any]) -> NetworkMode:
    networks = _list(app, "networks", "networks")
    if networks:
        mode = _get(networks[0], "mode", "host")
        if mode == "container/bridge":
            return NetworkMode.BRIDGE
        if mode == "container":
            return NetworkMode.CONTAINER
        if mode == "host":
            return NetworkMode.HOST
        raise AppParseError("networks[0].mode", f"unknown network mode {mode!r}")
    if _get(app, "ipAddress") is not None:
        return NetworkMode.CONTAINER
    docker_net = _get(_get(_get(app, "container"), "docker"), "network")
    if docker_net == "BRIDGE":
        return NetworkMode.BRIDGE
    if docker_net == "USER":
        return NetworkMode.CONTAINER
    return NetworkMode.HOST


def _port_mappings(app: Mapping[str, Any]) -> tuple[list[Any], str]:
    container = _get(app, "container")
    mappings = _list(container, "portMappings", "container.portMappings")
    if mappings:
        return mappings, "container.portMappings"
    return (_list(_get(container, "docker"), "portMappings", "container.docker.portMappings"),
            "container.docker.portMappings")


def _number(value: Any, where: str) -> int | float:
    """A JSON number, kept as given: its range is checked per service (see parse_app)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AppParseError(where, f"expected an integer, got {value!r}")
    return value


def service_ports(app: Mapping[str, Any], mode: NetworkMode
                  ) -> tuple[list[tuple[int | float, str]], list[int]]:
    """((service port, its field) per index, container port per index for IP-per-task).

    A service port is any JSON number here; :func:`parse_app` leaves out a service whose
    port is not 0 (none) or 1-65535, without failing the app's other ports."""
    if mode is not NetworkMode.HOST:
        mappings, where = _port_mappings(app)
        if mappings:
            svc = [(_number(_get(m, "servicePort", 0), f"{where}[{i}].servicePort"),
                    f"{where}[{i}].servicePort") for i, m in enumerate(mappings)]
            cports = [_int(_get(m, "containerPort", 0), f"{where}[{i}].containerPort")
                      for i, m in enumerate(mappings)]
            return svc, cports
        discovery = _list(_get(_get(app, "ipAddress"), "discovery"), "ports",
                          "ipAddress.discovery.ports")
        if discovery:
            cports = [_int(_get(p, "number", 0), f"ipAddress.discovery.ports[{i}].number")
                      for i, p in enumerate(discovery)]
            legacy = _list(app, "ports", "ports")
            svc = [(_number(p, f"ports[{i}]"), f"ports[{i}]")
                   for i, p in enumerate(legacy)][: len(cports)]
            return svc + [(0, "ports")] * (len(cports) - len(svc)), cports
    defs = _list(app, "portDefinitions", "portDefinitions")
    if defs:
        return [(_number(_get(d, "port", 0), f"portDefinitions[{i}].port"),
                 f"portDefinitions[{i}].port") for i, d in enumerate(defs)], []
    return [(_number(p, f"ports[{i}]"), f"ports[{i}]")
            for i, p in enumerate(_list(app, "ports", "ports"))], []


def task_health(raw_task: Mapping[str, Any], has_health_checks: bool) -> Health:
    """Healthy when the task has results and every one is alive."""
    if not has_health_checks:
        return Health.NONE
    return _health(_get(raw_task, "healthCheckResults", []))


def _health(results: Any) -> Health:
    if not isinstance(results, list) or not results:
        return Health.NONE
    for r in results:
        alive = _get(r, "alive")
        if alive is None:  # older payloads: compare the timestamps
            last_ok, last_fail = _get(r, "lastSuccess", ""), _get(r, "lastFailure", "")
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
        ips = [ip for ip in (_ip(_get(a, "ipAddress")) for a in ip_addresses) if ip]
        v4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
        return next(iter(v4 or ips), None), app.container_ports
    return (_ip(resolve(host)) if host else None), tuple(
        p for p in ports if isinstance(p, int) and not isinstance(p, bool)
    )


class _HostIPs(dict[str, "str | None"]):
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
    get = raw.get if type(raw) is dict else (lambda k: _get(raw, k))
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
        ip = (resolve[host] if type(resolve) is _HostIPs else _ip(resolve(host))) \
            if host else None
        task_ports = tuple([p for p in ports if type(p) is int]) if ports else ()
    state = get("state")
    return Task(task_id, app.id, ip, task_ports,
                "TASK_UNKNOWN" if state is None else
                _intern(state if type(state) is str else str(state)),
                task_health(raw, True) if app.has_health_checks else Health.NONE,
                host)


_intern = sys.intern


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
        ip = (resolve[host] if type(resolve) is _HostIPs else _ip(resolve(host))) \
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


def parse_app(raw: Mapping[str, Any], resolve: Resolver,
              allow_templates: bool = False) -> tuple[App, list[str]]:
    """One app definition into an :class:`App` and its warnings.

    Raises :class:`AppParseError` or :class:`~servicerouter.labels.LabelError`.
    """
    app_id = _get(raw, "id")
    if not isinstance(app_id, str) or not app_id.startswith("/") or len(app_id) < 2:
        raise AppParseError("id", f"expected an absolute app id, got {app_id!r}")
    mode = network_mode(raw)
    svc_ports, container_ports = service_ports(raw, mode)
    labels = _get(raw, "labels", {})
    if type(labels) is not dict and not isinstance(labels, Mapping):
        raise AppParseError("labels", "expected an object")
    parsed = parse_labels(labels, len(svc_ports), allow_templates, per_service_errors=True)
    warnings = [f"app {app_id}: {w}" for w in parsed.warnings] if parsed.warnings else []

    health_checks = _list(raw, "healthChecks", "healthChecks")
    services: list[Service] = []
    problems: list[Problem] = []
    for index, (raw_port, port_field) in enumerate(svc_ports):
        sl = parsed.for_index(index)
        label_error = parsed.errors.get(index)
        if label_error is not None:
            problems.append(Problem(
                app_id, index, "port" if label_error.label.endswith("_PORT") else
                "label_invalid", label_error.label, shown(label_error.value),
                f"{label_error.problem}; service left out"))
            continue
        if sl.port is None and raw_port != 0 and not valid_port(raw_port):
            problems.append(Problem(app_id, index, "port", port_field, shown(raw_port),
                                    "is not a port (1-65535); service left out"))
            continue
        port = sl.port or int(raw_port)
        if not port and mode is not NetworkMode.CONTAINER:  # IP-per-task: portassign
            warnings.append(f"app {app_id}: service port index {index} has no service port "
                            f"(set label HAPROXY_{index}_PORT); no frontend for it")
        try:
            options = _with_health_check(sl.options, health_checks, index, app_id,
                                         container_ports, sl.explicit, warnings) \
                if health_checks else sl.options
        except _BadHealthCheck as bad:
            problems.append(Problem(app_id, index, "health_check", bad.where, shown(bad.value),
                                    f"is not {bad.expected}; service left out"))
            continue
        refusal = _refusal(options, index)
        if refusal:  # not exposed; admission reports it (layout.service_problem)
            options = replace(options, refused=refusal)
        if port and services and any(s.port == port for s in services):
            first = next(s.index for s in services if s.port == port)
            raise AppParseError(f"service port index {index}",
                                f"port {port} is also service port index {first}'s")
        services.append(Service(app_id, index, port, options))

    version = str(_get(raw, "version", ""))
    app_labels = {str(k): str(v) for k, v in labels.items()}
    ports = tuple(container_ports)
    has_checks = any(_get(h, "protocol") != "COMMAND" for h in health_checks) \
        if health_checks else False
    services_t, problems_t = tuple(services), tuple(problems)
    # What parse_task reads; the tasks go into the final App (positional: quick_init's
    # __init__ takes keywords too, but a 10,000-app sync builds 20,000 of these).
    app = App(app_id, version, app_labels, mode, ports, has_checks, services_t, (), problems_t)
    hosts = resolve if type(resolve) is _HostIPs else _HostIPs(resolve)
    tasks = tuple([parse_task(app, t, hosts, i)
                   for i, t in enumerate(_list(raw, "tasks", "tasks"))])
    return App(app_id, version, app_labels, mode, ports, has_checks, services_t, tasks,
               problems_t), warnings


# HAProxy keeps timers in signed 32-bit milliseconds: "inter" above 2147483647 ms is
# refused by haproxy -c (and Infinity/NaN have no millisecond value at all).
MAX_INTERVAL_SECONDS = 2147483  # whole seconds: 2147483000 ms fits, 2147484 s does not


class _BadHealthCheck(Exception):
    """A health check value HAProxy cannot take: that service is left out."""

    def __init__(self, where: str, value: object, expected: str) -> None:
        self.where, self.value, self.expected = where, value, expected
        super().__init__(where)


def _check_number(hc: Any, key: str, where: str, default: float, low: float, high: float) -> float:
    """A finite number in [low, high] from a health check, or ``default`` if absent."""
    value = _get(hc, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise _BadHealthCheck(where, value, f"a number from {low:g} to {high:g} that HAProxy "
                                            "accepts")
    return float(value)


def _with_health_check(options: Options, health_checks: list[Any], index: int, app_id: str,
                       container_ports: list[int], explicit: frozenset[str],
                       warnings: list[str]) -> Options:
    """Mirror the app's Marathon health check for this port index in HAProxy.

    As marathon-lb: the first check with an explicit ``port``, or whose
    ``portIndex`` is this index. HTTP and MESOS_HTTP checks of the port itself make
    it HTTP (unless a MODE label says otherwise); HTTPS checks are sent over TLS
    (``check-ssl verify none``) without changing the mode; COMMAND checks
    cannot be run by HAProxy and only get a warning. A value HAProxy cannot take
    (a non-finite or too long interval, a port outside 1-65535) raises
    :class:`_BadHealthCheck`.
    """
    for i, hc in enumerate(health_checks):
        where = f"healthChecks[{i}]"
        port_index = _get(hc, "portIndex", 0)
        if isinstance(port_index, bool) or not isinstance(port_index, int) \
                or not 0 <= port_index <= 1000:
            raise _BadHealthCheck(f"{where}.portIndex", port_index, "a port index")
        port = _get(hc, "port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            raise _BadHealthCheck(f"{where}.port", port, "a port (1-65535)")
        if port is None and port_index != index:
            continue
        protocol = str(_get(hc, "protocol", "HTTP"))
        if protocol == "COMMAND" or protocol not in _CHECK_PROTOCOLS:
            warnings.append(f"app {app_id}: {where} is a {protocol} check, which HAProxy "
                            f"cannot run; service port index {index} is not health-checked "
                            "by HAProxy (Marathon's results still decide routing)")
            return options
        interval = _check_number(hc, "intervalSeconds", f"{where}.intervalSeconds", 2, 0,
                           MAX_INTERVAL_SECONDS)
        timeout = _check_number(hc, "timeoutSeconds", f"{where}.timeoutSeconds", 20, 0,
                          MAX_INTERVAL_SECONDS)
        failures = _check_number(hc, "maxConsecutiveFailures", f"{where}.maxConsecutiveFailures",
                           3, 0, 1000)
        change: dict[str, Any] = {
            "health_check": True,
            "health_check_interval_ms": max(int((interval or 2) * 1000), 1),
            "health_check_timeout_ms": max(int(timeout * 1000), 1) if timeout else None,
            "health_check_fall": int(failures) + 1,  # as marathon-lb
            "health_check_port": port,
            "health_check_ssl": protocol in ("HTTPS", "MESOS_HTTPS"),
        }
        if protocol in ("HTTP", "MESOS_HTTP", "HTTPS", "MESOS_HTTPS"):
            try:
                change["health_check_path"] = parse_path(f"{where}.path",
                                                         str(_get(hc, "path", "/")))
            except LabelError:
                warnings.append(f"app {app_id}: {where}.path {_get(hc, 'path')!r} is not a "
                                "plain absolute path; HAProxy checks / instead")
                change["health_check_path"] = "/"
        if protocol in ("HTTP", "MESOS_HTTP") and "MODE" not in explicit and port is None:
            # A check of this very port: it speaks HTTP. (A check on an explicit port says
            # nothing about the other ports' protocol, so it does not switch them.)
            change["mode"] = Mode.HTTP
        index_label = options.health_check_port_index
        if index_label is not None and port is None and container_ports:
            # IP-per-task: the container port is the same for every task. Otherwise
            # each task's own port at that index is checked (model.endpoints).
            if index_label < len(container_ports) and container_ports[index_label]:
                change["health_check_port"] = container_ports[index_label]
            else:
                warnings.append(
                    f"app {app_id}: label HAPROXY_{index}_BACKEND_HEALTHCHECK_PORT_INDEX="
                    f"{index_label} names no container port; the traffic port is checked")
        return replace(options, **change)
    return options


def _refusal(options: Options, index: int) -> str | None:
    """Why a service's labels cannot be honoured safely (fail closed), or None."""
    if options.auth and options.mode is not Mode.HTTP:
        return (f"label HAPROXY_{index}_AUTH needs HTTP mode, but the service is "
                f"{options.mode.value}; service port index {index} not exposed")
    return None


def parse_apps(payload: Any, source: str, resolve: Resolver,
               allow_templates: bool = False, *, consume: bool = False,
               cache: ParseCache | None = None) -> ParseResult:
    """A ``/v2/apps`` response into apps, per-app errors and warnings.

    Raises :class:`PayloadError` (naming ``source``) when the payload as a
    whole is unusable, so the caller writes nothing.

    ``consume``: empty the payload's ``apps`` list while parsing, so each decoded
    app is freed as soon as it is parsed and the model is built in the memory it
    leaves (at 10,000 apps the decoded payload and the model would otherwise be
    ~60 MB and ~30 MB alive at once).

    ``cache``: reuse the apps of the last parse with this cache whose JSON is the same
    (see :mod:`.parsecache`), and keep this parse's for the next one. Only a
    :func:`.appsdecode.decode_apps` payload has each app's JSON to compare.
    """
    apps_raw = payload.get("apps") if isinstance(payload, Mapping) else None
    if not isinstance(apps_raw, (list, DecodedApps)):
        raise PayloadError(f"{source}: response has no 'apps' list")
    result = ParseResult()
    seen: set[str] = set()
    resolve = _HostIPs(resolve)
    lazy = apps_raw if cache is not None and isinstance(apps_raw, DecodedApps) else None
    if cache is not None:
        cache.begin()
    for i in range(len(apps_raw)):
        key, reused = None, None
        if lazy is not None and cache is not None:
            text = lazy.raw_json(i)
            if text is not None:
                key = cache.key(memoryview(text), allow_templates)
                reused = cache.get(key, resolve)
        if reused is not None:
            if consume:
                apps_raw[i] = None
            app, warnings = reused
        else:
            raw = apps_raw[i]
            if consume:
                apps_raw[i] = None
            app_id = _get(raw, "id", f"<apps[{i}]>")
            try:
                app, warnings = parse_app(raw, resolve, allow_templates)
            except (AppParseError, LabelError) as exc:
                result.errors.append(AppError(str(app_id),
                                              f"{exc}; app skipped, others applied"))
                continue
            except Exception as exc:  # a shape no rule foresaw: still only this app's problem
                result.errors.append(AppError(str(app_id), f"cannot be read "
                                              f"({type(exc).__name__}: {shown(str(exc))}); "
                                              "app skipped, others applied"))
                continue
            if key is not None and cache is not None:
                cache.put(key, app, warnings)
        if app.id in seen:
            result.errors.append(AppError(app.id, "listed twice; second copy skipped"))
            continue
        seen.add(app.id)
        result.apps.append(app)
        result.warnings.extend(warnings)
    if cache is not None:
        cache.finish()
    return result


def task_from_event(app: App, event: Mapping[str, Any], resolve: Resolver,
                    previous: Task | None) -> Task:
    """A ``status_update_event`` into a :class:`Task` of ``app`` (the fast path).

    The event carries no health results; a task keeps the health it had, and
    a new task of a health-checked app starts with none (not yet routable).
    """
    ip, ports = task_address(app, str(_get(event, "host", "")), _get(event, "ipAddresses", []),
                             _get(event, "ports", []), resolve)
    return Task(
        id=str(event["taskId"]),
        app_id=app.id,
        ip=ip,
        ports=ports,
        state=str(_get(event, "taskStatus", "TASK_UNKNOWN")),
        health=previous.health if previous else Health.NONE,
        host=str(_get(event, "host", "")),
    )


def instance_of(task_id: str) -> str:
    """The instance id of a task id (current ``<instance>._app.<n>``; legacy: itself)."""
    head, sep, _ = task_id.rpartition("._app.")
    return head if sep else task_id
