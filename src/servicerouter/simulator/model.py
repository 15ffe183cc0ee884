"""Plain data of the simulated Marathon: apps, tasks, health results, deployments.

No I/O here. Serialisation to Marathon's JSON shapes lives in :mod:`.serialize`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ..model import TASK_KILLING, TASK_RUNNING, TERMINAL_STATES  # Mesos facts, shared

TASK_STAGING = "TASK_STAGING"
TASK_STARTING = "TASK_STARTING"
TASK_KILLED = "TASK_KILLED"
TASK_FAILED = "TASK_FAILED"
TASK_FINISHED = "TASK_FINISHED"

# instance_changed_event "condition" per Mesos task state.
CONDITIONS = {
    TASK_STAGING: "Staging",
    TASK_STARTING: "Starting",
    TASK_RUNNING: "Running",
    TASK_KILLING: "Killing",
    TASK_KILLED: "Killed",
    TASK_FAILED: "Failed",
    TASK_FINISHED: "Finished",
    "TASK_ERROR": "Error",
    "TASK_DROPPED": "Dropped",
    "TASK_GONE": "Gone",
    "TASK_UNREACHABLE": "Unreachable",
    "TASK_UNKNOWN": "Unknown",
}

JsonDict = dict[str, Any]

_last_version_ms = 0


_iso_cache: tuple[int, str] = (-1, "")


def iso_ms(t: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as Marathon writes timestamps."""
    global _iso_cache
    ms = int((time.time() if t is None else t) * 1000)
    secs, rem = divmod(ms, 1000)
    cached_secs, prefix = _iso_cache
    if cached_secs != secs:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        _iso_cache = (secs, prefix)
    return f"{prefix}.{rem:03d}Z"


def new_version() -> str:
    """A version timestamp, strictly increasing within this process (ms resolution)."""
    global _last_version_ms
    ms = max(int(time.time() * 1000), _last_version_ms + 1)
    _last_version_ms = ms
    return iso_ms(ms / 1000)


def safe_app_id(app_id: str) -> str:
    """``/shop/frontend`` -> ``shop_frontend`` (task ids, text/plain task list)."""
    return app_id.strip("/").replace("/", "_")


_UUID_NODE = secrets.randbits(48) | 0x010000000000  # random node id, multicast bit set
_UUID_CLOCK_SEQ = 0x8000 | secrets.randbits(14)  # RFC 4122 variant
_last_uuid_ts = 0


def time_uuid() -> str:
    """A time-based (version 1) UUID like Marathon's instance ids, ~10x faster than uuid1()."""
    global _last_uuid_ts
    ts = max(time.time_ns() // 100 + 0x01B21DD213814000, _last_uuid_ts + 1)
    _last_uuid_ts = ts
    time_hi = ((ts >> 48) & 0x0FFF) | 0x1000
    return (
        f"{ts & 0xFFFFFFFF:08x}-{(ts >> 32) & 0xFFFF:04x}-{time_hi:04x}-"
        f"{_UUID_CLOCK_SEQ:04x}-{_UUID_NODE:012x}"
    )


def new_task_ids(app_id: str) -> tuple[str, str]:
    """(task id, instance id) in the current format ``group_app.instance-<uuid>._app.1``."""
    instance_id = f"{safe_app_id(app_id)}.instance-{time_uuid()}"
    return f"{instance_id}._app.1", instance_id


def instance_id_of(task_id: str) -> str:
    head, sep, _ = task_id.rpartition("._app.")
    return head if sep else task_id


@dataclass
class HealthResult:
    instance_id: str
    alive: bool = False
    consecutive_failures: int = 0
    first_success: str | None = None
    last_success: str | None = None
    last_failure: str | None = None
    last_failure_cause: str | None = None

    def to_json(self) -> JsonDict:
        out: JsonDict = {"alive": self.alive, "consecutiveFailures": self.consecutive_failures}
        if self.first_success is not None:
            out["firstSuccess"] = self.first_success
        out["instanceId"] = self.instance_id
        if self.last_success is not None:
            out["lastSuccess"] = self.last_success
        if self.last_failure is not None:
            out["lastFailure"] = self.last_failure
        if self.last_failure_cause is not None:
            out["lastFailureCause"] = self.last_failure_cause
        return out


# What the scheduler intends for a task.
KEEP = "keep"  # normal
REPLACE = "replace"  # killed by an operator (scale=false): counts until terminal, then replaced
REMOVE = "remove"  # killed by a deployment (scale down, upgrade, app removal): not replaced


@dataclass(eq=False)
class Task:
    id: str
    instance_id: str
    app: App
    host: str
    slave_id: str
    ports: list[int]
    ip_addresses: list[dict[str, str]]
    version: str  # app version at launch
    config_version: str  # app's lastConfigChangeAt at launch (decides "old" in upgrades)
    staged_at: str
    state: str = TASK_STAGING
    started_at: str | None = None
    message: str = ""
    health: list[HealthResult] = field(default_factory=list)
    disposition: str = KEEP
    created_seq: int = 0
    cache: bytes | None = None  # serialised form inside /v2/apps (servicePorts empty)

    @property
    def app_id(self) -> str:
        return self.app.id

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def healthy(self) -> bool | None:
        """None without results; True when all results are alive."""
        if not self.health:
            return None
        return all(h.alive for h in self.health)

    def touch(self) -> None:
        self.cache = None
        self.app.touch()


@dataclass(eq=False)
class App:
    id: str
    definition: JsonDict  # normalised definition without version/versionInfo/runtime fields
    version: str
    last_config_change_at: str
    last_scaling_at: str
    tasks: dict[str, Task] = field(default_factory=dict)
    deployment_ids: list[str] = field(default_factory=list)
    removed: bool = False
    failures: int = 0  # consecutive failed launches, for the relaunch backoff
    backoff_until: float = 0.0
    rev: int = 0
    cache: dict[tuple[bool, ...], bytes] = field(default_factory=dict)

    def touch(self) -> None:
        self.rev += 1
        if self.cache:
            self.cache.clear()

    @property
    def instances(self) -> int:
        return int(self.definition.get("instances", 1))

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.definition.get("labels") or {}
        return labels

    @property
    def network_mode(self) -> str:
        networks = self.definition.get("networks") or [{"mode": "host"}]
        return str(networks[0].get("mode", "host"))

    @property
    def port_mappings(self) -> list[JsonDict]:
        container = self.definition.get("container") or {}
        mappings: list[JsonDict] = container.get("portMappings") or []
        return mappings

    @property
    def service_ports(self) -> list[int]:
        if self.network_mode == "host":
            return [int(p["port"]) for p in self.definition.get("portDefinitions") or []]
        return [int(m.get("servicePort", 0)) for m in self.port_mappings]

    @property
    def health_checks(self) -> list[JsonDict]:
        checks: list[JsonDict] = self.definition.get("healthChecks") or []
        return checks

    def host_port_requests(self) -> list[int]:
        """One entry per host port a task needs: 0 = allocate, N = that port."""
        mode = self.network_mode
        if mode == "host":
            require = bool(self.definition.get("requirePorts"))
            return [
                int(p["port"]) if require else 0
                for p in self.definition.get("portDefinitions") or []
            ]
        return [int(m["hostPort"]) for m in self.port_mappings if "hostPort" in m]


@dataclass(eq=False)
class Deployment:
    id: str
    version: str
    app_id: str
    actions: list[list[str]]  # steps of action names, e.g. [["StartApplication"], ["Scale..."]]
    current_step: int = 1

    def plan_json(self) -> JsonDict:
        return {
            "id": self.id,
            "steps": [
                {"actions": [{"action": a, "app": self.app_id} for a in step]}
                for step in self.actions
            ],
            "version": self.version,
        }

    def step_json(self, index: int | None = None) -> JsonDict:
        step = self.actions[(self.current_step if index is None else index) - 1]
        return {"actions": [{"action": a, "app": self.app_id} for a in step]}

    def to_json(self) -> JsonDict:
        """The shape of ``GET /v2/deployments`` entries."""
        return {
            "id": self.id,
            "version": self.version,
            "affectedApps": [self.app_id],
            "affectedPods": [],
            "steps": self.plan_json()["steps"],
            "currentActions": [
                {"action": a, "app": self.app_id, "readinessCheckResults": []}
                for a in self.actions[self.current_step - 1]
            ],
            "currentStep": self.current_step,
            "totalSteps": len(self.actions),
        }
