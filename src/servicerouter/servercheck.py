"""Cheap comparison of ``show servers state`` lines with the slot table. Pure.

At 10,000 apps HAProxy reported 160,000 server slots (13.6 MB; 80,000 since). Parsing every
line into a :class:`~servicerouter.haproxy.runtime_parse.ServerState` and
comparing those took 0.9-1.1 s and 88 MB on the event loop. A slot that matches
needs none of that: :class:`StateScan` splits each line once, compares the four
fields reconcile cares about (address, port, maintenance, drain) with the slot
table and forgets it. Only the lines of backends that differ (or lack slots) are
kept; :func:`suspects` parses those few into ``ServerState`` values for the exact
:func:`servicerouter.planner.reconcile`, which decides the repairs as before.

Lines may be fed in any number of chunks (:meth:`StateScan.feed`), so the caller
can read the dump as it streams and yield to the event loop between chunks.
"""

from __future__ import annotations

from collections.abc import Iterable

from .haproxy.runtime_parse import ADMF_DRAIN, ADMF_MAINT, ParseError, ServerState
from .haproxy.runtime_parse import parse_servers_state as _parse
from .layout import BackendShape, Layout, SlotTable
from .model import Endpoint, EndpointState
from .naming import SLOT_PREFIX

_FIELDS = 19  # up to srv_port, as parse_servers_state requires
# Slot name -> index for the usual slot counts (others are parsed from the name).
_SLOT_INDEX = {f"{SLOT_PREFIX}{n}": n - 1 for n in range(1, 1025)}


class StateScan:
    """Feed ``show servers state`` lines; collects the backends that differ."""

    def __init__(self, layout: Layout, table: SlotTable) -> None:
        self.layout = layout
        self.table = table
        # HAProxy's backend name -> layout key: in range mode an app's service may live
        # in a spare backend (``_pool_N``) whose name is not the service's.
        self._key = {shape.name: key for key, shape in layout.items()}
        self.lines = 0
        self._version_seen = False
        self._seen: dict[str, int] = {}  # backend -> slots of its shape seen
        self._kept: dict[str, list[str]] = {}  # suspect backend -> its lines
        self._name: str | None = None
        self._shape: BackendShape | None = None
        self._expected: list[tuple[str, str, bool] | None] = []  # per slot of _shape
        self._admin_values: dict[str, int] = {}  # srv_admin_state text -> value
        self._current: list[str] = []
        self._bad = False
        self._count = 0

    def feed(self, lines: Iterable[str]) -> None:
        """Compare a chunk of lines; raises ParseError for output of another shape.

        (One pass with the state in locals and each slot's expected address, port text
        and drain flag worked out once per backend: 160,000 lines at 10,000 apps.)"""
        layout, table, keys = self.layout, self.table, self._key
        name, shape, expected = self._name, self._shape, self._expected
        current, bad, count, seen = self._current, self._bad, self._count, self.lines
        maint, drain, prefix = ADMF_MAINT, ADMF_DRAIN, SLOT_PREFIX
        slot_index, admin_values = _SLOT_INDEX, self._admin_values
        version_seen = self._version_seen
        try:
            for line in lines:
                if not line or line[0] == "#" or line.isspace():
                    continue
                if not version_seen:
                    if line.startswith("Can't find backend"):
                        continue  # a slice's first backend is not in HAProxy (below)
                    if line.strip() != "1":
                        raise ParseError(
                            f"unsupported 'show servers state' format version: {line!r}")
                    version_seen = self._version_seen = True
                    continue
                if (len(line) < 8 or line[0] == "C") and (  # not a data line (25 fields):
                        line.strip() == "1"  # the next answer's version line, or a
                        or line.startswith("Can't find backend")):  # backend HAProxy
                    continue  # lacks (its slots stay unseen: it is suspect)
                seen += 1
                f = line.split(" ", _FIELDS)
                if len(f) < _FIELDS:
                    raise ParseError(
                        f"short 'show servers state' line ({len(f)} fields): {line!r}")
                if f[1] != name:
                    self._name, self._shape, self._current = name, shape, current
                    self._bad, self._count = bad, count
                    self._flush()
                    name = f[1]
                    key = keys.get(name)
                    shape = layout.get(key) if key is not None else None
                    expected = _expected(table.get(key) if key is not None else None)
                    current, bad, count = self._current, False, 0
                if shape is None:
                    continue  # not a backend of ours (stats, or one a reload will remove)
                current.append(line)
                srv = f[3]
                i = slot_index.get(srv, -1)
                if i < 0:
                    number = srv[1:]
                    if not srv.startswith(prefix) or not number.isdigit():
                        bad = True
                        continue
                    i = int(number) - 1
                if i >= shape.slots:
                    continue  # reconcile only looks at the shape's slots
                count += 1
                if bad:
                    continue
                admin = admin_values.get(f[6], -1)
                if admin < 0:
                    try:
                        admin = admin_values[f[6]] = int(f[6])
                    except ValueError as exc:
                        raise ParseError(
                            f"bad 'show servers state' line {line!r}: {exc}") from exc
                want = expected[i] if i < len(expected) else None
                if want is None:
                    if not admin & maint:
                        bad = True
                elif (f[4] != want[0] or f[18] != want[1] or admin & maint
                      or bool(admin & drain) != want[2]):
                    bad = True
        finally:
            self._name, self._shape, self._expected = name, shape, expected
            self._current, self._bad, self._count, self.lines = current, bad, count, seen

    def _flush(self) -> None:
        name = self._name
        if name is not None and self._shape is not None:
            key = self._key[name]
            self._seen[key] = self._seen.get(key, 0) + self._count
            if self._bad:
                self._kept.setdefault(key, []).extend(self._current)
        self._current, self._bad, self._count = [], False, 0

    def finish(self) -> tuple[Layout, list[ServerState]]:
        """The backends that differ or lack slots, and their parsed lines: the input
        :func:`servicerouter.planner.reconcile` needs to repair them."""
        self._flush()
        self._name = self._shape = None
        names = set(self._kept)
        for name, shape in self.layout.items():
            if self._seen.get(name, 0) < shape.slots:
                names.add(name)
        lines = [ln for name in sorted(self._kept) for ln in self._kept[name]]
        actual = _parse("\n".join(["1", *lines])) if lines else []
        return {name: self.layout[name] for name in sorted(names)}, actual


def _expected(slots: list[Endpoint | None] | None) -> list[tuple[str, str, bool] | None]:
    """Per slot, what its line must say: (address, port as printed, draining); None for
    a free slot (in maintenance)."""
    return [None if e is None else (e.ip, str(e.port), e.state is EndpointState.DRAIN)
            for e in slots or ()]


def suspects(layout: Layout, table: SlotTable,
             lines: Iterable[str]) -> tuple[Layout, list[ServerState]]:
    """One-shot :class:`StateScan`: the backends to reconcile exactly, with their states."""
    scan = StateScan(layout, table)
    scan.feed(lines)
    return scan.finish()


def state_line(s: ServerState) -> str:
    """A ``show servers state`` line for ``s`` (tests and dry runs answer with these)."""
    return " ".join(map(str, (
        s.backend_id, s.backend, s.server_id, s.server, s.addr, s.op_state, s.admin_state,
        s.weight, s.initial_weight, 0, s.check_status, s.check_result, s.check_health,
        s.check_state, 0, 0, 0, s.fqdn or "-", s.port, "-", 0, 0, "-", "-", 0)))
