"""In-memory Marathon state: apps, tasks, deployments, service ports, events.

Synchronous and free of I/O: every mutation emits Marathon's events to the
:class:`~.events.EventBus` in the order Marathon would. What to launch or kill
is decided by :mod:`.scheduler`; processes are run by :mod:`.executor`.
All operations are O(what changed).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from . import events as ev
from .events import EventBus
from .model import (
    KEEP,
    TASK_RUNNING,
    TASK_STAGING,
    App,
    Deployment,
    HealthResult,
    JsonDict,
    Task,
    iso_ms,
    new_task_ids,
    new_version,
)
from .serialize import definition_json
from .validation import ValidationError, canonical_app_id, merge_update, normalize_app

AGENT_ID = "1f09399d-0cb0-4484-afd7-f08e99d2acbb-S0"
FRAMEWORK_ID = "1f09399d-0cb0-4484-afd7-f08e99d2acbb-0001"


class ApiError(Exception):
    """An error answered with ``status`` and a JSON ``body`` (404, 409...)."""

    def __init__(self, status: int, body: JsonDict) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


def not_found(app_id: str) -> ApiError:
    return ApiError(404, {"message": f"App '{app_id}' does not exist"})


class MarathonState:
    def __init__(
        self,
        bus: EventBus | None = None,
        service_port_range: tuple[int, int] = (10000, 20000),
    ) -> None:
        self.bus = bus if bus is not None else EventBus()
        self.apps: dict[str, App] = {}
        self.tasks: dict[str, Task] = {}  # every non-terminal task, also of removed apps
        self.deployments: dict[str, Deployment] = {}
        self.service_port_range = service_port_range
        self._service_ports: dict[int, str] = {}  # port -> app id
        self._next_service_port = service_port_range[0]
        self._task_seq = 0

    def emit(self, payload: JsonDict) -> None:
        self.bus.publish(payload)

    # --- lookups -----------------------------------------------------------------

    def get_app(self, app_id: str) -> App:
        app = self.apps.get(canonical_app_id(app_id))
        if app is None:
            raise not_found(canonical_app_id(app_id))
        return app

    def iter_apps(self) -> Iterator[App]:
        return iter(self.apps.values())

    # --- service ports -----------------------------------------------------------

    def _allocate_service_port(self) -> int:
        lo, hi = self.service_port_range
        for _ in range(hi - lo + 1):
            port = self._next_service_port
            self._next_service_port = lo if port >= hi else port + 1
            if port not in self._service_ports:
                return port
        raise ValidationError([{"path": "/", "errors": ["No free service ports left"]}])

    def _assign_service_ports(self, definition: JsonDict, app_id: str) -> None:
        """Fill 0 service ports; reject explicit ports another app uses."""
        if definition["networks"][0]["mode"] == "host":
            items, key = definition["portDefinitions"], "port"
        else:
            items, key = definition.get("container", {}).get("portMappings", []), "servicePort"
        for i, item in enumerate(items):
            port = item.get(key, 0)
            owner = self._service_ports.get(port)
            if port and owner is not None and owner != app_id:
                path = (
                    f"/portDefinitions({i})" if key == "port" else f"/container/portMappings({i})"
                )
                raise ValidationError(
                    [
                        {
                            "path": f"{path}/{key}",
                            "errors": [
                                f"Requested service port {port} conflicts with a service "
                                f"port in app {owner}"
                            ],
                        }
                    ]
                )
        for item in items:
            if not item.get(key):
                item[key] = self._allocate_service_port()
            self._service_ports[item[key]] = app_id

    def _release_service_ports(self, app: App) -> None:
        for port in app.service_ports:
            if self._service_ports.get(port) == app.id:
                del self._service_ports[port]

    # --- apps --------------------------------------------------------------------

    def create_app(
        self, raw: object, *, client_ip: str = "127.0.0.1", uri: str = "/v2/apps"
    ) -> App:
        definition = normalize_app(raw)
        app_id = definition["id"]
        if app_id in self.apps:
            raise ApiError(409, {"message": f"An app with id [{app_id}] already exists."})
        self._assign_service_ports(definition, app_id)
        version = new_version()
        app = App(app_id, definition, version, version, version)
        self.apps[app_id] = app
        self.emit(ev.api_post(client_ip, uri, definition_json(app)))
        self.emit(ev.group_change_success(version))
        for check in app.health_checks:
            self.emit(ev.add_health_check(app_id, check, version))
        return app

    def update_app(
        self,
        app_id: str,
        patch: object,
        *,
        partial: bool = True,
        client_ip: str = "127.0.0.1",
        uri: str | None = None,
    ) -> tuple[App, bool, bool]:
        """PUT semantics. Returns (app, created, config_changed)."""
        app_id = canonical_app_id(app_id)
        uri = uri or f"/v2/apps{app_id}"
        existing = self.apps.get(app_id)
        if existing is None:
            raw = dict(patch) if isinstance(patch, dict) else patch
            if isinstance(raw, dict):
                raw["id"] = app_id
            return self.create_app(raw, client_ip=client_ip, uri=uri), True, True
        base = existing.definition if partial else {"id": app_id}
        merged = merge_update(base, patch)
        definition = normalize_app(merged, app_id=app_id)
        old_ports = set(existing.service_ports)
        self._release_service_ports(existing)
        try:
            self._assign_service_ports(definition, app_id)
        except ValidationError:
            for port in old_ports:
                self._service_ports[port] = app_id
            raise
        before = {k: v for k, v in existing.definition.items() if k != "instances"}
        after = {k: v for k, v in definition.items() if k != "instances"}
        config_changed = before != after
        version = new_version()
        existing.definition = definition
        existing.version = version
        if config_changed:
            existing.last_config_change_at = version
        existing.last_scaling_at = version
        existing.touch()
        self.emit(ev.api_post(client_ip, uri, definition_json(existing)))
        self.emit(ev.group_change_success(version))
        return existing, False, config_changed

    def mark_restart(self, app: App) -> None:
        """``POST /restart``: a new config version, so every task is old."""
        version = new_version()
        app.version = app.last_config_change_at = app.last_scaling_at = version
        app.touch()
        self.emit(ev.group_change_success(version))

    def remove_app(self, app_id: str) -> App:
        app = self.get_app(app_id)
        del self.apps[app.id]
        self._release_service_ports(app)
        app.removed = True
        self.emit(ev.group_change_success(new_version()))
        return app

    # --- tasks -------------------------------------------------------------------

    def add_task(
        self,
        app: App,
        host: str,
        ports: list[int],
        ip_addresses: list[dict[str, str]],
        slave_id: str = AGENT_ID,
    ) -> Task:
        task_id, instance_id = new_task_ids(app.id)
        self._task_seq += 1
        task = Task(
            id=task_id,
            instance_id=instance_id,
            app=app,
            host=host,
            slave_id=slave_id,
            ports=ports,
            ip_addresses=ip_addresses,
            version=app.version,
            config_version=app.last_config_change_at,
            staged_at=iso_ms(),
            created_seq=self._task_seq,
        )
        app.tasks[task_id] = task
        self.tasks[task_id] = task
        app.touch()
        self.emit(ev.instance_changed(task, "Provisioned"))
        self.emit(ev.status_update(task))
        return task

    def set_task_state(self, task: Task, state: str, message: str = "") -> None:
        if task.terminal or task.state == state:
            return
        task.state = state
        task.message = message
        if state == TASK_RUNNING and task.started_at is None:
            task.started_at = iso_ms()
        if task.terminal:
            task.app.tasks.pop(task.id, None)
            self.tasks.pop(task.id, None)
            task.app.touch()
        else:
            task.touch()
        self.emit(ev.status_update(task, message))
        if state != TASK_STAGING:
            self.emit(ev.instance_changed(task))

    def record_health(self, task: Task, index: int, alive: bool, cause: str | None = None) -> bool:
        """Record one health check result; emit events when ``alive`` flips.

        Returns True when the task's alive state changed.
        """
        was_healthy = task.healthy
        while len(task.health) <= index:
            task.health.append(HealthResult(task.instance_id))
        result = task.health[index]
        first = result.first_success is None and result.last_failure is None
        previous = result.alive
        now = iso_ms()
        if alive:
            result.consecutive_failures = 0
            result.last_success = now
            if result.first_success is None:
                result.first_success = now
            result.last_failure_cause = None
        else:
            result.consecutive_failures += 1
            result.last_failure = now
            result.last_failure_cause = cause
        result.alive = alive
        task.touch()
        if not alive and index < len(task.app.health_checks):
            self.emit(ev.failed_health_check(task, task.app.health_checks[index]))
        changed = first or previous != alive
        if changed:
            self.emit(ev.health_status_changed(task, alive))
            healthy = task.healthy
            if healthy != was_healthy:
                self.emit(ev.instance_health_changed(task, healthy))
            if task.state == TASK_RUNNING:
                self.emit(ev.status_update(task))
        return changed

    # --- deployments -------------------------------------------------------------

    def start_deployment(
        self, app: App, actions: list[list[str]], version: str | None = None
    ) -> Deployment:
        dep = Deployment(str(uuid.uuid4()), version or app.version, app.id, actions, len(actions))
        self.deployments[dep.id] = dep
        app.deployment_ids.append(dep.id)
        app.touch()
        self.emit(ev.deployment_step("deployment_info", dep))
        return dep

    def finish_deployment(self, dep: Deployment, reason: str | None = None) -> None:
        if self.deployments.pop(dep.id, None) is None:
            return
        app = self.apps.get(dep.app_id)
        if app is not None and dep.id in app.deployment_ids:
            app.deployment_ids.remove(dep.id)
            app.touch()
        if reason is None:
            self.emit(ev.deployment_step("deployment_step_success", dep))
        else:
            self.emit(ev.deployment_step("deployment_step_failure", dep))
        self.emit(ev.deployment_done(dep, reason))

    def app_deployments(self, app: App) -> list[Deployment]:
        return [self.deployments[d] for d in app.deployment_ids if d in self.deployments]

    def live_tasks(self, app: App) -> list[Task]:
        return [t for t in app.tasks.values() if not t.terminal]

    def kept_tasks(self, app: App) -> list[Task]:
        return [t for t in app.tasks.values() if t.disposition == KEEP and not t.terminal]
