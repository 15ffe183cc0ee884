"""Marathon's JSON (and legacy text) renderings of apps and tasks, plus query parsing.

Apps and tasks cache their serialised bytes until they change, so rendering
``/v2/apps?embed=apps.tasks`` for 10,000 apps x 5 tasks is mostly a byte join.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .model import TASK_RUNNING, TASK_STAGING, TASK_STARTING, App, JsonDict, Task, safe_app_id

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: object) -> bytes:
    """Compact JSON as UTF-8 bytes, like Marathon writes it."""
    return _ENCODER.encode(obj).encode()


@dataclass(frozen=True)
class Embed:
    tasks: bool = False
    counts: bool = False
    deployments: bool = False
    readiness: bool = False
    last_task_failure: bool = False

    def key(self) -> tuple[bool, ...]:
        return (self.tasks, self.counts, self.deployments, self.readiness, self.last_task_failure)


def parse_embed(values: Iterable[str], *, always: Embed = Embed()) -> Embed:
    """``embed=`` values with prefix ``apps.``, ``app.`` or none; tasks imply deployments."""
    flags = {
        "tasks": always.tasks,
        "counts": always.counts,
        "deployments": always.deployments,
        "readiness": always.readiness,
        "last_task_failure": always.last_task_failure,
    }
    for value in values:
        name = value.split(".", 1)[1] if value.startswith(("apps.", "app.")) else value
        if name in ("tasks", "failures"):
            flags["tasks"] = flags["deployments"] = True
            if name == "failures":
                flags["last_task_failure"] = True
        elif name == "counts":
            flags["counts"] = True
        elif name == "deployments":
            flags["deployments"] = True
        elif name == "readiness":
            flags["readiness"] = True
        elif name == "lastTaskFailure":
            flags["last_task_failure"] = True
    return Embed(**flags)


def definition_json(app: App) -> JsonDict:
    """The definition as in ``api_post_event.appDefinition`` (with ``version``)."""
    out = dict(app.definition)
    out["version"] = app.version
    return out


def task_json(task: Task, service_ports: list[int] | None = None) -> JsonDict:
    out: JsonDict = {"appId": task.app.id}
    if task.health:
        out["healthCheckResults"] = [h.to_json() for h in task.health]
    out["host"] = task.host
    out["id"] = task.id
    out["ipAddresses"] = (
        task.ip_addresses if task.state not in (TASK_STAGING, TASK_STARTING) else []
    )
    out["localVolumes"] = []
    out["ports"] = task.ports
    out["role"] = task.app.definition.get("role", "*")
    out["servicePorts"] = service_ports if service_ports is not None else []
    out["slaveId"] = task.slave_id
    out["stagedAt"] = task.staged_at
    if task.started_at is not None:
        out["startedAt"] = task.started_at
    out["state"] = task.state
    out["version"] = task.version
    return out


def task_bytes(task: Task) -> bytes:
    """The task as embedded in an app (``servicePorts`` empty), cached."""
    if task.cache is None:
        task.cache = dumps(task_json(task))
    return task.cache


def counts(app: App) -> tuple[int, int, int, int]:
    staged = running = healthy = unhealthy = 0
    for task in app.tasks.values():
        if task.state in (TASK_STAGING, TASK_STARTING):
            staged += 1
        elif task.state == TASK_RUNNING:
            running += 1
        h = task.healthy
        if h is True:
            healthy += 1
        elif h is False:
            unhealthy += 1
    return staged, running, healthy, unhealthy


def app_bytes(app: App, embed: Embed) -> bytes:
    key = embed.key()
    cached = app.cache.get(key)
    if cached is not None:
        return cached
    out = definition_json(app)
    out["versionInfo"] = {
        "lastConfigChangeAt": app.last_config_change_at,
        "lastScalingAt": app.last_scaling_at,
    }
    if embed.counts:
        staged, running, healthy, unhealthy = counts(app)
        out["tasksStaged"] = staged
        out["tasksRunning"] = running
        out["tasksHealthy"] = healthy
        out["tasksUnhealthy"] = unhealthy
    if embed.deployments:
        out["deployments"] = [{"id": d} for d in app.deployment_ids]
    if embed.readiness:
        out["readinessCheckResults"] = []
    data = dumps(out)
    if embed.tasks:
        tasks = b",".join(task_bytes(t) for t in app.tasks.values())
        data = data[:-1] + b',"tasks":[' + tasks + b"]}"
    app.cache[key] = data
    return data


def apps_bytes(apps: Iterable[App], embed: Embed) -> bytes:
    return b'{"apps":[' + b",".join(app_bytes(a, embed) for a in apps) + b"]}"


def tasks_json_bytes(apps: Iterable[App], status: str | None = None) -> bytes:
    """``GET /v2/tasks``: tasks with ``servicePorts`` filled."""
    wanted = {"running": (TASK_RUNNING,), "staging": (TASK_STAGING, TASK_STARTING)}.get(
        (status or "").lower()
    )
    parts: list[bytes] = []
    for app in apps:
        service_ports = app.service_ports
        for task in app.tasks.values():
            if wanted is None or task.state in wanted:
                parts.append(dumps(task_json(task, service_ports)))
    return b'{"tasks":[' + b",".join(parts) + b"]}"


def tasks_text(apps: Iterable[App]) -> str:
    """The legacy ``Accept: text/plain`` task list (removed in Marathon 1.11)."""
    lines: list[str] = []
    for app in apps:
        if not app.tasks:
            continue
        running = [t for t in app.tasks.values() if t.state == TASK_RUNNING]
        clean = safe_app_id(app.id)
        service_ports = app.service_ports
        if not service_ports:
            lines.append(f"{clean}\t \t" + "".join(f"{t.host}\t" for t in running))
            continue
        for i, port in enumerate(service_ports):
            hosts = "".join(f"{t.host}:{t.ports[i] if i < len(t.ports) else 0}\t" for t in running)
            lines.append(f"{clean}\t{port}\t{hosts}")
    return "".join(line + "\n" for line in lines)


# --- label selectors -------------------------------------------------------------

Predicate = Callable[[dict[str, str]], bool]


class SelectorError(ValueError):
    pass


def _split_top(text: str) -> list[str]:
    parts, depth, current, escaped = [], 0, "", False
    for ch in text:
        if escaped:
            current += "\\" + ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "(":
            depth += 1
            current += ch
        elif ch == ")":
            depth -= 1
            current += ch
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text.strip())


_SET_RE = re.compile(r"^\s*(.+?)\s+(in|notin)\s+\((.*)\)\s*$")
_OP_RE = re.compile(r"^\s*(.+?)\s*(==|!=)\s*(.*?)\s*$")


def parse_selector(text: str) -> Predicate:
    """Marathon ``label=`` selectors: ``k``, ``k==v``, ``k!=v``, ``k in (a,b)``,
    ``k notin (a,b)``, ANDed by commas. As in Marathon, every selector (``!=``
    and ``notin`` too) only matches apps that have the label."""
    terms: list[_Term] = []
    for term in _split_top(text):
        if not term.strip():
            raise SelectorError(f"Can not parse label selector {text}")
        m = _SET_RE.match(term)
        if m:
            values = frozenset(_unescape(v) for v in _split_top(m.group(3)))
            terms.append(_Term(_unescape(m.group(1)), m.group(2), values))
            continue
        m = _OP_RE.match(term)
        if m:
            value = frozenset({_unescape(m.group(3))})
            terms.append(_Term(_unescape(m.group(1)), m.group(2), value))
            continue
        key = _unescape(term)
        if not key or any(c.isspace() for c in key):
            raise SelectorError(f"Can not parse label selector {text}")
        terms.append(_Term(key, "exists", frozenset()))
    return lambda labels: all(t.matches(labels) for t in terms)


@dataclass(frozen=True)
class _Term:
    key: str
    op: str  # exists, ==, !=, in, notin
    values: frozenset[str]

    def matches(self, labels: dict[str, str]) -> bool:
        if self.key not in labels:
            return False
        if self.op in ("==", "in"):
            return labels[self.key] in self.values
        if self.op in ("!=", "notin"):
            return labels[self.key] not in self.values
        return True
