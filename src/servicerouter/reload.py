"""The reload pipeline: render the whole desired state, validate it (leaving out
what ``haproxy -c`` blames on one service), write it, have HAProxy reload it, and
read HAProxy back.

Every slow stage (the render, ``haproxy -c``, isolation's bisection, the reload,
the reconcile after it) runs inside :meth:`Engine.while_applying`: other apps'
task churn is applied at runtime meanwhile, so a reload never holds it. A failed
stage backs off (1 s doubling to 30 s) and the running config keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from . import pool
from .applylog import reload_causes
from .haproxy.children import brief
from .haproxy.render import TemplateError, prune_crt_lists, render
from .haproxy.runtime import HAProxyRuntimeError, respell_socket_path
from .layout import Layout, Settings, SlotTable, build_layout, grace_ms
from .metrics import RELOAD_STAGES
from .planner import ReloadReason, health_up
from .rangeindex import RangeIndex
from .reloadbudget import ReloadBudget, ReloadGate

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("servicerouter.engine")

# When several reasons cause one reload, it is counted under the first of these.
REASON_ORDER = [ReloadReason.STARTUP, ReloadReason.MANUAL, ReloadReason.RUNTIME_ERROR,
                ReloadReason.PLAN_ERROR, ReloadReason.NEW_APP, ReloadReason.REMOVED_APP,
                ReloadReason.OPTIONS_CHANGED, ReloadReason.POOL_EXHAUSTED,
                ReloadReason.OWN_FRONTEND, ReloadReason.OUTSIDE_POOL, ReloadReason.VHOST_ACL,
                ReloadReason.CAPACITY, ReloadReason.RESYNC]


# While a reload is in flight: how often, and for how long each time, the admin socket is
# asked which worker answers it (ReloadPipeline._new_worker).
PROBE_INTERVAL = 0.01
PROBE_TIMEOUT = 0.1
PROBES = 5
# After a reload: health up commands per admin-session exchange (~6 ms), so that churn
# is applied between them.
HEALTH_CHUNK = 1000
# After HAProxy's `grace`: the old worker stops listening at the end of its grace timer,
# counted from its stop signal (before the switch-over); this covers a busy machine.
GRACE_MARGIN = 0.25


class Reloader(Protocol):
    """How HAProxy picks up a new config file: confirmed, or raises ReloadError."""

    async def reload(self) -> None: ...

    def starts_haproxy(self) -> bool:
        """True when the next :meth:`reload` starts HAProxy (none runs yet)."""
        ...

    def problem(self) -> str | None:
        """Why HAProxy cannot be reloaded now, as far as the reloader knows (a kept
        master alive but silent), or None: /healthz and /status report it."""
        ...


class ConfigWriter(Protocol):
    """Validates and writes a candidate config (``haproxy -c``, atomic replace)."""

    async def validate(self, text: str) -> tuple[bool, str]: ...

    def write(self, text: str) -> None: ...

    def keep_rejected(self, text: str) -> Path | str: ...

    def read(self) -> str | None: ...

    def remove(self) -> None:
        """Remove the config file (a first candidate HAProxy did not start on)."""
        ...

    def loaded(self) -> None:
        """HAProxy was seen to run what the last :meth:`write` wrote. Until then the
        file is recorded as unconfirmed, on disk: a daemon killed meanwhile must not
        leave the next one taking it for what HAProxy runs."""
        ...

    def unconfirmed(self) -> str | None:
        """Why the file may not be what HAProxy runs (written, never :meth:`loaded`),
        or None."""
        ...

    @property
    def changes(self) -> asyncio.Lock:
        """The file's turn: held from a :meth:`write` until HAProxy loaded it (or the
        file was put back), and by a restart of HAProxy from putting the file right
        until HAProxy runs it."""
        ...


def primary_reason(pending: dict[str, str]) -> str:
    """The reason one reload is counted under, of all the ``pending`` ones."""
    reasons = {str(r) for r in pending.values()}
    return next((r.value for r in REASON_ORDER if r.value in reasons), min(reasons))


class ReloadPipeline:
    """Runs reloads for the engine, and remembers what decides the next one: its
    earliest time (minimum interval, backoff), the last rejected candidate, and
    the admin socket's spelling."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rejected: str | None = None  # a candidate haproxy -c refused, not retried
        self.backoff = 0.0
        self.next_at = 0.0  # time.monotonic() before which no reload starts
        self.last_started = -float("inf")  # time.monotonic() the last attempt began
        # The admin socket's spelling in the running config, and whether the next reload
        # must spell it differently so that HAProxy binds its file anew (it was removed).
        self.live_socket = engine.config.settings.socket_path
        self.restore_socket = False
        self.cold_start_failed = False  # HAProxy did not start on an unchecked first config
        # Since when (time.time()), at which stage and why reloads fail, until one works:
        # /healthz says so (a full disk or a lost master socket failed every reload while
        # it said ok).
        self._failing: tuple[float, str, str] | None = None
        # While a reload hands over from the old worker to the new: a session the old one
        # ends is no fault of HAProxy's (what it was told is planned again for the new).
        self.handing_over = False
        self.new_worker: int | None = None  # the pid that answered first after a reload
        # While HAProxy loads a candidate: its map files are on disk for the new worker,
        # and runtime changes to the old worker meanwhile must not write the running
        # layout's over them (they are planned again against the new layout after it).
        self.loading = False
        # Until the first reload of ours: the config file and map files that were on
        # disk before a candidate's, put back when it fails or the daemon stops. An
        # HAProxy the daemon did not adopt (kept, or started elsewhere) runs from them,
        # and its next reload or restart reads them. prior_maps is None outside the
        # range mode (and in a dry run): then the running layout's are written, as ever.
        self.kept_prior = False
        self.prior_config: str | None = None
        self.prior_maps: dict[str, str | None] | None = None
        self.gate = ReloadGate(ReloadBudget(engine.config.tenant_reload_interval,
                                            engine.config.tenant_reload_burst),
                               engine.metrics.reloads_held.inc)

    def due(self) -> bool:
        now = time.monotonic()
        return self.ready_at(now) <= now

    def ready_at(self, now: float) -> float:
        """When the pending reload may start (time.monotonic()): after the minimum
        interval or a backoff, and once a tenant that wants it has a token
        (reloadbudget.py)."""
        return max(self.next_at, self.gate.ready_at(self._tenants(), now))

    def _tenants(self) -> frozenset[str] | None:
        e = self.engine
        return self.gate.tenants(e.pending, e.state.desired, e.layout,
                                 e.running_config is not None)

    def manual(self) -> None:
        """An operator asked (SIGHUP): retry a rejected candidate, skip any backoff, but
        not --min-reload-interval since the last attempt began: a storm of SIGHUPs (or of
        /_mlb_signal requests, which anyone on --listen may send) is one reload per
        interval, not one per signal, each leaving an old worker to drain."""
        self.rejected = None
        self.backoff = 0.0
        self.next_at = min(self.next_at,
                           self.last_started + self.engine.config.min_reload_interval)

    def socket_gone(self) -> None:
        """The admin socket file is gone: one reload has HAProxy bind it again."""
        if self.restore_socket:
            return
        self.restore_socket = True
        log.error("HAProxy's admin socket %s is gone; reloading once to have HAProxy bind "
                  "it again (runtime updates resume after that)",
                  self.engine.config.settings.socket_path)
        self.engine.pending.setdefault("*", ReloadReason.RUNTIME_ERROR)
        self.engine.wake()

    @property
    def failing(self) -> tuple[float, str, str] | None:
        return self._failing

    @failing.setter
    def failing(self, value: tuple[float, str, str] | None) -> None:
        """Kept in the servicerouter_reload_failing gauge as it changes: an alert on the
        failures counter alone cleared while the same failure went on unretried."""
        self._failing = value
        stage = value[1] if value else None
        for s in RELOAD_STAGES:
            self.engine.metrics.reload_failing.labels(s).set(1 if s == stage else 0)

    def failed(self, stage: str, message: str | None) -> bool:
        if message:
            log.error("%s", message)
            self.engine.metrics.reload_failures.labels(stage).inc()
            since = self.failing[0] if self.failing else time.time()
            self.failing = (since, stage, message.splitlines()[0][:300])
        # Back off so a broken config or a dead HAProxy is not retried in a storm;
        # a new change (new dirty backends) still gets planned meanwhile.
        self.backoff = min(max(self.backoff * 2, 1.0), 30.0)
        self.next_at = time.monotonic() + max(self.backoff,
                                              self.engine.config.min_reload_interval)
        return False

    async def run(self) -> bool:
        """Render all of the desired state, validate, write, reload, reconcile."""
        # What this render holds: changes after this point are planned again afterwards.
        seq = self.engine.changes.begin()
        try:
            return await self._run(seq)
        finally:
            self.engine.changes.end(seq)

    async def _run(self, seq: int) -> bool:
        e = self.engine
        self.last_started = time.monotonic()
        tenants = self._tenants()  # whose tokens it spends once done (a failure: nobody's)
        reason = primary_reason(e.pending)
        causes = reload_causes(e.pending, e.state.desired, e.layout, reason)
        started = time.perf_counter()
        # The first config, with no HAProxy running yet: nothing serves that a bad
        # candidate could harm, and HAProxy's own start refuses whatever `haproxy -c`
        # would. So it starts on the candidate directly, and the bind test and the
        # check (0.8 s at 10,000 apps) run only if it does not start (then as always).
        cold = (e.running_config is None and not self.cold_start_failed
                and e.reloader.starts_haproxy())
        e.mark(await e.guard.recheck_certs())  # HAProxy reads them now: names checked first
        if not cold:
            e.mark(e.guard.exclude_unbindable())
        settings = e.config.settings
        socket = (respell_socket_path(settings.socket_path, self.live_socket)
                  if self.restore_socket else settings.socket_path)
        if socket != settings.socket_path:
            settings = replace(settings, socket_path=socket)
        pending = dict(e.pending)  # (and what changed since seq is planned again)
        try:  # in a thread (~0.4 s at 10,000 apps) while churn goes on
            layout, table, text = await e.while_applying(asyncio.to_thread(
                self._build(settings)))
        except TemplateError as exc:
            self.prune_candidates()  # (the crt-list is written before the templates run)
            return self.failed("validate", f"{exc}; the running config keeps serving")
        if text == self.rejected:
            self.prune_candidates()  # rendered again, with its crt-list
            return self.failed("validate", None)  # already reported, still invalid
        self.keep_prior()
        e.write_maps(layout)  # haproxy -c opens the map files the candidate names
        try:
            ok, output = (True, "") if cold else \
                await e.while_applying(e.writer.validate(text))
            if not ok:
                kept = e.writer.keep_rejected(text)
                # Bisection runs haproxy -c up to 32 times: other apps' churn goes on
                # meanwhile.
                if await e.while_applying(e.guard.exclude_rejected(
                        layout, table, text, output, kept, e.layout)):
                    layout, table, text = await e.while_applying(asyncio.to_thread(
                        self._build(settings)))
                    e.write_maps(layout)
                    ok, output = await e.while_applying(e.writer.validate(text))
                    if not ok:
                        kept = e.writer.keep_rejected(text)
        except asyncio.CancelledError:
            # A stop while haproxy -c checks the candidate: its map files must not stay
            # beside the config HAProxy runs (a restarted HAProxy or the next daemon
            # would read them with it).
            self.put_back_maps()
            raise
        if not ok:
            self.rejected = text
            self.put_back_maps()
            self.prune_candidates()
            return self.failed("validate", f"candidate config rejected by haproxy -c "
                               f"(kept at {kept}): {brief(output)}; the running "
                               "config keeps serving")
        forced = {ReloadReason.RUNTIME_ERROR.value, ReloadReason.MANUAL.value}
        if text == e.running_config and not forced & {str(r) for r in pending.values()}:
            # No reload: the files stay those of the layout HAProxy runs (the same text
            # can come with other maps, in range mode).
            self.put_back_maps()
            for name, why in pending.items():  # what changed was left out: HAProxy has
                if e.pending.get(name) == why:  # the rest already
                    del e.pending[name]
            e.awaiting_reload.clear()
            self.failing = None
            return True
        # The file's turn (ConfigFile.changes), from writing the candidate until HAProxy
        # loaded it or the file is put back: a supervised restart of HAProxy (its master
        # died) takes it to put the file right and start HAProxy on it. Without it, a
        # restart between the write and the reload put the running config back over the
        # candidate and started on it; the reload loaded that again, and the candidate
        # was taken for served. And one under way while the candidate was written marked
        # the file loaded though HAProxy had read the config before.
        turn = e.writer.changes
        await turn.acquire()
        try:
            try:
                e.writer.write(text)
            except OSError as exc:
                self.put_back_maps()  # the running config's, beside it (as rejected)
                return self.failed("write", f"writing the config failed: {exc}")
            # The candidate's maps again: runtime map changes applied while it was
            # validated wrote the running layout's (what differs is repaired after the
            # reload).
            e.write_maps(layout)
            self.loading = True
            try:
                old_pid = None if cold else await self._serving_pid()
                confirming = await e.while_applying(self._reload(old_pid))
            except asyncio.CancelledError:
                # The daemon stops before HAProxy confirmed it loaded the file (a reload
                # command killed, a reload never sent): the file must not claim it did.
                # The next daemon compares its render with the file, and adopted an
                # HAProxy still on the old config "with no reload" when they matched.
                self.loading = False
                self.restore_file()
                self.put_back_maps()
                raise
            except Exception as exc:
                self.loading = False
                self.restore_file()
                self.put_back_maps()
                self.prune_candidates()
                if not cold:
                    stage = getattr(exc, "stage", "reload")
                    return self.failed(
                        stage if stage in ("reload", "confirm") else "reload",
                        f"reload failed: {exc}")
                # Checked and isolated service by service, as any other candidate (below,
                # once the file's turn is given back).
                self.cold_start_failed = True
                e.writer.remove()
                log.warning("HAProxy did not start on the first config (%s); checking it "
                            "with haproxy -c, service by service", str(exc).splitlines()[0])
            else:
                e.writer.loaded()  # the next daemon may adopt HAProxy on this file
                # The old worker stops after the grace of the config it runs (the one
                # replaced).
                grace = grace_ms(e.config.settings, len(e.layout)) / 1000
                # Before the turn is given back: a restart of HAProxy after it puts this
                # config back if the file is changed outside servicerouter.
                e.layout, e.table, e.running_config = layout, table, text
                self.prior_config, self.prior_maps = None, None  # ours runs now: history
        finally:
            turn.release()
        if cold and self.cold_start_failed:  # HAProxy did not start on it, just above
            return await self.run()
        self.loading = False
        prune_crt_lists(e.config.settings.crt_list_dir, text)  # candidates' and old ones
        self.live_socket, self.restore_socket = socket, False
        e.reconciler.worker = self.new_worker  # our reload forked it: no reason to reconcile
        # Changed at runtime while this config was validated and loaded: planned again
        # against what the new worker has from the file, before its reconcile.
        replan = e.changes.since(seq)
        e.dirty |= replan
        for name in replan:  # decided again against the new layout, just below: a new app
            e.pending.pop(name, None)  # that came meanwhile may fit a fresh spare now
        e.generation += 1
        e.changes.clear()
        # Its kept session talks to the old worker, which in HAProxy's grace still
        # accepts clients (and queries): it is sent each batch meanwhile, and nothing of
        # ours is answered by it (until the grace is over: retire).
        e.runtime.reset()
        if old_pid is not None:
            self.retire(old_pid, confirming, grace)
        # Backends dirtied while the reload ran stay dirty: the next step plans
        # them against the new layout (a no-op where the render already had them).
        # Reasons that came up meanwhile (another new app) were not in this render.
        for name, why in pending.items():
            if e.pending.get(name) == why:
                del e.pending[name]
        self.rejected = None
        self.backoff = 0.0
        self.failing = None
        self.next_at = time.monotonic() + e.config.min_reload_interval
        self.gate.budget.spend(tenants, self.last_started)
        e.reloads += 1
        e.last_reload = (time.time(), reason)
        e.metrics.reloads.labels(reason).inc()
        e.metrics.reload_duration.observe(time.perf_counter() - started)
        log.info("reloaded HAProxy (%s): %d services, %.0f ms", causes, len(layout),
                 1000 * (time.perf_counter() - started))
        try:
            await e.apply_dirty()
        finally:  # after the changes the new worker lacked: ~20 ms at 10,000 apps
            e.guard.served(text)
        now = time.monotonic()
        for t in e.awaiting_reload:
            e.metrics.event_to_apply.observe(now - t)
        e.awaiting_reload.clear()
        e.ready.set()  # HAProxy serves this config; the read-back below confirms it
        fresh = health_up(e.layout, e.table, e.config.settings.health_check)
        if fresh:  # before most of their first checks; churn goes on between chunks
            await e.while_applying(self._raise_health(fresh))
        if confirming is not None:  # the reloader done before the next reload starts
            await e.while_applying(asyncio.wait({confirming}))
        # Reading 80,000 slots back takes a while at 10,000 apps: churn goes on meanwhile
        # (the repairs leave out backends changed after the read began).
        await e.while_applying(e.reconciler.reconcile(after_reload=True))
        return True

    async def _raise_health(self, commands: list[str]) -> None:
        """Send the ``health up`` of every routed checked server (:func:`health_up`) in
        chunks: 50,000 at once would hold the admin session, and churn, ~0.3 s."""
        e = self.engine
        for i in range(0, len(commands), HEALTH_CHUNK):
            if not await e.execute(commands[i:i + HEALTH_CHUNK]):
                log.warning("could not raise the check health of the servers the new worker "
                            "started at rise: one failed first check takes such a server "
                            "DOWN until it passes rise checks")
                return

    async def _serving_pid(self, timeout: float = PROBE_TIMEOUT) -> int | None:
        """The pid of the worker that answers the admin socket now, or None."""
        try:
            info = await asyncio.wait_for(self.engine.runtime.show_info(), timeout)
            return int(info["Pid"])
        except (asyncio.TimeoutError, HAProxyRuntimeError, OSError, KeyError, ValueError):
            return None

    async def _new_worker(self, old_pid: int) -> int:
        """Ask the admin socket which worker answers until it is not ``old_pid``.

        HAProxy tells the old worker to stop before it forks the new one; a connection
        made meanwhile waits in the socket's backlog and is among the new worker's
        first. A question the old worker took just before it stopped listening waits
        behind its stopping (~0.3 s at 10,000 apps), so a new one is asked every
        PROBE_INTERVAL while earlier ones are still out (at most PROBES at once, each
        bounded). Cancelled when the reloader is done first."""
        out: set[asyncio.Future[int | None]] = set()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                if loop.time() >= next_at and len(out) < PROBES:
                    out.add(asyncio.ensure_future(self._serving_pid(PROBE_TIMEOUT * PROBES)))
                    next_at = loop.time() + PROBE_INTERVAL
                wait = max(next_at - loop.time(), 0.001)
                if not out:
                    await asyncio.sleep(wait)
                    continue
                done, out = await asyncio.wait(out, timeout=wait,
                                               return_when=asyncio.FIRST_COMPLETED)
                for probe in done:
                    pid = probe.result()
                    if pid is not None and pid != old_pid:
                        return pid
        finally:
            for probe in out:
                probe.cancel()

    async def _reload(self, old_pid: int | None) -> asyncio.Future[None] | None:
        """Have HAProxy load the written config. Returns when its new worker answers the
        admin socket or the reloader confirms the reload, whichever comes first.

        The reloader confirms through the master (``show proc``), which at 10,000 apps
        answers ~0.4 s after the fork: it frees the old config and re-executes itself
        first. The new worker answers sooner, and what changed at runtime while this
        config was rendered and loaded is missing in it until it is told; so the
        switch-over follows the worker. The confirmation still running is returned,
        to be awaited once the new worker is up to date."""
        self.new_worker = None
        job = asyncio.ensure_future(self.engine.reloader.reload())
        if old_pid is None:  # no worker answered before: nothing to tell them apart by
            await job
            return None
        watch = asyncio.ensure_future(self._new_worker(old_pid))
        self.handing_over = True
        try:
            await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: neither may outlive us
            job.cancel()
            raise
        finally:
            watch.cancel()
            self.handing_over = False
        if not job.done() and watch.done() and not watch.cancelled() \
                and watch.exception() is None:
            self.new_worker = watch.result()
            log.info("HAProxy's new worker %d answers (the old one was %d): switching to "
                     "it", self.new_worker, old_pid)
            return job
        await job  # the reloader's verdict: raises if the reload failed
        return None

    def retire(self, old_pid: int, confirming: asyncio.Future[None] | None,
               grace: float) -> None:
        """Keep the admin socket's clients off the old worker until it no longer
        listens: once the reloader confirmed the reload (it told the old worker to stop
        before), and its ``grace`` passed since the switch-over (which came after).
        Meanwhile it still accepts clients, so it is sent every batch too."""
        runtime = self.engine.runtime
        runtime.not_from = old_pid
        runtime.mirror(old_pid, grace)
        loop = asyncio.get_running_loop()
        until = loop.time() + grace + (GRACE_MARGIN if grace else 0.0)

        def release() -> None:
            if runtime.not_from == old_pid:  # not a later reload's
                runtime.not_from = None

        def confirmed(_: object = None) -> None:
            loop.call_at(until, release)

        if confirming is None:
            confirmed()
        else:
            confirming.add_done_callback(self._confirmed)
            confirming.add_done_callback(confirmed)

    def _confirmed(self, confirming: asyncio.Future[None]) -> None:
        """The reloader's own confirmation of a reload whose new worker already answers
        (a done callback: it runs even if what follows the switch-over raised)."""
        if not confirming.cancelled() and confirming.exception() is not None:
            # The new worker serves the new config all the same.
            log.warning("HAProxy's new worker answers, but the reload was not confirmed: "
                        "%s", confirming.exception())

    def _build(self, settings: Settings) -> Callable[[], tuple[Layout, SlotTable, str]]:
        """The layout, slots and text of a candidate, to run in a thread while the
        apply loop goes on: from copies, since it replaces entries of these meanwhile
        (at 10,000 apps the layout alone held the loop ~0.15 s)."""
        e = self.engine
        desired, current, running = dict(e.state.desired), dict(e.table), dict(e.layout)

        def build() -> tuple[Layout, SlotTable, str]:
            layout, table = pool.with_pool(*build_layout(desired, current, settings),
                                           running, settings)
            return layout, table, render(layout, table, settings, e.config.templates)

        return build

    def keep_prior(self) -> None:
        """Before the first candidate's files go on disk while no config of ours runs:
        keep the config file and the map files there (:attr:`prior_config`)."""
        e = self.engine
        if e.running_config is None and not self.kept_prior:
            self.kept_prior = True
            self.prior_config = e.writer.read()
            self.prior_maps = read_maps(e.writer, e.config.settings)

    def put_back_maps(self) -> None:
        """After a candidate failed or a stop: the map files of the config HAProxy runs.
        That is the running layout's; before the first reload of ours, the files that
        were on disk (the maps of an empty layout, written instead, left an HAProxy
        not adopted routing no range port at its next reload or restart)."""
        e = self.engine
        if e.running_config is None and self.prior_maps is not None:
            put_back_maps(e.writer, e.config.settings, self.prior_maps)
        else:
            e.write_maps(e.layout)

    def prune_candidates(self) -> None:
        """After a candidate failed: remove the crt-lists that only candidates named
        (its own, bisection's), keeping those of the config HAProxy runs and of the
        file on disk. A stop leaves them to ConfigFile.cleanup, at exit."""
        e = self.engine
        prune_crt_lists(e.config.settings.crt_list_dir, e.running_config, e.writer.read())

    def restore_file(self) -> None:
        """After a failed reload, put the last good config back on disk: a restarted
        master (after a worker crash) must find a config it can serve. Before the first
        reload of ours, the file that was there (what an HAProxy not adopted runs)."""
        running = self.engine.running_config
        if running is None:
            running = self.prior_config
        if running is not None:
            try:
                self.engine.writer.write(running)
            except OSError as exc:
                log.error("restoring the last good config after a failed reload: %s", exc)


def read_maps(writer: ConfigWriter, settings: Settings) -> dict[str, str | None] | None:
    """Range mode: the map files on disk now (None: no such file, or unreadable); None
    when the range mode is off or the writer reads none (a dry run)."""
    read = getattr(writer, "read_map_file", None)
    if read is None or not pool.range_on(settings):
        return None
    return {name: read(settings.map_dir, name) for name in pool.map_files({}, settings)}


def put_back_maps(writer: ConfigWriter, settings: Settings,
                  files: dict[str, str | None]) -> None:
    """Range mode: the map files as :func:`read_maps` read them (None: removed)."""
    write = getattr(writer, "write_maps", None)
    if write is None:
        return
    try:
        write(settings.map_dir, files)
    except OSError as exc:
        log.error("putting back the map files in %s: %s", settings.map_dir, exc)


def write_maps(writer: ConfigWriter, layout: Layout, settings: Settings,
               index: RangeIndex | None = None) -> None:
    """Range mode: write the map files of ``layout`` (what HAProxy holds or is about to
    load), so that a reload or a restarted worker starts with the runtime maps
    (``index``: ``layout``'s, which has them without a pass over every entry)."""
    write = getattr(writer, "write_maps", None)
    if write is None or not pool.range_on(settings):
        return
    try:
        write(settings.map_dir, index.map_files() if index is not None
              else pool.map_files(layout, settings))
    except OSError as exc:
        log.error("writing the map files in %s: %s; reconcile repairs HAProxy's maps",
                  settings.map_dir, exc)
