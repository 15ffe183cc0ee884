"""Adopting a running HAProxy at start: its slot table, and whether our config matches. Pure.

A daemon that restarts next to an HAProxy it did not start (``--haproxy-master-socket``,
``--reload-command``, or ``--start-haproxy`` on the config of an earlier run) reads
the running config file and ``show servers state`` (at the edge, in the engine) and
gives them here. :func:`adopt` rebuilds the slot table: slot ``sN`` of a backend holds
the desired endpoint whose address it serves. If our render of that layout and table
has the same *shape* as the running file (:func:`config_shape`: everything but server
addresses, their ``disabled`` flag and comments, which runtime commands change), no
reload is needed: the planner turns the adopted table into the desired one at runtime,
and reconcile puts any slot still serving a dead task into maintenance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .haproxy.runtime_parse import ServerState
from .layout import BackendShape, DesiredService, Layout, SlotTable
from .model import Endpoint
from .naming import SLOT_PREFIX

_SERVER = re.compile(r"^\s*server\s+(\S+)\s+\S+(?:\s+disabled)?(.*)$")
_SLOT = re.compile(rf"^{re.escape(SLOT_PREFIX)}([1-9][0-9]*)$")


def config_shape(text: str) -> list[str]:
    """The lines of a config that only a reload changes: server lines without their
    address and ``disabled`` flag, no comments, no blank lines."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _SERVER.match(line)
        # "/./": the admin socket's other spelling after a restore (see
        # runtime.respell_socket_path); the same file, so the same shape.
        out.append(f"server {m.group(1)}{m.group(2).rstrip()}" if m
                   else line.rstrip().replace("/./", "/"))
    return out


def adopt(desired: Mapping[str, DesiredService], servers: Iterable[ServerState],
          backend_of: Mapping[str, str] | None = None) -> tuple[Layout, SlotTable]:
    """The layout and slot table HAProxy holds now, for the desired backends it has.

    A slot holds the desired endpoint at the address it serves (in maintenance: a
    free slot); a slot serving an address no desired endpoint has is free here, and
    reconcile will put it into maintenance. Backends HAProxy lacks are left out (their
    render then differs from the running file, so the daemon reloads). ``backend_of``:
    range mode, the spare backend a service lives in (its port map entry)."""
    slots_of: dict[str, dict[int, ServerState]] = {}
    for s in servers:
        m = _SLOT.match(s.server)
        if m:
            slots_of.setdefault(s.backend, {})[int(m.group(1))] = s
    layout: Layout = {}
    table: SlotTable = {}
    for name, want in sorted(desired.items()):
        backend = (backend_of or {}).get(name, name)
        have = slots_of.get(backend)
        if not have:
            continue
        by_address = {(e.ip, e.port): e for e in want.endpoints}
        size = max(have)
        slots: list[Endpoint | None] = [None] * size
        for number, state in have.items():
            if not state.in_maint:
                slots[number - 1] = by_address.pop((state.addr, state.port), None)
        layout[name] = BackendShape(backend, want.service, size)
        table[name] = slots
    return layout, table
