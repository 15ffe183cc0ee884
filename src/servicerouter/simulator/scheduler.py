"""The scheduler: turns API writes into deployments and keeps task counts right.

Every change marks the app dirty; dirty apps are reconciled once per loop
iteration (O(changed apps)). Reconciling compares the app's tasks with its
definition: launch missing tasks, kill extra ones (YOUNGEST_FIRST), replace
old-config tasks in a rolling way within the upgradeStrategy, replace failed
tasks after a backoff, and finish deployments when the app has converged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from . import events as ev
from .executor import Executor
from .model import (
    KEEP,
    REMOVE,
    REPLACE,
    TASK_KILLED,
    TASK_KILLING,
    TASK_RUNNING,
    App,
    Deployment,
    JsonDict,
    Task,
    new_version,
)
from .state import ApiError, MarathonState

log = logging.getLogger(__name__)

CANCELLED = "Deployment was cancelled by a newer deployment"


class Scheduler:
    def __init__(
        self, state: MarathonState, executor: Executor, *, relaunch_backoff: float = 1.0
    ) -> None:
        self.state = state
        self.executor = executor
        self.relaunch_backoff = relaunch_backoff
        self._dirty: set[App] = set()
        self._scheduled = False
        self._flushing = False
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False
        executor.attach(self)

    # --- marking and flushing ----------------------------------------------------

    def mark(self, app: App) -> None:
        if self._closed:
            return
        self._dirty.add(app)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # synchronous use (unit tests): reconcile now, not nested
            if not self._flushing:
                self._flush_sync()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def _flush_sync(self) -> None:
        self._flushing = True
        try:
            for _ in range(100_000):  # bounded: each round handles what the last one marked
                if not self._dirty:
                    break
                self.flush()
        finally:
            self._flushing = False

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        for app in dirty:
            try:
                self._reconcile(app)
            except Exception:  # keep the simulator alive, but say so
                log.exception("reconcile of %s failed", app.id)

    def _mark_later(self, app: App, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            self.mark(app)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    # --- executor sink -----------------------------------------------------------

    def task_update(self, task: Task, state: str, message: str = "") -> None:
        if task.terminal:
            return
        self.state.set_task_state(task, state, message)
        app = task.app
        if task.terminal:
            self.executor.release(task)
            if task.disposition == KEEP and state != TASK_KILLED:
                app.failures += 1
                delay = min(self.relaunch_backoff * (1.15 ** (app.failures - 1)), 30.0)
                app.backoff_until = time.monotonic() + delay
        self.mark(app)

    def health_result(self, task: Task, index: int, alive: bool, cause: str | None = None) -> None:
        if task.terminal:
            return
        self.state.record_health(task, index, alive, cause)
        if alive:
            task.app.failures = 0
        elif index < len(task.app.health_checks):
            check = task.app.health_checks[index]
            limit = int(check.get("maxConsecutiveFailures", 3))
            failures = task.health[index].consecutive_failures
            over = limit > 0 and failures >= limit
            if over and task.disposition == KEEP and task.state == TASK_RUNNING:
                self.state.emit(ev.unhealthy_instance_kill(task, cause or "unhealthy"))
                self.kill(task, REPLACE)
        self.mark(task.app)

    # --- operations (the API calls these) ----------------------------------------

    def _check_lock(self, app: App, force: bool) -> None:
        deps = self.state.app_deployments(app)
        if deps and not force:
            raise ApiError(
                409,
                {
                    "message": "App is locked by one or more deployments. Override with the "
                    "option '?force=true'. View details at '/v2/deployments/<DEPLOYMENT_ID>'.",
                    "deployments": [{"id": d.id} for d in deps],
                },
            )
        for dep in deps:
            self.state.finish_deployment(dep, CANCELLED)

    def create_app(self, raw: object, *, client_ip: str = "127.0.0.1") -> App:
        app = self.state.create_app(raw, client_ip=client_ip)
        self.state.start_deployment(app, [["StartApplication"], ["ScaleApplication"]])
        self.mark(app)
        return app

    def update_app(
        self,
        app_id: str,
        patch: object,
        *,
        force: bool = False,
        partial: bool = True,
        client_ip: str = "127.0.0.1",
    ) -> tuple[App, bool, Deployment]:
        existing = self.state.apps.get(app_id if app_id.startswith("/") else "/" + app_id)
        if existing is not None:
            self._check_lock(existing, force)
        app, created, config_changed = self.state.update_app(
            app_id, patch, partial=partial, client_ip=client_ip
        )
        if created:
            actions = [["StartApplication"], ["ScaleApplication"]]
        else:
            actions = [["RestartApplication"]] if config_changed else [["ScaleApplication"]]
        dep = self.state.start_deployment(app, actions)
        self.mark(app)
        return app, created, dep

    def delete_app(self, app_id: str, *, force: bool = False) -> Deployment:
        app = self.state.get_app(app_id)
        self._check_lock(app, force)
        dep = self.state.start_deployment(app, [["StopApplication"]], new_version())
        self.state.remove_app(app.id)
        for task in self.state.live_tasks(app):
            self.kill(task, REMOVE)
        self.mark(app)
        return dep

    def restart_app(self, app_id: str, *, force: bool = False) -> Deployment:
        app = self.state.get_app(app_id)
        self._check_lock(app, force)
        self.state.mark_restart(app)
        dep = self.state.start_deployment(app, [["RestartApplication"]])
        self.mark(app)
        return dep

    def kill_task(self, app_id: str, task_id: str, *, scale: bool = False) -> Deployment | Task:
        """``DELETE /v2/apps/{id}/tasks/{taskId}``: a Task (scale=false) or a Deployment."""
        app = self.state.get_app(app_id)
        task = app.tasks.get(task_id)
        if task is None or task.terminal:
            raise ApiError(404, {"message": f"Task '{task_id}' does not exist"})
        if not scale:
            self.kill(task, REPLACE)
            self.mark(app)
            return task
        self.kill(task, REMOVE)
        _, _, dep = self.update_app(app.id, {"instances": max(0, app.instances - 1)}, force=True)
        return dep

    def kill(self, task: Task, disposition: str) -> None:
        if task.terminal:
            return
        task.disposition = disposition
        if task.state != TASK_KILLING:
            self.state.set_task_state(task, TASK_KILLING)
            self.executor.kill(task)

    # --- reconciliation ----------------------------------------------------------

    def _ready(self, task: Task) -> bool:
        if task.state != TASK_RUNNING:
            return False
        for index in self.executor.health_check_indices(task.app):
            if index >= len(task.health) or not task.health[index].alive:
                return False
        return True

    def _launch(self, app: App, count: int) -> None:
        if count <= 0:
            return
        now = time.monotonic()
        if app.backoff_until > now:
            self._mark_later(app, app.backoff_until - now)
            return
        for _ in range(count):
            try:
                host, ports, ips = self.executor.place(app)
            except OSError as exc:
                log.warning("cannot place a task of %s: %s", app.id, exc)
                self._mark_later(app, 1.0)
                return
            task = self.state.add_task(app, host, ports, ips)
            self.executor.launch(task)

    def _reconcile(self, app: App) -> None:
        if app.removed:
            self._reconcile_removed(app)
            return
        live = self.state.live_tasks(app)
        kept = [t for t in live if t.disposition == KEEP]
        replacing = sum(1 for t in live if t.disposition == REPLACE)
        new = [t for t in kept if t.config_version == app.last_config_change_at]
        old = [t for t in kept if t.config_version != app.last_config_change_at]
        target = app.instances
        if old:
            self._upgrade_step(app, target, new, old, replacing)
        else:
            missing = target - len(new) - replacing
            if missing > 0:
                self._launch(app, missing)
            elif len(new) > max(0, target - replacing):
                extra = len(new) - max(0, target - replacing)
                # YOUNGEST_FIRST, and tasks that are not running yet before running ones.
                order = sorted(new, key=lambda t: (t.state == TASK_RUNNING, -t.created_seq))
                if app.definition.get("killSelection") == "OLDEST_FIRST":
                    order = sorted(new, key=lambda t: (t.state == TASK_RUNNING, t.created_seq))
                for task in order[:extra]:
                    self.kill(task, REMOVE)
        self._check_deployments(app)

    def _upgrade_step(
        self, app: App, target: int, new: list[Task], old: list[Task], replacing: int
    ) -> None:
        strategy: JsonDict = app.definition.get("upgradeStrategy") or {}
        min_healthy = math.ceil(target * float(strategy.get("minimumHealthCapacity", 1)))
        max_total = target + math.floor(target * float(strategy.get("maximumOverCapacity", 1)))
        ready_new = sum(1 for t in new if self._ready(t))
        old_ready = sorted((t for t in old if self._ready(t)), key=lambda t: t.created_seq)
        # Old tasks that are not ready serve nothing and can go at once; ready ones only
        # while enough ready tasks remain (minimumHealthCapacity).
        to_kill = [t for t in old if not self._ready(t)]
        spare = ready_new + len(old_ready) - min_healthy
        to_kill += old_ready[: max(0, spare)]
        want = target - len(new)
        room = max_total - (len(new) + len(old) - len(to_kill) + replacing)
        if want > 0 and room <= 0 and not to_kill and ready_new == len(new) and old_ready:
            # minimumHealthCapacity=1 with maximumOverCapacity=0: make room for one.
            to_kill = old_ready[:1]
            room = 1
        for task in to_kill:
            self.kill(task, REMOVE)
        self._launch(app, min(want, room))

    def _check_deployments(self, app: App) -> None:
        deps = self.state.app_deployments(app)
        if not deps:
            return
        live = self.state.live_tasks(app)
        if any(
            t.disposition != KEEP or t.config_version != app.last_config_change_at for t in live
        ):
            return
        if len(live) != app.instances or not all(self._ready(t) for t in live):
            return
        for dep in deps:
            self.state.finish_deployment(dep)

    def _reconcile_removed(self, app: App) -> None:
        live = self.state.live_tasks(app)
        for task in live:
            self.kill(task, REMOVE)
        if live:
            return
        deps = [
            d
            for d in list(self.state.deployments.values())
            if d.app_id == app.id and d.id in app.deployment_ids
        ]
        if deps:
            self.state.emit(ev.app_terminated(app.id))
            for dep in deps:
                app.deployment_ids.remove(dep.id)
                self.state.finish_deployment(dep)

    # --- shutdown ----------------------------------------------------------------

    async def shutdown(self) -> None:
        self._closed = True
        for handle in list(self._timers):
            handle.cancel()
        self._timers.clear()
        await self.executor.shutdown()
