"""Marathon's apps into the desired state: the full sync and the one-app refetch.

Both fetch, parse (a full sync in a thread), assign IP-per-task ports, vet label
templates, and then change the in-memory :class:`~servicerouter.state.ClusterState`
and mark what changed; the apply loop does the rest. An app that fails keeps its
last good state and is reported in ``app_errors``; a failed full sync is retried
with backoff (1 s doubling to 30 s) while HAProxy keeps its config.

A full sync's answer is older than what events and refetches apply while it is in
flight: tasks changed by events meanwhile, and apps a refetch begun after its fetch
(or an ``app_terminated_event``) redefined, added or removed meanwhile, keep what those
did instead of the answer's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

from . import hostfacts
from .heap import quiet_gc
from .label_templates import TemplateVetting
from .marathon.errors import MarathonError
from .marathon.parse import parse_app, parse_apps, refuse_empty
from .marathon.parsecache import ParseCache
from .portassign import assign_all

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("servicerouter.engine")

EMPTY_ACCEPTED_BY = ("POST /resync?accept_empty=1 on --listen applies it once, "
                     "--allow-empty-marathon always")


class Intake:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = asyncio.Lock()  # one full sync at a time
        self._vetting = TemplateVetting(engine.config.settings, engine.config.templates,
                                        lambda text: engine.writer.validate(text))
        self.retry_at: float | None = None  # after a failed full sync
        self._backoff = 0.0
        self._parsed = ParseCache()  # apps whose JSON did not change are not parsed again
        self._accept_empty = False  # the operator's word for the next full sync
        # While a full sync is in flight: app id -> its error (None: none) as decided by a
        # refetch begun after that sync's fetch (or an app_terminated_event), newer than
        # the sync's answer for that app. See full_sync.
        self._redefined: dict[str, str | None] | None = None
        # App id -> whether an app_terminated_event came while its refetch was in flight
        # (AppRefetcher runs one per app at a time): the answer was sampled before it.
        self._refetching: dict[str, bool] = {}

    def accept_empty_once(self) -> None:
        """The next full sync may apply an answer that lists no apps (``POST
        /resync?accept_empty=1``): the operator's word that every app is gone on purpose."""
        self._accept_empty = True

    @quiet_gc  # the collector cost a third of a 10,000-app sync (see heap.py)
    async def full_sync(self) -> bool:
        """Fetch every app, replace the desired state, wake the apply loop."""
        e = self.engine
        async with self._lock:
            started = time.perf_counter()
            vouched = self._accept_empty  # (one given during the fetch is the next's)
            accept_empty = vouched or e.config.allow_empty_marathon
            # Until the answer is applied, not only fetched: vetting template labels awaits
            # haproxy -c, and events meanwhile must win over the answer too.
            touched = e.events.watch(None)
            # App definitions likewise: a refetch begun after this fetch that lands before
            # this answer is applied is newer for its app (a deploy, a removal, a new app),
            # and putting the answer's older definition back reverted the deploy until the
            # next event or resync. A refetch begun before this fetch is older: the answer
            # wins (a change after its sample sends an event, so a refetch, of its own).
            self._redefined = {}
            try:
                return await self._full_sync(started, vouched, accept_empty, touched,
                                             self._redefined)
            finally:
                e.events.unwatch(touched)
                self._redefined = None

    async def _full_sync(self, started: float, vouched: bool, accept_empty: bool,
                         touched: set[tuple[str, str]], redefined: dict[str, str | None]
                         ) -> bool:
        e = self.engine
        try:
            fetched = await e.marathon.get_apps()
            if vouched:  # spent on an answer, not on a fetch that failed
                self._accept_empty = False
            source = fetched.url
            # In a thread (~0.3 s of CPU at 10,000 apps): churn and /healthz go on.
            # Each app is decoded when parsed and freed behind it (consume), the rest
            # with `fetched`: the model reuses their memory (peak RSS, issue #11).
            result = await asyncio.to_thread(functools.partial(
                parse_apps, fetched.data, source, e.resolve,
                e.config.settings.allow_label_templates, consume=True,
                cache=self._parsed))
            del fetched
            if not accept_empty:
                refuse_empty(result, source, e.state.routed_apps(), EMPTY_ACCEPTED_BY)
        except Exception as exc:  # also one no rule foresaw: logged, never fatal
            # (a daemon that died at start, a resync task that ended unseen)
            foreseen = isinstance(exc, (MarathonError, ValueError))
            why = str(exc) if foreseen else f"{type(exc).__name__}: {exc}"
            e.marathon_health.request_failed(f"full sync failed: {why}")
            self._backoff = min(max(2 * self._backoff, 1.0), 30.0)
            self.retry_at = time.monotonic() + self._backoff
            log.error("full sync failed: %s; HAProxy keeps its current config; retrying "
                      "in %.0fs", why, self._backoff, exc_info=not foreseen)
            return False
        e.marathon_health.request_ok()
        self.retry_at, self._backoff = None, 0.0
        for err in result.errors:  # logged when new or changed, not once per sync
            if e.app_errors.get(err.app_id) != err.message:
                log.error("%s", err)
        before, e.app_errors = e.app_errors, {err.app_id: err.message
                                              for err in result.errors}
        result.apps, assigned = assign_all(  # IP-per-task; held ports stay put
            result.apps, e.config.settings, e.state.held_ports())
        result.apps, broken = await self._vetting.vet(result.apps)  # label templates
        # In a thread too: haproxy -c on the certificate files only it can judge (one
        # run for all, ~1.2 s at 1,000 files with OCSP stapling, the first time). Before
        # the events are taken in: what they do meanwhile wins over this answer.
        facts = await asyncio.to_thread(hostfacts.gather, result.apps, e.config.settings)
        result.apps = e.events.newer_tasks_all(result.apps, touched)
        for app_id, message in broken.items():
            if before.get(app_id) != message:
                log.error("app %s: %s", app_id, message)
        e.app_errors.update(broken)
        e.events.warn_once([*result.warnings, *assigned], every_app=True)
        if redefined:  # (no await from here on: none can be added behind this)
            result.apps = [a for a in result.apps if a.id not in redefined]
            for app_id, error in redefined.items():  # the refetch's verdict stands
                if error is None:
                    e.app_errors.pop(app_id, None)
                else:
                    e.app_errors[app_id] = error
        dirty = e.state.set_facts(facts)
        dirty |= e.state.replace_all(result.apps, keep=[*e.app_errors, *redefined])
        e.events.after_full_sync()
        e.mark(dirty)
        e.last_sync = time.time()
        e.metrics.last_sync.set(e.last_sync)
        e.metrics.sync_duration.labels("full").observe(time.perf_counter() - started)
        log.info("full sync from %s: %d apps, %d services, %d endpoints, %d changed, "
                 "%d apps reused unparsed, %.0f ms", source, len(e.state.apps),
                 len(e.state.desired), e.state.endpoint_count, len(dirty),
                 self._parsed.reused, 1000 * (time.perf_counter() - started))
        return True

    async def refetch_app(self, app_id: str, event_time: float | None = None) -> None:
        """Fetch one app again and replace it in the desired state (an app gone from
        Marathon is removed); a failed fetch becomes a full resync."""
        e = self.engine
        # Until the answer is applied, not only fetched: vetting template labels awaits
        # haproxy -c, and events meanwhile must win over the answer too.
        touched = e.events.watch(app_id)
        redefined = self._redefined  # the full sync this fetch began after, if any
        self._refetching[app_id] = False
        try:
            if await self._refetch_app(app_id, event_time, touched) and redefined is not None:
                redefined[app_id] = e.app_errors.get(app_id)  # (no await since it decided)
        finally:
            e.events.unwatch(touched)
            self._refetching.pop(app_id, None)

    def app_removed(self, app_id: str) -> None:
        """An event removed ``app_id`` (newer than a full sync's or a refetch's answer in
        flight)."""
        self.engine.app_errors.pop(app_id, None)  # gone: nothing of it is left to report
        if self._redefined is not None:
            self._redefined[app_id] = None
        if app_id in self._refetching:
            self._refetching[app_id] = True

    def _removed_meanwhile(self, app_id: str) -> bool:
        """Whether an app_terminated_event came since this refetch asked Marathon: its
        answer is older. Put back, the app held its port and hosts against the app
        replacing it until the next full sync. (Re-created meanwhile, the new app's own
        events ask for a refetch of their own, after this one.)"""
        if not self._refetching.get(app_id):
            return False
        log.info("app %s: destroyed while its refetch was in flight; that older answer "
                 "is dropped", app_id)
        return True

    async def _refetch_app(self, app_id: str, event_time: float | None,
                           touched: set[tuple[str, str]]) -> bool:
        """True once the app's state or error is decided by this answer."""
        e = self.engine
        try:
            raw = await e.marathon.get_app(app_id)
        except MarathonError as exc:
            e.marathon_health.request_failed(f"refetching app {app_id} failed: {exc}")
            log.error("refetching app %s failed: %s; a full resync follows", app_id, exc)
            e.request_full_sync()
            return False
        e.marathon_health.request_ok()
        if raw is None:
            e.app_errors.pop(app_id, None)  # gone: nothing of it is left to report
            e.mark(e.state.remove_app(app_id), event_time)
            return True
        if self._removed_meanwhile(app_id):
            return True
        try:
            app, warnings = parse_app(raw, e.resolve,
                                      e.config.settings.allow_label_templates)
        except ValueError as exc:
            log.error("app %s: %s; app keeps its last good state, others applied", app_id, exc)
            e.app_errors[app_id] = f"{exc}; app keeps its last good state"
            return True
        _, broken = await self._vetting.vet([app])  # label templates, validated alone
        if self._removed_meanwhile(app_id):
            return True
        if broken:
            log.error("app %s: %s", app_id, broken[app_id])
            e.app_errors[app_id] = broken[app_id]
            return True
        survey = hostfacts.survey([app], e.config.settings)
        # A certificate file only haproxy -c can judge (new, or changed): in a thread.
        facts = await asyncio.to_thread(survey.settle) if survey.asks_haproxy else \
            survey.settle()
        if self._removed_meanwhile(app_id):  # (during haproxy -c)
            return True
        e.app_errors.pop(app_id, None)
        # IP-per-task ports are a function of all such apps: one arriving may move another's.
        app, moved, assigned = e.state.assign_ports(e.events.newer_tasks(app, touched))
        e.events.warn_once([*warnings, *assigned])
        dirty = e.state.set_facts(facts)
        dirty |= e.state.set_app(app)
        for other in moved:
            dirty |= e.state.set_app(other)
        e.mark(dirty, event_time)
        return True
