"""Marathon events into state changes: the fast path and what needs a refetch.

A ``status_update_event`` carries everything about one task, so it is
applied directly to the in-memory app (no refetch). Events that change app
definitions refetch just those apps (de-duplicated and bounded by the
engine); anything broader triggers a full resync. ``group_change_success``
fetches nothing: every app change it accompanies also brings ``api_post_event``
or deployment events naming the apps.

One bad event costs only its app: a ``status_update_event`` whose fields fail
:func:`~servicerouter.marathon.eventdata.status_update_fields` is not applied
and its app is refetched. An event over ``--max-event-bytes`` was never read:
a full resync replaces it. Marathon does not guarantee event order: a task
seen terminal stays dead (a bounded memory of recent ones), and the engine
still resyncs on every reconnect and on a timer.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .marathon import eventdata as ev
from .marathon.events import MarathonEvent
from .marathon.tasks import task_from_event
from .model import TASK_KILLING, TASK_RUNNING, App, Task, shown

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("servicerouter.events")

# Deployments touching more apps than this are handled with one full resync.
MAX_APPS_PER_REFETCH = 20
NOT_ROUTABLE = ev.TERMINAL_TASK_STATUSES | {"TASK_UNREACHABLE"}
STARTING_UP = frozenset({"TASK_STAGING", "TASK_STARTING"})
# Task ids seen terminal, remembered so a late TASK_RUNNING cannot revive them.
# Marathon never reuses a task id; 10,000 ids is minutes of heavy churn (~1 MB).
TERMINATED_MEMORY = 10_000
# Event types whose counter is looked up once and kept (the types asked for, and some
# of the others); the others are looked up again each time.
MAX_EVENT_TYPES = 100


class EventHandler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._warned: set[str] = set()
        self._draining: dict[str, tuple[Task, float]] = {}  # task id -> (task, deadline)
        self._terminated: OrderedDict[str, None] = OrderedDict()
        self.late_ignored = 0
        self._counters: dict[str, Any] = {}  # event type -> its events counter
        # Fetches in flight: (app id, or None for all) -> (app id, task id) that events
        # changed meanwhile; those tasks are newer in memory than in the answer.
        self._watches: list[tuple[str | None, set[tuple[str, str]]]] = []

    def warn_once(self, warnings: Iterable[str], *, every_app: bool = False) -> None:
        """Log each warning not logged before. ``every_app`` (a full sync): these are the
        warnings of all apps now, and only they are remembered. Every warning ever logged
        was kept for the daemon's lifetime, and apps come and go (one per CI build, say)
        and a tenant's label names change with its deploys: memory grew without end."""
        seen = set() if every_app else self._warned
        for w in warnings:
            if w not in self._warned:
                log.warning("%s", w)
            seen.add(w)
        self._warned = seen

    def handle(self, event: MarathonEvent) -> None:
        engine = self.engine
        counter = self._counters.get(event.type)
        if counter is None:  # the labelled child, looked up once per event type
            # Only the types asked for get a label of their own: the name comes from the
            # stream, and a series per name sent grew /metrics (and memory) without end.
            label = event.type if event.type in engine.config.event_types else "other"
            counter = engine.metrics.marathon_events.labels(label)
            if label != "other" or len(self._counters) < MAX_EVENT_TYPES:
                self._counters[event.type] = counter
        counter.inc()
        if event.type == "status_update_event" and not (event.skipped_bytes
                                                        or event.unreadable):
            self._status_update(event)  # the fast path: most events under churn
            return
        t, app = event.received_at, ev.app_id(event)
        if event.skipped_bytes:
            log.warning("skipped a %s of %d bytes from the event stream, unread: over "
                        "--max-event-bytes %d; a full resync follows", event.type,
                        event.skipped_bytes, engine.config.max_event_bytes)
            engine.request_full_sync()
        elif event.unreadable:  # what it said is lost: read the state instead
            log.warning("a %s from the event stream could not be read (see above); a full "
                        "resync follows", event.type)
            engine.request_full_sync()
        elif event.type in ("health_status_changed_event", "instance_health_changed_event"):
            # Marathon 1.3 names the task (taskId), not the instance; set_health takes both.
            instance = ev.instance_id(event) or ev.task_id(event)
            healthy = ev.health(event)
            if app and instance and healthy is not None:
                engine.mark(engine.state.set_health(app, instance, healthy), t)
            elif not (instance and event.data.get("healthy", False) is None):
                # (healthy: null is an instance with no result yet: nothing to apply.)
                # Dropped, the flip waited for the next full resync, a task gone
                # unhealthy keeping its traffic that long: its app is read instead.
                self.bad_event(event, "it names no instance and health (instanceId "
                               f"{shown(event.data.get('instanceId'))}, alive/healthy "
                               f"{shown(event.data.get('alive', event.data.get('healthy')))})")
        elif event.type == "api_post_event":
            if app:
                engine.request_refetch(app, t)
        elif event.type == "app_terminated_event":
            if app:
                engine.mark(engine.state.remove_app(app), t)
                engine.intake.app_removed(app)  # a full sync's older answer keeps it gone
        elif event.type in ("deployment_info", "deployment_success", "deployment_failed"):
            self._refetch(ev.deployment_app_ids(event), t)
        # group_change_success: nothing to fetch. Every app PUT emits one (with
        # groupId "/", i.e. everything); the api_post_event and deployment events
        # of the same change name the apps, and those are refetched.

    def _refetch(self, app_ids: set[str], t: float) -> None:
        if len(app_ids) > MAX_APPS_PER_REFETCH:
            self.engine.request_full_sync()
            return
        for app_id in sorted(app_ids):
            self.engine.request_refetch(app_id, t)

    def bad_event(self, event: MarathonEvent, problem: str) -> None:
        """An event that cannot be applied: refetch its app, or everything if it names none."""
        app_id = ev.app_id(event)
        if app_id is not None:
            log.warning("app %s: %s not applied: %s; refetching the app, others applied",
                        app_id, event.type, problem)
            self.engine.request_refetch(app_id, event.received_at)
        else:
            log.warning("%s not applied: %s; a full resync follows: %.200s",
                        event.type, problem, event.data)
            self.engine.request_full_sync()

    # ------------------------------------------- fetches racing with events
    def watch(self, app_id: str | None) -> set[tuple[str, str]]:
        """Record the tasks events change while a fetch of ``app_id`` (None: every app)
        is in flight; pass the result to :meth:`newer_tasks`, then :meth:`unwatch`."""
        touched: set[tuple[str, str]] = set()
        self._watches.append((app_id, touched))
        return touched

    def unwatch(self, touched: set[tuple[str, str]]) -> None:
        self._watches = [w for w in self._watches if w[1] is not touched]

    def _touch(self, app_id: str, task_id: str) -> None:
        for watched, touched in self._watches:
            if watched is None or watched == app_id:
                touched.add((app_id, task_id))

    def newer_tasks(self, app: App, touched: set[tuple[str, str]]) -> App:
        """``app`` as a fetch returned it, except the tasks that events changed while the
        fetch was in flight: those stay as the events left them (gone if they died).

        Without this, an answer sampled just before a task's TASK_RUNNING, landing
        just after it, would put the task back to STARTING with no event to come."""
        return self._newer(app, {task_id for app_id, task_id in touched if app_id == app.id})

    def newer_tasks_all(self, apps: list[App], touched: set[tuple[str, str]]) -> list[App]:
        """:meth:`newer_tasks` for every app of a full sync's answer, ``touched`` grouped
        by app once: scanned per app, 500 events during a sync at 10,000 apps made five
        million comparisons (~0.3 s on the event loop)."""
        if not touched:
            return apps
        by_app: dict[str, set[str]] = {}
        for app_id, task_id in touched:
            by_app.setdefault(app_id, set()).add(task_id)
        return [self._newer(a, by_app[a.id]) if a.id in by_app else a for a in apps]

    def _newer(self, app: App, ids: set[str]) -> App:
        if not ids:
            return app
        current = self.engine.state.apps.get(app.id)
        newer = {t.id: t for t in (current.tasks if current else ()) if t.id in ids}
        fetched = {t.id for t in app.tasks}
        tasks = [newer.get(t.id, t) for t in app.tasks if t.id not in ids or t.id in newer]
        tasks += [t for task_id, t in newer.items() if task_id not in fetched]
        return replace(app, tasks=tuple(tasks))

    def _remember_terminated(self, task_id: str) -> None:
        self._terminated[task_id] = None
        self._terminated.move_to_end(task_id)
        while len(self._terminated) > TERMINATED_MEMORY:
            self._terminated.popitem(last=False)

    def _status_update(self, event: MarathonEvent) -> None:
        checked = ev.status_update_fields(event)
        if isinstance(checked, str):
            self.bad_event(event, checked)
            return
        engine, state, t = self.engine, self.engine.state, event.received_at
        app_id, task_id, status = checked
        if status in ev.TERMINAL_TASK_STATUSES:
            self._remember_terminated(task_id)
            self._touch(app_id, task_id)
        elif task_id in self._terminated:
            self.late_ignored += 1
            log.debug("app %s: ignored %s for task %s, already seen terminal (events "
                      "arrived out of order)", app_id, status, task_id)
            return
        app = state.apps.get(app_id)
        if app is None:
            if status == TASK_RUNNING:
                engine.request_refetch(app_id, t)  # an app we do not know yet
            return
        self._touch(app_id, task_id)
        drain = engine.config.drain_seconds
        now = time.monotonic()
        if status in NOT_ROUTABLE:
            # With --drain-seconds, a departing task drains that long from the moment
            # it started to leave (TASK_KILLING, or now) before its slot is freed.
            entry = self._draining.get(task_id)
            previous = state.task(app_id, task_id) if entry is None and drain > 0 else None
            if previous is not None and previous.state in (TASK_RUNNING, TASK_KILLING):
                entry = self._draining[task_id] = (replace(previous, state=TASK_KILLING),
                                                   now + drain)
            if entry is not None and entry[1] > now:
                engine.mark(state.update_task(entry[0]), t)
            else:
                self._draining.pop(task_id, None)
                engine.mark(state.remove_task(app_id, task_id), t)
            return
        previous = state.task(app_id, task_id)
        if previous is None and status in STARTING_UP and not app.has_health_checks:
            # A task not routed yet, and nothing routed it could replace: recording it
            # changes no endpoint (2 of the 5 events of a replacement; its TASK_RUNNING
            # adds it). Health-checked apps keep it, for health events that come early.
            return
        task = task_from_event(app, event.data, engine.resolve, previous)
        if task.state == TASK_KILLING and drain > 0:
            self._draining.setdefault(task_id, (task, now + drain))
        else:  # running again (an agent back from a partition): no deadline takes it out
            self._draining.pop(task_id, None)
        engine.mark(state.update_task(task), t)

    # -------------------------------------------------- --drain-seconds timers
    def next_deadline(self) -> float:
        return min((d for _, d in self._draining.values()), default=float("inf"))

    def expire_drains(self) -> None:
        now = time.monotonic()
        for task_id, (task, deadline) in list(self._draining.items()):
            if deadline <= now:
                del self._draining[task_id]
                self.engine.mark(self.engine.state.remove_task(task.app_id, task_id))

    def after_full_sync(self) -> None:
        """A full sync drops departed tasks; keep the ones still draining."""
        state = self.engine.state
        for task_id, (task, _) in list(self._draining.items()):
            current = state.task(task.app_id, task_id)
            if current is None:
                self.engine.mark(state.update_task(task))
            elif current.state == TASK_RUNNING:  # running again: no longer departing
                del self._draining[task_id]
