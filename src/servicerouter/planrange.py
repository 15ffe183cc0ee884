"""Range mode's planning (``--service-port-range``): apps, vhosts and backend shapes
that come and go through HAProxy's maps and a pool of spare backends. Pure.

:func:`.planner.plan` hands a plan to :func:`plan_range` in range mode; the slots of
one backend are planned by :func:`.planner.plan_backend` as everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from . import pool
from .haproxy.render import FREE_SLOT_ADDRESS
from .haproxy.runtime_commands import set_server_addr, set_server_state
from .layout import BackendShape, DesiredService, Layout, Settings, SlotTable
from .model import Endpoint, Options, Service
from .naming import slot_name
from .planner import Plan, ReloadReason, plan_backend
from .rangeindex import RangeIndex

_FREE_SLOT = FREE_SLOT_ADDRESS.split(":")[0], int(FREE_SLOT_ADDRESS.split(":")[1])


def plan_range(layout: Layout, table: SlotTable, desired: Mapping[str, DesiredService],
               dirty: Iterable[str], settings: Settings, index: RangeIndex | None = None
               ) -> Plan:
    """:func:`.planner.plan` in range mode. A new app whose service the port map can route takes
    a spare of its shape: slots first, then the map entries (it is never routed to an
    empty backend). A removed one loses its map entries first, then its slots go to
    maint and its backend returns to the pool (a spare it took, or its own backend from
    a reload, free under :func:`pool.spare_key`). An app whose backend options change
    (mode, balance, health check, ...) moves into a spare of its new shape: the new
    backend's slots, then the map entry, then the old backend's slots to maint and the
    old backend back to the pool. A vhost change is a host map change when the vhost
    ACLs that remain stay the same; otherwise, a reload and why. An entry whose planning
    raises is left to a reload (``plan_error``), the others go on.

    ``index``: the :class:`~.rangeindex.RangeIndex` of ``layout``, which answers what
    this otherwise reads from every entry (the free spares, the vhost routes)."""
    result = Plan()
    dirty = sorted(set(dirty))
    free: dict[Options, list[BackendShape]] | None = None

    def spares_of(key: Options) -> list[BackendShape]:
        """The free spares of shape ``key``, lowest name last (gathered once a plan)."""
        nonlocal free
        if index is not None:  # only this shape's
            free = {} if free is None else free
            if key not in free:
                free[key] = index.spares(key)
        elif free is None:
            free = {}
            for held in layout.values():
                if pool.is_spare(held):
                    free.setdefault(held.service.options, []).append(held)
            for spares in free.values():
                spares.sort(key=lambda s: s.name, reverse=True)  # [-1] is the lowest
        return free.setdefault(key, [])

    # Per planned entry: its server commands, layout changes (None: gone) and slots, so
    # that a vhost change the host map cannot express is dropped whole. ``late``: the
    # commands that empty a backend an app moved out of, after the map points elsewhere.
    commands: dict[str, list[str]] = {}
    late: dict[str, list[str]] = {}
    changes: dict[str, dict[str, BackendShape | None]] = {}
    slots: dict[str, dict[str, list[Endpoint | None]]] = {}
    vhosted: set[str] = set()  # entries whose change touches the vhost routes
    taken_by: dict[str, tuple[list[BackendShape], BackendShape]] = {}  # spares taken

    def reload(name: str, reason: ReloadReason, why: str | None = None) -> None:
        result.reload[name] = reason
        if why:
            result.why[name] = why

    def into_spare(name: str, svc: Service, want: DesiredService,
                   spares: list[BackendShape]) -> bool:
        """Fill one of ``spares`` with ``want``'s tasks as ``name``'s backend (its
        commands, layout entries and slots); False, and a capacity reload, when they
        do not fit."""
        taken = _take(spares, name)
        taken_by[name] = (spares, taken)  # given back if planning the entry raises
        shape = BackendShape(taken.name, svc, taken.slots)
        changed = plan_backend(shape, [], want.endpoints, settings.health_check)
        if changed is None:
            spares.append(taken)
            del taken_by[name]
            reload(name, ReloadReason.CAPACITY)
            return False
        if len(changed[1]) > shape.slots:  # grown with ``add server``: all of it counts
            shape = BackendShape(taken.name, svc, len(changed[1]))  # (reconcile, _vacate)
        commands[name] = changed[0]
        changes[name] = {pool.spare_key(taken.name): None, name: shape}
        slots[name] = {name: changed[1]}
        return True

    def plan_entry(name: str) -> None:
        """One dirty entry into ``commands``, ``late``, ``changes``, ``slots`` and
        ``vhosted`` (or ``result``'s reloads)."""
        shape, want = layout.get(name), desired.get(name)
        if shape is not None and pool.is_spare(shape):
            return  # a spare's own name is never an app's (naming.py)
        if want is None:
            if shape is None:
                return
            if not pool.map_routed(shape, settings):  # a removed app with its own frontend
                reload(name, ReloadReason.REMOVED_APP,
                       f"has {pool.own_frontend(shape.service, settings)}")
                return
            current = table.get(name, [])
            changes[name] = {name: None}
            slots[name] = {name: [None] * len(current)}  # for the log; the entry goes
            commands[name] = _vacate(shape, current, changes[name], slots[name])
            if shape.service.options.vhosts:
                vhosted.add(name)
            return
        svc = want.service
        if shape is None:  # a new app
            why = pool.own_frontend(svc, settings)
            key = pool.shape_of(svc.options)
            if why is not None:
                reload(name, ReloadReason.OWN_FRONTEND, f"needs {why}")
                return
            if key is None:
                reload(name, ReloadReason.OUTSIDE_POOL, pool.outside_shapes_reason(svc))
                return
            spares = spares_of(key)
            if not spares:
                reload(name, ReloadReason.POOL_EXHAUSTED,
                       f"no spare backend of its shape ({svc.options.mode.value}, balance "
                       f"{svc.options.balance}) left; the reload refills the pool")
                return
            if into_spare(name, svc, want, spares) and svc.options.vhosts:
                vhosted.add(name)
            return
        entry: dict[str, BackendShape | None] = {}
        if svc != shape.service:
            key = pool.shape_of(svc.options)
            routed = (pool.map_routed(shape, settings) and pool.own_frontend(svc, settings) is None
                      and key is not None)
            if not routed:
                reload(name, ReloadReason.OPTIONS_CHANGED)
                return
            assert key is not None
            if key != pool.shape_of(shape.service.options):  # into a spare of the new shape
                spares = spares_of(key)
                if not spares:
                    reload(name, ReloadReason.OPTIONS_CHANGED,
                           f"its new options ({svc.options.mode.value}, balance "
                           f"{svc.options.balance}) need a spare backend of that shape, and "
                           "none is left; the reload refills the pool")
                    return
                if not into_spare(name, svc, want, spares):
                    return
                late[name] = _vacate(shape, table.get(name, []), changes[name], slots[name])
                if svc.options.vhosts or shape.service.options.vhosts:
                    vhosted.add(name)
                return
            shape = BackendShape(shape.name, svc, shape.slots)  # only vhosts or weight differ
            entry[name] = shape
            vhosted.add(name)
        changed = plan_backend(shape, table.get(name, []), want.endpoints,
                               settings.health_check)
        if changed is None:
            reload(name, ReloadReason.CAPACITY)
            vhosted.discard(name)
            return
        commands[name], slots[name], changes[name] = changed[0], {}, entry
        if changed[0]:
            slots[name][name] = changed[1]
            if len(changed[1]) > shape.slots:
                result.grown[name] = len(changed[1])

    for name in dirty:
        try:
            plan_entry(name)
        except Exception as exc:  # this entry's alone: the others' go on
            for planned in (commands, late, changes, slots):
                planned.pop(name, None)
            vhosted.discard(name)
            spare = taken_by.pop(name, None)
            if spare is not None:  # not taken after all: free for the next entries
                spare[0].append(spare[1])
            result.failed(name, exc)

    hosts_before: dict[str, str] = {}
    hosts_after: dict[str, str] = {}
    if vhosted:  # costs a pass over the vhost routes (without an index); only then
        merged: dict[str, BackendShape | None] = {}
        for entry_changes in changes.values():
            merged.update(entry_changes)
        if index is not None:
            same, hosts_before, hosts_after = index.host_change(merged)
        else:
            after = dict(layout)
            for changed_name, value in merged.items():
                if value is None:
                    after.pop(changed_name, None)
                else:
                    after[changed_name] = value
            hosts_before, acl_before = pool.host_routes(layout, settings)
            hosts_after, acl_after = pool.host_routes(after, settings)
            same = acl_before == acl_after
        if not same:  # the vhost part needs the config: all of it reloads
            for name in sorted(vhosted):
                reload(name, ReloadReason.VHOST_ACL,
                       "a vhost change the host map cannot express (a path, a wildcard, or "
                       "a host another app names too)")
                del commands[name], changes[name], slots[name]
                late.pop(name, None)
                result.grown.pop(name, None)
            hosts_after = hosts_before
    # The port map changes only where the layout does: compare just those entries.
    touched: dict[str, BackendShape | None] = {}
    for entry_changes in changes.values():
        touched.update(entry_changes)
    ports_before = pool.ports_map({k: s for k in touched if (s := layout.get(k)) is not None},
                                  settings)
    ports_after = pool.ports_map({k: s for k, s in touched.items() if s is not None}, settings)
    first_p, last_p = pool.map_diff(pool.map_path(settings, pool.PORTS_MAP), ports_before,
                                    ports_after)
    first_h, last_h = pool.map_diff(pool.map_path(settings, pool.HOSTS_MAP), hosts_before,
                                    hosts_after)
    result.commands = [*first_p, *first_h, *(c for n in commands for c in commands[n]),
                       *last_p, *last_h, *(c for n in late for c in late[n])]
    for entry_slots in slots.values():
        result.slots.update(entry_slots)
    for entry_changes in changes.values():
        result.layout.update(entry_changes)
    return result


def _take(spares: list[BackendShape], name: str) -> BackendShape:
    """The spare ``name`` takes: its own old backend if it is free (a re-created app, or
    one whose options came back), else the lowest."""
    own = [s for s in spares if s.name == name]
    taken = own[0] if own else spares[-1]
    spares.remove(taken)
    return taken


def _vacate(shape: BackendShape, current: Sequence[Endpoint | None],
            changes: dict[str, BackendShape | None],
            slots: dict[str, list[Endpoint | None]]) -> list[str]:
    """The commands that empty ``shape``'s backend, which no app's map entry names any
    more: its servers to maint, and, when a spare can take its options, their addresses
    cleared and the backend back to the pool (recorded in ``changes`` and ``slots``)."""
    held = [i for i, e in enumerate(current) if e is not None]
    commands = [set_server_state(shape.name, slot_name(i + 1), "maint") for i in held]
    back = pool.shape_of(shape.service.options)
    if back is not None:
        commands += [set_server_addr(shape.name, slot_name(i + 1), *_FREE_SLOT) for i in held]
        returned = pool.spare_key(shape.name)
        changes[returned] = pool.spare(shape.name, back, shape.slots)
        slots[returned] = [None] * shape.slots
    return commands
