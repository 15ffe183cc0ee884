"""The daemon's core: owns state, time and concurrency.

One writer: only :meth:`Engine._apply_loop` talks to HAProxy, so runtime
commands, reloads and reconciliation never race each other. Everything else
(the event stream, full resyncs, single-app refetches) only changes the
in-memory :class:`~servicerouter.state.ClusterState`, marks backends dirty and
wakes the apply loop, which waits a short coalescing window and then plans and
applies everything that changed in one batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import hostfacts, pool
from .adopt import adopt, config_shape
from .applylog import reload_causes, runtime_lines
from .gauges import Gauges
from .guard import Guard
from .haproxy.render import TemplateError, render, template_environment
from .haproxy.runtime import HAProxyRuntimeError, RuntimeClient, respell_socket_path
from .haproxy.runtime_parse import ParseError, ServerState
from .heap import quiet_gc
from .label_templates import TemplateVetting
from .layout import Layout, Settings, SlotTable, build_layout, slot_counts
from .marathon.client import MarathonClient
from .marathon.errors import MarathonError
from .marathon.events import (
    DEFAULT_EVENT_TYPES,
    DEFAULT_MAX_EVENT_BYTES,
    EventStream,
    MarathonEvent,
    reconnect_delays,
)
from .marathon.parse import Resolver, parse_app, parse_apps
from .marathon_health import MarathonHealth
from .metrics import Metrics
from .planner import Plan, ReloadReason, plan, reconcile
from .portassign import assign_all, assign_one
from .refetch import AppRefetcher, SingleFlight
from .servercheck import StateScan
from .state import ClusterState
from .sync import EventHandler

log = logging.getLogger("servicerouter.engine")
T = TypeVar("T")

# When several reasons cause one reload, it is counted under the first of these.
_REASON_ORDER = [ReloadReason.STARTUP, ReloadReason.MANUAL, ReloadReason.RUNTIME_ERROR,
                 ReloadReason.NEW_APP, ReloadReason.REMOVED_APP, ReloadReason.OPTIONS_CHANGED,
                 ReloadReason.POOL_EXHAUSTED, ReloadReason.OWN_FRONTEND,
                 ReloadReason.OUTSIDE_POOL, ReloadReason.VHOST_ACL,
                 ReloadReason.CAPACITY, ReloadReason.RESYNC]
ENDPOINTS_CHANGED = "endpoints_changed"  # reload strategy: task churn caused the reload
WORKER_CHECK_INTERVAL = 1.0  # seconds between looks at HAProxy's worker pid


class Reloader(Protocol):
    """How HAProxy picks up a new config file: confirmed, or raises ReloadError."""

    async def reload(self) -> None: ...


class ConfigWriter(Protocol):
    """Validates and writes a candidate config (``haproxy -c``, atomic replace)."""

    async def validate(self, text: str) -> tuple[bool, str]: ...

    def write(self, text: str) -> None: ...

    def keep_rejected(self, text: str) -> Path: ...

    def read(self) -> str | None: ...


@dataclass(frozen=True)
class EngineConfig:
    settings: Settings
    templates: Path | None = None
    update_strategy: str = "runtime"  # or "reload": every change reloads (for comparison)
    resync_interval: float = 300.0
    reconcile_interval: float = 10.0
    min_reload_interval: float = 1.0
    coalesce_window: float = 0.0  # measured: 2 ms bought no CPU and cost 2 ms (issue #11)
    drain_seconds: float = 0.0
    stall_timeout: float = 30.0
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES


@dataclass(frozen=True)
class _Scanned:
    """What one read of ``show servers state`` found: the backends that differ."""

    generation: int  # Engine._generation when the read began
    seq: int  # Engine._change_seq when the read began
    suspect: Layout
    actual: list[ServerState]


class Engine:
    def __init__(self, config: EngineConfig, marathon: MarathonClient, runtime: RuntimeClient,
                 writer: ConfigWriter, reloader: Reloader, metrics: Metrics,
                 resolve: Resolver) -> None:
        self.config = config
        self.marathon = marathon
        self.runtime = runtime
        self.writer = writer
        self.reloader = reloader
        self.metrics = metrics
        self.resolve = resolve
        self.state = ClusterState(config.settings)
        self.layout: Layout = {}
        self.table: SlotTable = {}
        self.running_config: str | None = None
        self.last_reload: tuple[float, str] | None = None  # (unix time, reason)
        self.last_sync: float | None = None  # unix time of the last good full sync
        self.haproxy_ok = False
        self.app_errors: dict[str, str] = {}  # app id -> why its last definition failed
        self.reloads = 0
        self.runtime_updates = 0
        self._dirty: set[str] = set()
        self._pending: dict[str, str] = {}
        self._event_times: list[float] = []
        self._awaiting_reload: list[float] = []
        self._reconcile_wanted = False
        # The periodic reconcile reads HAProxy's servers in the background while the
        # apply loop goes on; backends changed after the read began are left to the
        # next round (their lines may predate the change). See :meth:`_scan`.
        self.reconciling: asyncio.Task[_Scanned | None] | None = None
        self._generation = 0  # counts our reloads: a scan from before one is dropped
        self._change_seq = 0
        self._changed_at: dict[str, int] = {}  # backend -> _change_seq of its last batch
        # The admin socket's spelling in the running config, and whether the next reload
        # must spell it differently so that HAProxy binds its file anew (it was removed).
        self._live_socket = config.settings.socket_path
        self._restore_socket = False
        self._worker: int | None = None  # HAProxy's worker pid, as last seen
        self._checking_worker = False
        self._rejected: str | None = None
        self.guard = Guard(self.state, writer, config.settings, config.templates)
        self._next_reload_at = 0.0
        self._reload_backoff = 0.0
        self._wake = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._events = EventHandler(self)
        self._vetting = TemplateVetting(config.settings, config.templates,
                                        lambda text: self.writer.validate(text))
        self._tasks: set[asyncio.Task[Any]] = set()
        self.marathon_health = MarathonHealth(metrics.marathon_up, metrics.stream_connected)
        self._full_syncs = SingleFlight(self.full_sync, self.spawn)
        self._refetches = AppRefetcher(self.refetch_app, self.spawn, self.request_full_sync)
        self._resync_retry_at: float | None = None  # after a failed full sync
        self._resync_backoff = 0.0
        self.gauges = Gauges(self)
        self.ready = asyncio.Event()  # set after the first good config is live

    # ---------------------------------------------------------------- inputs
    def mark(self, dirty: set[str], event_time: float | None = None) -> None:
        """Record backends that may have changed, and wake the apply loop."""
        if dirty:
            self._dirty |= dirty
            if event_time is not None:
                self._event_times.append(event_time)
            self._wake.set()

    def request_reload(self, reason: ReloadReason = ReloadReason.MANUAL) -> None:
        """Reload even if nothing changed. ``manual`` (SIGHUP) also re-reads the templates,
        retries a candidate rejected before and skips any backoff."""
        if reason is ReloadReason.MANUAL:
            template_environment.cache_clear()
            self._rejected = None
            self._reload_backoff = 0.0
            self._next_reload_at = time.monotonic()
        self._pending["*"] = reason
        self._wake.set()

    def request_reconcile(self) -> None:
        self._reconcile_wanted = True
        self._wake.set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request_full_sync(self) -> None:
        """A full sync soon: at most one runs, at most one more waits behind it."""
        self._full_syncs.request()

    def request_refetch(self, app_id: str, event_time: float | None = None) -> None:
        """Refetch one app soon, once however often asked meanwhile (bounded in flight)."""
        self._refetches.request(app_id, event_time)

    @quiet_gc  # the collector cost a third of a 10,000-app sync (see heap.py)
    async def full_sync(self) -> bool:
        """Fetch every app, replace the desired state, wake the apply loop."""
        async with self._sync_lock:
            started = time.perf_counter()
            touched = self._events.watch(None)
            try:
                fetched = await self.marathon.get_apps()
                # In a thread (~0.4 s of CPU at 10,000 apps): churn and /healthz go on.
                result = await asyncio.to_thread(parse_apps, fetched.data, fetched.url,
                                                 self.resolve,
                                                 self.config.settings.allow_label_templates)
                result.apps = [self._events.newer_tasks(a, touched) for a in result.apps]
            except (MarathonError, ValueError) as exc:
                self.marathon_health.request_failed(f"full sync failed: {exc}")
                self._resync_backoff = min(max(2 * self._resync_backoff, 1.0), 30.0)
                self._resync_retry_at = time.monotonic() + self._resync_backoff
                log.error("full sync failed: %s; HAProxy keeps its current config; retrying "
                          "in %.0fs", exc, self._resync_backoff)
                return False
            finally:
                self._events.unwatch(touched)
            self.marathon_health.request_ok()
            self._resync_retry_at, self._resync_backoff = None, 0.0
            for err in result.errors:  # logged when new or changed, not once per sync
                if self.app_errors.get(err.app_id) != err.message:
                    log.error("%s", err)
            before, self.app_errors = self.app_errors, {e.app_id: e.message
                                                        for e in result.errors}
            result.apps, assigned = assign_all(result.apps, self.config.settings)  # IP-per-task
            result.apps, broken = await self._vetting.vet(result.apps)  # label templates
            for app_id, message in broken.items():
                if before.get(app_id) != message:
                    log.error("app %s: %s", app_id, message)
            self.app_errors.update(broken)
            self._events.warn_once([*result.warnings, *assigned])
            dirty = self.state.set_facts(hostfacts.gather(result.apps, self.config.settings))
            dirty |= self.state.replace_all(result.apps, keep=list(self.app_errors))
            self._events.after_full_sync()
            self.mark(dirty)
            self.last_sync = time.time()
            self.metrics.last_sync.set(self.last_sync)
            self.metrics.sync_duration.labels("full").observe(time.perf_counter() - started)
            log.info("full sync from %s: %d apps, %d services, %d endpoints, %d changed, "
                     "%.0f ms", fetched.url, len(self.state.apps), len(self.state.desired),
                     self.state.endpoint_count, len(dirty), 1000 * (time.perf_counter() - started))
            return True

    async def refetch_app(self, app_id: str, event_time: float | None = None) -> None:
        touched = self._events.watch(app_id)
        try:
            raw = await self.marathon.get_app(app_id)
        except MarathonError as exc:
            self.marathon_health.request_failed(f"refetching app {app_id} failed: {exc}")
            log.error("refetching app %s failed: %s; a full resync follows", app_id, exc)
            self.request_full_sync()
            return
        finally:
            self._events.unwatch(touched)
        self.marathon_health.request_ok()
        if raw is None:
            self.mark(self.state.remove_app(app_id), event_time)
            return
        try:
            app, warnings = parse_app(raw, self.resolve,
                                      self.config.settings.allow_label_templates)
        except ValueError as exc:
            log.error("app %s: %s; app keeps its last good state, others applied", app_id, exc)
            self.app_errors[app_id] = f"{exc}; app keeps its last good state"
            return
        _, broken = await self._vetting.vet([app])  # label templates, validated alone
        if broken:
            log.error("app %s: %s", app_id, broken[app_id])
            self.app_errors[app_id] = broken[app_id]
            return
        self.app_errors.pop(app_id, None)
        # IP-per-task ports are a function of all such apps: one arriving may move another's.
        app, moved, assigned = assign_one(
            self._events.newer_tasks(app, touched),
            [a for i, a in self.state.apps.items() if i != app.id], self.config.settings)
        self._events.warn_once([*warnings, *assigned])
        dirty = self.state.set_facts(hostfacts.gather([app], self.config.settings))
        dirty |= self.state.set_app(app)
        for other in moved:
            dirty |= self.state.set_app(other)
        self.mark(dirty, event_time)

    def on_event(self, event: MarathonEvent) -> None:
        try:
            self._events.handle(event)
        except Exception as exc:  # one bad event must not end the stream
            log.debug("event %s raised", event.type, exc_info=True)
            self._events.bad_event(event, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------- the loops
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set. The first full sync is retried with backoff."""
        delays = reconnect_delays(initial=0.5, maximum=15.0)
        while not stop.is_set() and not await self.full_sync():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), next(delays))
        if stop.is_set():
            return
        if not await self._adopt():
            self.request_reload(ReloadReason.STARTUP)  # the first config, from nothing
        loops = [self._apply_loop(stop), self._event_loop(stop), self._timer_loop(stop)]
        runners = [asyncio.ensure_future(c) for c in loops]
        try:
            await stop.wait()
        finally:
            for r in [*runners, *self._tasks]:
                r.cancel()
            await asyncio.gather(*runners, *self._tasks, return_exceptions=True)

    async def _adopt(self) -> bool:
        """Take over a running HAProxy whose config has our shape: no reload at start.

        Reads the running config file and ``show servers state``; the slot table is
        rebuilt from the addresses HAProxy serves (:func:`adopt.adopt`). True if the
        render of that layout and table has the running file's shape; then the apply
        loop plans every backend against the adopted table (a task replaced while the
        daemon was down is a runtime change) and reconcile follows."""
        running = self.writer.read()
        if running is None:
            return False
        try:
            servers = await self.runtime.show_servers_state()
        except HAProxyRuntimeError as exc:
            log.info("no running HAProxy to adopt (%s); the first config is a reload", exc)
            return False
        spares = await self._adoptable_spares(servers)  # range mode; None: not adoptable
        if spares is None:
            return False
        layout, table = adopt(self.state.desired, servers, spares[0])
        layout.update(spares[1])
        table.update((name, [None] * shape.slots) for name, shape in spares[1].items()
                     if name not in table)
        self.table = table  # even if the shape differs: tasks keep their slots
        try:
            text = render(layout, table, self.config.settings, self.config.templates)
        except TemplateError:
            return False  # the startup reload reports it
        ours, theirs = config_shape(text), config_shape(running)
        if ours != theirs:
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False))
                          if a != b),
                         min(len(ours), len(theirs)))
            log.info("the running HAProxy's config differs from ours (%d services in it, "
                     "%d wanted; first at line %d of its shape: %r, ours %r); reloading",
                     len(layout), len(self.state.desired), first + 1,
                     theirs[first] if first < len(theirs) else None,
                     ours[first] if first < len(ours) else None)
            return False
        self.layout, self.running_config, self.haproxy_ok = layout, running, True
        self.guard.served(running)
        log.info("adopted the running HAProxy: %d services, %d endpoints in their slots, "
                 "no reload", len(layout), slot_counts(table)[0])
        self.mark(set(self.state.desired))
        self.request_reconcile()
        self.ready.set()
        return True

    async def _adoptable_spares(self, servers: list[ServerState]
                                ) -> tuple[dict[str, str], Layout] | None:
        """Range mode, at start: (service → the spare backend it lives in, from the
        running port map; the free spares, from the pool file written with the config).
        Without the range mode: nothing to add. None: what HAProxy runs cannot be read."""
        settings = self.config.settings
        if not pool.range_on(settings):
            return {}, {}
        read = getattr(self.writer, "read_map_file", None)
        text = read(settings.map_dir, pool.SPARES_FILE) if read else None
        try:
            shapes = pool.parse_spares(text or "")
            ports = pool.parse_show_map(await self.runtime.query(
                f"show map {pool.map_path(settings, pool.PORTS_MAP)}"))
        except (HAProxyRuntimeError, ValueError, TypeError, KeyError) as exc:
            log.info("range mode: the running pool cannot be read (%s); reloading", exc)
            return None
        held = {name: ports[str(d.service.port)] for name, d in self.state.desired.items()
                if ports.get(str(d.service.port), "").startswith(pool.SPARE_PREFIX)}
        sizes: dict[str, int] = {}
        for s in servers:
            sizes[s.backend] = sizes.get(s.backend, 0) + 1
        free = {name: pool.spare(name, shape, sizes[name]) for name, shape in shapes.items()
                if name not in held.values() and sizes.get(name)}
        return held, free

    async def _event_loop(self, stop: asyncio.Event) -> None:
        delays = reconnect_delays()
        first = True
        while not stop.is_set():
            try:
                stream = EventStream(self.marathon, self.config.event_types,
                                     stall_timeout=self.config.stall_timeout,
                                     max_event_bytes=self.config.max_event_bytes,
                                     on_alive=self.marathon_health.stream_alive)
                async with stream:
                    log.info("event stream attached to %s", stream.url)
                    if not first:
                        self.metrics.stream_reconnects.inc()
                        self.request_full_sync()  # events may have been missed
                    first = False
                    delays = reconnect_delays()
                    async for event in stream:
                        self.on_event(event)
            except MarathonError as exc:
                self.marathon_health.stream_lost(str(exc))
                log.warning("event stream: %s; reconnecting", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), next(delays))

    async def _timer_loop(self, stop: asyncio.Event) -> None:
        cfg = self.config
        next_resync = time.monotonic() + cfg.resync_interval
        next_reconcile = time.monotonic() + cfg.reconcile_interval
        next_worker_check = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_worker_check and not self._checking_worker:
                next_worker_check = now + min(WORKER_CHECK_INTERVAL, cfg.reconcile_interval)
                self._checking_worker = True
                self.spawn(self._check_worker())
            if now >= next_resync:
                next_resync = now + cfg.resync_interval
                self._rejected = None  # a refused candidate is validated again each resync
                self.request_full_sync()
            if self._resync_retry_at is not None and now >= self._resync_retry_at:
                self._resync_retry_at = None
                self.request_full_sync()
            if now >= next_reconcile:
                next_reconcile = now + cfg.reconcile_interval
                self.request_reconcile()
            self._events.expire_drains()
            wait = min(next_resync, next_reconcile, next_worker_check,
                       self._events.next_deadline(), self._resync_retry_at or next_resync) - now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), max(wait, 0.05))

    async def _check_worker(self) -> None:
        """Reconcile when HAProxy's worker changed behind our back (a worker restarted by
        its master or an init system starts from the file: runtime changes since the
        last reload are gone), whether a reload is pending or not; and notice a removed
        admin socket before the next change needs it."""
        try:
            raw = (await self.runtime.show_info()).get("Pid", "")
            pid = int(raw) if raw.isdigit() else None
        except HAProxyRuntimeError:
            if self.layout and self.runtime.socket_missing():
                self._socket_gone()
            return
        finally:
            self._checking_worker = False
        if self._worker is not None and pid is not None and pid != self._worker:
            self.runtime.reset()  # a kept session would still reach the old worker
            log.warning("HAProxy's worker changed (pid %s -> %s) without a reload of ours; "
                        "reconciling its servers with the slot table", self._worker, pid)
            self.request_reconcile()
        self._worker = pid

    def _socket_gone(self) -> None:
        if self._restore_socket:
            return
        self._restore_socket = True
        log.error("HAProxy's admin socket %s is gone; reloading once to have HAProxy bind "
                  "it again (runtime updates resume after that)", self.config.settings.socket_path)
        self._pending.setdefault("*", ReloadReason.RUNTIME_ERROR)
        self._wake.set()

    async def _apply_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            timeout = None
            if self._pending:
                timeout = max(self._next_reload_at - time.monotonic(), 0.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self.config.coalesce_window:
                await asyncio.sleep(self.config.coalesce_window)
            try:
                await self.step()
            except Exception:  # a bug must not stop routing; the next step retries
                log.exception("apply step failed")
                self.request_reconcile()

    # ------------------------------------------------------------ one step
    async def step(self) -> None:
        """Plan and apply everything marked dirty; reload if needed and allowed."""
        await self._apply_dirty()
        if self._pending and time.monotonic() >= self._next_reload_at:
            await self._reload()
        await self._step_reconcile()
        self.gauges.update()

    async def _apply_dirty(self) -> None:
        """Plan the dirty backends: runtime commands now, reloads into ``_pending``."""
        dirty, self._dirty = self._dirty, set()
        events, self._event_times = self._event_times, []
        started = time.perf_counter()
        if dirty:
            # Every backend looked at now, applied or left for a reload, is planned again
            # after a reload whose render began before this (it may lack this change).
            self._change_seq += 1
            self._changed_at.update(dict.fromkeys(dirty, self._change_seq))
            p = plan(self.layout, self.table, self.state.desired, dirty, self.config.settings)
            for name, why in sorted(p.why.items()):
                log.info("%s needs a reload (%s): %s", name, p.reload.get(name, "?"), why)
            if self.config.update_strategy == "reload" and p.commands:
                p = Plan(reload={**p.reload, **dict.fromkeys(p.slots, ENDPOINTS_CHANGED)})
            if p.commands:
                before = {name: self.table.get(name, []) for name in p.slots}
                shapes = {n: self.layout[n] for n in p.layout if n in self.layout}  # range mode
                if await self._execute(p.commands):
                    self._commit(p)
                    for line in runtime_lines(p.commands, p.slots, before,
                                              collections.ChainMap(self.layout, shapes),
                                              1000 * (time.perf_counter() - started)):
                        log.info("%s", line)
                    now = time.monotonic()
                    for t in events:
                        self.metrics.event_to_apply.observe(now - t)
                    self.metrics.sync_duration.labels("incremental").observe(
                        time.perf_counter() - started)
                else:
                    self._pending.update(dict.fromkeys(p.slots, ReloadReason.RUNTIME_ERROR))
            if p.reload:
                self._pending.update(p.reload)
                self._awaiting_reload.extend(events)

    async def _while_applying(self, work: Awaitable[T]) -> T:
        """Await ``work`` (validating or reloading a config: seconds at 10,000 apps) while
        applying the runtime changes that come meanwhile, as the apply loop would: task
        churn of other apps is not held behind a reload. Only this coroutine talks to
        the admin socket meanwhile, so there is still one writer."""
        job = asyncio.ensure_future(work)
        try:
            while not job.done():
                self._wake.clear()
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({job, waker}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if self._dirty:
                    if self.config.coalesce_window:
                        await asyncio.sleep(self.config.coalesce_window)
                    try:
                        await self._apply_dirty()
                    except Exception:  # a bug must not cancel a reload half-way
                        log.exception("apply step failed")
                        self.request_reconcile()
        finally:
            if not job.done():
                job.cancel()
        self._wake.set()  # whatever came in during the last apply is looked at again
        return job.result()

    async def _step_reconcile(self) -> None:
        # Not held back by a pending reload: a reload that keeps failing (a rejected
        # candidate) must not leave a restarted worker serving the file's dead tasks.
        if self._reconcile_wanted and self.reconciling is None:
            self._reconcile_wanted = False
            task = asyncio.ensure_future(self._scan())
            self._tasks.add(task)
            task.add_done_callback(self._scan_done)
            self.reconciling = task
        if self.reconciling is not None and self.reconciling.done():
            task, self.reconciling = self.reconciling, None
            found = None
            if not task.cancelled():
                if task.exception() is not None:  # a bug: the next interval tries again
                    log.error("reconcile failed", exc_info=task.exception())
                else:
                    found = task.result()
            if found is not None:
                await self._repair(found)

    def _scan_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # the apply loop repairs what the scan found

    def _commit(self, p: Plan) -> None:
        self.table.update(p.slots)
        for name, shape in p.layout.items():  # range mode: spares taken and returned
            if shape is None:
                self.layout.pop(name, None)
                self.table.pop(name, None)
            else:
                self.layout[name] = shape
        if p.layout:
            self._write_maps(self.layout)  # a restarted worker reads the same maps
        for name, size in p.grown.items():
            self.layout[name] = replace(self.layout[name], slots=size)
        self.runtime_updates += len(p.slots)

    async def _execute(self, commands: list[str]) -> bool:
        """Send commands in batches; False if any failed or its outcome is unknown."""
        self.metrics.count_commands(commands)
        if log.isEnabledFor(logging.DEBUG):
            for c in commands[:200]:
                log.debug("runtime command: %s", c)
            if len(commands) > 200:
                log.debug("... and %d more runtime commands", len(commands) - 200)
        try:
            results = await self.runtime.execute(commands)
        except HAProxyRuntimeError as exc:
            self.haproxy_ok = False
            self.metrics.haproxy_up.set(0)
            self.metrics.runtime_errors.inc(len(commands))
            log.error("runtime API: %s; HAProxy's state is restored by a reload", exc)
            if self.runtime.socket_missing():
                self._socket_gone()
            return False
        self.haproxy_ok = True
        self.metrics.haproxy_up.set(1)
        self.metrics.runtime_batches.inc()
        failed = [r for r in results if not r.ok]
        for r in failed[:10]:
            log.error("runtime command %r failed: %s", r.command, r.reply.strip() or r.status)
        self.metrics.runtime_errors.inc(len(failed))
        return not failed

    def _primary_reason(self) -> str:
        reasons = {str(r) for r in self._pending.values()}
        return next((r.value for r in _REASON_ORDER if r.value in reasons), min(reasons))

    async def _reload(self) -> bool:
        """Render all of the desired state, validate, write, reload, reconcile."""
        reason = self._primary_reason()
        causes = reload_causes(self._pending, self.state.desired, self.layout, reason)
        started = time.perf_counter()
        self.mark(self.guard.exclude_unbindable())
        settings = self.config.settings
        layout, table = pool.with_pool(*build_layout(self.state.desired, self.table, settings),
                                       self.layout, settings)
        # What this render holds: changes after this point are planned again afterwards.
        seq, pending = self._change_seq, dict(self._pending)
        socket = (respell_socket_path(settings.socket_path, self._live_socket)
                  if self._restore_socket else settings.socket_path)
        if socket != settings.socket_path:
            settings = replace(settings, socket_path=socket)
        try:  # in a thread: 200-400 ms at 10,000 apps, the event loop goes on meanwhile
            text = await self._while_applying(asyncio.to_thread(
                render, layout, table, settings, self.config.templates))
        except TemplateError as exc:
            return self._reload_failed("validate", f"{exc}; the running config keeps serving")
        if text == self._rejected:
            return self._reload_failed("validate", None)  # already reported, still invalid
        self._write_maps(layout)  # haproxy -c opens the map files the candidate names
        ok, output = await self._while_applying(self.writer.validate(text))
        if not ok:
            kept = self.writer.keep_rejected(text)
            # Bisection runs haproxy -c up to 32 times: other apps' churn goes on meanwhile.
            if await self._while_applying(self.guard.exclude_rejected(
                    layout, table, text, output, kept, self.layout)):
                layout, table = pool.with_pool(
                    *build_layout(self.state.desired, self.table, settings), self.layout,
                    settings)
                text = await self._while_applying(asyncio.to_thread(
                    render, layout, table, settings, self.config.templates))
                self._write_maps(layout)
                ok, output = await self._while_applying(self.writer.validate(text))
                if not ok:
                    kept = self.writer.keep_rejected(text)
        if not ok:
            self._rejected = text
            self._write_maps(self.layout)
            return self._reload_failed("validate", f"candidate config rejected by haproxy -c "
                                       f"(kept at {kept}): {output.strip()}; the running "
                                       "config keeps serving")
        forced = {ReloadReason.RUNTIME_ERROR.value, ReloadReason.MANUAL.value}
        if text == self.running_config and not forced & {str(r) for r in pending.values()}:
            for name, why in pending.items():  # what changed was left out: HAProxy has
                if self._pending.get(name) == why:  # the rest already
                    del self._pending[name]
            self._awaiting_reload.clear()
            return True
        try:
            self.writer.write(text)
        except OSError as exc:
            return self._reload_failed("write", f"writing the config failed: {exc}")
        # The candidate's maps again: runtime map changes applied while it was validated
        # wrote the running layout's (what still differs is repaired after the reload).
        self._write_maps(layout)
        try:
            await self._while_applying(self.reloader.reload())
        except Exception as exc:
            self._restore_file()
            self._write_maps(self.layout)
            stage = getattr(exc, "stage", "reload")
            return self._reload_failed(stage if stage in ("reload", "confirm") else "reload",
                                       f"reload failed: {exc}")
        self.layout, self.table, self.running_config = layout, table, text
        self._live_socket, self._restore_socket = socket, False
        self._worker = None  # our reload forked it: no reason to reconcile twice
        self.guard.served(text)
        # Changed at runtime while this config was validated and loaded: planned again
        # against what the new worker has from the file, before its reconcile.
        replan = {name for name, at in self._changed_at.items() if at > seq}
        self._dirty |= replan
        for name in replan:  # decided again against the new layout, just below: a new app
            self._pending.pop(name, None)  # that came meanwhile may fit a fresh spare now
        self._generation, self._changed_at = self._generation + 1, {}
        self.runtime.reset()  # its kept session talks to the old worker
        # Backends dirtied while the reload ran stay dirty: the next step plans
        # them against the new layout (a no-op where the render already had them).
        # Reasons that came up meanwhile (another new app) were not in this render.
        for name, why in pending.items():
            if self._pending.get(name) == why:
                del self._pending[name]
        self._rejected = None
        self._reload_backoff = 0.0
        self._next_reload_at = time.monotonic() + self.config.min_reload_interval
        self.reloads += 1
        self.last_reload = (time.time(), reason)
        self.metrics.reloads.labels(reason).inc()
        self.metrics.reload_duration.observe(time.perf_counter() - started)
        log.info("reloaded HAProxy (%s): %d services, %.0f ms", causes, len(layout),
                 1000 * (time.perf_counter() - started))
        await self._apply_dirty()
        # Reading 160,000 slots back takes a while at 10,000 apps: churn goes on meanwhile
        # (the repairs leave out backends changed after the read began).
        await self._while_applying(self.reconcile(after_reload=True))
        now = time.monotonic()
        for t in self._awaiting_reload:
            self.metrics.event_to_apply.observe(now - t)
        self._awaiting_reload.clear()
        self.ready.set()
        return True

    def _restore_file(self) -> None:
        """After a failed reload, put the last good config back on disk: a restarted
        master (after a worker crash) must find a config it can serve."""
        if self.running_config is not None:
            try:
                self.writer.write(self.running_config)
            except OSError as exc:
                log.error("restoring the last good config after a failed reload: %s", exc)

    def _write_maps(self, layout: Layout) -> None:
        """Range mode: write the map files of ``layout`` (what HAProxy holds or is about to
        load), so that a reload or a restarted worker starts with the runtime maps."""
        write = getattr(self.writer, "write_maps", None)
        settings = self.config.settings
        if write is None or not pool.range_on(settings):
            return
        try:
            write(settings.map_dir, pool.map_files(layout, settings))
        except OSError as exc:
            log.error("writing the map files in %s: %s; reconcile repairs HAProxy's maps",
                      settings.map_dir, exc)

    async def _map_repairs(self) -> tuple[list[str], bool]:
        """Range mode: ``show map`` of each map against the layout → (repairs, readable)."""
        settings = self.config.settings
        if not pool.range_on(settings):
            return [], True
        repairs: list[str] = []
        for name, want in pool.used_maps(self.layout, settings).items():
            path = pool.map_path(settings, name)
            try:
                have = pool.parse_show_map(await self.runtime.query(f"show map {path}"))
            except (HAProxyRuntimeError, ValueError) as exc:
                log.error("reconcile: show map %s: %s; reloading", path, exc)
                return [], False
            first, last = pool.map_diff(path, have, want)
            repairs += first + last
        return repairs, True

    def _reload_failed(self, stage: str, message: str | None) -> bool:
        if message:
            log.error("%s", message)
            self.metrics.reload_failures.labels(stage).inc()
        # Back off so a broken config or a dead HAProxy is not retried in a storm;
        # a new change (new dirty backends) still gets planned meanwhile.
        self._reload_backoff = min(max(self._reload_backoff * 2, 1.0), 30.0)
        self._next_reload_at = time.monotonic() + max(self._reload_backoff,
                                                      self.config.min_reload_interval)
        return False

    async def reconcile(self, after_reload: bool = False) -> None:
        """Read HAProxy's servers back and repair any difference from the slot table.

        Waits for the whole read (after a reload, before anything else is applied);
        the periodic reconcile runs :meth:`_scan` in the background instead."""
        found = await self._scan(after_reload)
        if found is not None:
            await self._repair(found, after_reload)

    async def _scan(self, after_reload: bool = False) -> _Scanned | None:
        """Stream ``show servers state`` and compare it with the slot table chunk by
        chunk (:class:`~servicerouter.servercheck.StateScan`), yielding to the event loop
        between chunks; None if HAProxy could not be read."""
        if not self.layout:
            return None
        generation, seq = self._generation, self._change_seq
        scan = StateScan(self.layout, self.table)
        try:
            try:
                async for lines in self.runtime.servers_state_chunks():
                    scan.feed(lines)
                    await asyncio.sleep(0)  # let events, /healthz and the apply loop in
                suspect, actual = scan.finish()
            except ParseError as exc:
                raise HAProxyRuntimeError(f"{self.config.settings.socket_path}: {exc}") from exc
        except HAProxyRuntimeError as exc:
            self.haproxy_ok = False
            self.metrics.haproxy_up.set(0)
            log.error("reconcile: %s", exc)
            if self.runtime.socket_missing():
                if after_reload:  # a reload did not bring it back: not every interval
                    self._reload_failed("confirm", f"after the reload the admin socket "
                                        f"{self.config.settings.socket_path} is still gone")
                self._socket_gone()
            return None
        self.haproxy_ok = True
        self.metrics.haproxy_up.set(1)
        return _Scanned(generation, seq, suspect, actual)

    async def _repair(self, found: _Scanned, after_reload: bool = False) -> None:
        """Repair what a scan found, leaving out backends changed since it began; in range
        mode, also the maps (read now, in the apply loop, against the current layout)."""
        if found.generation != self._generation:
            return  # a reload since: its own reconcile read the new worker
        layout = {name: shape for name, shape in found.suspect.items()
                  if self._changed_at.get(name, 0) <= found.seq
                  and self.layout.get(name) == shape}
        commands, broken = reconcile(layout, self.table, found.actual) if layout else ([], {})
        maps, readable = await self._map_repairs()
        commands += maps
        if not readable:
            broken["*"] = ReloadReason.RESYNC
        if commands:
            log.warning("reconcile: HAProxy differs from the slot table; sending %d repairs",
                        len(commands))
            if not await self._execute(commands):
                broken.update(dict.fromkeys(self.layout, ReloadReason.RUNTIME_ERROR))
        if broken:
            self._pending.update(broken)
            self._wake.set()
            if after_reload:
                # HAProxy lacks what was just written and reloaded: most likely the
                # admin socket belongs to another HAProxy than the one reloaded. Back
                # off instead of reloading once per interval forever.
                self._reload_failed("confirm", (
                    f"after the reload HAProxy at {self.config.settings.socket_path} still lacks "
                    f"{len(broken)} backends of the new config (e.g. {min(broken)}); is "
                    "--haproxy-socket the socket of the HAProxy that reloads?"))
            else:
                log.warning("reconcile: %d backends missing in HAProxy; reloading",
                            len(broken))
