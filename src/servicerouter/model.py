"""The desired state: what HAProxy should route, as frozen values with no I/O.

An :class:`App` has :class:`Task`\\ s and :class:`Service`\\ s (one per service
port). A service's :class:`Endpoint`\\ s are derived from the app's tasks by
:func:`endpoints`, so a task update (the event fast path) replaces one task and
every service of the app sees it.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar

# Mesos task states (as Marathon reports them).
TASK_RUNNING = "TASK_RUNNING"
TASK_KILLING = "TASK_KILLING"
TERMINAL_STATES = frozenset(
    {
        "TASK_FINISHED",
        "TASK_FAILED",
        "TASK_KILLED",
        "TASK_ERROR",
        "TASK_DROPPED",
        "TASK_GONE",
        "TASK_GONE_BY_OPERATOR",
        "TASK_UNKNOWN",
        "TASK_LOST",
    }
)


_C = TypeVar("_C", bound=type)
_NO_VALUE: Any = object()  # a default_factory field not passed


def quick_init(cls: _C) -> _C:
    """Give a frozen slots dataclass an ``__init__`` that sets each slot through its
    descriptor: same signature, defaults and result, ~3x faster.

    The generated ``__init__`` of a frozen dataclass goes through ``object.__setattr__``
    for every field: 1.8 µs for a :class:`Task`, 1.3 µs for an :class:`Endpoint`, and a
    full sync at 10,000 apps builds 50,000 of each (issue #11). Equality, hashing,
    ``repr``, ``dataclasses.replace`` and the frozen ``__setattr__`` are the dataclass's,
    unchanged. (Generated source, as :mod:`dataclasses` does, from field names only.)"""
    params: list[str] = []
    body: list[str] = []
    env: dict[str, Any] = {"_NO_VALUE": _NO_VALUE}
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__ \
            or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: quick_init needs a slots dataclass without "
                        "__post_init__")
    for f in dataclasses.fields(cls):
        if not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: quick_init takes plain fields only")
        name = f.name
        env[f"_set_{name}"] = cls.__dict__[name].__set__
        if f.default is not MISSING:
            env[f"_default_{name}"] = f.default
            params.append(f"{name}=_default_{name}")
        elif f.default_factory is not MISSING:
            env[f"_factory_{name}"] = f.default_factory
            params.append(f"{name}=_NO_VALUE")
            body.append(f"if {name} is _NO_VALUE: {name} = _factory_{name}()")
        else:
            params.append(name)
        body.append(f"_set_{name}(self, {name})")
    source = f"def __init__(self, {', '.join(params)}) -> None:\n" + \
        "".join(f"    {line}\n" for line in body)
    exec(source, env)  # our own field names, as dataclasses does
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    setattr(cls, "__init__", init)  # noqa: B010  # mypy keeps the dataclass signature
    return cls


_D = TypeVar("_D")
_EVOLVE: dict[type, tuple[Callable[[Any], tuple[Any, ...]], dict[str, int]] | None] = {}


def evolve(obj: _D, /, **changes: Any) -> _D:
    """``dataclasses.replace(obj, **changes)``, ~4x faster for a dataclass whose fields
    are all plain ``__init__`` arguments (others go through ``dataclasses.replace``).

    ``dataclasses.replace`` looks up every field by name: 6.4 µs for an :class:`Options`
    (35 fields); label parsing does it twice a label (the options, then the service's
    labels holding them), 0.45 s of a first full sync at 10,000 apps with four labels
    each (issue #11). Here one ``attrgetter`` call reads them all."""
    cls = type(obj)
    try:
        spec = _EVOLVE[cls]
    except KeyError:
        spec = _EVOLVE[cls] = _evolve_spec(cls)
    if spec is None:
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    read, index = spec
    values = list(read(obj))
    for name, value in changes.items():
        try:
            values[index[name]] = value
        except KeyError:
            raise TypeError(f"{cls.__name__} has no field {name!r}") from None
    return cls(*values)


def _evolve_spec(cls: type) -> tuple[Callable[[Any], tuple[Any, ...]], dict[str, int]] | None:
    fields = dataclasses.fields(cls)
    if len(fields) < 2 or any(not f.init or f.kw_only for f in fields) \
            or hasattr(cls, "__post_init__"):
        return None  # one field: attrgetter returns it bare; the rest: dataclasses knows
    names = [f.name for f in fields]
    return operator.attrgetter(*names), {name: i for i, name in enumerate(names)}


class Health(enum.Enum):
    """A task's Marathon health: NONE when it has no health check results."""

    NONE = "none"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class NetworkMode(enum.Enum):
    """How a task's backend address is found (marathon-api.md, "Which address")."""

    HOST = "host"  # task.host + task.ports[i]
    BRIDGE = "bridge"  # task.host + task.ports[i] (host port of mapping i)
    CONTAINER = "container"  # task.ipAddresses[0] + container port i


class Mode(enum.Enum):
    TCP = "tcp"
    HTTP = "http"


class EndpointState(enum.Enum):
    """What HAProxy should do with an endpoint: the slot's admin state."""

    READY = "ready"
    DRAIN = "drain"


@quick_init
@dataclass(frozen=True, slots=True)
class Options:
    """Per-service options, from ``HAPROXY_*`` labels (see :mod:`labels`).

    Everything here either lives in the rendered frontend/backend (a change
    needs a reload) or selects the service (``enabled``, ``groups``).
    """

    enabled: bool | None = None  # None: no ENABLED label (on, unless --strict-mode)
    groups: tuple[str, ...] = ()
    mode: Mode = Mode.TCP
    balance: str = "roundrobin"
    bind_address: str = "*"
    vhosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()  # path_beg prefixes (HAPROXY_{n}_PATH)
    path_ignore_case: bool = False
    sticky: bool = False
    redirect_to_https: bool = False
    hsts: bool = False
    ssl_cert: str | None = None
    # SSL_CERT also offered on the shared HTTPS frontend (with a VHOST): admission says no
    # when it names a host the service does not route.
    sni_cert: bool = True
    auth: tuple[str, str, str] | None = None  # (realm, user, crypt hash)
    network_allowed: tuple[str, ...] = ()  # CIDRs; empty: everyone
    backend_weight: int = 0
    proxypass_path: str | None = None
    revproxy_path: str | None = None
    redir_path: str | None = None
    snippet: str | None = None  # an operator-written snippet, by name
    # marathon-lb template labels (FRONTEND_HEAD, ...), kept only with --allow-label-templates
    raw_templates: tuple[tuple[str, str], ...] = ()
    health_check_port_index: int | None = None  # HAPROXY_{n}_BACKEND_HEALTHCHECK_PORT_INDEX
    # Derived from the app's Marathon health check for this port index.
    health_check_path: str | None = None  # HTTP path, or None for a TCP check
    health_check: bool = False
    health_check_interval_ms: int = 2000
    health_check_timeout_ms: int | None = None  # timeout check
    health_check_fall: int | None = None  # maxConsecutiveFailures + 1, as marathon-lb
    health_check_port: int | None = None  # check on this port instead of the traffic port
    health_check_ssl: bool = False  # HTTPS checks: check-ssl verify none
    # Why the labels cannot be honoured safely: the service is not exposed (fail closed).
    refused: str | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Service:
    """One service port of an app: a frontend and a backend in HAProxy."""

    app_id: str
    index: int
    port: int  # the service port HAProxy binds; 0 = none (no frontend)
    options: Options = field(default_factory=Options)
    auto_port: bool = False  # port assigned from the IP-per-task range (portassign)

    @property
    def key(self) -> tuple[str, int]:
        return (self.app_id, self.index)


@quick_init
@dataclass(frozen=True, slots=True)
class Task:
    """One Marathon task, with the backend address of each service port index.

    ``ports[i]`` is the port of service index ``i`` on ``ip``: the host port for
    host and bridge networking, the container port for IP-per-task.
    """

    id: str
    app_id: str
    ip: str | None  # None when the host name could not be resolved
    ports: tuple[int, ...]
    state: str
    health: Health = Health.NONE
    host: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class Endpoint:
    """A task's address for one service, and what HAProxy should do with it."""

    task_id: str
    ip: str
    port: int
    state: EndpointState = EndpointState.READY
    check_port: int | None = None  # HAPROXY_{n}_BACKEND_HEALTHCHECK_PORT_INDEX, per task


@quick_init
@dataclass(frozen=True, slots=True)
class Problem:
    """A service left out (or limited), and why: one per service, naming the app, the
    label or field, and the value (cut to :data:`MAX_VALUE` characters)."""

    app_id: str
    index: int  # the service port index; -1 when the whole app is concerned
    reason: str  # a metric label: see admission.REASONS
    label: str  # the label or definition field at fault
    value: str
    message: str  # what is wrong; the sentence ends with what was done about it

    def __str__(self) -> str:
        if self.label.endswith("_*"):  # several labels together: the message names them
            return f"app {self.app_id}: {self.message}"
        return f"app {self.app_id}: {self.label}={self.value!r} {self.message}"


MAX_VALUE = 200


def shown(value: object) -> str:
    """A tenant's value as it appears in an error: repr-safe, at most MAX_VALUE chars."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "..."


def valid_port(value: object) -> bool:
    """A TCP port HAProxy can bind or connect to: an integer in 1-65535."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def endpoint_ports_valid(e: Endpoint) -> bool:
    """Admission's task port rule for one endpoint: the port it serves and the port its
    health check goes to (``check_port``; None or 0: the traffic port) are 1-65535."""
    check = e.check_port
    return valid_port(e.port) and (not check or valid_port(check))


@quick_init
@dataclass(frozen=True, slots=True)
class App:
    id: str
    version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    network: NetworkMode = NetworkMode.HOST
    container_ports: tuple[int, ...] = ()  # for NetworkMode.CONTAINER
    has_health_checks: bool = False
    services: tuple[Service, ...] = ()
    tasks: tuple[Task, ...] = ()
    # Services left out while parsing (a value that cannot work), see Problem.
    problems: tuple[Problem, ...] = ()

    def with_tasks(self, tasks: tuple[Task, ...]) -> App:
        """This app with other tasks: ``dataclasses.replace`` (which costs ~7 µs of
        field introspection) for the task-event path, one event at a time."""
        return App(self.id, self.version, self.labels, self.network, self.container_ports,
                   self.has_health_checks, self.services, tasks, self.problems)


def endpoint_state(task: Task, has_health_checks: bool, health_check: bool) -> EndpointState | None:
    """The routing rule (documented in the README).

    - ``TASK_RUNNING`` is routed; when the app has Marathon health checks and
      health checking is on, only once all its results are alive.
    - ``TASK_KILLING`` stays in its slot but drains.
    - Anything else (staging, starting, unreachable, terminal) is not routed.
    """
    if task.ip is None:
        return None
    if task.state == TASK_RUNNING:
        if health_check and has_health_checks and task.health is not Health.HEALTHY:
            return None
        return EndpointState.READY
    if task.state == TASK_KILLING:
        return EndpointState.DRAIN
    return None


def endpoints(app: App, service: Service, health_check: bool = True) -> tuple[Endpoint, ...]:
    """The endpoints HAProxy should have for ``service``, in task order."""
    check_index, has_checks = _check_index(service), app.has_health_checks
    out = []
    for task in app.tasks:
        e = _endpoint(task, service.index, check_index, has_checks, health_check)
        if e is not None:
            out.append(e)
    return tuple(out)


def task_endpoint(task: Task, service: Service, has_health_checks: bool,
                  health_check: bool = True) -> Endpoint | None:
    """``task``'s endpoint for ``service``, or None if it is not routed: the one
    :func:`endpoints` gives for it (the event path updates one task at a time)."""
    return _endpoint(task, service.index, _check_index(service), has_health_checks,
                     health_check)


def _check_index(service: Service) -> int | None:
    """The index of the task's own port that HAProxy checks (the ports differ per task),
    unless the check has a fixed port."""
    opts = service.options
    return (opts.health_check_port_index
            if opts.health_check and opts.health_check_port is None else None)


def _endpoint(task: Task, index: int, check_index: int | None, has_checks: bool,
              health_check: bool) -> Endpoint | None:
    ip, ports = task.ip, task.ports
    if ip is None or index >= len(ports):
        return None
    state = endpoint_state(task, has_checks, health_check)
    if state is None:
        return None
    check_port = (ports[check_index]
                  if check_index is not None and check_index < len(ports) else None)
    return Endpoint(task.id, ip, ports[index], state, check_port)


def edit_endpoints(old: tuple[Endpoint, ...], task_id: str, new: Endpoint | None,
                   appended: bool) -> tuple[Endpoint, ...] | None:
    """``old`` (a service's endpoints, in task order) after one task changed: its
    endpoint replaced by ``new``, or dropped when ``new`` is None; a task that had none
    gets ``new`` at the end if it was ``appended`` to the app's tasks. None when the
    place cannot be told from ``old`` alone (a task routed anew in the middle of the
    tasks, or a task id twice): the caller computes them all."""
    at = -1
    for i, e in enumerate(old):
        if e.task_id == task_id:
            if at >= 0:
                return None
            at = i
    if at < 0:
        if new is None:
            return old
        return (*old, new) if appended else None
    if new is None:
        return old[:at] + old[at + 1:]
    if new == old[at]:
        return old
    return (*old[:at], new, *old[at + 1:])
