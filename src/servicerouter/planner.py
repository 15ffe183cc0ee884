"""Desired state vs what HAProxy has → a :class:`Plan`. Pure.

The one decision that makes servicerouter what it is: a change is applied as
runtime commands into slots, or it needs a reload, and then the plan says why.
Backends that can change at runtime do so at once even when others need a
reload, so one new app never delays another app's task churn.

The planner only looks at the backends named ``dirty``: its cost grows with
the size of the change, not with the number of apps and tasks. Each is planned
on its own: one whose planning raises is left to a reload (``plan_error``) and
the others' changes go on.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import pool
from .haproxy.render import server_params
from .haproxy.runtime_commands import (
    add_server,
    enable_health,
    set_check_port,
    set_server_addr,
    set_server_health,
    set_server_state,
)
from .haproxy.runtime_parse import ServerState
from .layout import BackendShape, DesiredService, Layout, Settings, SlotTable
from .model import Endpoint, EndpointState
from .naming import slot_name

if TYPE_CHECKING:
    from .rangeindex import RangeIndex


class ReloadReason(str, enum.Enum):
    """Why a change cannot be made at runtime. Values are metric labels."""

    NEW_APP = "new_app"
    REMOVED_APP = "removed_app"
    OPTIONS_CHANGED = "options_changed"
    CAPACITY = "capacity"
    RUNTIME_ERROR = "runtime_error"
    RESYNC = "resync"
    # Range mode (pool.py): what still needs a reload, and why.
    OWN_FRONTEND = "own_frontend"  # a port outside the range, a bind address, a certificate
    OUTSIDE_POOL = "outside_pool"  # options no spare backend has
    POOL_EXHAUSTED = "pool_exhausted"  # no spare of the app's shape left
    VHOST_ACL = "vhost_acl"  # a vhost change the host map cannot express (paths, wildcards)
    # Planning a backend's runtime changes raised (a bug, or an input admission let
    # through): the reload renders it from the desired state instead. That backend only.
    PLAN_ERROR = "plan_error"
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
    # Range mode: layout entries the commands change (None: gone); a spare taken by an
    # app appears as its service under the spare's name, a returned one as a spare.
    layout: dict[str, BackendShape | None] = field(default_factory=dict)
    # Backend → a sentence on why it needs a reload (logged; ``reload`` has the reason).
    why: dict[str, str] = field(default_factory=dict)
    # Backend → what planning it raised (its reason is PLAN_ERROR; the engine logs it).
    errors: dict[str, Exception] = field(default_factory=dict)

    def failed(self, name: str, exc: Exception) -> None:
        """Planning ``name`` raised: it alone is left to a reload, the rest of the batch
        goes on (one tenant's backend must not hold back every other's update)."""
        self.reload[name] = ReloadReason.PLAN_ERROR
        self.errors[name] = exc
        for planned in (self.slots, self.grown, self.layout, self.why):
            planned.pop(name, None)

    def changed(self) -> set[str]:
        """The backends the commands change: slots, and in range mode also an app's map
        entries alone (a vhost added or moved). A reload instead must cover them all."""
        return {*self.slots, *(n for n, s in self.layout.items() if s and s.app_id)}

    def __bool__(self) -> bool:
        return bool(self.commands or self.reload)


def _state(e: Endpoint) -> str:
    return "drain" if e.state is EndpointState.DRAIN else "ready"


def vouched_checks(shape: BackendShape, vouched: bool) -> bool:
    """Whether ``shape``'s servers are checked by HAProxy and routed only once Marathon
    calls them healthy (``vouched``: ``Settings.health_check``, off with
    ``--no-health-check``).

    Such a server is put in rotation at full check health (``set server … health up``):
    HAProxy starts one that leaves maintenance, or starts with a new worker, at health
    ``rise``, where its first failed check takes it DOWN (measured on 2.6.12: ~2 check
    intervals of 503 for an app whose fresh tasks meet one slow moment together, though
    Marathon just called them healthy). At full health it takes ``fall`` failures in a
    row, as the app's Marathon check asks. Under ``--no-health-check`` HAProxy's own
    check is the only gate, and its default start is kept."""
    return vouched and shape.service.options.health_check


def _ready(b: str, s: str, e: Endpoint, healthy: bool) -> list[str]:
    """The commands that put slot ``s`` of ``b`` in ``e``'s state, from maintenance or
    another address."""
    state = _state(e)
    if healthy and state == "ready":
        return [set_server_state(b, s, state), set_server_health(b, s, "up")]
    return [set_server_state(b, s, state)]


def health_up(layout: Layout, table: SlotTable, vouched: bool) -> list[str]:
    """After a reload: every routed server of a backend with :func:`vouched_checks` to
    full health, since the new worker starts them all at ``rise``."""
    commands: list[str] = []
    for key, shape in layout.items():
        if not vouched_checks(shape, vouched):
            continue
        for i, e in enumerate(table.get(key, ())):
            if e is not None and e.state is EndpointState.READY:
                commands.append(set_server_health(shape.name, slot_name(i + 1), "up"))
    return commands


def plan_backend(shape: BackendShape, current: Sequence[Endpoint | None],
                 want: Sequence[Endpoint], vouched: bool = True,
                 ) -> tuple[list[str], list[Endpoint | None]] | None:
    """Commands that turn ``current`` slots into ``want``; None when out of capacity.

    A task keeps its slot while it lives; freed slots are reused, lowest first.
    When the slots run out and the backend's algorithm allows it, servers are
    added at runtime (they appear in the next rendered config too).

    A gone task's slot goes to maint just before a new task takes it, and the slots
    left free go to maint last: a backend whose every task was replaced (as after a
    reload that missed them) never has all of them in maint at once, so HAProxy
    neither answers 503 for a moment nor reports the backend down.

    A server put in rotation gets full check health when :func:`vouched_checks`.
    """
    b = shape.name
    healthy = vouched_checks(shape, vouched)
    by_task = {e.task_id: e for e in want}
    slots = list(current) + [None] * (shape.slots - len(current))
    commands: list[str] = []
    kept: set[str] = set()
    gone: set[int] = set()  # slots whose task is gone: reused below, or to maint after
    for i, held in enumerate(slots):
        if held is None:
            continue
        new = by_task.get(held.task_id)
        if new is None:
            gone.add(i)
            slots[i] = None
            continue
        kept.add(held.task_id)
        if new is held:  # unchanged (most slots of a dirty backend): no command
            continue
        s = slot_name(i + 1)
        if (new.ip, new.port) != (held.ip, held.port):
            commands.append(set_server_addr(b, s, new.ip, new.port))
        if new.check_port and new.check_port != held.check_port:
            commands.append(set_check_port(b, s, new.check_port))
        if new.state is not held.state or (new.ip, new.port) != (held.ip, held.port):
            commands += _ready(b, s, new, healthy)
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
            if slot in gone:
                gone.discard(slot)
                commands.append(set_server_state(b, s, "maint"))
            commands.append(set_server_addr(b, s, e.ip, e.port))
            if e.check_port:
                commands.append(set_check_port(b, s, e.check_port))
        commands += _ready(b, s, e, healthy)
        slots[slot] = e
    commands += [set_server_state(b, slot_name(i + 1), "maint") for i in sorted(gone)]
    return commands, slots


def plan(layout: Layout, table: SlotTable, desired: Mapping[str, DesiredService],
         dirty: Iterable[str], settings: Settings | None = None,
         index: RangeIndex | None = None) -> Plan:
    """Plan the backends in ``dirty`` (names of services that may have changed).

    With ``settings`` in range mode, apps arriving, leaving or changing vhosts are map
    commands too (:func:`.planrange.plan_range`, with ``layout``'s ``index``)."""
    if settings is not None and pool.range_on(settings):
        from .planrange import plan_range  # it builds on this module

        return plan_range(layout, table, desired, dirty, settings, index)
    vouched = settings.health_check if settings is not None else True
    result = Plan()
    for name in sorted(set(dirty)):
        try:
            _plan_one(result, name, layout.get(name), table, desired.get(name), vouched)
        except Exception as exc:  # this backend's alone: the others' go on
            result.failed(name, exc)
    return result


def _plan_one(result: Plan, name: str, shape: BackendShape | None, table: SlotTable,
              want: DesiredService | None, vouched: bool) -> None:
    """:func:`plan` of one backend into ``result``, which changes only once all of it
    is known (what raises before leaves ``result`` as it was)."""
    if shape is None:
        if want is not None:
            result.reload[name] = ReloadReason.NEW_APP
        return
    if want is None:
        result.reload[name] = ReloadReason.REMOVED_APP
        return
    if want.service != shape.service:
        result.reload[name] = ReloadReason.OPTIONS_CHANGED
        return
    changed = plan_backend(shape, table.get(name, []), want.endpoints, vouched)
    if changed is None:
        result.reload[name] = ReloadReason.CAPACITY
        return
    commands, slots = changed
    if commands:
        result.slots[name] = slots
        if len(slots) > shape.slots:
            result.grown[name] = len(slots)
        result.commands.extend(commands)


def _matches(expected: Endpoint | None, actual: ServerState) -> bool:
    if expected is None:
        return actual.in_maint
    if (actual.addr, actual.port) != (expected.ip, expected.port) or actual.in_maint:
        return False
    return actual.draining == (expected.state is EndpointState.DRAIN)


def reconcile(layout: Layout, table: SlotTable, actual: Iterable[ServerState],
              vouched: bool = True) -> tuple[list[str], dict[str, ReloadReason]]:
    """Compare HAProxy's ``show servers state`` with the slot table.

    Returns the commands that repair differences (a runtime change lost while
    a fresh worker started, an HAProxy restarted behind our back with the
    config's initial states) and the backends HAProxy lacks or has too few
    servers in, which only a reload can fix. A server put back in rotation gets full
    check health as in :func:`plan_backend`.
    """
    have = {(s.backend, s.server): s for s in actual}
    commands: list[str] = []
    broken: dict[str, ReloadReason] = {}
    for key, shape in layout.items():
        slots = table.get(key, [])
        name = shape.name  # in range mode an app may live in a spare backend
        healthy = vouched_checks(shape, vouched)
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
                moved = (got.addr, got.port) != (expected.ip, expected.port)
                if moved:  # (the check port of the task the file or a lost change left)
                    commands.append(set_server_addr(name, s, expected.ip, expected.port))
                    if expected.check_port:
                        commands.append(set_check_port(name, s, expected.check_port))
                commands += _ready(name, s, expected, healthy and (got.in_maint or moved))
    return commands, broken
