"""The engine's in-memory desired state: apps, and the backends they yield.

No I/O and no time. Every mutation returns the backend names it may have
changed ("dirty"), so the planner looks only at those: the cost of an event
grows with the app it touches, not with the cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from .layout import DesiredService, Settings, desired_services, selected, service_problem
from .model import App, Health, Task

log = logging.getLogger("servicerouter.state")


class ClusterState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.apps: dict[str, App] = {}
        self.desired: dict[str, DesiredService] = {}
        self._backends: dict[str, tuple[str, ...]] = {}  # app id -> backend names
        # One port, one app: HAProxy binds with SO_REUSEPORT, so two frontends on
        # a port would silently split its connections between two apps.
        self._reserved = {p for p in (settings.stats_port, settings.http_port,
                                      settings.https_port) if p}
        self._port_owner: dict[int, str] = {}
        self._ports_of: dict[str, set[int]] = {}
        self._waiting: dict[int, set[str]] = {}  # port -> apps refused it
        # app id -> service port -> why it was refused (shown in /status)
        self.refused: dict[str, dict[int, str]] = {}

    def _claim_ports(self, app_id: str, new: dict[str, DesiredService]) -> set[int]:
        """Drop services whose port is taken or reserved; return the ports kept."""
        kept: set[int] = set()
        before = self.refused.pop(app_id, {})
        refused: dict[int, str] = {}
        for name, d in list(new.items()):
            port = d.service.port
            owner = self._port_owner.get(port, app_id)
            if port in self._reserved or owner != app_id:
                del new[name]
                self._waiting.setdefault(port, set()).add(app_id)
                holder = f"app {owner}" if owner != app_id else "servicerouter itself"
                refused[port] = (f"service port {port} is already bound by {holder}; "
                                 "service skipped until the port is free")
                if port not in before:
                    log.error("app %s: %s, others applied", app_id, refused[port])
                continue
            self._port_owner[port] = app_id
            kept.add(port)
        if refused:
            self.refused[app_id] = refused
        return kept

    def _refresh(self, app_id: str) -> set[str]:
        """Recompute one app's desired services; return the names that changed."""
        old = set(self._backends.get(app_id, ()))
        app = self.apps.get(app_id)
        new = desired_services(app, self.settings) if app else {}
        before = dict(self.refused.get(app_id, {}))
        ports = self._claim_ports(app_id, new)
        for service in app.services if app else ():
            problem = (service_problem(service, self.settings)
                       if selected(service, self.settings) else None)
            if problem:  # labels that cannot be honoured: not exposed, said in /status
                self.refused.setdefault(app_id, {})[service.port] = problem
                if before.get(service.port) != problem:
                    log.error("app %s: %s", app_id, problem)
        freed = self._ports_of.get(app_id, set()) - ports
        if ports:
            self._ports_of[app_id] = ports
        else:
            self._ports_of.pop(app_id, None)
        dirty = {n for n in old if n not in new}
        for n in dirty:
            self.desired.pop(n, None)
        for n, d in new.items():
            if self.desired.get(n) != d:
                self.desired[n] = d
                dirty.add(n)
        if new:
            self._backends[app_id] = tuple(new)
        else:
            self._backends.pop(app_id, None)
        for port in freed:  # a port let go: the first app refused it may have it now
            del self._port_owner[port]
            for waiter in sorted(self._waiting.pop(port, ())):
                if waiter in self.apps:
                    dirty |= self._refresh(waiter)
        return dirty

    def set_app(self, app: App) -> set[str]:
        self.apps[app.id] = app
        return self._refresh(app.id)

    def remove_app(self, app_id: str) -> set[str]:
        if self.apps.pop(app_id, None) is None:
            return set()
        return self._refresh(app_id)

    def replace_all(self, apps: Iterable[App], keep: Iterable[str] = ()) -> set[str]:
        """A full sync: ``apps`` is all of Marathon, except the ids in ``keep``
        (apps that failed to parse this time), which keep their last good state."""
        fresh = {a.id: a for a in apps}
        keep = set(keep)
        dirty: set[str] = set()
        for app_id in list(self.apps):
            if app_id not in fresh and app_id not in keep:
                dirty |= self.remove_app(app_id)
        for app in fresh.values():
            if self.apps.get(app.id) != app:
                dirty |= self.set_app(app)
        return dirty

    def update_task(self, task: Task) -> set[str]:
        """Add or replace one task of a known app (the event fast path)."""
        app = self.apps.get(task.app_id)
        if app is None:
            return set()
        tasks = [t for t in app.tasks if t.id != task.id]
        if len(tasks) == len(app.tasks):
            tasks.append(task)
        else:
            tasks = [task if t.id == task.id else t for t in app.tasks]
        return self.set_app(replace(app, tasks=tuple(tasks)))

    def remove_task(self, app_id: str, task_id: str) -> set[str]:
        app = self.apps.get(app_id)
        if app is None or all(t.id != task_id for t in app.tasks):
            return set()
        return self.set_app(replace(app, tasks=tuple(t for t in app.tasks if t.id != task_id)))

    def task(self, app_id: str, task_id: str) -> Task | None:
        app = self.apps.get(app_id)
        return next((t for t in app.tasks if t.id == task_id), None) if app else None

    def set_health(self, app_id: str, instance_id: str, healthy: bool) -> set[str]:
        """Apply a health event to every task of the instance."""
        app = self.apps.get(app_id)
        if app is None:
            return set()
        health = Health.HEALTHY if healthy else Health.UNHEALTHY
        prefix = instance_id + "."
        tasks = tuple(replace(t, health=health)
                      if (t.id == instance_id or t.id.startswith(prefix)) else t
                      for t in app.tasks)
        if tasks == app.tasks:
            return set()
        return self.set_app(replace(app, tasks=tasks))

    @property
    def endpoint_count(self) -> int:
        return sum(len(d.endpoints) for d in self.desired.values())
