"""State read before an await and trusted after it: the engine's other tasks move on
meanwhile. Each interleaving is driven with the fakes of test_engine and events: the
awaited call of one task lets another change the engine's state, then answers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from servicerouter import pool
from servicerouter.engine import Engine, EngineConfig
from servicerouter.haproxy.control import ConfigFile
from servicerouter.haproxy.detached import HAProxyPid, KeptHAProxy
from servicerouter.haproxy.master_cli import (
    MasterUnavailable,
    ProcInfo,
    ReloadError,
    WorkerInfo,
)
from servicerouter.haproxy.process import HAProxyProcess, StartError
from servicerouter.haproxy.runtime_parse import CommandResult, ServerState
from servicerouter.layout import Settings
from servicerouter.marathon.events import MarathonEvent
from servicerouter.metrics import Metrics
from servicerouter.model import App, Mode, Options, Service, Task
from servicerouter.takeover import take_over

from .payloads import LOADABLE_PEM
from .test_engine import (
    Answers,
    FakeReloader,
    FakeRuntime,
    FakeWriter,
    app,
    make_engine,
    started,
)


async def test_a_worker_check_answered_before_a_reload_of_ours_does_not_shun_the_new_worker(
        ) -> None:
    """The timer's worker check asks ``show info`` beside the apply loop. When the old
    worker answered it just before a reload of ours switched to the new worker, the
    answer is stale: taken for "the worker changed behind our back", it kept the admin
    socket's clients off the new worker (the one that serves) for HAProxy's grace,
    stopped sending batches to the old one in its grace, and reconciled for nothing."""
    engine, runtime, _, reloader = make_engine()
    engine.config = replace(engine.config, settings=replace(engine.config.settings,
                                                            grace_ms=60_000))
    await started(engine, 1)
    await engine.reconciler.check_worker()
    assert engine.reconciler.worker == 100
    plain_show_info, plain_reset = runtime.show_info, runtime.reset
    asked, answer = asyncio.Event(), asyncio.Event()

    async def held_show_info() -> dict[str, str]:
        runtime.show_info = plain_show_info  # type: ignore[method-assign]  # this one only
        pid = runtime.pid  # the worker that takes the question: the old one
        asked.set()
        await answer.wait()
        return {"Pid": str(pid)}

    confirm, switched = asyncio.Event(), asyncio.Event()

    async def forking_reload() -> None:
        reloader.reloads += 1
        runtime.pid = 200  # the new worker answers the admin socket
        await confirm.wait()  # the master confirms later

    def reset() -> None:  # reload.run closes the kept session once it switched over
        plain_reset()
        switched.set()

    runtime.show_info = held_show_info  # type: ignore[method-assign]
    runtime.reset = reset  # type: ignore[method-assign]
    check = asyncio.ensure_future(engine.reconciler.check_worker())
    await asyncio.wait_for(asked.wait(), 5)
    reloader.reload = forking_reload  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(app(1, app_id="/new")))  # a new app: a reload
    step = asyncio.ensure_future(engine.step())
    await asyncio.wait_for(switched.wait(), 5)
    assert engine.reconciler.worker == 200 and runtime.not_from == 100
    answer.set()  # the old worker's answer lands after the switch-over
    await asyncio.wait_for(check, 5)
    confirm.set()
    await asyncio.wait_for(step, 5)
    assert reloader.reloads == 2
    assert runtime.not_from == 100  # clients stay off the old worker, not the new one
    assert runtime.mirrored == (100, 60.0)  # the old one in its grace still gets batches
    assert engine.reconciler.worker == 200
    assert not engine.reconciler.wanted  # no reconcile of a restart that did not happen


async def test_a_worker_restarted_behind_our_back_is_still_noticed() -> None:
    """The other side of the check above: with no reload of ours meanwhile, a new pid
    is a worker restarted from the file, and its servers are read back."""
    engine, runtime, _, _ = make_engine()
    await started(engine, 1)
    await engine.reconciler.check_worker()
    runtime.pid = 300  # its master restarted it
    await engine.reconciler.check_worker()
    assert engine.reconciler.worker == 300 and engine.reconciler.wanted
    assert runtime.not_from == 100  # (grace 0: released at once, on the loop's next turn)


def new_app(balance: str) -> App:
    return App("/new", services=(Service("/new", 0, 10001, options=Options(balance=balance)),),
               tasks=(Task("n1", "/new", "127.0.0.1", (32001,), "TASK_RUNNING"),))


async def test_a_definition_fixed_while_haproxy_c_judges_the_old_one_is_not_left_out() -> None:
    """haproxy -c rejects a candidate; bisection (up to 32 checks, seconds at 10,000
    apps, while events and refetches go on) blames /new. Its owner fixed the value
    meanwhile: the verdict is about the definition that was rendered, and leaving out
    the fixed one instead kept it out "until its definition changes", the fix unserved
    behind an error that no longer applied."""
    engine, _, writer, _ = make_engine()
    await started(engine, 1)
    checks = 0

    async def haproxy_c(text: str) -> tuple[bool, str]:
        nonlocal checks
        checks += 1
        if checks == 2:  # bisection's first check: the owner's fix arrives meanwhile
            engine.mark(engine.state.set_app(new_app("leastconn")))
        if "balance first" in text:  # this HAProxy refuses it
            return False, "[ALERT] (1) : config : backend 'x': unknown balance 'first'"
        return True, ""

    writer.validate = haproxy_c  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(new_app("first")))
    await engine.step()
    await engine.step()  # (anything left for the next step)
    assert checks > 2  # rejected, then bisected
    assert engine.layout["new_10001"].service.options.balance == "leastconn"
    assert "/new" not in engine.state.problems, engine.state.problems
    assert "balance first" not in writer.written[-1]


HEAD = "\nbackend {backend}\n  balance {balance}\n  mode {mode}\n"


def templated_engine() -> tuple[Engine, FakeWriter]:
    """An engine with --allow-label-templates: an app with template labels is validated
    alone (haproxy -c, awaited) before it joins the desired state."""
    settings = Settings(stats_port=0, grace_ms=0, allow_label_templates=True)
    writer = FakeWriter()
    engine = Engine(EngineConfig(settings=settings, min_reload_interval=0.0), None,
                    FakeRuntime(), writer, FakeReloader(), Metrics(),  # type: ignore[arg-type]
                    lambda host: host)
    return engine, writer


def marathon_app(app_id: str, port: int, *task_ids: str, labels: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    return {"id": app_id, "portDefinitions": [{"port": port}], "labels": labels or {},
            "tasks": [{"id": t, "host": "127.0.0.1", "ports": [31000 + i],
                       "state": "TASK_RUNNING"} for i, t in enumerate(task_ids)]}


def killed(app_id: str, task_id: str) -> MarathonEvent:
    return MarathonEvent("status_update_event", {
        "appId": app_id, "taskId": task_id, "taskStatus": "TASK_KILLED",
        "host": "127.0.0.1", "ports": [31001], "ipAddresses": []}, time.monotonic())


def event_while_vetting(engine: Engine, writer: FakeWriter, event: MarathonEvent) -> None:
    """haproxy -c of the templated app (seconds on a busy host) lets the event stream in."""
    validate = writer.validate

    async def haproxy_c(text: str) -> tuple[bool, str]:
        engine.on_event(event)
        return await validate(text)

    writer.validate = haproxy_c  # type: ignore[method-assign]


async def test_a_task_killed_while_a_full_sync_vets_label_templates_stays_dead() -> None:
    """A full sync watches the events that come while Marathon answers, and keeps what
    they did over its older answer; but it stopped watching before vetting the template
    labels of a new app, and a task killed meanwhile (any app's) was put back by the
    answer: routed to a dead task until the next full sync, 5 minutes later."""
    engine, writer = templated_engine()
    web = marathon_app("/web", 10000, "w1", "w2")
    engine.marathon = Answers(web)  # type: ignore[assignment]
    assert await engine.intake.full_sync()
    engine.marathon = Answers(web, marathon_app(  # type: ignore[assignment]
        "/raw", 10001, "r1", labels={"HAPROXY_0_MODE": "http", "HAPROXY_0_BACKEND_HEAD": HEAD}))
    event_while_vetting(engine, writer, killed("/web", "w2"))
    assert await engine.intake.full_sync()
    assert writer.validated == 1 and "raw_10001" in engine.state.desired  # vetted, joined
    assert [t.id for t in engine.state.apps["/web"].tasks] == ["w1"]
    assert [e.task_id for e in engine.state.desired["web_10000"].endpoints] == ["w1"]


async def test_a_task_killed_while_a_refetch_vets_label_templates_stays_dead() -> None:
    """The same for the refetch of one app (an api_post_event: its labels changed)."""
    engine, writer = templated_engine()
    labels = {"HAPROXY_0_MODE": "http", "HAPROXY_0_BACKEND_HEAD": HEAD}
    engine.marathon = Answers(marathon_app("/raw", 10001, "r1", "r2"))  # type: ignore[assignment]
    assert await engine.intake.full_sync()

    class OneApp:
        async def get_app(self, app_id: str) -> dict[str, Any]:
            return marathon_app("/raw", 10001, "r1", "r2", labels=labels)

    engine.marathon = OneApp()  # type: ignore[assignment]
    event_while_vetting(engine, writer, killed("/raw", "r2"))
    await engine.intake.refetch_app("/raw")
    assert writer.validated == 1 and "/raw" not in engine.app_errors
    assert engine.state.apps["/raw"].services[0].options.raw_templates  # the new labels
    assert [t.id for t in engine.state.apps["/raw"].tasks] == ["r1"]


class MapRuntime(FakeRuntime):
    """FakeRuntime with HAProxy's runtime maps: ``add/set/del map`` change them, ``show
    map`` reads them. A ``show map`` can be held (``hold``) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: dict[str, dict[str, str]] = {}
        self.hold: asyncio.Event | None = None  # set when a show map is being held
        self.release = asyncio.Event()
        self.map_changed = asyncio.Event()
        self.batch = asyncio.Event()  # set at each batch sent

    async def execute(self, commands: list[str]) -> list[CommandResult]:
        for c in commands:
            words = c.split()
            if words[1:2] == ["map"] and words[0] in ("add", "set"):
                self.maps.setdefault(words[2], {})[words[3]] = words[4]
                self.map_changed.set()
            elif words[:2] == ["del", "map"]:
                self.maps.get(words[2], {}).pop(words[3], None)
                self.map_changed.set()
        self.batch.set()
        return await super().execute(commands)

    async def query(self, command: str) -> str:
        path = command.split()[-1]
        if self.hold is not None:
            held, self.hold = self.hold, None
            held.set()
            await self.release.wait()  # HAProxy answers once the other change is in
        return "".join(f"0x1 {k} {v}\n" for k, v in sorted(self.maps.get(path, {}).items()))


def range_app(app_id: str, port: int, task: int) -> App:
    return App(app_id, services=(Service(app_id, 0, port),), tasks=(
        Task(f"{app_id[1:]}{task}", app_id, "127.0.0.1", (31000 + task,), "TASK_RUNNING"),))


async def range_engine() -> tuple[Engine, MapRuntime, FakeReloader]:
    """Range mode (--service-port-range), /web's port routed by the port map."""
    runtime, reloader = MapRuntime(), FakeReloader()
    settings = Settings(stats_port=0, grace_ms=0, service_port_range=(20000, 20099),
                        map_dir="/nonexistent/maps", pool_spares=2)
    engine = Engine(EngineConfig(settings=settings, min_reload_interval=0.0), None,
                    runtime, FakeWriter(), reloader, Metrics(),  # type: ignore[arg-type]
                    lambda host: host)
    runtime.engine = engine
    engine.guard.bind_problem = lambda address, port, own=(): None  # no real sockets here
    engine.mark(engine.state.set_app(range_app("/web", 20001, 1)))
    await engine.step()
    return engine, runtime, reloader


async def test_a_new_app_mapped_while_a_reloads_reconcile_reads_the_maps_keeps_its_entry(
        ) -> None:
    """Range mode: the reconcile after a reload reads each map back (``show map``) while
    the apply loop goes on (while_applying). A new app that took a spare meanwhile got
    its port map entry at runtime; the repair worked out from the layout before the read
    and the map after it deleted that entry again: the new app's port unrouted until a
    later round read the maps again."""
    engine, runtime, reloader = await range_engine()
    settings = engine.config.settings
    ports = pool.map_path(settings, pool.PORTS_MAP)
    runtime.maps = {ports: pool.ports_map(engine.layout, settings)}  # from the file
    assert runtime.maps[ports] == {"20001": "web_20001"}
    held = runtime.hold = asyncio.Event()
    engine.request_reload()  # (an operator's SIGHUP) its reconcile reads the maps
    step = asyncio.ensure_future(engine.step())
    await asyncio.wait_for(held.wait(), 5)
    runtime.map_changed.clear()
    engine.mark(engine.state.set_app(range_app("/new", 20002, 2)))  # takes a spare
    await asyncio.wait_for(runtime.map_changed.wait(), 5)
    assert "20002" in runtime.maps[ports]  # routed at runtime, no reload
    runtime.release.set()
    await asyncio.wait_for(step, 5)
    assert reloader.reloads == 2
    assert runtime.maps[ports].get("20002") == engine.layout["new_20002"].name
    assert not [c for batch in runtime.sent for c in batch if c.startswith("del map")]


async def test_a_task_killed_while_a_reloads_reconcile_reads_the_maps_is_not_put_back(
        ) -> None:
    """The same read, for the servers: the scan found /web's slot empty in HAProxy (a
    worker that lost a runtime change); its task died while the maps were read, and the
    repair worked out before that read put the dead task back in the slot."""
    engine, runtime, _ = await range_engine()
    settings = engine.config.settings
    ports = pool.map_path(settings, pool.PORTS_MAP)
    runtime.maps = {ports: pool.ports_map(engine.layout, settings)}
    plain = runtime.show_servers_state

    async def lost_slot(backend: str | None = None) -> list[ServerState]:
        return [replace(s, addr="127.0.0.1", port=1, admin_state=0x05)  # s1 found empty
                if (s.backend, s.server) == ("web_20001", "s1") else s
                for s in await plain(backend)]

    runtime.show_servers_state = lost_slot  # type: ignore[method-assign]
    held = runtime.hold = asyncio.Event()
    engine.request_reload()
    step = asyncio.ensure_future(engine.step())
    await asyncio.wait_for(held.wait(), 5)
    runtime.batch.clear()
    engine.on_event(killed("/web", "web1"))  # its task dies meanwhile: slot emptied
    await asyncio.wait_for(runtime.batch.wait(), 5)
    assert "set server web_20001/s1 state maint" in runtime.sent[-1]
    runtime.release.set()
    await asyncio.wait_for(step, 5)
    assert engine.table["web_20001"][0] is None
    last = max(i for i, b in enumerate(runtime.sent) if any("web_20001/s1" in c for c in b))
    assert "set server web_20001/s1 state ready" not in runtime.sent[last], runtime.sent


async def test_apps_coming_and_going_without_a_reload_leave_no_trace_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Range mode applies a new app and a deleted one at runtime, without a reload: the
    engine's record of which backends each batch changed (for the reads of HAProxy and
    the renders in flight) kept one entry per backend name ever changed until the next
    reload, which need never come (a CI build, created and deleted, every minute)."""
    from servicerouter import changelog

    monkeypatch.setattr(changelog, "KEEP_AT_LEAST", 8)
    engine, _, reloader = await range_engine()
    for i in range(200):
        engine.mark(engine.state.set_app(range_app(f"/ci/build{i}", 20002, i)))
        await engine.step()
        assert f"ci_build{i}_20002" in engine.layout  # routed at runtime
        engine.mark(engine.state.remove_app(f"/ci/build{i}"))
        await engine.step()
    assert reloader.reloads == 1
    assert len(engine.changes) <= 16


async def test_a_bug_in_one_round_of_the_timer_loop_does_not_end_it() -> None:
    """Engine.run gathers its loops only at stop, with return_exceptions=True: a timer
    loop that raised was gone unseen, and with it every full resync, reconcile, worker
    check and drain expiry, until the daemon stopped (the apply and event loops already
    survive a bug and log it)."""
    engine, _, _, _ = make_engine()
    engine.config = replace(engine.config, reconcile_interval=0.05)
    engine.marathon = Answers(marathon_app("/web", 10000, "w1"))  # type: ignore[assignment]
    stop = asyncio.Event()
    expire, rounds = engine.events.expire_drains, 0

    def flaky_expire() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RuntimeError("a bug")
        expire()
        if rounds == 3:  # the loop went on after the bug
            stop.set()

    engine.events.expire_drains = flaky_expire  # type: ignore[method-assign]
    await asyncio.wait_for(engine.run(stop), 20)
    assert rounds >= 3


class HeldMarathon:
    """A Marathon whose full sync answer is sampled when asked and handed back only when
    ``release`` is set (``asked`` is set meanwhile); one-app refetches answer from
    ``apps`` at once, or are held the same way when ``hold_app`` is set."""

    def __init__(self, *apps: dict[str, Any]) -> None:
        self.apps = {a["id"]: a for a in apps}
        self.asked, self.release = asyncio.Event(), asyncio.Event()
        self.hold_app: tuple[asyncio.Event, asyncio.Event] | None = None  # (asked, release)

    async def get_apps(self) -> Any:
        from servicerouter.marathon.client import FetchResult

        sampled = {"apps": [dict(a) for a in self.apps.values()]}  # Marathon's state now
        self.asked.set()
        await self.release.wait()
        return FetchResult(sampled, "http://m", 0.0, 0)

    async def get_app(self, app_id: str) -> dict[str, Any] | None:
        sampled = self.apps.get(app_id)
        if self.hold_app is not None:
            asked, release = self.hold_app
            asked.set()
            await release.wait()
        return sampled


def balanced(app_id: str, port: int, balance: str, *task_ids: str) -> dict[str, Any]:
    return marathon_app(app_id, port, *task_ids, labels={"HAPROXY_0_BALANCE": balance})


async def synced(engine: Engine, *apps: dict[str, Any]) -> HeldMarathon:
    """The engine after a full sync of ``apps``; then a Marathon that holds its answers."""
    marathon = HeldMarathon(*apps)
    marathon.release.set()
    engine.marathon = marathon  # type: ignore[assignment]
    assert await engine.intake.full_sync()
    marathon.asked.clear()
    marathon.release.clear()
    return marathon


async def test_a_deploy_refetched_while_a_full_sync_is_in_flight_is_not_reverted() -> None:
    """A full sync's answer was sampled before a deploy of /web (a new balance); the
    deploy's refetch applied while the big answer was still on its way, and the full sync
    then put the older definition back: a deploy that took effect and silently reverted,
    until the next event for /web or the next periodic resync, minutes later."""
    engine, _, _, _ = make_engine()
    marathon = await synced(engine, balanced("/web", 10000, "roundrobin", "w1"),
                            balanced("/api", 10001, "roundrobin", "a1"))
    sync = asyncio.ensure_future(engine.intake.full_sync())
    await asyncio.wait_for(marathon.asked.wait(), 5)  # v1 of /web sampled
    marathon.apps["/web"] = balanced("/web", 10000, "leastconn", "w1", "w2")  # the deploy
    marathon.apps["/api"] = balanced("/api", 10001, "roundrobin", "a1", "a2")  # unrefetched
    await engine.intake.refetch_app("/web")
    assert engine.state.desired["web_10000"].service.options.balance == "leastconn"
    marathon.release.set()
    assert await asyncio.wait_for(sync, 5)
    assert engine.state.apps["/web"].services[0].options.balance == "leastconn"
    assert engine.state.desired["web_10000"].service.options.balance == "leastconn"
    assert [e.task_id for e in engine.state.desired["web_10000"].endpoints] == ["w1", "w2"]
    # Other apps take the full sync's answer as always (/api's a2 came after its sample).
    assert [t.id for t in engine.state.apps["/api"].tasks] == ["a1"]
    await engine.step()
    assert engine.layout["web_10000"].service.options.balance == "leastconn"


async def test_an_app_a_refetch_found_gone_during_a_full_sync_does_not_come_back() -> None:
    """The same race for an app destroyed meanwhile: its refetch found it gone (404),
    the older answer of the full sync listed it, and it was routed again."""
    engine, _, _, _ = make_engine()
    marathon = await synced(engine, balanced("/web", 10000, "roundrobin", "w1"),
                            balanced("/api", 10001, "roundrobin", "a1"))
    sync = asyncio.ensure_future(engine.intake.full_sync())
    await asyncio.wait_for(marathon.asked.wait(), 5)
    del marathon.apps["/web"]
    await engine.intake.refetch_app("/web")
    assert "/web" not in engine.state.apps
    marathon.release.set()
    assert await asyncio.wait_for(sync, 5)
    assert "/web" not in engine.state.apps and "web_10000" not in engine.state.desired
    assert "api_10001" in engine.state.desired


async def test_an_app_a_refetch_added_during_a_full_sync_is_not_dropped() -> None:
    """An app created after the full sync's answer was sampled, refetched and routed
    before that answer landed: the answer, which does not list it, must not remove it."""
    engine, _, _, _ = make_engine()
    marathon = await synced(engine, balanced("/web", 10000, "roundrobin", "w1"))
    sync = asyncio.ensure_future(engine.intake.full_sync())
    await asyncio.wait_for(marathon.asked.wait(), 5)
    marathon.apps["/new"] = balanced("/new", 10002, "roundrobin", "n1")
    await engine.intake.refetch_app("/new")
    marathon.release.set()
    assert await asyncio.wait_for(sync, 5)
    assert "new_10002" in engine.state.desired and "web_10000" in engine.state.desired


async def test_an_app_terminated_during_a_full_sync_does_not_come_back() -> None:
    """The same for an app_terminated_event, which removes the app without a refetch."""
    engine, _, _, _ = make_engine()
    marathon = await synced(engine, balanced("/web", 10000, "roundrobin", "w1"),
                            balanced("/api", 10001, "roundrobin", "a1"))
    sync = asyncio.ensure_future(engine.intake.full_sync())
    await asyncio.wait_for(marathon.asked.wait(), 5)
    del marathon.apps["/web"]
    engine.on_event(MarathonEvent("app_terminated_event", {"appId": "/web"},
                                  time.monotonic()))
    assert "/web" not in engine.state.apps
    marathon.release.set()
    assert await asyncio.wait_for(sync, 5)
    assert "/web" not in engine.state.apps and "web_10000" not in engine.state.desired


async def test_a_broken_deploy_refetched_during_a_full_sync_keeps_its_error() -> None:
    """A deploy with a bad label, refetched while a full sync was in flight: /web keeps
    its last good state and the error says so; the older answer must not wipe the error
    (the operator would see a clean status for a deploy that was never applied)."""
    engine, _, _, _ = make_engine()
    marathon = await synced(engine, balanced("/web", 10000, "roundrobin", "w1"))
    sync = asyncio.ensure_future(engine.intake.full_sync())
    await asyncio.wait_for(marathon.asked.wait(), 5)
    marathon.apps["/web"] = balanced("/web", 10000, "roundrobin", "w1") | {
        "portDefinitions": [{"port": "not a port"}]}
    await engine.intake.refetch_app("/web")
    assert "/web" in engine.app_errors
    marathon.release.set()
    assert await asyncio.wait_for(sync, 5)
    assert "/web" in engine.app_errors, engine.app_errors
    assert "web_10000" in engine.state.desired  # its last good state


async def test_a_deploy_refetched_while_a_full_sync_vets_templates_is_not_reverted() -> None:
    """The full sync's answer is fetched and parsed, then it awaits haproxy -c for an
    app's template labels: a refetch of /web landing then is newer than the answer too."""
    engine, writer = templated_engine()
    raw = marathon_app("/raw", 10001, "r1", labels={"HAPROXY_0_MODE": "http",
                                                     "HAPROXY_0_BACKEND_HEAD": HEAD})
    marathon = await synced(engine, balanced("/web", 10000, "roundrobin", "w1"))
    marathon.apps["/raw"] = raw  # new: vetted alone by the next full sync
    marathon.release.set()
    validate = writer.validate

    async def haproxy_c(text: str) -> tuple[bool, str]:
        writer.validate = validate  # type: ignore[method-assign]  # this check only
        marathon.apps["/web"] = balanced("/web", 10000, "leastconn", "w1")
        await engine.intake.refetch_app("/web")
        return await validate(text)

    writer.validate = haproxy_c  # type: ignore[method-assign]
    assert await engine.intake.full_sync()
    assert writer.validated == 1 and "raw_10001" in engine.state.desired
    assert engine.state.desired["web_10000"].service.options.balance == "leastconn"


async def test_a_refetch_sampled_before_a_full_sync_does_not_outrank_its_answer() -> None:
    """The other order: a refetch asked before the full sync began is older than the full
    sync's answer, even when it lands while the full sync is in flight; the answer wins.
    (Changes between the two samples bring events, so further refetches, of their own.)"""
    engine, _, _, _ = make_engine()
    marathon = await synced(engine, balanced("/web", 10000, "roundrobin", "w1"))
    asked, release = asyncio.Event(), asyncio.Event()
    marathon.hold_app = (asked, release)
    refetch = asyncio.ensure_future(engine.intake.refetch_app("/web"))
    await asyncio.wait_for(asked.wait(), 5)  # sampled: roundrobin, one task
    marathon.hold_app = None
    marathon.apps["/web"] = balanced("/web", 10000, "leastconn", "w1")
    sync = asyncio.ensure_future(engine.intake.full_sync())
    await asyncio.wait_for(marathon.asked.wait(), 5)  # sampled: leastconn
    release.set()
    await asyncio.wait_for(refetch, 5)  # the older answer lands first
    marathon.release.set()
    assert await asyncio.wait_for(sync, 5)
    assert engine.state.desired["web_10000"].service.options.balance == "leastconn"


@pytest.mark.parametrize("why", ["socket broke", "--update-strategy reload"])
async def test_a_map_only_change_not_applied_at_runtime_is_reloaded(why: str) -> None:
    """Range mode: a vhost added to a running app changes the host map and no slot. When
    HAProxy could not be told (the admin socket broke), or is told by reloads only, the
    change is not committed and nothing marks the app again: it must be left to a
    reload, as a slot change is, or the vhost stays unrouted (and reconcile keeps the
    map without it)."""
    engine, runtime, reloader = await range_engine()
    if why == "--update-strategy reload":
        engine.config = replace(engine.config, update_strategy="reload")
    settings = engine.config.settings
    hosts = pool.map_path(settings, pool.HOSTS_MAP)

    def site(*vhosts: str) -> App:
        options = Options(mode=Mode.HTTP, vhosts=vhosts)
        return App("/site", services=(Service("/site", 0, 20003, options),), tasks=(
            Task("site1", "/site", "127.0.0.1", (31003,), "TASK_RUNNING"),))

    engine.mark(engine.state.set_app(site()))
    await engine.step()
    reloads = reloader.reloads
    runtime.fail_next = "down" if why == "socket broke" else None
    engine.mark(engine.state.set_app(site("site.test")))
    await engine.step()
    assert reloader.reloads == reloads + 1
    assert engine.layout["site_20003"].service.options.vhosts == ("site.test",)
    assert runtime.maps.get(hosts, {}).get("site.test") == engine.layout["site_20003"].name


class MapWriter(FakeWriter):
    """FakeWriter that keeps the map files as written (what a new worker would read)."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: dict[str, str] = {}

    def write_maps(self, directory: str, files: dict[str, str]) -> None:
        self.maps.update(files)

    def read_map_file(self, directory: str, name: str) -> str | None:
        return self.maps.get(name)


def map_engine(writer: MapWriter, runtime: MapRuntime | None = None) -> Engine:
    """Range mode (as range_engine) with a MapWriter, started on nothing yet."""
    runtime = runtime or MapRuntime()
    settings = Settings(stats_port=0, grace_ms=0, service_port_range=(20000, 20099),
                        map_dir="/nonexistent/maps", pool_spares=2, http_port=8080)
    engine = Engine(EngineConfig(settings=settings, min_reload_interval=0.0), None,
                    runtime, writer, FakeReloader(), Metrics(),  # type: ignore[arg-type]
                    lambda host: host)
    runtime.engine = engine
    engine.guard.bind_problem = lambda address, port, own=(): None  # no real sockets here
    return engine


def site(*vhosts: str) -> App:
    options = Options(mode=Mode.HTTP, vhosts=vhosts)
    return App("/site", services=(Service("/site", 0, 20003, options),), tasks=(
        Task("site1", "/site", "127.0.0.1", (31003,), "TASK_RUNNING"),))


async def test_a_candidate_whose_config_cannot_be_written_leaves_the_running_maps(
        ) -> None:
    """Range mode: a reload writes the candidate's map files (haproxy -c reads them),
    then its config. When the config cannot be written (a full disk), the running config
    keeps serving, and beside it were the candidate's maps: a worker HAProxy's master
    restarts reads them, with the running config (the candidate's ports sent to backends
    it may not have). A rejected candidate or a failed reload put them back already."""
    writer = MapWriter()
    engine = map_engine(writer)
    engine.mark(engine.state.set_app(range_app("/web", 20001, 1)))
    await engine.step()

    def full(text: str) -> None:
        raise OSError(28, "No space left on device")

    writer.write = full  # type: ignore[method-assign]
    for i in range(2, 6):  # more new apps than spares: a reload refills the pool
        engine.mark(engine.state.set_app(range_app(f"/new{i}", 20000 + i, i)))
    await engine.step()
    assert engine.reload_pipeline.failing is not None
    assert writer.maps == pool.map_files(engine.layout, engine.config.settings)


async def test_a_takeover_writes_the_maps_of_what_it_adopts() -> None:
    """Range mode: a restarted daemon adopts the running HAProxy when its config has
    the shape the daemon would render; a host an app dropped while the daemon was down
    is in the map files only. Adopted, the files kept routing it: the reconcile that
    follows repaired HAProxy's runtime map, but a worker restarted by HAProxy's master
    read the files and routed it again (a worker check later, until the next repair)."""
    writer, runtime = MapWriter(), MapRuntime()
    engine = map_engine(writer, runtime)
    engine.mark(engine.state.set_app(site("site.test", "www.site.test")))
    await engine.step()
    assert "site.test" in writer.maps[pool.HOSTS_MAP]
    restarted = MapRuntime()
    restarted.servers = await runtime.show_servers_state()  # as HAProxy serves them
    restarted.maps = {pool.map_path(engine.config.settings, name): entries for name, entries
                      in pool.used_maps(engine.layout, engine.config.settings).items()}
    again = map_engine(writer, restarted)
    again.state.set_app(site("www.site.test"))  # site.test dropped meanwhile
    assert await take_over(again)  # no reload
    assert writer.maps == pool.map_files(again.layout, again.config.settings)
    assert "site.test site_20003" not in writer.maps[pool.HOSTS_MAP].splitlines()


async def test_a_new_app_mapped_while_haproxy_reloads_leaves_the_candidates_maps_alone(
        ) -> None:
    """Range mode: while HAProxy loads a candidate, its new worker reads the candidate's
    map files. A new app that takes a spare meanwhile is applied to the old worker; its
    commit wrote the running layout's maps over the candidate's (the old numbering of the
    spares, the new app's port naming an old spare). The new worker loaded that: the
    app, planned again after the switch, got a second ``add map`` for its port, and
    HAProxy answers a port's first entry, the stale one, which reconcile reads past."""
    runtime, reloader, writer = MapRuntime(), FakeReloader(), MapWriter()
    settings = Settings(stats_port=0, grace_ms=0, service_port_range=(20000, 20099),
                        map_dir="/nonexistent/maps", pool_spares=2)
    engine = Engine(EngineConfig(settings=settings, min_reload_interval=0.0), None,
                    runtime, writer, reloader, Metrics(),  # type: ignore[arg-type]
                    lambda host: host)
    runtime.engine = engine
    engine.guard.bind_problem = lambda address, port, own=(): None  # no real sockets here
    engine.mark(engine.state.set_app(range_app("/web", 20001, 1)))
    await engine.step()
    loaded: dict[str, str] = {}
    candidate: dict[str, str] = {}

    async def slow_reload() -> None:  # the master parses the files at some point in it
        reloader.reloads += 1
        candidate.update(writer.maps)
        runtime.batch.clear()
        engine.mark(engine.state.set_app(range_app("/new", 20002, 2)))  # takes a spare
        await asyncio.wait_for(runtime.batch.wait(), 5)  # applied to the old worker
        loaded.update(writer.maps)

    reloader.reload = slow_reload  # type: ignore[method-assign]
    engine.request_reload()
    await engine.step()
    assert reloader.reloads == 2 and "new_20002" in engine.layout
    assert loaded[pool.PORTS_MAP] == candidate[pool.PORTS_MAP]
    # ... and the files end as the layout in force, the new app included.
    assert writer.maps == pool.map_files(engine.layout, settings)


class HeldCheck:
    """``haproxy -c`` of certificate files (``certcheck._run``, in whichever thread runs
    it) held until the test, on the event loop, lets it go. ``loop_ran`` records for
    each check whether the event loop could run meanwhile: not while the check blocks
    it (then the check gives up waiting after 5 s). It answers "valid"."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import threading

        from servicerouter import certcheck

        self.entered, self.go = threading.Event(), threading.Event()
        self.loop_ran: list[bool] = []

        def run(batch: Any, haproxy_bin: str) -> tuple[int, str]:
            self.entered.set()
            self.loop_ran.append(self.go.wait(5))
            return 0, "Configuration file is valid\n"

        monkeypatch.setattr(certcheck, "_run", run)

    async def release(self, meanwhile: Any = None) -> None:
        """Once a check is running: run ``meanwhile`` on the loop, then let it go."""
        await asyncio.to_thread(self.entered.wait, 10)
        if meanwhile is not None:
            meanwhile()
        self.go.set()


def cert_engine(certs: Any) -> Engine:
    """An engine whose apps may name certificate files under ``certs``."""
    settings = Settings(stats_port=0, grace_ms=0, ssl_cert_dirs=(str(certs),))
    runtime = FakeRuntime()
    engine = Engine(EngineConfig(settings=settings, min_reload_interval=0.0), None,
                    runtime, FakeWriter(), FakeReloader(), Metrics(),  # type: ignore[arg-type]
                    lambda host: host)
    runtime.engine = engine
    engine.guard.bind_problem = lambda address, port, own=(): None  # no real sockets here
    return engine


# OpenSSL's loader refuses it, HAProxy takes it: admission asks haproxy -c.
TAKEN = LOADABLE_PEM + "-----BEGIN FOO-----\n!!!!\n-----END FOO-----\n"


async def test_a_full_sync_asks_haproxy_about_certificates_off_the_event_loop(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """haproxy -c on certificate files ran on the event loop (40 s at 1,000 files): no
    churn was applied and /healthz did not answer meanwhile. Events that come while it
    runs keep what they did over the sync's older answer, as during any other wait."""
    (tmp_path / "a.pem").write_text(TAKEN)
    engine = cert_engine(tmp_path)
    web = marathon_app("/web", 10000, "w1", "w2")
    engine.marathon = Answers(web)  # type: ignore[assignment]
    assert await engine.intake.full_sync()
    engine.marathon = Answers(web, marathon_app(  # type: ignore[assignment]
        "/tls", 10001, "t1", labels={"HAPROXY_0_SSL_CERT": str(tmp_path / "a.pem")}))
    held = HeldCheck(monkeypatch)
    sync = asyncio.ensure_future(engine.intake.full_sync())
    await held.release(lambda: engine.on_event(killed("/web", "w2")))
    assert await asyncio.wait_for(sync, 10)
    assert held.loop_ran == [True]
    assert engine.state.desired["tls_10001"].service.options.ssl_cert == str(tmp_path / "a.pem")
    assert [t.id for t in engine.state.apps["/web"].tasks] == ["w1"]


async def test_a_refetch_asks_haproxy_about_certificates_off_the_event_loop(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for the one app a deploy refetches."""
    (tmp_path / "a.pem").write_text(TAKEN)
    engine = cert_engine(tmp_path)
    engine.marathon = Answers(marathon_app("/tls", 10001, "t1"))  # type: ignore[assignment]
    assert await engine.intake.full_sync()

    class OneApp:
        async def get_app(self, app_id: str) -> dict[str, Any]:
            return marathon_app("/tls", 10001, "t1", labels={
                "HAPROXY_0_SSL_CERT": str(tmp_path / "a.pem")})

    engine.marathon = OneApp()  # type: ignore[assignment]
    held = HeldCheck(monkeypatch)
    refetch = asyncio.ensure_future(engine.intake.refetch_app("/tls"))
    await held.release()
    await asyncio.wait_for(refetch, 10)
    assert held.loop_ran == [True]
    assert engine.state.desired["tls_10001"].service.options.ssl_cert == str(tmp_path / "a.pem")


async def test_a_certificate_rotated_before_a_reload_is_judged_off_the_event_loop(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for a routed service's certificate file rewritten on disk, read again
    before the next reload."""
    cert = tmp_path / "a.pem"
    cert.write_text(LOADABLE_PEM)  # OpenSSL loads it: no haproxy -c
    engine = cert_engine(tmp_path)
    engine.marathon = Answers(marathon_app(  # type: ignore[assignment]
        "/tls", 10002, "t1", labels={"HAPROXY_0_SSL_CERT": str(cert)}))
    assert await engine.intake.full_sync()
    await engine.step()
    assert "tls_10002" in engine.layout
    cert.unlink()
    cert.write_text(TAKEN)  # rotated: now only haproxy -c can judge it
    engine.mark(engine.state.set_app(app(1, app_id="/new")))  # a reload is due
    held = HeldCheck(monkeypatch)
    step = asyncio.ensure_future(engine.step())
    await held.release()
    await asyncio.wait_for(step, 10)
    assert held.loop_ran == [True]
    assert {"tls_10002", "new_10001"} <= set(engine.layout)


async def test_an_app_terminated_while_its_refetch_is_in_flight_does_not_come_back() -> None:
    """A refetch of /web asked Marathon before /web was destroyed and got its answer
    after the app_terminated_event: the answer put /web back, holding its port (and
    hosts) against the app that replaces it until the next full sync, minutes later."""
    engine, _, _, _ = make_engine()
    marathon = await synced(engine, balanced("/web", 10000, "roundrobin", "w1"))
    marathon.hold_app = (asyncio.Event(), asyncio.Event())
    refetch = asyncio.ensure_future(engine.intake.refetch_app("/web"))
    await asyncio.wait_for(marathon.hold_app[0].wait(), 5)  # sampled: /web still there
    del marathon.apps["/web"]
    engine.on_event(MarathonEvent("app_terminated_event", {"appId": "/web"},
                                  time.monotonic()))
    assert "/web" not in engine.state.apps
    marathon.hold_app[1].set()
    await asyncio.wait_for(refetch, 5)
    assert "/web" not in engine.state.apps and "web_10000" not in engine.state.desired
    # The port is free for the app that takes /web's place.
    marathon.hold_app = None
    marathon.apps["/shop"] = balanced("/shop", 10000, "roundrobin", "s1")
    await engine.intake.refetch_app("/shop")
    assert "shop_10000" in engine.state.desired and not engine.state.problems


class FileHAProxy(HAProxyProcess):
    """HAProxy as far as its config file goes: each start and reload runs what the file
    holds at that moment (:attr:`runs`); :meth:`die` ends the master, as a killed
    worker does (StartedHAProxy's supervisor then starts it again from the file).
    ``gate``, when set, holds each start after HAProxy read the file, as a real one
    takes a while to answer. ``unmarked`` records each reload that found the file
    holding what HAProxy does not run without ``<config>.unconfirmed`` beside it."""

    def __init__(self, config: Path) -> None:
        super().__init__(config, config.with_name("master.sock"))
        self.file = config
        self.marker = config.with_name(config.name + ".unconfirmed")
        self.runs: str | None = None
        self.starts = 0
        self.alive = False
        self.exited = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.starting = asyncio.Event()
        self.unmarked: list[str] = []

    def is_running(self) -> bool:
        return self.alive

    def die(self) -> None:
        self.alive = False
        self.exited.set()

    async def _start(self) -> ProcInfo:
        self.runs, self.alive, self.exited = self.file.read_text(), True, asyncio.Event()
        self.starting.set()
        if self.gate is not None:
            await self.gate.wait()
        self.starts += 1
        return ProcInfo(1, 0, 0, "0s", "2.6", [WorkerInfo(100, 0, "0s", "2.6")])

    async def reload(self, timeout: float | None = None) -> ProcInfo:
        async with self._lock:
            if not self.alive:
                raise ReloadError("HAProxy is not running")
            if self.file.read_text() != self.runs and not self.marker.exists():
                self.unmarked.append(self.file.read_text())
            self.runs = self.file.read_text()
            return ProcInfo(1, 1, 0, "0s", "2.6", [WorkerInfo(100, 1, "0s", "2.6")])

    async def wait(self) -> int:
        await self.exited.wait()
        return 137

    async def _drain_log(self) -> None:
        pass

    async def _reap_group(self) -> None:
        pass

    async def supervise(self, **kw: Any) -> None:
        await super().supervise(**{**kw, "backoff": 0.0})  # no waiting between restarts

    async def stop(self, graceful: bool = False, timeout: float | None = None) -> int | None:
        self._stopping = True
        self.die()
        return 137


class FileKeptHAProxy(KeptHAProxy):
    """The --keep-haproxy-on-exit reloader on a master as far as the config file goes,
    with :class:`FileHAProxy`'s attributes: a launch and a reload run what the file
    holds; :meth:`die` leaves the master socket unanswered and no master alive."""

    def __init__(self, config: ConfigFile) -> None:
        super().__init__(config, str(config.path.with_name("master.sock")),
                         str(config.path.with_name("admin.sock")))
        self.file, self.marker = config.path, config.marker
        self.runs: str | None = None
        self.starts = 0
        self.alive = False
        self.gate: asyncio.Event | None = None
        self.starting = asyncio.Event()
        self.unmarked: list[str] = []
        self.master = FileMaster(self)  # type: ignore[assignment]

    def die(self) -> None:
        self.alive = False

    def live_master(self) -> HAProxyPid | None:
        return HAProxyPid(1, 0, "S") if self.alive else None

    async def _launch(self) -> ProcInfo:
        if self.alive:
            raise StartError("HAProxy master 1 already runs")
        self.runs, self.alive = self.file.read_text(), True
        self.starting.set()
        if self.gate is not None:
            await self.gate.wait()
        self.starts += 1
        self._master_pid = 1
        self.config.loaded()  # as the real one: HAProxy started on the file
        return await self.master.show_proc()


class FileMaster:
    """:class:`FileKeptHAProxy`'s master CLI."""

    def __init__(self, haproxy: FileKeptHAProxy) -> None:
        self.haproxy = haproxy

    def socket_gone(self) -> bool:
        return False

    async def show_proc(self, **_: Any) -> ProcInfo:
        if not self.haproxy.alive:
            raise MasterUnavailable("connection refused")
        return ProcInfo(1, 0, 0, "0s", "2.6", [WorkerInfo(100, 0, "0s", "2.6")])

    async def reload(self, **_: Any) -> ProcInfo:
        h = self.haproxy
        if not h.alive:  # (KeptHAProxy.reload then launches one)
            raise MasterUnavailable("connection refused")
        if h.file.read_text() != h.runs and not h.marker.exists():
            h.unmarked.append(h.file.read_text())
        h.runs = h.file.read_text()
        return await self.show_proc()


async def started_haproxy(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
                          ) -> tuple[Engine, FakeRuntime, Any]:
    """An engine whose HAProxy is started by servicerouter (``kind`` "started":
    StartedHAProxy on a FileHAProxy; "kept": a FileKeptHAProxy), on the first config:
    candidates pass haproxy -c, the file is real."""
    from servicerouter.haproxy import detached
    from servicerouter.haproxy.control import StartedHAProxy

    writer = ConfigFile(tmp_path / "haproxy.cfg")

    async def passes(text: str) -> tuple[bool, str]:
        return True, ""

    writer.validate = passes  # type: ignore[method-assign]
    reloader: Any
    if kind == "started":
        reloader = StartedHAProxy(writer, str(tmp_path / "master.sock"),
                                  str(tmp_path / "admin.sock"))
        reloader.process = process = FileHAProxy(writer.path)
    else:
        monkeypatch.setattr(detached, "WATCH_INTERVAL", 0.0)  # it looks at every turn
        reloader = process = FileKeptHAProxy(writer)
    runtime = FakeRuntime()
    engine = Engine(EngineConfig(settings=Settings(stats_port=0, grace_ms=0),
                                 min_reload_interval=0.0), None, runtime, writer, reloader,
                    Metrics(), lambda host: host)  # type: ignore[arg-type]
    runtime.engine = engine
    engine.guard.bind_problem = lambda address, port, own=(): None  # no real sockets here
    await reloader.start(engine)
    await started(engine, 1)
    assert process.starts == 1 and process.runs == engine.running_config
    return engine, runtime, process


async def turns(until: Any, most: int = 200) -> None:
    """Let the other tasks run: ``most`` turns of the loop, or until ``until()``."""
    for _ in range(most):
        if until():
            return
        await asyncio.sleep(0)


@pytest.mark.parametrize("kind", ["started", "kept"])
async def test_haproxy_restarted_between_a_write_and_its_reload_serves_what_we_believe(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """HAProxy's master died (a worker killed) after the pipeline wrote a candidate,
    before it reloaded it. The supervisor (the kept master's watch) put "the running
    config" back over the candidate, reported as a change made outside servicerouter,
    and started HAProxy on it; the pipeline then reloaded that same old file, was told
    the reload worked, and took the candidate for served: a new app HAProxy did not
    have until some other reload, and a file that said the old config."""
    engine, runtime, process = await started_haproxy(tmp_path, kind, monkeypatch)
    plain = runtime.show_info

    async def master_dies() -> dict[str, str]:  # asked just before the reload is sent
        runtime.show_info = plain  # type: ignore[method-assign]  # this one only
        process.die()
        await turns(lambda: process.starts == 2)  # the supervisor's restart, if it runs
        return await plain()

    runtime.show_info = master_dies  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(app(1, app_id="/new")))  # a new app: a reload
    await asyncio.wait_for(engine.step(), 5)
    await turns(lambda: False, 20)  # whatever the supervisor does after it
    assert "new_10001" in engine.layout
    assert process.runs == engine.running_config, "HAProxy runs another config"
    assert engine.writer.read() == engine.running_config
    assert not process.unmarked
    assert process.starts == 2  # one start, and no second one tried beside it:
    assert "restart failed" not in caplog.text and "outside servicerouter" not in caplog.text
    await engine.reloader.stop()


@pytest.mark.parametrize("kind", ["started", "kept"])
async def test_a_write_during_a_restart_is_not_confirmed_by_it(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other order: the supervisor starts HAProxy on the file, and while HAProxy
    comes up the pipeline writes a candidate. The restart then marked the file loaded
    (<config>.unconfirmed removed) though HAProxy had read the config before: a daemon
    killed before its own reload left the next one adopting HAProxy as though it ran
    the candidate."""
    engine, _, process = await started_haproxy(tmp_path, kind, monkeypatch)
    process.gate, process.starting = asyncio.Event(), asyncio.Event()
    process.die()
    await asyncio.wait_for(process.starting.wait(), 5)  # HAProxy read the file
    engine.mark(engine.state.set_app(app(1, app_id="/new")))
    step = asyncio.ensure_future(engine.step())
    await turns(lambda: engine.writer.read() != process.runs)  # the candidate, if written
    process.gate.set()
    await asyncio.wait_for(step, 5)
    assert process.runs == engine.running_config and "new_10001" in engine.layout
    assert not process.unmarked, "HAProxy reloaded a file not marked unconfirmed"
    await engine.reloader.stop()


class DownHAProxy(FileHAProxy):
    """A FileHAProxy whose supervisor first waits long before a restart (HAProxy is down
    when the next reload comes) and on which a config naming ``refuses`` does not start
    (it passed haproxy -c, and a port it binds was taken since)."""

    refuses = "new_10001"

    def __init__(self, config: Path) -> None:
        super().__init__(config)
        self.backoffs = [3600.0]

    async def supervise(self, **kw: Any) -> None:
        backoff = self.backoffs.pop(0) if self.backoffs else 0.0
        await HAProxyProcess.supervise(self, **{**kw, "backoff": backoff})

    async def _start(self) -> ProcInfo:
        if self.refuses in self.file.read_text():
            self.alive = False
            self.exited = asyncio.Event()
            self.exited.set()
            raise StartError("HAProxy exited with status 1 at start: cannot bind socket")
        return await super()._start()


async def test_a_candidate_that_does_not_start_leaves_haproxy_running_the_last_good(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HAProxy's master died and the supervisor waited before restarting it; a reload
    meanwhile stopped the supervisor to start HAProxy on the candidate, which did not
    start. The file was put back, but nobody started HAProxy on it: every port stayed
    closed while the candidate kept failing (each retry tried the same one)."""
    monkeypatch.setitem(globals(), "FileHAProxy", DownHAProxy)
    engine, _, process = await started_haproxy(tmp_path, "started", monkeypatch)
    good = engine.running_config
    process.die()
    await turns(lambda: False, 20)  # the supervisor sees it and waits to restart
    assert not process.is_running()
    engine.mark(engine.state.set_app(app(1, app_id="/new")))  # a new app: a reload
    await asyncio.wait_for(engine.step(), 5)
    assert "new_10001" not in engine.layout and engine.running_config == good
    await turns(lambda: process.is_running())
    assert process.is_running(), "HAProxy stays down"
    assert process.runs == good and engine.writer.read() == good
    await engine.reloader.stop()
