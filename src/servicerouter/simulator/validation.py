"""Validation and normalisation of app definitions, with Marathon-like 422 details.

:func:`normalize_app` turns what a client POSTs (current or legacy shapes) into
the current 1.5-1.10 shape, filled with Marathon's defaults. It is idempotent,
so an update is "merge the patch into the stored definition and normalise again".
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .model import JsonDict

ID_SEGMENT = re.compile(
    r"^(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])$"
)
ID_SEGMENT_TEXT = (
    "must fully match regular expression "
    "'^(([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])\\.)*([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])$'"
)
PORT_NAME = re.compile(r"^[a-z0-9-]+$")
NETWORK_MODES = ("host", "container/bridge", "container")
HEALTH_PROTOCOLS = ("HTTP", "HTTPS", "TCP", "MESOS_HTTP", "MESOS_HTTPS", "MESOS_TCP", "COMMAND")
# Keys that are runtime or version information, never part of a definition.
RUNTIME_KEYS = frozenset(
    {
        "version",
        "versionInfo",
        "tasks",
        "tasksStaged",
        "tasksRunning",
        "tasksHealthy",
        "tasksUnhealthy",
        "deployments",
        "readinessCheckResults",
        "lastTaskFailure",
        "taskStats",
        "ports",
        "uris",
        "ipAddress",
    }
)
HEAD_DEFAULTS: list[tuple[str, Any]] = [
    ("backoffFactor", 1.15),
    ("backoffSeconds", 1),
    ("executor", ""),
    ("gpus", 0),
    ("disk", 0),
    ("killSelection", "YOUNGEST_FIRST"),
    ("maxLaunchDelaySeconds", 300),
    ("requirePorts", False),
    ("unreachableStrategy", {"expungeAfterSeconds": 600, "inactiveAfterSeconds": 0}),
    ("upgradeStrategy", {"maximumOverCapacity": 1, "minimumHealthCapacity": 1}),
    ("role", "*"),
]


class ValidationError(Exception):
    """Becomes a 422 ``{"message": "Object is not valid", "details": [...]}``."""

    def __init__(self, details: list[JsonDict], message: str = "Object is not valid") -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> JsonDict:
        return {"message": self.message, "details": self.details}


class _Errors:
    def __init__(self) -> None:
        self.by_path: dict[str, list[str]] = {}

    def add(self, path: str, error: str) -> None:
        self.by_path.setdefault(path, []).append(error)

    def raise_if_any(self) -> None:
        if self.by_path:
            raise ValidationError([{"path": p, "errors": e} for p, e in self.by_path.items()])


def canonical_app_id(raw_id: str) -> str:
    """Marathon makes relative ids absolute (relative to the root group)."""
    path = "/" + raw_id.strip("/")
    return re.sub(r"/+", "/", path)


def check_app_id(app_id: str) -> str | None:
    """An error text for a bad (canonical) app id, else None."""
    segments = app_id.strip("/").split("/")
    if app_id.strip("/") == "":
        return "Path needs at least one segment"
    for segment in segments:
        if not ID_SEGMENT.match(segment):
            return f"'{segment}' {ID_SEGMENT_TEXT}"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _legacy_to_current(d: JsonDict) -> None:
    """Accept legacy (<=1.4) shapes: ``ports``, ``container.docker.network``, ``ipAddress``."""
    ports = d.pop("ports", None)
    if ports is not None and "portDefinitions" not in d and isinstance(ports, list):
        d["portDefinitions"] = [{"port": p, "protocol": "tcp"} for p in ports]
    container = d.get("container")
    docker = container.get("docker") if isinstance(container, dict) else None
    if isinstance(docker, dict) and "network" in docker:
        legacy = str(docker.pop("network")).upper()
        mode = {"BRIDGE": "container/bridge", "USER": "container"}.get(legacy, "host")
        d.setdefault("networks", [{"mode": mode}])
        if "portMappings" in docker and isinstance(container, dict):
            container.setdefault("portMappings", docker.pop("portMappings"))
    ip_address = d.pop("ipAddress", None)
    if isinstance(ip_address, dict) and "networks" not in d:
        network: JsonDict = {"mode": "container"}
        if ip_address.get("networkName"):
            network["name"] = ip_address["networkName"]
        d["networks"] = [network]


def _check_ports(d: JsonDict, mode: str, errors: _Errors) -> int:
    """Normalises port definitions/mappings in place; returns the number of ports."""
    seen: set[int] = set()

    def unique(path: str, port: int) -> None:
        if port != 0 and port in seen:
            errors.add(path, "Port numbers must be unique")
        seen.add(port)

    if mode == "host":
        if (d.get("container") or {}).get("portMappings"):
            errors.add(
                "/container/portMappings", "Port mappings are not allowed with host networking"
            )
        defs = d.get("portDefinitions")
        if defs is None:
            defs = [{"port": 0, "protocol": "tcp"}]
        if not isinstance(defs, list):
            errors.add("/portDefinitions", "error.expected.jsarray")
            return 0
        out = []
        for i, pd in enumerate(defs):
            path = f"/portDefinitions({i})"
            if not isinstance(pd, dict) or not _is_int(pd.get("port", 0)):
                errors.add(path + "/port", "error.expected.jsnumber")
                continue
            port = int(pd.get("port", 0))
            if not 0 <= port <= 65535:
                errors.add(path + "/port", f"got {port}, expected between 0 and 65535")
            unique(path + "/port", port)
            item: JsonDict = {}
            if pd.get("name") is not None:
                if not PORT_NAME.match(str(pd["name"])):
                    errors.add(path + "/name", "must fully match regular expression '^[a-z0-9-]+$'")
                item["name"] = pd["name"]
            item["port"] = port
            item["protocol"] = pd.get("protocol", "tcp")
            if pd.get("labels"):
                item["labels"] = pd["labels"]
            out.append(item)
        d["portDefinitions"] = out
        return len(out)
    if d.get("portDefinitions"):
        errors.add("/portDefinitions", f"Port definitions are not allowed with network mode {mode}")
    d.pop("portDefinitions", None)
    if not isinstance(d.get("container"), dict):
        d["container"] = {"type": "DOCKER"}
    container = d["container"]
    mappings = container.get("portMappings") or []
    if not isinstance(mappings, list):
        errors.add("/container/portMappings", "error.expected.jsarray")
        return 0
    out = []
    for i, pm in enumerate(mappings):
        path = f"/container/portMappings({i})"
        if not isinstance(pm, dict):
            errors.add(path, "error.expected.jsobject")
            continue
        item = {"containerPort": pm.get("containerPort", 0)}
        if mode == "container/bridge":
            item["hostPort"] = pm.get("hostPort", 0)
        elif pm.get("hostPort") is not None:
            item["hostPort"] = pm["hostPort"]
        if pm.get("labels"):
            item["labels"] = pm["labels"]
        if pm.get("name") is not None:
            item["name"] = pm["name"]
        item["protocol"] = pm.get("protocol", "tcp")
        item["servicePort"] = pm.get("servicePort", 0)
        for key in ("containerPort", "hostPort", "servicePort"):
            if key in item and not (_is_int(item[key]) and 0 <= item[key] <= 65535):
                errors.add(f"{path}/{key}", f"got {item[key]!r}, expected between 0 and 65535")
        if _is_int(item["servicePort"]):
            unique(path + "/servicePort", item["servicePort"])
        out.append(dict(sorted(item.items())))
    container["portMappings"] = out
    return len(out)


def _check_health_checks(d: JsonDict, n_ports: int, errors: _Errors) -> None:
    checks = d.get("healthChecks") or []
    if not isinstance(checks, list):
        errors.add("/healthChecks", "error.expected.jsarray")
        return
    out = []
    for i, hc in enumerate(checks):
        path = f"/healthChecks({i})"
        if not isinstance(hc, dict):
            errors.add(path, "error.expected.jsobject")
            continue
        item = dict(hc)
        protocol = str(item.get("protocol", "HTTP")).upper()
        if protocol not in HEALTH_PROTOCOLS:
            errors.add(path + "/protocol", f"error.expected.validenumvalue ({protocol})")
        item["protocol"] = protocol
        for key, default in (
            ("gracePeriodSeconds", 300),
            ("intervalSeconds", 60),
            ("timeoutSeconds", 20),
            ("maxConsecutiveFailures", 3),
            ("delaySeconds", 15),
        ):
            item.setdefault(key, default)
            if not _is_number(item[key]) or item[key] < 0:
                errors.add(f"{path}/{key}", "error.expected.jsnumber")
        if protocol != "COMMAND":
            if "port" not in item:
                item.setdefault("portIndex", 0)
                if not _is_int(item["portIndex"]) or not 0 <= item["portIndex"] < max(n_ports, 0):
                    errors.add(
                        path + "/portIndex", "Health check port index must address an app port"
                    )
            item.setdefault("ipProtocol", "IPv4")
        if protocol in ("HTTP", "HTTPS", "MESOS_HTTP", "MESOS_HTTPS"):
            item.setdefault("path", "/")
        out.append(dict(sorted(item.items())))
    d["healthChecks"] = out


CONSTRAINT_OPERATORS = "UNIQUE, CLUSTER, GROUP_BY, LIKE, MAX_PER or UNLIKE"


def _constraint_error(c: list[Any]) -> str | None:
    """Why Marathon would refuse one ``[field, operator, value?]`` constraint."""
    if not 2 <= len(c) <= 3:
        return "Each constraint must have either 2 or 3 fields"
    if not all(isinstance(part, str) for part in c):
        return "error.expected.jsstring"
    field, op, value = c[0], c[1], (c[2] if len(c) == 3 else None)
    if not field:
        return "Missing field and operator"
    if op == "UNIQUE":
        return None if value is None else "Value specified but not used"
    if op == "CLUSTER":
        return None if value else "Missing value"
    if op in ("GROUP_BY", "MAX_PER"):
        if value is None or value.lstrip("-").isdigit():
            return None
        return ("Value was specified but is not a number" if op == "GROUP_BY"
                else "Value was not specified or is not a number")
    if op in ("LIKE", "UNLIKE"):
        if value is None:
            return "A regular expression value must be provided"
        try:
            re.compile(value)
        except re.error:
            return f"'{value}' is not a valid regular expression"
        return None
    return f"Constraint operator must be one of the following {CONSTRAINT_OPERATORS}"


def _check_constraints(d: JsonDict, errors: _Errors) -> None:
    constraints = d.get("constraints")
    if constraints is None:
        return
    if not isinstance(constraints, list):
        errors.add("/constraints", "error.expected.jsarray")
        return
    for i, c in enumerate(constraints):
        problem = (_constraint_error(c) if isinstance(c, list)
                   else "error.expected.jsarray")
        if problem:
            errors.add(f"/constraints({i})", problem)


def normalize_app(raw: Any, app_id: str | None = None) -> JsonDict:
    """Validate ``raw`` and return it in the current shape with defaults.

    ``app_id`` (from the URL of a PUT) wins over the body's id.
    Raises :class:`ValidationError`.
    """
    errors = _Errors()
    if not isinstance(raw, dict):
        raise ValidationError([{"path": "/", "errors": ["error.expected.jsobject"]}])
    d: JsonDict = copy.deepcopy(
        {k: v for k, v in raw.items() if k not in RUNTIME_KEYS - {"ports", "ipAddress"}}
    )
    _legacy_to_current(d)
    raw_id = app_id if app_id is not None else d.get("id")
    if not isinstance(raw_id, str) or not raw_id.strip("/"):
        errors.add(
            "/id", "error.path.missing" if raw_id is None else "Path needs at least one segment"
        )
        errors.raise_if_any()
    assert isinstance(raw_id, str)
    canonical = canonical_app_id(raw_id)
    id_error = check_app_id(canonical)
    if id_error:
        errors.add("/id", id_error)
    d["id"] = canonical
    instances = d.get("instances", 1)
    if not _is_int(instances) or instances < 0:
        errors.add("/instances", f"got {instances}, expected 0 or more")
    for key, default in (("cpus", 1), ("mem", 128)):
        if not _is_number(d.get(key, default)) or d.get(key, default) < 0:
            errors.add(f"/{key}", "error.expected.jsnumber")
    if "cmd" in d and d["cmd"] is not None and not isinstance(d["cmd"], str):
        errors.add("/cmd", "error.expected.jsstring")
    if (
        "args" in d
        and d["args"] is not None
        and not (isinstance(d["args"], list) and all(isinstance(a, str) for a in d["args"]))
    ):
        errors.add("/args", "error.expected.jsarray")
    labels = d.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        errors.add("/labels", "error.expected.jsstring")
    networks = d.get("networks") or [{"mode": "host"}]
    modes = [n.get("mode", "container") if isinstance(n, dict) else None for n in networks]
    if any(m not in NETWORK_MODES for m in modes):
        errors.add("/networks", "error.expected.validenumvalue")
        mode = "host"
    else:
        mode = str(modes[0])
        if len(set(modes)) > 1 or (mode != "container" and len(modes) > 1):
            errors.add("/networks", f"{mode} networks may not be used with anything else")
    n_ports = _check_ports(d, mode, errors)
    _check_health_checks(d, n_ports, errors)
    _check_constraints(d, errors)
    strategy = d.get("upgradeStrategy") or {}
    for key in ("minimumHealthCapacity", "maximumOverCapacity"):
        value = strategy.get(key, 1)
        if not _is_number(value) or not 0 <= value <= 1:
            errors.add(f"/upgradeStrategy/{key}", f"got {value}, expected between 0.0 and 1.0")
    errors.raise_if_any()

    out: JsonDict = {}
    for key, default in HEAD_DEFAULTS:
        value = d.pop(key, None)
        out[key] = copy.deepcopy(default) if value is None else value
    out["upgradeStrategy"] = {
        "maximumOverCapacity": strategy.get("maximumOverCapacity", 1),
        "minimumHealthCapacity": strategy.get("minimumHealthCapacity", 1),
    }
    out["id"] = d.pop("id")
    for key in ("cmd", "args", "user"):
        if d.get(key) is not None:
            out[key] = d.pop(key)
        d.pop(key, None)
    out["instances"] = d.pop("instances", 1)
    out["cpus"] = d.pop("cpus", 1)
    out["mem"] = d.pop("mem", 128)
    out["constraints"] = d.pop("constraints", None) or []
    out["env"] = d.pop("env", None) or {}
    if d.get("container"):
        out["container"] = d.pop("container")
    d.pop("container", None)
    out["networks"] = [dict(n) for n in networks]
    if mode == "host":
        out["portDefinitions"] = d.pop("portDefinitions")
    out["labels"] = dict(labels)
    out["healthChecks"] = d.pop("healthChecks")
    out["readinessChecks"] = d.pop("readinessChecks", None) or []
    out.update(d)  # anything else the client sent, verbatim
    return out


def merge_update(existing: JsonDict, patch: Any) -> JsonDict:
    """Apply a PUT body (partial update) to a stored definition."""
    if not isinstance(patch, dict):
        raise ValidationError([{"path": "/", "errors": ["error.expected.jsobject"]}])
    merged = copy.deepcopy(existing)
    patch = {k: v for k, v in patch.items() if k not in RUNTIME_KEYS - {"ports", "ipAddress"}}
    for key, value in patch.items():
        merged[key] = copy.deepcopy(value)
    new_networks = patch.get("networks")
    if new_networks is not None and "portDefinitions" not in patch:
        modes = [n.get("mode") for n in new_networks if isinstance(n, dict)]
        if modes and modes[0] != "host":
            merged.pop("portDefinitions", None)
        elif "container" not in patch and isinstance(merged.get("container"), dict):
            merged["container"].pop("portMappings", None)
    if "ports" in patch:
        merged.pop("portDefinitions", None)
    return merged
