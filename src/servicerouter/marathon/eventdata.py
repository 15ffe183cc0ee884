"""Typed accessors over Marathon event payloads, for the engine's fast path.

Pure functions of `MarathonEvent.data` (or the event). They never raise on a
missing or mistyped field: they return None or an empty value, and the engine
falls back on a resync. No mapping into the model happens here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import TERMINAL_STATES
from .events import MarathonEvent

TERMINAL_TASK_STATUSES: frozenset[str] = TERMINAL_STATES
"""Mesos states after which a task is gone from `/v2/apps` (TASK_UNREACHABLE may return)."""


def _str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _app_ref(value: Any) -> str | None:
    """An app id as events give it, absolute (``foo`` in an ``api_post_event`` is
    Marathon's ``/foo``); None for a non-string or one naming no app (``/``, blank),
    which a refetch could not ask for."""
    if not isinstance(value, str) or not value.strip().strip("/"):
        return None
    return value if value[0] == "/" else "/" + value


def app_id(event: MarathonEvent) -> str | None:
    """The app an event is about: `appId`, `runSpecId`, or `api_post_event`'s definition id."""
    data = event.data
    found = _app_ref(data.get("appId")) or _app_ref(data.get("runSpecId"))
    if found is None and event.type == "api_post_event":
        definition = data.get("appDefinition")
        if isinstance(definition, Mapping):
            found = _app_ref(definition.get("id"))
    return found


def task_id(event: MarathonEvent) -> str | None:
    return _str(event.data, "taskId")


def instance_id(event: MarathonEvent) -> str | None:
    return _str(event.data, "instanceId")


def task_status(event: MarathonEvent) -> str | None:
    """`status_update_event`'s raw Mesos state, e.g. "TASK_RUNNING"."""
    return _str(event.data, "taskStatus")


def host(event: MarathonEvent) -> str | None:
    return _str(event.data, "host")


def version(event: MarathonEvent) -> str | None:
    return _str(event.data, "version") or _str(event.data, "runSpecVersion")


def ports(event: MarathonEvent) -> list[int]:
    """Host ports of a `status_update_event`, in the app's port order (empty when unknown)."""
    value = event.data.get("ports")
    if not isinstance(value, list):
        return []
    return [p for p in value if isinstance(p, int) and not isinstance(p, bool)]


def ip_addresses(event: MarathonEvent) -> list[str]:
    """`ipAddresses[].ipAddress` of a `status_update_event`."""
    value = event.data.get("ipAddresses")
    if not isinstance(value, list):
        return []
    return [
        a["ipAddress"]
        for a in value
        if isinstance(a, Mapping) and isinstance(a.get("ipAddress"), str)
    ]


def health(event: MarathonEvent) -> bool | None:
    """`alive` (health_status_changed_event) or `healthy` (instance_health_changed_event)."""
    for key in ("alive", "healthy"):
        value = event.data.get(key)
        if isinstance(value, bool):
            return value
    return None


def deployment_app_ids(event: MarathonEvent) -> set[str]:
    """Apps touched by a deployment event's plan (`plan.steps[].actions[].app`)."""
    plan = event.data.get("plan")
    found: set[str] = set()
    if not isinstance(plan, Mapping):
        return found
    steps = plan.get("steps")
    for step in steps if isinstance(steps, list) else ():
        actions = step.get("actions") if isinstance(step, Mapping) else None
        for action in actions if isinstance(actions, list) else ():
            if isinstance(action, Mapping) and (app := _app_ref(action.get("app"))):
                found.add(app)
    return found


def _bad_port(value: Any) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536


def status_update_problem(event: MarathonEvent) -> str | None:
    """What makes a `status_update_event` unusable for the fast path, or None.

    Checks every field the fast path reads, for type and range: an event that
    fails is not applied (its app is refetched instead), so one bad event cannot
    put a task with port 99999 in front of HAProxy.
    """
    checked = status_update_fields(event)
    return checked if isinstance(checked, str) else None


def status_update_fields(event: MarathonEvent) -> tuple[str, str, str] | str:
    """``(app id, task id, task status)`` of a `status_update_event` whose fields pass
    :func:`status_update_problem`'s checks, or the problem (one pass over the fields:
    hundreds of events a second under churn)."""
    data = event.data
    app = _app_ref(data.get("appId"))
    if app is None:
        app = app_id(event)
        if app is None:
            return f"appId {data.get('appId')!r} is not an app id"
    task, status = data.get("taskId"), data.get("taskStatus")
    if not (type(task) is str and task):
        task = _str(data, "taskId")
        if task is None:
            return f"taskId {data.get('taskId')!r} is not a non-empty string"
    if not (type(status) is str and status):
        status = _str(data, "taskStatus")
        if status is None:
            return f"taskStatus {data.get('taskStatus')!r} is not a non-empty string"
    if not status.startswith("TASK_"):
        return f"taskStatus {status!r} is not a Mesos task state"
    if "host" in data and not isinstance(data["host"], str):
        return f"host {data['host']!r} is not a string"
    value = data.get("ports")
    if value is None:  # absent or null: no ports (e.g. TASK_STAGING); not 0, "" or false
        value = []
    if not isinstance(value, list):
        return f"ports {value!r} is not a list"
    for p in value:
        if not (type(p) is int and 0 < p < 65536):
            bad = [p for p in value if _bad_port(p)]
            if bad:
                return f"ports {value!r}: {bad[0]!r} is not a port (1-65535)"
            break
    addresses = data.get("ipAddresses")
    if addresses is None:
        addresses = []
    if not isinstance(addresses, list) or not all(
        (type(a) is dict or isinstance(a, Mapping)) and isinstance(a.get("ipAddress"), str)
        for a in addresses  # (a dict, as decoded, skips the slow ABC check)
    ):
        return f"ipAddresses {addresses!r} is not a list of {{'ipAddress': str}}"
    return app, task, status
