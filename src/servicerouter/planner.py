"""Desired state vs what HAProxy has → a :class:`Plan`. Pure.

The one decision that makes servicerouter what it is: a change is applied as
runtime commands into slots, or it needs a reload, and then the plan says why.
Backends that can change at runtime do so at once even when others need a
reload, so one new app never delays another app's task churn.

The planner only looks at the backends named ``dirty``: its cost grows with
the size of the change, not with the number of apps and tasks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .haproxy.render import server_params
from .haproxy.runtime_commands import (
    add_server,
    enable_health,
    set_check_port,
    set_server_addr,
    set_server_state,
)
from .haproxy.runtime_parse import ServerState
from .layout import BackendShape, DesiredService, Layout, SlotTable
from .model import Endpoint, EndpointState
from .naming import slot_name


class ReloadReason(str, enum.Enum):
    """Why a change cannot be made at runtime. Values are metric labels."""

    NEW_APP = "new_app"
    REMOVED_APP = "removed_app"
    OPTIONS_CHANGED = "options_changed"
    CAPACITY = "capacity"
    RUNTIME_ERROR = "runtime_error"
    RESYNC = "resync"
    MANUAL = "manual"  # SIGHUP
    STARTUP = "startup"  # the daemon's first config

    def __str__(self) -> str:
        return self.value


@dataclass
class Plan:
    """Runtime commands, the slot table they produce, and any reload needed."""

    commands: list[str] = field(default_factory=list)
    # New slot lists of the backends the commands change (applied on success).
    slots: dict[str, list[Endpoint | None]] = field(default_factory=dict)
    # Backends grown at runtime with ``add server``: name → new slot count.
    grown: dict[str, int] = field(default_factory=dict)
    # Backend → why it needs a reload.
    reload: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.commands or self.reload)


def _state(e: Endpoint) -> str:
    return "drain" if e.state is EndpointState.DRAIN else "ready"


def plan_backend(shape: BackendShape, current: Sequence[Endpoint | None],
                 want: Sequence[Endpoint]) -> tuple[list[str], list[Endpoint | None]] | None:
    """Commands that turn ``current`` slots into ``want``; None when out of capacity.

    A task keeps its slot while it lives; freed slots are reused, lowest first.
    When the slots run out and the backend's algorithm allows it, servers are
    added at runtime (they appear in the next rendered config too).
    """
    b = shape.name
    by_task = {e.task_id: e for e in want}
    slots = list(current) + [None] * (shape.slots - len(current))
    commands: list[str] = []
    kept: set[str] = set()
    for i, held in enumerate(slots):
        if held is None:
            continue
        s = slot_name(i + 1)
        new = by_task.get(held.task_id)
        if new is None:
            commands.append(set_server_state(b, s, "maint"))
            slots[i] = None
            continue
        kept.add(held.task_id)
        if (new.ip, new.port) != (held.ip, held.port):
            commands.append(set_server_addr(b, s, new.ip, new.port))
        if new.check_port and new.check_port != held.check_port:
            commands.append(set_check_port(b, s, new.check_port))
        if new.state is not held.state or (new.ip, new.port) != (held.ip, held.port):
            commands.append(set_server_state(b, s, _state(new)))
        slots[i] = new
    free = iter([i for i, held in enumerate(slots) if held is None])
    for e in want:
        if e.task_id in kept or e.state is EndpointState.DRAIN:
            continue  # a task that is already going away never gets a slot
        slot = next(free, None)
        if slot is None:
            if not shape.dynamic:
                return None
            slot = len(slots)
            slots.append(None)
            s = slot_name(slot + 1)
            params = server_params(shape, s).split()
            if e.check_port:
                params += ["port", str(e.check_port)]
            commands.append(add_server(b, s, e.ip, e.port, *params))
            if shape.service.options.health_check:
                commands.append(enable_health(b, s))
        else:
            s = slot_name(slot + 1)
            commands.append(set_server_addr(b, s, e.ip, e.port))
            if e.check_port:
                commands.append(set_check_port(b, s, e.check_port))
        commands.append(set_server_state(b, s, "ready"))
        slots[slot] = e
    return commands, slots


def plan(layout: Layout, table: SlotTable, desired: Mapping[str, DesiredService],
         dirty: Iterable[str]) -> Plan:
    """Plan the backends in ``dirty`` (names of services that may have changed)."""
    result = Plan()
    for name in sorted(set(dirty)):
        shape, want = layout.get(name), desired.get(name)
        if shape is None:
            if want is not None:
                result.reload[name] = ReloadReason.NEW_APP
            continue
        if want is None:
            result.reload[name] = ReloadReason.REMOVED_APP
            continue
        if want.service != shape.service:
            result.reload[name] = ReloadReason.OPTIONS_CHANGED
            continue
        current = table.get(name, [])
        changed = plan_backend(shape, current, want.endpoints)
        if changed is None:
            result.reload[name] = ReloadReason.CAPACITY
            continue
        commands, slots = changed
        if commands:
            result.commands.extend(commands)
            result.slots[name] = slots
            if len(slots) > shape.slots:
                result.grown[name] = len(slots)
    return result


def _matches(expected: Endpoint | None, actual: ServerState) -> bool:
    if expected is None:
        return actual.in_maint
    if (actual.addr, actual.port) != (expected.ip, expected.port) or actual.in_maint:
        return False
    return actual.draining == (expected.state is EndpointState.DRAIN)


def reconcile(layout: Layout, table: SlotTable,
              actual: Iterable[ServerState]) -> tuple[list[str], dict[str, ReloadReason]]:
    """Compare HAProxy's ``show servers state`` with the slot table.

    Returns the commands that repair differences (a runtime change lost while
    a fresh worker started, an HAProxy restarted behind our back with the
    config's initial states) and the backends HAProxy lacks or has too few
    servers in, which only a reload can fix.
    """
    have = {(s.backend, s.server): s for s in actual}
    commands: list[str] = []
    broken: dict[str, ReloadReason] = {}
    for name, shape in layout.items():
        slots = table.get(name, [])
        for i in range(shape.slots):
            s = slot_name(i + 1)
            got = have.get((name, s))
            if got is None:
                broken[name] = ReloadReason.RESYNC
                break
            expected = slots[i] if i < len(slots) else None
            if _matches(expected, got):
                continue
            if expected is None:
                commands.append(set_server_state(name, s, "maint"))
            else:
                if (got.addr, got.port) != (expected.ip, expected.port):
                    commands.append(set_server_addr(name, s, expected.ip, expected.port))
                commands.append(set_server_state(name, s, _state(expected)))
    return commands, broken
