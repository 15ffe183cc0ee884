"""The daemon's core: owns state, time and concurrency.

One writer: only :meth:`Engine._apply_loop` talks to HAProxy, so runtime
commands, reloads and reconciliation never race each other. Everything else
(the event stream, full resyncs, single-app refetches) only changes the
in-memory :class:`~servicerouter.state.ClusterState`, marks backends dirty and
wakes the apply loop, which waits a short coalescing window and then plans and
applies everything that changed in one batch.

The engine coordinates; the apply loop's stages live beside it:
:mod:`~servicerouter.intake` (full sync, one-app refetch),
:mod:`~servicerouter.takeover` (adopting a running HAProxy at start),
:mod:`~servicerouter.reload` (render, validate, isolate, write, reload),
:mod:`~servicerouter.reconcile` (read HAProxy back, repair) and
:mod:`~servicerouter.gauges`.
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
from typing import Any, TypeVar

from . import owners, pool
from .applylog import runtime_lines
from .changelog import ChangeLog
from .gauges import Gauges
from .guard import Guard
from .haproxy.render import template_environment
from .haproxy.runtime import HAProxyRuntimeError, RuntimeClient
from .intake import Intake
from .layout import Layout, Settings, SlotTable
from .logformat import log_lines
from .marathon.client import MarathonClient
from .marathon.errors import MarathonError
from .marathon.events import (
    DEFAULT_EVENT_TYPES,
    DEFAULT_MAX_EVENT_BYTES,
    EventStream,
    MarathonEvent,
    reconnect_delays,
)
from .marathon.parse import Resolver
from .marathon_health import MarathonHealth
from .metrics import Metrics
from .planner import Plan, ReloadReason, plan
from .rangeindex import RangeIndex
from .reconcile import Reconciler
from .refetch import AppRefetcher, SingleFlight
from .reload import ConfigWriter, Reloader, ReloadPipeline, write_maps
from .state import ClusterState
from .stopping import unless_stopped
from .sync import EventHandler
from .takeover import take_over

log = logging.getLogger("servicerouter.engine")
MAX_AWAITING_RELOAD = 100_000
"""Event times kept for the event_to_apply histogram while a reload is pending (~3 MB)."""
T = TypeVar("T")

ENDPOINTS_CHANGED = "endpoints_changed"  # reload strategy: task churn caused the reload
WORKER_CHECK_INTERVAL = 1.0  # seconds between looks at HAProxy's worker pid
STREAM_STAYED_UP = 10.0  # seconds a stream must last to reset its reconnect backoff


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
    owners_file: Path | None = None  # who owns ports and hosts, kept across restarts
    allow_empty_marathon: bool = False  # an answer listing no apps may unroute everything
    tenant_reload_interval: float = 30.0  # reloadbudget.py; 0: no budget
    tenant_reload_burst: int = 10


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
        # Range mode: what pool.py derives from the layout, kept as it changes (_commit).
        self.range_index = RangeIndex(config.settings) \
            if pool.range_on(config.settings) else None
        self._layout: Layout = {}
        self.table: SlotTable = {}
        self.running_config: str | None = None
        self.last_reload: tuple[float, str] | None = None  # (unix time, reason)
        self.last_sync: float | None = None  # unix time of the last good full sync
        self.haproxy_ok = False
        self.app_errors: dict[str, str] = {}  # app id -> why its last definition failed
        self.reloads = 0
        self.runtime_updates = 0
        # The apply loop's schedule: backends to plan, reasons to reload (backend -> why).
        self.dirty: set[str] = set()
        self.pending: dict[str, str] = {}
        self._event_times: list[float] = []
        # Event times a pending reload will apply (event_to_apply), at most
        # MAX_AWAITING_RELOAD: reloads failing for days under churn grew it without end.
        self.awaiting_reload: list[float] = []
        self.generation = 0  # counts our reloads: a scan from before one is dropped
        self.changes = ChangeLog()  # which backends each batch changed, for the readers
        self.plan_errors: dict[str, str] = {}  # backend -> what planning it raised, logged
        self.batch_plan_error: str | None = None  # what planning a whole batch raised
        self.guard = Guard(self.state, writer, config.settings, config.templates)
        self._wake = asyncio.Event()
        self.events = EventHandler(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.marathon_health = MarathonHealth(metrics.marathon_up, metrics.stream_connected)
        self.intake = Intake(self)
        self._full_syncs = SingleFlight(self.intake.full_sync, self.spawn)
        self._refetches = AppRefetcher(self.intake.refetch_app, self.spawn,
                                       self.request_full_sync)
        self.reload_pipeline = ReloadPipeline(self)
        self.reconciler = Reconciler(self)
        self.gauges = Gauges(self)
        self.ready = asyncio.Event()  # set after the first good config is live
        self._owners_saved = 0  # the state's owners_version last written to owners_file
        self._owners_file = owners.OwnersFile(config.owners_file) \
            if config.owners_file is not None else None

    @property
    def change_seq(self) -> int:
        """The number of the last batch planned (changelog.py)."""
        return self.changes.seq

    @property
    def layout(self) -> Layout:
        """The backends HAProxy has (reload.py replaces it, :meth:`_commit` changes it)."""
        return self._layout

    @layout.setter
    def layout(self, layout: Layout) -> None:
        self._layout = layout
        if self.range_index is not None:
            self.range_index.reset(layout)

    # ---------------------------------------------------------------- inputs
    def mark(self, dirty: set[str], event_time: float | None = None) -> None:
        """Record backends that may have changed, and wake the apply loop."""
        if dirty:
            self.dirty |= dirty
            if event_time is not None:
                self._event_times.append(event_time)
            self._wake.set()

    def request_reload(self, reason: ReloadReason = ReloadReason.MANUAL) -> None:
        """Reload even if nothing changed. ``manual`` (SIGHUP) also re-reads the templates,
        retries a candidate rejected before and skips any backoff."""
        if reason is ReloadReason.MANUAL:
            template_environment.cache_clear()
            self.reload_pipeline.manual()
        self.pending["*"] = reason
        self._wake.set()

    def request_reconcile(self) -> None:
        self.reconciler.request()

    def wake(self) -> None:
        """Have the apply loop look again (a reason to reload, a finished scan)."""
        self._wake.set()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` beside the loops; cancelled when the engine stops."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def request_full_sync(self) -> None:
        """A full sync soon: at most one runs, at most one more waits behind it."""
        self._full_syncs.request()

    def request_refetch(self, app_id: str, event_time: float | None = None) -> None:
        """Refetch one app soon, once however often asked meanwhile (bounded in flight)."""
        self._refetches.request(app_id, event_time)

    def on_event(self, event: MarathonEvent) -> None:
        try:
            self.events.handle(event)
        except Exception as exc:  # one bad event must not end the stream
            log.debug("event %s raised", event.type, exc_info=True)
            self.events.bad_event(event, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------- the loops
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set. The first full sync is retried with backoff."""
        delays = reconnect_delays(initial=0.5, maximum=15.0)
        self.restore_owners()
        while not stop.is_set() and not await unless_stopped(self.intake.full_sync(), stop):
            # The worker check starts after the first sync: meanwhile HAProxy (serving its
            # last config) is asked here, or servicerouter_haproxy_up blames it for Marathon.
            await unless_stopped(self._probe_haproxy(), stop)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), next(delays))
        if stop.is_set():
            return
        if not await take_over(self):  # a running HAProxy of our shape: no reload
            self.request_reload(ReloadReason.STARTUP)  # the first config, from nothing
        loops = [self._apply_loop(stop), self._event_loop(stop), self._timer_loop(stop)]
        runners = [asyncio.ensure_future(c) for c in loops]
        try:
            await stop.wait()
        finally:
            for r in [*runners, *self._tasks]:
                r.cancel()
            await asyncio.gather(*runners, *self._tasks, return_exceptions=True)

    def restore_owners(self) -> None:
        """Read who owned ports and hosts before this process from ``owners_file``: handed
        back at the first full sync (:meth:`ClusterState.restore_owners`). The file is
        written again after it (:meth:`keep_owners`) even if no owner changes: what it
        handed back to apps gone meanwhile, or to groups that did not form again, is no
        one's now. Left in the file, it was theirs again at the next restart (an app
        deleted while the daemon was down, created again, had its port back over an
        older definition, from a daemon that never saw it hold it)."""
        if self.config.owners_file is None:
            return
        prior = owners.load(self.config.owners_file)
        if prior is not None:
            self.state.restore_owners(prior)
            self._owners_saved = -1  # no version: the first step writes the file
            log.info("owners of %d ports and %d hosts read from %s", len(prior.ports),
                     len(prior.hosts), self.config.owners_file)

    async def _event_loop(self, stop: asyncio.Event) -> None:
        delays = reconnect_delays()
        first = True
        while not stop.is_set():
            attached = None
            try:
                stream = EventStream(self.marathon, self.config.event_types,
                                     stall_timeout=self.config.stall_timeout,
                                     max_event_bytes=self.config.max_event_bytes,
                                     on_alive=self.marathon_health.stream_alive)
                async with stream:
                    log.info("event stream attached to %s", stream.url)
                    attached = time.monotonic()
                    if not first:
                        self.metrics.stream_reconnects.inc()
                        self.request_full_sync()  # events may have been missed
                    first = False
                    async for event in stream:
                        self.on_event(event)
            except MarathonError as exc:
                self.marathon_health.stream_lost(str(exc))
                log.warning("event stream: %s; reconnecting", exc)
            except Exception as exc:  # a bug: the stream must not end for good, unseen
                self.marathon_health.stream_lost(f"event stream failed: "
                                                 f"{type(exc).__name__}: {exc}")
                log.exception("event stream failed (%s: %s); reconnecting",
                              type(exc).__name__, exc)
            # Only a stream that stayed up resets the backoff: one that ends at once would
            # be reconnected, with a full sync, every 0.1 s.
            if attached is not None and time.monotonic() - attached >= STREAM_STAYED_UP:
                delays = reconnect_delays()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), next(delays))

    async def _timer_loop(self, stop: asyncio.Event) -> None:
        cfg = self.config
        next_resync = time.monotonic() + cfg.resync_interval
        next_reconcile = time.monotonic() + cfg.reconcile_interval
        next_worker_check = time.monotonic()
        while not stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_worker_check and not self.reconciler.checking_worker:
                    next_worker_check = now + min(WORKER_CHECK_INTERVAL, cfg.reconcile_interval)
                    self.reconciler.checking_worker = True
                    self.spawn(self.reconciler.check_worker())
                if now >= next_resync:
                    next_resync = now + cfg.resync_interval
                    # A refused candidate is validated again at each resync.
                    self.reload_pipeline.rejected = None
                    self.request_full_sync()
                if self.intake.retry_at is not None and now >= self.intake.retry_at:
                    self.intake.retry_at = None
                    self.request_full_sync()
                if now >= next_reconcile:  # all backends once an interval, in slices
                    next_reconcile = now + cfg.reconcile_interval / self.reconciler.slices()
                    self.reconciler.request_slice()
                self.events.expire_drains()
                wait = min(next_resync, next_reconcile, next_worker_check,
                           self.events.next_deadline(), self.intake.retry_at or next_resync) - now
            except Exception:  # a bug: resyncs, reconciles and drains must not end unseen
                log.exception("timer loop round failed; the next one follows")
                wait = 1.0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), max(wait, 0.05))

    async def _apply_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            timeout = None
            if self.pending:
                now = time.monotonic()
                timeout = max(self.reload_pipeline.ready_at(now) - now, 0.0)
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
                self.reload_pipeline.failed("apply", None)  # later, not at once in a loop

    # ------------------------------------------------------------ one step
    async def step(self) -> None:
        """Plan and apply everything marked dirty; reload if needed and allowed."""
        await self.apply_dirty()
        if self.pending and self.reload_pipeline.due():
            await self.reload_pipeline.run()
        await self.reconciler.step()
        self.gauges.update()
        self.keep_owners()

    def keep_owners(self) -> None:
        """Write who owns ports and hosts to ``owners_file`` if that changed."""
        version = self.state.owners_version
        if self._owners_file is not None and version != self._owners_saved:
            self._owners_file.save(self.state.owners())  # reports a failure
            self._owners_saved = version  # and tries again at the next change only

    async def apply_dirty(self) -> None:
        """Plan the dirty backends: runtime commands now, reloads into ``pending``."""
        dirty, self.dirty = self.dirty, set()
        events, self._event_times = self._event_times, []
        started = time.perf_counter()
        if dirty:
            # Every backend looked at now, applied or left for a reload, is planned again
            # after a reload whose render began before this (it may lack this change).
            self.changes.record(dirty)
            try:
                p = plan(self.layout, self.table, self.state.desired, dirty,
                         self.config.settings, self.range_index)
                self.batch_plan_error = None
            except Exception as exc:  # outside any one backend's planning: a bug
                self._batch_plan_failed(exc, len(dirty))
                # The batch is not lost: the reload renders all of it from the desired state.
                p = Plan(reload=dict.fromkeys(dirty, ReloadReason.PLAN_ERROR))
            if p.errors or self.plan_errors:
                self._plan_failed(p, dirty)
            if self.running_config is not None:  # before the first config, all is new
                for name, why in sorted(p.why.items()):
                    log.info("%s needs a reload (%s): %s", name, p.reload.get(name, "?"), why)
            if self.config.update_strategy == "reload" and p.commands:
                p = Plan(reload={**p.reload, **dict.fromkeys(p.changed(), ENDPOINTS_CHANGED)})
            if p.commands:
                before = {name: self.table.get(name, []) for name in p.slots}
                shapes = {n: self.layout[n] for n in p.layout if n in self.layout}  # range mode
                if await self.execute(p.commands):
                    self._commit(p)
                    if log.isEnabledFor(logging.INFO):  # the lines cost ~5% CPU under churn
                        log_lines(log, logging.INFO, runtime_lines(
                            p.commands, p.slots, before,
                            collections.ChainMap(self.layout, shapes) if shapes else self.layout,
                            1000 * (time.perf_counter() - started)))
                    now = time.monotonic()
                    observe = self.metrics.event_to_apply.observe
                    for t in events:
                        observe(now - t)
                    self.metrics.incremental_duration.observe(time.perf_counter() - started)
                else:
                    self.pending.update(dict.fromkeys(p.changed(), ReloadReason.RUNTIME_ERROR))
            if p.reload:
                self.pending.update(p.reload)
                room = MAX_AWAITING_RELOAD - len(self.awaiting_reload)
                if room > 0:  # past it, the oldest (the longest waits) stand for the rest
                    self.awaiting_reload.extend(events[:room])

    def _batch_plan_failed(self, exc: Exception, backends: int) -> None:
        """Planning a whole batch raised, outside any one backend's: logged once per
        error until a batch plans cleanly."""
        text = f"{type(exc).__name__}: {exc}"
        if self.batch_plan_error == text:
            log.debug("planning a batch failed again (%s)", text)
            return
        self.batch_plan_error = text
        log.error("planning the runtime changes of %d backend(s) failed (%s); they are "
                  "reloaded instead", backends, text, exc_info=exc)

    def _plan_failed(self, p: Plan, planned: set[str]) -> None:
        """Log the backends whose planning raised (the planner left each to a reload,
        reason ``plan_error``; the others' changes went on): once per backend and error,
        until it plans cleanly, so one app's churn cannot flood the log."""
        for name in planned - p.errors.keys():
            self.plan_errors.pop(name, None)
        for name, exc in sorted(p.errors.items()):
            text = f"{type(exc).__name__}: {exc}"
            if self.plan_errors.get(name) == text:
                log.debug("%s: planning its runtime changes failed again (%s)", name, text)
                continue
            self.plan_errors[name] = text
            d = self.state.desired.get(name)
            log.error("%s (app %s): planning its runtime changes failed (%s); it is reloaded "
                      "instead, the other backends' changes go on", name,
                      d.service.app_id if d is not None else "?", text, exc_info=exc)

    async def while_applying(self, work: Awaitable[T]) -> T:
        """Await ``work`` (validating or reloading a config: seconds at 10,000 apps) while
        applying the runtime changes that come meanwhile, as the apply loop would: task
        churn of other apps is not held behind a reload. Only this coroutine talks to
        the admin socket meanwhile, so there is still one writer."""
        job = asyncio.ensure_future(work)
        try:
            while not job.done():
                self._wake.clear()
                if not self.dirty:  # (what came during the last apply is not waited for)
                    waker = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({job, waker}, return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
                if self.dirty:
                    if self.config.coalesce_window:
                        await asyncio.sleep(self.config.coalesce_window)
                    try:
                        await self.apply_dirty()
                    except Exception:  # a bug must not cancel a reload half-way
                        log.exception("apply step failed")
                        self.request_reconcile()
        finally:
            if not job.done():
                job.cancel()
        self._wake.set()  # whatever came in during the last apply is looked at again
        return job.result()

    def _commit(self, p: Plan) -> None:
        self.table.update(p.slots)
        layout, index = self.layout, self.range_index
        for name, shape in p.layout.items():  # range mode: spares taken and returned
            if shape is None:
                layout.pop(name, None)
                self.table.pop(name, None)
            else:
                layout[name] = shape
            if index is not None:
                index.put(name, shape)
        if p.layout and not self.reload_pipeline.loading:
            self.write_maps(layout)  # a restarted worker reads the same maps
        for name, size in p.grown.items():
            layout[name] = replace(layout[name], slots=size)
            if index is not None:
                index.put(name, layout[name])
        self.runtime_updates += len(p.slots)

    async def execute(self, commands: list[str]) -> bool:
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
            self.metrics.runtime_errors.inc(len(commands))
            if self.reload_pipeline.handing_over:  # the old worker ended our session
                log.warning("runtime API while a reload hands over to HAProxy's new "
                            "worker: %s; planned again against the worker that serves "
                            "after it", exc)
                return False
            self.haproxy_answered(False)
            log.error("runtime API: %s; HAProxy's state is restored by a reload", exc)
            if self.runtime.socket_missing():
                self.reload_pipeline.socket_gone()
            return False
        self.haproxy_answered(True)
        self.metrics.runtime_batches.inc()
        failed = [r for r in results if not r.ok]
        if failed:
            for r in failed[:10]:
                log.error("runtime command %r failed: %s", r.command,
                          r.reply.strip() or r.status)
            self.metrics.runtime_errors.inc(len(failed))
        return not failed

    async def _probe_haproxy(self, timeout: float = 1.0) -> None:
        """Ask HAProxy's admin socket whether it answers (``show info``), bounded."""
        try:
            await asyncio.wait_for(self.runtime.show_info(), timeout)
        except (HAProxyRuntimeError, asyncio.TimeoutError):
            self.haproxy_answered(False)
        else:
            self.haproxy_answered(True)

    def haproxy_answered(self, ok: bool) -> None:
        """Whether HAProxy's admin socket answered, as last seen by anyone (a runtime
        batch, a reconcile, the worker check, /healthz's probe): /status's ``haproxy_up``
        and ``servicerouter_haproxy_up`` say the same."""
        self.haproxy_ok = ok
        self.metrics.haproxy_up.set(1 if ok else 0)

    def write_maps(self, layout: Layout) -> None:
        """Range mode: write the map files of ``layout`` (see :func:`reload.write_maps`)."""
        write_maps(self.writer, layout, self.config.settings,
                   self.range_index if layout is self.layout else None)
