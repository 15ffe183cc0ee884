"""Reading HAProxy back: ``show servers state`` (and, in range mode, ``show map``)
compared with the slot table, and the runtime commands that repair a difference.

After a reload the engine waits for the whole read; the periodic reconcile (and
the one after HAProxy's worker changed behind our back) reads in the background
while the apply loop goes on, and backends changed after the read began are
left to the next round (their lines may predate the change).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import pool
from .haproxy.runtime import HAProxyRuntimeError
from .haproxy.runtime_parse import ParseError, ServerState
from .layout import Layout, grace_ms
from .planner import ReloadReason, reconcile
from .servercheck import StateScan

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("servicerouter.engine")


SLICE_BACKENDS = 1000
"""The periodic read covers at most this many backends at a time: above it, each
``--reconcile-interval`` is split into slices read one after another (10 of 1,000
backends at 10,000 apps), so HAProxy and the daemon never spend 150 ms of both
cores at once on it while changes wait (issue #11's tail, at every 10 s)."""


@dataclass(frozen=True)
class Scanned:
    """What one read of ``show servers state`` found: the backends that differ."""

    generation: int  # Engine.generation when the read began
    seq: int  # the ChangeLog number the read began at (repair() ends it)
    suspect: Layout
    actual: list[ServerState]
    maps: bool = True  # range mode: read the maps back too (once a full round)


class Reconciler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.wanted = False
        self.slice_wanted = False  # the periodic read's next slice (slices > 1)
        self.after: str | None = None  # the last backend of the last slice read
        self.running: asyncio.Task[Scanned | None] | None = None  # the background read
        self.worker: int | None = None  # HAProxy's worker pid, as last seen
        self.checking_worker = False

    def request(self) -> None:
        """Read all of HAProxy back (a worker changed, an apply step failed)."""
        self.wanted = True
        self.engine.wake()

    def slices(self) -> int:
        """Into how many reads the periodic reconcile splits: one up to
        :data:`SLICE_BACKENDS` backends."""
        return max(1, -(-len(self.engine.layout) // SLICE_BACKENDS))

    def request_slice(self) -> None:
        """The periodic read: its next slice, or all of it when it fits in one."""
        if self.slices() == 1:
            self.request()
        else:
            self.slice_wanted = True
            self.engine.wake()

    def _next_slice(self) -> tuple[list[str], bool]:
        """The layout keys of the next slice, and whether it starts a round: the keys
        after the last slice's, in order, so a round reads each backend that is there
        all along once, however many come and go meanwhile."""
        keys = sorted(self.engine.layout)
        size = -(-len(keys) // self.slices())
        start = bisect.bisect_right(keys, self.after) if self.after is not None else 0
        if start >= len(keys):
            start = 0
        chosen = keys[start:start + size]
        self.after = chosen[-1] if chosen else None
        return chosen, start == 0

    async def reconcile(self, after_reload: bool = False) -> None:
        """Read HAProxy's servers back and repair any difference from the slot table.

        Waits for the whole read (after a reload, before anything else is applied);
        the periodic reconcile runs :meth:`scan` in the background instead."""
        found = await self.scan(after_reload)
        if found is not None:
            await self.repair(found, after_reload)

    async def step(self) -> None:
        """In the apply loop: start a wanted background read, repair what a finished one
        found. Not held back by a pending reload: a reload that keeps failing (a
        rejected candidate) must not leave a restarted worker serving the file's dead
        tasks."""
        if (self.wanted or self.slice_wanted) and self.running is None:
            keys, first = (None, True) if self.wanted else self._next_slice()
            self.wanted = self.slice_wanted = False  # a full read covers the slice
            task = self.engine.spawn(self.scan(keys=keys, maps=first))
            task.add_done_callback(lambda _: self.engine.wake())  # repaired in the loop
            self.running = task
        if self.running is not None and self.running.done():
            task, self.running = self.running, None
            found = None
            if not task.cancelled():
                if task.exception() is not None:  # a bug: the next interval tries again
                    log.error("reconcile failed", exc_info=task.exception())
                else:
                    found = task.result()
            if found is not None:
                await self.repair(found)

    async def scan(self, after_reload: bool = False, keys: list[str] | None = None,
                   maps: bool = True) -> Scanned | None:
        """Stream ``show servers state`` and compare it with the slot table chunk by
        chunk (:class:`~servicerouter.servercheck.StateScan`), yielding to the event loop
        between chunks; None if HAProxy could not be read. ``keys``: only these
        backends (a slice of the periodic read)."""
        e = self.engine
        if not e.layout:
            return None
        seq = e.changes.begin()  # ended by repair(), or here if nothing is found
        found = None
        try:
            found = await self._read(after_reload, keys, maps, seq)
        finally:
            if found is None:
                e.changes.end(seq)
        return found

    async def _read(self, after_reload: bool, keys: list[str] | None, maps: bool, seq: int
                    ) -> Scanned | None:
        e = self.engine
        generation = e.generation
        # Copies: the apply loop replaces entries while the dump streams in (in range
        # mode a new app takes a spare under another key), and the scan must judge
        # HAProxy against one moment's layout; what changed since is left out by repair.
        layout = dict(e.layout) if keys is None else \
            {k: e.layout[k] for k in keys if k in e.layout}
        if not layout:
            return None  # (a slice whose backends all went meanwhile)
        names = None if keys is None else [shape.name for shape in layout.values()]
        scan = StateScan(layout, {k: e.table[k] for k in layout if k in e.table})
        try:
            try:
                async for lines in e.runtime.servers_state_chunks(backends=names):
                    scan.feed(lines)
                    await asyncio.sleep(0)  # let events, /healthz and the apply loop in
                suspect, actual = scan.finish()
            except ParseError as exc:
                raise HAProxyRuntimeError(f"{e.config.settings.socket_path}: {exc}") from exc
        except HAProxyRuntimeError as exc:
            e.haproxy_answered(False)
            log.error("reconcile: %s", exc)
            if e.runtime.socket_missing():
                if after_reload:  # a reload did not bring it back: not every interval
                    e.reload_pipeline.failed("confirm", f"after the reload the admin socket "
                                             f"{e.config.settings.socket_path} is still gone")
                e.reload_pipeline.socket_gone()
            return None
        e.haproxy_answered(True)
        log.debug("reconcile: HAProxy's servers read back (%s); %d backends differ",
                  "all" if keys is None else f"{len(layout)} of {len(e.layout)}",
                  len(suspect))
        return Scanned(generation, seq, suspect, actual, maps)

    async def repair(self, found: Scanned, after_reload: bool = False) -> None:
        """Repair what a scan found, leaving out backends changed since it began; in range
        mode, also the maps (read now, in the apply loop, against the current layout)."""
        try:
            await self._repair(found, after_reload)
        finally:
            self.engine.changes.end(found.seq)

    async def _repair(self, found: Scanned, after_reload: bool) -> None:
        e = self.engine
        if found.generation != e.generation:
            return  # a reload since: its own reconcile read the new worker
        # The maps are read first: a reload's reconcile runs beside the apply loop
        # (while_applying), so the server repairs are worked out after that await, from
        # the table as it is then, leaving out backends changed since the scan began.
        maps, readable = await self.map_repairs() if found.maps else ([], True)
        layout = {name: shape for name, shape in found.suspect.items()
                  if not e.changes.changed_since(name, found.seq)
                  and e.layout.get(name) == shape}
        commands, broken = (reconcile(layout, e.table, found.actual,
                                      e.config.settings.health_check)
                            if layout else ([], {}))
        commands += maps
        if not readable:
            broken["*"] = ReloadReason.RESYNC
        if commands:
            log.warning("reconcile: HAProxy differs from the slot table; sending %d repairs",
                        len(commands))
            if not await e.execute(commands):
                broken.update(dict.fromkeys(e.layout, ReloadReason.RUNTIME_ERROR))
        if broken:
            e.pending.update(broken)
            e.wake()
            if after_reload:
                # HAProxy lacks what was just written and reloaded: most likely the
                # admin socket belongs to another HAProxy than the one reloaded. Back
                # off instead of reloading once per interval forever.
                e.reload_pipeline.failed("confirm", (
                    f"after the reload HAProxy at {e.config.settings.socket_path} still lacks "
                    f"{len(broken)} backends of the new config (e.g. {min(broken)}); is "
                    "--haproxy-socket the socket of the HAProxy that reloads?"))
            else:
                log.warning("reconcile: %d backends missing in HAProxy; reloading",
                            len(broken))

    async def map_repairs(self) -> tuple[list[str], bool]:
        """Range mode: ``show map`` of each map against the layout → (repairs, readable)."""
        e = self.engine
        settings = e.config.settings
        if not pool.range_on(settings):
            return [], True
        repairs: list[str] = []
        seq = e.change_seq
        for name, want in pool.used_maps(e.layout, settings).items():
            path = pool.map_path(settings, name)
            try:
                have = pool.parse_show_map(await e.runtime.query(f"show map {path}"))
            except (HAProxyRuntimeError, ValueError) as exc:
                log.error("reconcile: show map %s: %s; reloading", path, exc)
                return [], False
            first, last = pool.map_diff(path, have, want)
            repairs += first + last
        if e.change_seq != seq:
            # Changes were applied while the maps were read (a reload's reconcile runs
            # beside the apply loop): ``want`` and ``have`` may be of different moments,
            # and repairs from them would undo a new app's entry. The next round reads
            # them again.
            return [], True
        return repairs, True

    async def check_worker(self) -> None:
        """Reconcile when HAProxy's worker changed behind our back (a worker restarted by
        its master or an init system starts from the file: runtime changes since the
        last reload are gone), whether a reload is pending or not; and notice a removed
        admin socket before the next change needs it."""
        e = self.engine
        generation = e.generation
        try:
            raw = (await e.runtime.show_info()).get("Pid", "")
            pid = int(raw) if raw.isdigit() else None
        except HAProxyRuntimeError:
            # (a session the old worker ended during our reload's hand-over is no fault)
            if not e.reload_pipeline.handing_over:
                e.haproxy_answered(False)  # with no apps, the only look at HAProxy
            if e.layout and e.runtime.socket_missing():
                e.reload_pipeline.socket_gone()
            return
        finally:
            self.checking_worker = False
        e.haproxy_answered(True)
        if e.generation != generation:
            # A reload of ours switched workers while this question was out: the answer
            # may be the old worker's, and taken for a restart behind our back it would
            # keep our clients off the new worker, the one that serves. The next look asks
            # again.
            return
        if self.worker is not None and pid is not None and pid != self.worker:
            # A kept session would still reach the old worker, which may be in its grace
            # (accepting, and queried) as after a reload of ours.
            grace = grace_ms(e.config.settings, len(e.layout)) / 1000
            e.runtime.reset()
            e.reload_pipeline.retire(self.worker, None, grace)
            log.warning("HAProxy's worker changed (pid %s -> %s) without a reload of ours; "
                        "reconciling its servers with the slot table", self.worker, pid)
            self.request()
        self.worker = pid
