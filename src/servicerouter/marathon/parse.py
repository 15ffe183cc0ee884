"""Marathon JSON (current 1.5+ and legacy ≤1.4) into the model. Pure.

Handles host networking, ``container/bridge`` (and legacy
``docker.network: BRIDGE``) and IP-per-task (``networks[].mode: container``
and legacy ``ipAddress.discovery.ports``). Explicit ``null`` is treated as
absent everywhere. A malformed app becomes an :class:`AppError` naming the
app and the field; it never stops the other apps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..labels import LabelError, parse_labels, tcp_without_http_labels
from ..model import (
    App,
    Mode,
    NetworkMode,
    Options,
    Problem,
    Service,
    shown,
    valid_port,
)
from .appsdecode import DecodedApps
from .fields import AppParseError, Resolver, tasks_left_out, unpaired_surrogate
from .fields import get as _get
from .fields import get_int as _int
from .fields import get_list as _list
from .healthchecks import BadHealthCheck, Checks, with_health_check
from .parsecache import ParseCache
from .tasks import HostIPs, parse_task

__all__ = ["AppError", "AppParseError", "ParseResult", "PayloadError", "Resolver",
           "parse_app", "parse_apps"]


class PayloadError(ValueError):
    """The response as a whole is unusable (not JSON, no ``apps`` list)."""


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


def refuse_empty(result: ParseResult, source: str, routed: int, accept: str) -> None:
    """Raise :class:`PayloadError` for an answer that lists no apps at all while
    ``routed`` apps are routed: what a Marathon leader on an empty or wrong ZooKeeper
    path answers. Applied, it would take every route away at once, while the tasks
    (another framework's now) keep running. Apps deleted on purpose leave one by one
    (``app_terminated_event``), so ``routed`` is 0 by the time such an answer comes;
    ``accept`` says how an operator accepts it anyway."""
    if routed and not result.apps and not result.errors:
        apps = "the app" if routed == 1 else f"all {routed} apps"
        raise PayloadError(
            f"{source}: Marathon lists no apps at all, which would unroute {apps} routed "
            "here (a Marathon on empty or wrong storage?); nothing applied, HAProxy keeps "
            f"routing them. If every app was deleted on purpose: {accept}")


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
        raise AppParseError("networks[0].mode", f"unknown network mode {shown(repr(mode))}")
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
        raise AppParseError(where, f"expected an integer, got {shown(repr(value))}")
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


def parse_app(raw: Mapping[str, Any], resolve: Resolver,
              allow_templates: bool = False) -> tuple[App, list[str]]:
    """One app definition into an :class:`App` and its warnings.

    Raises :class:`AppParseError` or :class:`~servicerouter.labels.LabelError`.
    """
    app_id = _get(raw, "id")
    if not isinstance(app_id, str) or not app_id.startswith("/") or len(app_id) < 2:
        raise AppParseError("id", f"expected an absolute app id, got {shown(repr(app_id))}")
    mode = network_mode(raw)
    svc_ports, container_ports = service_ports(raw, mode)
    labels = _get(raw, "labels", {})
    if type(labels) is not dict and not isinstance(labels, Mapping):
        raise AppParseError("labels", "expected an object")
    parsed = parse_labels(labels, len(svc_ports), allow_templates, per_service_errors=True)
    warnings = [f"app {app_id}: {w}" for w in parsed.warnings] if parsed.warnings else []

    health_checks = _list(raw, "healthChecks", "healthChecks")
    checks = Checks(health_checks) if health_checks else None
    services: list[Service] = []
    index_of_port: dict[int, int] = {}  # a service port -> the first index it is
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
            options = with_health_check(sl.options, checks, index, app_id,
                                        container_ports, sl.explicit, warnings) \
                if checks is not None else sl.options
        except BadHealthCheck as bad:
            problems.append(Problem(app_id, index, "health_check", bad.where, shown(bad.value),
                                    f"is not {bad.expected}; service left out"))
            continue
        options, ignored = tcp_without_http_labels(options, index)
        if ignored:
            warnings.append(f"app {app_id}: {ignored}")
        refusal = _refusal(options, index)
        if refusal:  # not exposed; admission reports it (layout.service_problem)
            options = replace(options, refused=refusal)
        if port and port in index_of_port:  # (a dict: a scan of the services before was
            # (ports x ports), 7 s of the daemon's CPU for an app of 20,000 ports)
            raise AppParseError(f"service port index {index}",
                                f"port {port} is also service port index "
                                f"{index_of_port[port]}'s")
        if port:
            index_of_port[port] = index
        services.append(Service(app_id, index, port, options))

    version = str(_get(raw, "version", ""))
    app_labels = {str(k): str(v) for k, v in labels.items()}
    ports = tuple(container_ports)
    # Any check gates routing on Marathon's results, COMMAND too (as marathon-lb):
    # HAProxy cannot run a command, but Marathon reports its results per task.
    has_checks = bool(health_checks)
    services_t, problems_t = tuple(services), tuple(problems)
    # What parse_task reads; the tasks go into the final App (positional: quick_init's
    # __init__ takes keywords too, but a 10,000-app sync builds 20,000 of these).
    app = App(app_id, version, app_labels, mode, ports, has_checks, services_t, (), problems_t)
    hosts = resolve if type(resolve) is HostIPs else HostIPs(resolve)
    tasks = tuple([parse_task(app, t, hosts, i)
                   for i, t in enumerate(_list(raw, "tasks", "tasks"))])
    return App(app_id, version, app_labels, mode, ports, has_checks, services_t, tasks,
               problems_t), warnings


def _refusal(options: Options, index: int) -> str | None:
    """Why a service's labels cannot be honoured safely (fail closed), or None."""
    if options.auth and options.mode is not Mode.HTTP:
        return (f"label HAPROXY_{index}_AUTH needs HTTP mode, but the service is "
                f"{options.mode.value}; service port index {index} not exposed")
    return None


def _printable_id(app_id: Any, index: int) -> str:
    """An app's id for an error: as it is if UTF-8 can encode it, else escaped."""
    if not isinstance(app_id, str):
        return f"<apps[{index}]>"
    try:
        app_id.encode("utf-8")
    except UnicodeEncodeError:
        return ascii(app_id)[1:-1]
    return app_id


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
    carried = running_bare = 0  # apps with a task list; apps with tasks running but none
    resolve = HostIPs(resolve)
    lazy = apps_raw if cache is not None and isinstance(apps_raw, DecodedApps) else None
    lazy_json = isinstance(apps_raw, DecodedApps)
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
            carried += 1  # the bytes of an app in a parse that had its tasks
        else:
            try:  # one app's JSON (decoded only now) must not fail the others
                raw = apps_raw[i]
            except (ValueError, RecursionError) as exc:  # invalid UTF-8, nested too deep
                if consume:
                    apps_raw[i] = None
                result.errors.append(AppError(f"<apps[{i}]>", f"cannot be decoded "
                                              f"({type(exc).__name__}: {shown(str(exc))}); "
                                              "app skipped, others applied"))
                continue
            if consume:
                apps_raw[i] = None
            # json.loads decoded it (msgspec, which DecodedApps uses, refuses these)
            bad = None if lazy_json else unpaired_surrogate(raw)
            if bad is not None:
                result.errors.append(AppError(
                    _printable_id(_get(raw, "id"), i),
                    f"the string {bad} holds an unpaired UTF-16 surrogate (not Unicode "
                    "text); app skipped, others applied"))
                continue
            if isinstance(raw, Mapping):
                if raw.get("tasks") is not None:
                    carried += 1
                elif tasks_left_out(raw):
                    running_bare += 1
            app_id = _get(raw, "id", f"<apps[{i}]>")
            if not (type(app_id) is str and app_id.startswith("/")):  # names no app: its
                app_id = shown(app_id)  # error is keyed by a short piece (not megabytes)
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
    if running_bare and not carried:  # before the cache keeps any of it
        raise PayloadError(
            f"{source}: no app carries its tasks, yet {running_bare} apps say they have "
            "tasks running: not an answer to embed=apps.tasks (a proxy dropping the query "
            "string?); nothing applied, HAProxy keeps routing the tasks it has")
    if cache is not None:
        cache.finish()
    return result
