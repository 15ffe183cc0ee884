"""Blue/green deployments as marathon-lb's ``zdd.py`` drives them: the apps that carry one
``HAPROXY_DEPLOYMENT_GROUP`` are routed as one app. Pure.

zdd.py deploys a new version as a second app (``/web-green`` beside ``/web-blue``), both
labelled with the group (``web``), the service port they share (``HAPROXY_0_PORT``), when
the deploy started, and how many instances the pair should have in all. marathon-lb
then names the services after the group, takes the *old* app's definition (labels,
ports), routes the tasks of both, and drains as many of the old app's tasks (by task id)
as the new app has healthy ones, keeping the pair at its target. As the old app scales
down and is deleted, the new one is left alone under the same names: the service
changes tasks, not shape, so servicerouter needs no reload for any of it.

Where this differs from marathon-lb (the README says so too):

- **Only apps of the group's own folder join it.** ``HAPROXY_DEPLOYMENT_GROUP=shop/web``
  may be carried by ``/shop/web-blue`` and ``/shop/web-green``, not by ``/other/x``:
  otherwise any tenant could route its tasks into another's service and drain the
  other's tasks. At the root, where every app is a tenant of its own, only zdd.py's
  own ids join: ``web`` takes ``/web-blue`` and ``/web-green``, not ``/evil``. A group
  that is the id of a live app outside the group is refused too (the services would
  take that app's names); at the root only if that app had the id first: one created
  after the group is routed waits (:meth:`~.deployment_groups.DeploymentGroups.
  shadowed`). A refused app is left out, and reported; it keeps the
  ports and names it held meanwhile (:meth:`~.state.ClusterState._hold_refused`).
- Old tasks drain (existing sessions finish) instead of marathon-lb's ``disabled``.
- Without health checks the new app's running tasks count as healthy (marathon-lb took
  its declared instances, which drained old tasks before the new ones ran); the old
  app's count is its tasks, as this daemon sees no declared instances.
- "The most recently scaled" (``HAPROXY_DEPLOYMENT_NEW_INSTANCES``, a traffic split) is
  read from the app's ``version``, Marathon's time of its last change, scaling included.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from . import label_values
from .label_values import LabelError
from .model import TASK_KILLING, TASK_RUNNING, App, Health, Problem, Task, shown

GROUP = "HAPROXY_DEPLOYMENT_GROUP"
STARTED_AT = "HAPROXY_DEPLOYMENT_STARTED_AT"
TARGET_INSTANCES = "HAPROXY_DEPLOYMENT_TARGET_INSTANCES"
NEW_INSTANCES = "HAPROXY_DEPLOYMENT_NEW_INSTANCES"
ALT_PORT = "HAPROXY_DEPLOYMENT_ALT_PORT"
REASON = "deployment_group"  # the Problem reason (admission.REASONS)
MAX_INSTANCES = 1_000_000
# A Marathon app id segment: lowercase letters, digits, '-' and '.', not at either end.
_SEGMENT = re.compile(r"[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?")
_EARLIEST = datetime.datetime.min


class DeploymentError(ValueError):
    """A ``HAPROXY_DEPLOYMENT_*`` value that cannot work: the app is left out."""

    def __init__(self, label: str, value: str, why: str) -> None:
        self.label, self.value, self.why = label, value, why
        super().__init__(f"{label}={shown(value)!r} {why}")

    def problem(self, app_id: str) -> Problem:
        return Problem(app_id, -1, REASON, self.label, shown(self.value), self.why)


@dataclass(frozen=True, slots=True)
class Deployment:
    """What one app's ``HAPROXY_DEPLOYMENT_*`` labels say."""

    group: str  # the app id the pair is routed as: "/shop/web"
    started_at: datetime.datetime  # naive UTC; datetime.min when not given
    target_instances: int | None
    new_instances: bool  # HAPROXY_DEPLOYMENT_NEW_INSTANCES given: a traffic split


def folder(app_id: str) -> str:
    """The Marathon group an app id is in: ``/shop`` for ``/shop/web``, ``/`` at the root."""
    return app_id.rstrip("/").rsplit("/", 1)[0] or "/"


def parse_group(label: str, raw: str) -> str:
    """A deployment group as an app id: "shop/web" → "/shop/web"."""
    name = raw.strip().strip("/")
    if not name or not all(_SEGMENT.fullmatch(s) for s in name.split("/")):
        raise DeploymentError(label, raw, "is not a Marathon app path (segments of a-z, 0-9, "
                              "'-' and '.'); the app is left out")
    return "/" + name


def parse_count(label: str, raw: str) -> int:
    text = raw.strip()  # ASCII, and short: int() refuses '²' and 5,000 digits (ValueError)
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) > MAX_INSTANCES:
        raise DeploymentError(label, raw, f"is not a number of instances (0-{MAX_INSTANCES:,}); "
                                          "the app is left out")
    return int(text)


def parse_port(label: str, raw: str) -> int:
    try:
        return label_values.parse_port(label, raw)
    except LabelError:
        raise DeploymentError(label, raw, "is not a port (1-65535); the app is left out") \
            from None


def parse_colour(label: str, raw: str) -> str:
    return raw  # zdd.py's own bookkeeping: any value


def parse_time(label: str, raw: str) -> datetime.datetime:
    try:
        when = datetime.datetime.fromisoformat(raw.strip())
        if when.tzinfo is not None:  # comparable with zdd.py's naive local times
            when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):  # OverflowError: 0001-01-01T00:00+01:00 in UTC
        raise DeploymentError(label, raw, "is not an ISO 8601 date and time (zdd.py writes "
                                               "2024-05-01T12:00:00.000000); the app is left "
                                               "out") from None
    return when


def deployment_of(app: App) -> Deployment | None:
    """The app's deployment labels, or None without ``HAPROXY_DEPLOYMENT_GROUP``;
    :class:`DeploymentError` for a value that cannot work."""
    labels = app.labels
    raw = labels.get(GROUP)
    if raw is None:
        return None
    group = parse_group(GROUP, raw)
    name = group[1:]
    if folder(group) != folder(app.id):
        raise DeploymentError(GROUP, raw, (
            f"names a group in {folder(group)}, but only apps of that folder may join it "
            f"(this app is in {folder(app.id)}; for it the label would be "
            f"{(folder(app.id).rstrip('/') + '/' + name.rsplit('/', 1)[-1]).lstrip('/')}); "
            "the app is left out"))
    if folder(group) == "/" and app.id not in (f"{group}-blue", f"{group}-green"):
        # At the root every app is a tenant of its own (admission.top_group): the folder
        # rule lets any of them in. /evil naming "web" drained /web-blue's tasks and took
        # web.example.com's traffic. zdd.py names the members <group>-blue and -green.
        raise DeploymentError(GROUP, raw, (
            f"names a group at the root, where every app is a tenant of its own: only "
            f"{group}-blue and {group}-green (zdd.py's ids) may join it; the app is left out"))
    if ALT_PORT in labels:
        parse_port(ALT_PORT, labels[ALT_PORT])
    started = parse_time(STARTED_AT, labels[STARTED_AT]) if STARTED_AT in labels else _EARLIEST
    target = (parse_count(TARGET_INSTANCES, labels[TARGET_INSTANCES])
              if TARGET_INSTANCES in labels else None)
    if NEW_INSTANCES in labels:
        parse_count(NEW_INSTANCES, labels[NEW_INSTANCES])
    return Deployment(group, started, target, NEW_INSTANCES in labels)


def _healthy(task: Task, checked: bool) -> bool:
    if checked:
        return task.health is Health.HEALTHY
    return task.state == TASK_RUNNING


def age(pair: tuple[App, Deployment]) -> tuple[datetime.datetime, str, str]:
    """Older deploys first: the deploy's start, then the app's version and id."""
    app, deployment = pair
    return deployment.started_at, app.version, app.id


def _merge_pair(prev: tuple[App, Deployment], cur: tuple[App, Deployment]
                ) -> tuple[App, Deployment]:
    """marathon-lb's merge of two apps of a group: the old one's definition with the
    tasks of both, as many old tasks draining as the new app has healthy ones (and the
    pair stays at its target)."""
    (old, old_d), (new, new_d) = (prev, cur) if age(prev) < age(cur) else (cur, prev)
    if new_d.new_instances:
        if old.version > new.version:  # a traffic split: the one scaled last is the new
            (old, old_d), (new, new_d) = (new, new_d), (old, old_d)
        target = new_d.target_instances if new_d.target_instances is not None else 1
    else:
        target = 1
    old_tasks = sorted(old.tasks, key=lambda t: t.id)
    # The pair is routed with the old definition's health checks: where only the old
    # app has them, the new app's tasks are routed once healthy, so only those count.
    checked = new.has_health_checks or old.has_health_checks
    healthy = sum(_healthy(t, checked) for t in new.tasks)
    drainable = max(0, healthy + len(old_tasks) - target)
    drain = min(len(old_tasks), healthy, drainable)
    tasks = tuple(replace(t, state=TASK_KILLING) if i < drain and t.state == TASK_RUNNING
                  else t for i, t in enumerate(old_tasks)) + new.tasks
    return replace(old, tasks=tasks), old_d


def merge(group: str, members: Sequence[App], deployments: Sequence[Deployment]) -> App:
    """The app the members of ``group`` are routed as: named ``group``, the oldest's
    definition, every member's tasks; old tasks draining as new ones become healthy.

    A drained task is marked ``TASK_KILLING``, which this daemon routes as draining."""
    pairs = sorted(zip(members, deployments, strict=True), key=age)
    merged = pairs[0]
    for pair in pairs[1:]:
        merged = _merge_pair(merged, pair)
    app = merged[0]
    return replace(app, id=group,
                   services=tuple(replace(s, app_id=group) for s in app.services),
                   problems=tuple(replace(p, app_id=group) for p in app.problems))
