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


def app_id(event: MarathonEvent) -> str | None:
    """The app an event is about: `appId`, `runSpecId`, or `api_post_event`'s definition id."""
    data = event.data
    found = _str(data, "appId") or _str(data, "runSpecId")
    if found is None and event.type == "api_post_event":
        definition = data.get("appDefinition")
        if isinstance(definition, Mapping):
            found = _str(definition, "id")
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
            if isinstance(action, Mapping) and isinstance(action.get("app"), str):
                found.add(action["app"])
    return found
