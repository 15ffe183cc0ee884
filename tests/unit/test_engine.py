"""Engine.step with fake HAProxy edges: what happens when things fail."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from servicerouter.engine import Engine, EngineConfig
from servicerouter.haproxy.runtime import RuntimeUnavailable
from servicerouter.haproxy.runtime_parse import CommandResult, ServerState, Status
from servicerouter.layout import Settings
from servicerouter.metrics import Metrics
from servicerouter.model import App, Options, Service, Task
from servicerouter.planner import ReloadReason
from servicerouter.servercheck import state_line


class FakeRuntime:
    """Applies nothing; reports servers exactly as the engine's slot table says,
    unless ``servers`` is set."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.fail_next: str | None = None  # "error" or "down"
        self.servers: list[ServerState] | None = None
        self.engine: Engine | None = None
        self.missing = False  # the admin socket's file is gone
        self.resets = 0  # kept sessions closed (after each reload)
        self.pid = 100  # the worker that answers the admin socket
        self.state_reads: list[list[str] | None] = []  # backends asked (None: all)
        self.not_from: int | None = None
        self.mirrored: tuple[int, float] | None = None  # (old worker, its grace)

    def socket_missing(self) -> bool:
        return self.missing

    def reset(self) -> None:
        self.resets += 1

    def mirror(self, pid: int, seconds: float) -> None:
        self.mirrored = (pid, seconds)

    async def show_info(self) -> dict[str, str]:
        return {"Pid": str(self.pid)}

    async def execute(self, commands: list[str]) -> list[CommandResult]:
        if self.fail_next == "down":
            self.fail_next = None
            raise RuntimeUnavailable("cannot connect to /x.sock", address="/x.sock")
        self.sent.append(list(commands))
        if self.fail_next == "error":
            self.fail_next = None
            return [CommandResult(c, Status.ERROR, "No such server.") for c in commands]
        return [CommandResult(c, Status.OK, "") for c in commands]

    async def show_servers_state(self, backend: str | None = None) -> list[ServerState]:
        if self.servers is not None or self.engine is None:
            return self.servers or []
        out = []
        for name, shape in self.engine.layout.items():
            slots = self.engine.table.get(name, [])
            for i in range(shape.slots):
                e = slots[i] if i < len(slots) else None
                addr, port, admin = ("127.0.0.1", 1, 0x05) if e is None else (
                    e.ip, e.port, 0x08 if e.state.value == "drain" else 0)
                out.append(ServerState(1, name, i + 1, f"s{i + 1}", addr, 2, admin, 1, 1,
                                       0, 0, 0, 0, port))
        return out


    async def servers_state_chunks(self, backends: Sequence[str] | None = None
                                   ) -> AsyncIterator[list[str]]:
        self.state_reads.append(None if backends is None else list(backends))
        wanted = None if backends is None else set(backends)
        # As HAProxy answers ``show servers state <backend>``: one version line each.
        yield ["1", *(state_line(s) for s in await self.show_servers_state()
                      if wanted is None or s.backend in wanted)]


class FakeWriter:
    def __init__(self) -> None:
        self.valid = True
        self.validated = 0
        self.written: list[str] = []
        self.rejected: list[str] = []
        self.loaded_count = 0  # times HAProxy was seen to load the file
        self.unconfirmed_why: str | None = None
        self.changes = asyncio.Lock()

    async def validate(self, text: str) -> tuple[bool, str]:
        self.validated += 1
        return self.valid, "" if self.valid else "[ALERT] parsing [x.cfg:12]: unknown keyword"

    def write(self, text: str) -> None:
        self.written.append(text)

    def keep_rejected(self, text: str) -> Path:
        self.rejected.append(text)
        return Path("/tmp/haproxy.cfg.rejected")

    def read(self) -> str | None:
        return self.written[-1] if self.written else None

    def remove(self) -> None:
        self.written.clear()

    def loaded(self) -> None:
        self.loaded_count += 1

    def unconfirmed(self) -> str | None:
        return self.unconfirmed_why


class FakeReloader:
    def __init__(self) -> None:
        self.reloads = 0
        self.fail = False

    def starts_haproxy(self) -> bool:
        return False

    def problem(self) -> str | None:
        return None

    async def reload(self) -> None:
        if self.fail:
            raise RuntimeError("master CLI: reload not confirmed")
        self.reloads += 1


def make_engine() -> tuple[Engine, FakeRuntime, FakeWriter, FakeReloader]:
    runtime, writer, reloader = FakeRuntime(), FakeWriter(), FakeReloader()
    # The fake reloader forks no new worker (the pid stays), so HAProxy's grace, which
    # keeps the admin socket's clients off the old pid, is off but where it is the subject.
    config = EngineConfig(settings=Settings(stats_port=0, grace_ms=0), min_reload_interval=0.0)
    engine = Engine(config, None, runtime, writer, reloader,  # type: ignore[arg-type]
                    Metrics(), lambda host: host)
    runtime.engine = engine
    engine.guard.bind_problem = lambda address, port, own=(): None  # no real sockets here
    return engine, runtime, writer, reloader


def app(*tasks: int, app_id: str = "/web") -> App:
    port = 10000 if app_id == "/web" else 10001
    return App(app_id, services=(Service(app_id, 0, port),), tasks=tuple(
        Task(f"t{n}", app_id, "127.0.0.1", (31000 + n,), "TASK_RUNNING") for n in tasks))


def counter(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


async def started(engine: Engine, *tasks: int) -> None:
    engine.mark(engine.state.set_app(app(*tasks)))
    await engine.step()


async def test_first_step_reloads_then_churn_is_runtime_only() -> None:
    engine, runtime, writer, reloader = make_engine()
    await started(engine, 1)
    assert reloader.reloads == 1 and len(writer.written) == 1
    assert runtime.resets == 1  # the kept admin session is not carried over a reload
    engine.mark(engine.state.set_app(app(2)), event_time=0.0)
    await engine.step()
    assert reloader.reloads == 1
    assert runtime.sent[-1] == ["set server web_10000/s1 state maint",
                                "set server web_10000/s1 addr 127.0.0.1 port 31002",
                                "set server web_10000/s1 state ready"]
    assert engine.table["web_10000"][0] is not None
    assert engine.table["web_10000"][0].task_id == "t2"
    assert counter(engine, "servicerouter_event_to_apply_seconds_count") == 1


async def test_a_failed_runtime_command_restores_state_with_a_reload() -> None:
    engine, runtime, _, reloader = make_engine()
    await started(engine, 1)
    runtime.fail_next = "error"
    engine.mark(engine.state.set_app(app(1, 2)))
    await engine.step()
    assert reloader.reloads == 2
    assert counter(engine, "servicerouter_reloads_total", reason="runtime_error") == 1
    assert counter(engine, "servicerouter_runtime_errors_total") == 2
    assert {e.task_id for e in engine.table["web_10000"] if e} == {"t1", "t2"}


async def test_unreachable_haproxy_is_reported_and_retried_by_reload() -> None:
    engine, runtime, _, reloader = make_engine()
    await started(engine, 1)
    runtime.fail_next = "down"
    engine.mark(engine.state.set_app(app(1, 2)))
    await engine.step()
    assert engine.haproxy_ok is True  # the reload's reconcile reached it again
    assert reloader.reloads == 2


async def test_a_rejected_candidate_keeps_the_old_config_and_is_not_retried() -> None:
    engine, _, writer, reloader = make_engine()
    await started(engine, 1)
    writer.valid = False
    engine.mark(engine.state.set_app(app(1, app_id="/new")))
    await engine.step()
    assert reloader.reloads == 1 and len(writer.written) == 1  # nothing replaced
    assert len(writer.rejected) == 1
    assert counter(engine, "servicerouter_reload_failures_total", stage="validate") == 1
    # The config without any service is rejected too: no service is to blame.
    assert writer.validated == 4  # the current config, then all services, then none
    engine.reload_pipeline.next_at = 0.0  # the backoff has passed
    await engine.step()
    assert writer.validated == 4  # the same candidate is not validated again
    assert counter(engine, "servicerouter_reload_failures_total", stage="validate") == 1
    # Churn of the existing app still flows at runtime meanwhile.
    engine.mark(engine.state.set_app(app(1, 3)))
    await engine.step()
    assert any(e and e.task_id == "t3" for e in engine.table["web_10000"])


@pytest.mark.parametrize(("failure", "stage"), [("write", "write"), ("reload", "reload")])
async def test_failed_write_or_reload_keeps_the_layout(failure: str, stage: str) -> None:
    engine, _, writer, reloader = make_engine()
    await started(engine, 1)
    if failure == "write":
        def broken(text: str) -> Any:
            raise OSError(28, "No space left on device")
        writer.write = broken  # type: ignore[method-assign]
    else:
        reloader.fail = True
    engine.mark(engine.state.set_app(app(1, app_id="/new")))
    await engine.step()
    assert "new_10001" not in engine.layout
    assert counter(engine, "servicerouter_reload_failures_total", stage=stage) == 1
    # /healthz says so until a reload works (it said ok while every reload failed).
    failing = engine.reload_pipeline.failing
    assert failing is not None and failing[1] == stage
    # And the gauge an alert can hold on to, beside the counter that stops rising.
    assert {s: counter(engine, "servicerouter_reload_failing", stage=s)
            for s in ("validate", "write", "reload", "confirm")} == \
        {s: float(s == stage) for s in ("validate", "write", "reload", "confirm")}
    vars(writer).pop("write", None)  # the broken one: the class's works again
    reloader.fail = False
    engine.reload_pipeline.next_at = 0.0
    await engine.step()
    assert "new_10001" in engine.layout
    assert engine.reload_pipeline.failing is None
    assert counter(engine, "servicerouter_reload_failing", stage=stage) == 0


@pytest.mark.parametrize("stop", [False, True])
async def test_a_first_reload_cut_short_puts_back_the_file_that_was_there(stop: bool) -> None:
    """No config of ours runs yet, but an HAProxy the daemon did not adopt (started
    elsewhere, or kept with another config) runs the file on disk: a first reload that
    failed, or a stop during it, left the candidate in the file, and that HAProxy's next
    reload or restart loaded what had just failed (or was never confirmed)."""
    engine, _, writer, reloader = make_engine()
    theirs = "# the config an HAProxy not adopted runs\n"
    writer.written.append(theirs)
    reloading = asyncio.Event()

    async def hanging() -> None:
        reloading.set()
        await asyncio.Event().wait()

    if stop:
        reloader.reload = hanging  # type: ignore[method-assign]
    else:
        reloader.fail = True
    engine.mark(engine.state.set_app(app(1)))
    if stop:
        step = asyncio.ensure_future(engine.step())
        await asyncio.wait_for(reloading.wait(), 5)
        assert writer.read() != theirs  # the candidate, in the file for the reload
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step
    else:
        await engine.step()
        assert counter(engine, "servicerouter_reload_failures_total", stage="reload") == 1
    assert engine.running_config is None
    assert writer.read() == theirs


def tenant(engine: Engine, app_id: str, port: int, cert: Path) -> App:
    """An app whose vhost brings its own certificate (as admission found it: ``cert``
    names its host): in the HTTPS frontend's crt-list."""
    from servicerouter.admission import CertFact, Facts

    host = cert.stem
    cert.write_text("a certificate for the crt-list, not for HAProxy\n")
    info = cert.stat()
    engine.state.set_facts(Facts(certs={str(cert): CertFact(
        str(cert), stamp=(info.st_mtime_ns, info.st_size), names=(host,))}))
    return App(app_id, services=(Service(app_id, 0, port, options=Options(
        vhosts=(host,), ssl_cert=str(cert))),), tasks=(
        Task(f"{app_id}-1", app_id, "127.0.0.1", (31000 + port % 1000,), "TASK_RUNNING"),))


@pytest.mark.parametrize("failure", ["rejected", "reload"])
async def test_a_failed_candidates_crt_list_does_not_stay(tmp_path: Path,
                                                          failure: str) -> None:
    """The crt-list is named by its content: a candidate with one more tenant certificate
    writes a file of its own, which only the next successful reload removed. A rejected
    candidate is rendered again at each retry (and not checked again): its file came
    back each time."""
    engine, _, writer, reloader = make_engine()
    folder = tmp_path / "haproxy.cfg.d"
    engine.config = replace(engine.config, settings=replace(
        engine.config.settings, https_port=8443, crt_list_dir=str(folder)))

    def lists() -> set[str]:
        return {str(p) for p in folder.glob("crt-*.list")}

    engine.mark(engine.state.set_app(tenant(engine, "/a", 10000, tmp_path / "a.test")))
    await engine.step()
    served = set(re.findall(r"crt-list (\S+)", writer.written[-1]))
    assert len(served) == 1 and lists() == served
    if failure == "rejected":
        writer.valid = False
    else:
        reloader.fail = True
    engine.mark(engine.state.set_app(tenant(engine, "/b", 10001, tmp_path / "b.test")))
    await engine.step()
    assert "b_10001" not in engine.layout
    assert lists() == served
    engine.reload_pipeline.next_at = 0.0  # the backoff has passed: tried again
    await engine.step()
    assert "b_10001" not in engine.layout
    assert lists() == served


async def test_update_strategy_reload_reloads_on_churn() -> None:
    engine, runtime, _, reloader = make_engine()
    engine.config = EngineConfig(settings=Settings(stats_port=0), min_reload_interval=0.0,
                                 update_strategy="reload")
    await started(engine, 1)
    engine.mark(engine.state.set_app(app(2)))
    await engine.step()
    assert reloader.reloads == 2
    assert counter(engine, "servicerouter_reloads_total", reason="endpoints_changed") == 1
    assert runtime.sent == []  # nothing went through the runtime API


async def test_haproxy_missing_the_reloaded_backends_backs_off() -> None:
    engine, runtime, _, reloader = make_engine()
    runtime.servers = []  # the socket answers for another HAProxy
    await started(engine, 1)
    assert reloader.reloads == 1
    assert counter(engine, "servicerouter_reload_failures_total", stage="confirm") == 1
    await engine.step()  # within the backoff: no second reload
    assert reloader.reloads == 1


async def test_a_removed_admin_socket_is_restored_by_one_reload_spelled_anew() -> None:
    engine, runtime, writer, reloader = make_engine()
    await started(engine, 1)
    assert "stats socket /run/haproxy/admin.sock " in writer.written[-1]
    runtime.fail_next, runtime.missing = "down", True
    engine.mark(engine.state.set_app(app(1, 2)))
    await engine.step()
    # One reload, with the path spelled so that HAProxy binds the file again.
    assert reloader.reloads == 2
    assert "stats socket /run/haproxy/./admin.sock " in writer.written[-1]
    assert counter(engine, "servicerouter_reloads_total", reason="runtime_error") == 1
    runtime.missing = False
    engine.request_reload()
    await engine.step()
    assert "stats socket /run/haproxy/admin.sock " in writer.written[-1]


async def test_reconcile_runs_while_a_reload_is_pending() -> None:
    engine, runtime, writer, _ = make_engine()
    await started(engine, 1)
    writer.valid = False  # every candidate from now on is rejected
    engine.mark(engine.state.set_app(app(1, app_id="/new")))
    await engine.step()
    assert engine.pending  # the new app's reload keeps failing
    # A worker restarted from the file: slot s1 back at the file's (dead) task.
    runtime.servers = [ServerState(1, "web_10000", 1, "s1", "127.0.0.1", 2, 0, 1, 1,
                                   0, 0, 0, 0, 39999)]
    runtime.servers += [ServerState(1, "web_10000", i, f"s{i}", "127.0.0.1", 2, 0x05, 1, 1,
                                    0, 0, 0, 0, 1) for i in range(2, 5)]
    engine.request_reconcile()
    await engine.step()  # starts the read in the background
    assert engine.reconciler.running is not None
    await engine.reconciler.running
    await engine.step()  # repairs what it found
    assert "set server web_10000/s1 addr 127.0.0.1 port 31001" in runtime.sent[-1]


async def test_a_backend_changed_while_reconcile_reads_is_left_to_the_next_round() -> None:
    engine, runtime, _, _ = make_engine()
    await started(engine, 1, 2)
    engine.mark(engine.state.set_app(app(1, 2, app_id="/api")))
    await engine.step()  # a second backend (a reload)
    # HAProxy as read: both backends' s1 back at a dead task.
    stale = [ServerState(1, name, 1, "s1", "127.0.0.1", 2, 0, 1, 1, 0, 0, 0, 0, 39999)
             for name in ("web_10000", "api_10001")]
    runtime.servers = stale + [
        ServerState(1, name, i, f"s{i}", "127.0.0.1", 2, 0x00 if i == 2 else 0x05, 1, 1,
                    0, 0, 0, 0, 31002 if i == 2 else 1)
        for name in ("web_10000", "api_10001") for i in range(2, 9)]
    engine.request_reconcile()
    await engine.step()  # the read starts in the background ...
    await asyncio.sleep(0)
    engine.mark(engine.state.set_app(app(1, 3)))  # ... while /web's tasks change
    await engine.step()
    assert engine.reconciler.running is not None
    await engine.reconciler.running
    before = len(runtime.sent)
    await engine.step()
    repairs = [c for batch in runtime.sent[before:] for c in batch]
    # /api is repaired from what was read; /web changed after the read began, so its
    # lines may predate the change: the next round looks at it again.
    assert repairs == ["set server api_10001/s1 addr 127.0.0.1 port 31001",
                       "set server api_10001/s1 state ready"]


async def test_churn_of_other_apps_is_applied_while_a_reload_validates() -> None:
    engine, runtime, writer, reloader = make_engine()
    await started(engine, 1)
    gate = asyncio.Event()
    validate = writer.validate

    async def slow_validate(text: str) -> tuple[bool, str]:
        await gate.wait()  # haproxy -c on a 10,000-app config takes seconds
        return await validate(text)

    writer.validate = slow_validate  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(app(1, app_id="/new")))  # a new app: a reload
    step = asyncio.ensure_future(engine.step())
    await asyncio.sleep(0.01)
    assert not step.done()
    engine.mark(engine.state.set_app(app(2)))  # meanwhile /web's task is replaced

    def sent() -> list[str]:
        return [c for batch in runtime.sent for c in batch]

    for _ in range(200):
        await asyncio.sleep(0.005)
        if "set server web_10000/s1 addr 127.0.0.1 port 31002" in sent():
            break
    assert "set server web_10000/s1 addr 127.0.0.1 port 31002" in sent()
    assert not step.done() and reloader.reloads == 1  # applied before the reload
    before = len(runtime.sent)
    gate.set()
    await step
    assert reloader.reloads == 2
    # The new worker starts from a file rendered before the replacement: /web is
    # planned again against it, so the new worker gets the change too.
    again = [c for batch in runtime.sent[before:] for c in batch]
    assert "set server web_10000/s1 addr 127.0.0.1 port 31002" in again
    assert engine.table["web_10000"][0] is not None
    assert engine.table["web_10000"][0].task_id == "t2"
    assert not engine.pending


async def test_a_change_that_comes_during_an_apply_in_a_reload_is_not_left_waiting() -> None:
    """While a reload validates, a change arriving as the previous one is being sent to
    HAProxy is applied right after it, not when some later event wakes the engine (at
    10/s that was 100 ms late; in a quiet cluster, the whole reload late)."""
    engine, runtime, writer, reloader = make_engine()
    await started(engine, 1)
    checked, sending = asyncio.Event(), asyncio.Event()
    validate, execute = writer.validate, runtime.execute

    async def slow_validate(text: str) -> tuple[bool, str]:
        await checked.wait()
        return await validate(text)

    held: list[list[str]] = []

    async def slow_execute(commands: list[str]) -> list[CommandResult]:
        if not held:  # the first batch in the reload: hold it until the next change
            held.append(commands)
            await sending.wait()
        return await execute(commands)

    writer.validate = slow_validate  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(app(1, app_id="/new")))  # a new app: a reload
    step = asyncio.ensure_future(engine.step())
    await asyncio.sleep(0.01)
    runtime.execute = slow_execute  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(app(2)))  # /web's task replaced: being sent
    for _ in range(1000):  # bounded generously: a busy machine
        if held:
            break
        await asyncio.sleep(0.005)
    assert held
    engine.mark(engine.state.set_app(app(3)))  # replaced again, meanwhile
    sending.set()

    def sent() -> list[str]:
        return [c for batch in runtime.sent for c in batch]

    for _ in range(1000):  # nothing else happens: no event, no end of the reload
        await asyncio.sleep(0.005)
        if "set server web_10000/s1 addr 127.0.0.1 port 31003" in sent():
            break
    assert "set server web_10000/s1 addr 127.0.0.1 port 31003" in sent(), sent()
    assert not step.done() and reloader.reloads == 1
    checked.set()
    await step
    assert reloader.reloads == 2


async def test_a_new_app_that_arrives_during_a_reload_gets_its_own() -> None:
    engine, _, writer, reloader = make_engine()
    await started(engine, 1)
    gate = asyncio.Event()
    validate = writer.validate

    async def slow_validate(text: str) -> tuple[bool, str]:
        await gate.wait()
        return await validate(text)

    writer.validate = slow_validate  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(app(1, app_id="/new")))
    step = asyncio.ensure_future(engine.step())
    await asyncio.sleep(0.01)
    other = App("/other", services=(Service("/other", 0, 10002),), tasks=(
        Task("o1", "/other", "127.0.0.1", (32001,), "TASK_RUNNING"),))
    engine.mark(engine.state.set_app(other))  # not in the render being validated
    await asyncio.sleep(0.01)
    gate.set()
    await step
    assert reloader.reloads == 2
    assert "new_10001" in engine.layout and "other_10002" not in engine.layout
    assert engine.pending == {"other_10002": "new_app"}
    writer.validate = validate  # type: ignore[method-assign]
    await engine.step()
    assert reloader.reloads == 3 and "other_10002" in engine.layout


@pytest.mark.parametrize("grace_ms", [0, 60_000])
async def test_the_switch_over_follows_the_new_worker_not_the_masters_confirmation(
        grace_ms: int) -> None:
    """HAProxy's master confirms a reload ~0.4 s after the fork at 10,000 apps; its new
    worker answers sooner. A change made while the config was loaded reaches the new
    worker as soon as it answers, before the master confirms. With HAProxy's grace the
    old worker keeps accepting after the confirmation, so ours stay off it until then."""
    engine, runtime, writer, reloader = make_engine()
    engine.config = replace(engine.config, settings=replace(engine.config.settings,
                                                            grace_ms=grace_ms))
    await started(engine, 1)
    confirm, forked = asyncio.Event(), asyncio.Event()
    gate = asyncio.Event()
    validate = writer.validate

    async def slow_validate(text: str) -> tuple[bool, str]:
        await gate.wait()
        return await validate(text)

    async def slow_reload() -> None:
        reloader.reloads += 1
        runtime.pid = 200  # the new worker answers the admin socket
        forked.set()
        await confirm.wait()  # the master is still busy

    writer.validate = slow_validate  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(app(1, app_id="/new")))
    step = asyncio.ensure_future(engine.step())
    await asyncio.sleep(0.01)
    engine.mark(engine.state.set_app(app(2)))  # /web's task replaced meanwhile
    reloader.reload = slow_reload  # type: ignore[method-assign]
    gate.set()
    await asyncio.wait_for(forked.wait(), 5)
    change = "set server web_10000/s1 addr 127.0.0.1 port 31002"
    for _ in range(400):  # the new layout is in force, and /web planned against it
        if "new_10001" in engine.layout and sum(change in b for b in runtime.sent) >= 2:
            break
        await asyncio.sleep(0.005)
    assert "new_10001" in engine.layout
    assert sum(change in b for b in runtime.sent) >= 2  # the old worker got it, then the new
    assert runtime.not_from == 100  # a kept session must not land on the old worker
    assert engine.reconciler.worker == 200  # ours: not reconciled as a stranger's restart
    assert not step.done()
    confirm.set()
    await asyncio.wait_for(step, 5)
    await asyncio.sleep(0)  # the confirmation's callbacks
    assert runtime.not_from == (100 if grace_ms else None) and reloader.reloads == 2
    assert runtime.mirrored == (100, grace_ms / 1000)  # the old worker is sent each batch


async def test_a_reload_the_master_refuses_is_not_switched_to() -> None:
    engine, runtime, _, reloader = make_engine()
    await started(engine, 1)
    reloader.fail = True  # no new worker comes: the same pid keeps answering
    engine.mark(engine.state.set_app(app(1, app_id="/new")))
    await engine.step()
    assert "new_10001" not in engine.layout and runtime.not_from is None
    assert counter(engine, "servicerouter_reload_failures_total", stage="reload") == 1


class ColdReloader(FakeReloader):
    """Starts HAProxy (none runs yet); refuses the first ``refuse`` candidates."""

    def __init__(self, refuse: int) -> None:
        super().__init__()
        self.refuse, self.tries = refuse, 0

    def starts_haproxy(self) -> bool:
        return self.reloads == 0

    async def reload(self) -> None:
        self.tries += 1
        if self.tries <= self.refuse:
            raise RuntimeError("HAProxy exited with status 1 at start: [ALERT] ...")
        self.reloads += 1


async def test_the_first_config_starts_haproxy_without_haproxy_c() -> None:
    engine, _, writer, _ = make_engine()
    engine.reloader = reloader = ColdReloader(refuse=0)
    await started(engine, 1)
    assert reloader.reloads == 1 and writer.validated == 0  # HAProxy's start checked it
    engine.mark(engine.state.set_app(app(1, app_id="/api")))
    await engine.step()  # HAProxy runs now: every later candidate is checked first
    assert reloader.reloads == 2 and writer.validated == 1


async def test_a_first_config_haproxy_refuses_is_checked_and_isolated_as_usual() -> None:
    engine, _, writer, _ = make_engine()
    engine.reloader = reloader = ColdReloader(refuse=1)
    await started(engine, 1)
    # Refused at start: the unchecked file was removed, then the candidate went through
    # haproxy -c (isolation's path) and started.
    assert reloader.tries == 2 and reloader.reloads == 1
    assert writer.validated == 1 and len(writer.written) == 1
    assert engine.ready.is_set()


async def test_a_failed_reload_costs_the_tenant_no_reload_token() -> None:
    """Tokens are spent by reloads that happened: a reload that failed (and its retry)
    left a tenant held without one of its changes ever reloaded."""
    from servicerouter.reloadbudget import ReloadBudget

    engine, _, _, reloader = make_engine()
    engine.reload_pipeline.gate.budget = ReloadBudget(interval=600.0, burst=1)
    await started(engine, 1)  # the first config: nobody's
    reloader.fail = True
    engine.mark(engine.state.set_app(app(1, app_id="/new")))
    await engine.step()
    assert counter(engine, "servicerouter_reload_failures_total", stage="reload") == 1
    reloader.fail = False
    engine.reload_pipeline.next_at = 0.0  # the backoff has passed
    await engine.step()
    assert "new_10001" in engine.layout and reloader.reloads == 2  # its one token
    engine.mark(engine.state.remove_app("/new"))
    await engine.step()
    assert "new_10001" in engine.layout and reloader.reloads == 2  # now spent: held
    assert counter(engine, "servicerouter_reloads_held_total") == 1


class FlakyEmptyMarathon:
    """Answers every app once, then fails once, then lists none (a Marathon that lost
    its storage, with a failed request in between)."""

    def __init__(self, first: list[dict[str, Any]]) -> None:
        self.answers: list[Any] = [first, None, []]

    async def get_apps(self) -> Any:
        from servicerouter.marathon.client import FetchResult
        from servicerouter.marathon.errors import MarathonUnavailable

        apps = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if apps is None:
            raise MarathonUnavailable([("http://m", "connection refused")])
        return FetchResult({"apps": apps}, "http://m", 0.0, 0)


async def test_the_operators_word_for_an_empty_answer_outlives_a_failed_fetch() -> None:
    """POST /resync?accept_empty=1 said the next answer listing no apps is applied; a
    fetch that failed in between spent it, and the empty answer was refused again."""
    engine, _, _, _ = make_engine()
    web = {"id": "/web", "portDefinitions": [{"port": 10000}], "tasks": []}
    engine.marathon = FlakyEmptyMarathon([web])  # type: ignore[assignment]
    assert await engine.intake.full_sync() and set(engine.state.apps) == {"/web"}
    engine.intake.accept_empty_once()
    assert not await engine.intake.full_sync()  # the failed fetch
    assert await engine.intake.full_sync() and not engine.state.apps  # applied


async def test_a_full_sync_failing_in_a_way_no_rule_foresaw_is_retried_not_fatal() -> None:
    """Only MarathonError and ValueError were caught: anything else (httpx's DecodingError
    was one) ended the daemon at start with a traceback, or a resync task unseen."""
    engine, _, _, _ = make_engine()

    class Broken:
        async def get_apps(self) -> Any:
            raise RuntimeError("a bug")

    engine.marathon = Broken()  # type: ignore[assignment]
    assert await engine.intake.full_sync() is False
    assert engine.intake.retry_at is not None
    assert any("RuntimeError: a bug" in p for p in engine.marathon_health.problems())


class Answers:
    """A Marathon whose full sync answers the apps set last."""

    def __init__(self, *apps: dict[str, Any]) -> None:
        self.apps = list(apps)

    async def get_apps(self) -> Any:
        from servicerouter.marathon.client import FetchResult

        return FetchResult({"apps": self.apps}, "http://m", 0.0, 0)


def tenant_app(app_id: str, port: int, *tasks: tuple[str, list[int]]) -> dict[str, Any]:
    """An app whose port index 0 is health-checked on each task's port index 1."""
    return {"id": app_id, "portDefinitions": [{"port": port}, {"port": port + 1}],
            "labels": {"HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1",
                       "HAPROXY_1_ENABLED": "false"},
            "healthChecks": [{"protocol": "TCP", "portIndex": 0}],
            "tasks": [{"id": task_id, "host": "127.0.0.1", "ports": ports,
                       "state": "TASK_RUNNING", "healthCheckResults": [{"alive": True}]}
                      for task_id, ports in tasks]}


async def test_a_task_with_a_bad_health_checked_port_costs_no_other_app_its_update() -> None:
    """An audit's tenant: its task reported 70000 at the health-checked port index. That
    got past admission, and check-port raised for the whole apply batch: another app's
    new task in the same full sync was never applied, and reloads backed off."""
    engine, runtime, _, reloader = make_engine()
    marathon = Answers(tenant_app("/evil/a", 10000, ("e1", [20001, 20011])),
                       tenant_app("/good/b", 10010, ("g1", [20101, 20111])))
    engine.marathon = marathon  # type: ignore[assignment]
    assert await engine.intake.full_sync()
    await engine.step()
    assert reloader.reloads == 1 and {"evil_a_10000", "good_b_10010"} <= set(engine.layout)
    marathon.apps = [tenant_app("/evil/a", 10000, ("e1", [20001, 20011]), ("e2", [20002, 70000])),
                     tenant_app("/good/b", 10010, ("g1", [20101, 20111]), ("g2", [20102, 20112]))]
    assert await engine.intake.full_sync()
    before = len(runtime.sent)
    await engine.step()
    sent = [c for batch in runtime.sent[before:] for c in batch]
    assert "set server good_b_10010/s2 check-port 20112" in sent  # at runtime
    assert {e.task_id for e in engine.table["good_b_10010"] if e} == {"g1", "g2"}
    (problem,) = engine.state.problems["/evil/a"]
    assert (problem.reason, problem.label, problem.value) == (
        "task_port", "tasks[e2].ports[1]", "70000")
    # Left out as any service with a bad task port: its backend goes with a reload.
    assert reloader.reloads == 2 and "evil_a_10000" not in engine.layout
    assert engine.reload_pipeline.backoff == 0.0 and not engine.pending and not engine.dirty


async def test_a_backend_whose_planning_raises_leaves_the_batch_to_the_others(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever else a backend's planning raises on (a bug, a value admission let
    through), the other backends' changes in the batch are applied at runtime, and that
    backend's change is not lost: it is reloaded from the desired state."""
    from servicerouter import planner

    engine, runtime, _, reloader = make_engine()
    await started(engine, 1)
    engine.mark(engine.state.set_app(app(1, app_id="/api")))
    await engine.step()
    assert reloader.reloads == 2
    plan_backend = planner.plan_backend

    def broken(shape: Any, *args: Any) -> Any:
        if shape.name == "api_10001":
            raise RuntimeError("a bug")
        return plan_backend(shape, *args)

    monkeypatch.setattr(planner, "plan_backend", broken)
    engine.mark(engine.state.set_app(app(1, 2)) | engine.state.set_app(app(1, 2, app_id="/api")))
    before = len(runtime.sent)
    await engine.step()  # does not raise
    assert runtime.sent[before] == ["set server web_10000/s2 addr 127.0.0.1 port 31002",
                                    "set server web_10000/s2 state ready"]  # at runtime
    assert counter(engine, "servicerouter_reloads_total", reason="plan_error") == 1
    assert {e.task_id for e in engine.table["web_10000"] if e} == {"t1", "t2"}
    assert {e.task_id for e in engine.table["api_10001"] if e} == {"t1", "t2"}  # reloaded
    assert engine.reload_pipeline.backoff == 0.0 and not engine.pending and not engine.dirty
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        "api_10001 (app /api): planning its runtime changes failed (RuntimeError: a bug); "
        "it is reloaded instead, the other backends' changes go on"]
    # The same failure again is not logged again (one app's churn cannot flood the log).
    engine.mark(engine.state.set_app(app(2, app_id="/api")))
    await engine.step()
    assert reloader.reloads == 4
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1


async def test_a_batch_whose_planning_raises_is_reloaded_not_lost(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Planning that raises outside any one backend's (a bug in the batch's own code)
    does not drop the batch: every backend in it is reloaded from the desired state,
    the error is logged once, and the next batch that plans cleanly goes at runtime."""
    from servicerouter import engine as engine_module

    engine, runtime, _, reloader = make_engine()
    await started(engine, 1)
    reloads = reloader.reloads
    real_plan = engine_module.plan

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine_module, "plan", broken)
    for tasks in ((1, 2), (1, 2, 3)):  # the same failure twice
        engine.mark(engine.state.set_app(app(*tasks)))
        await engine.step()  # does not raise
        assert {e.task_id for e in engine.table["web_10000"] if e} == {
            f"t{n}" for n in tasks}  # reloaded, not lost
    assert reloader.reloads == reloads + 2
    assert counter(engine, "servicerouter_reloads_total", reason="plan_error") == 2
    assert not engine.pending and not engine.dirty
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["planning the runtime changes of 1 backend(s) failed "
                      "(RuntimeError: a bug); they are reloaded instead"]
    monkeypatch.setattr(engine_module, "plan", real_plan)
    before = len(runtime.sent)
    engine.mark(engine.state.set_app(app(1, 2)))
    await engine.step()
    assert reloader.reloads == reloads + 2  # at runtime again
    assert runtime.sent[before:] and engine.batch_plan_error is None


async def test_the_periodic_read_covers_every_backend_once_a_round_in_slices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Above SLICE_BACKENDS, each interval's read is split: a 10,000-app dump every 10 s
    held both cores for 150 ms while changes waited (issue #11's tail)."""
    monkeypatch.setattr("servicerouter.reconcile.SLICE_BACKENDS", 2)
    engine, runtime, _, _ = make_engine()
    for i in range(5):
        engine.mark(engine.state.set_app(App(f"/a{i}", services=(
            Service(f"/a{i}", 0, 10000 + i),), tasks=(
            Task(f"a{i}.1", f"/a{i}", "127.0.0.1", (31001,), "TASK_RUNNING"),))))
    await engine.step()
    assert runtime.state_reads == [None]  # after the reload: all of it, at once
    assert engine.reconciler.slices() == 3
    # HAProxy lost a change to /a4's backend, which is in the last slice.
    good = await runtime.show_servers_state()
    runtime.servers = [replace(s, port=39999) if (s.backend, s.server) == ("a4_10004", "s1")
                       else s for s in good]

    async def one_slice() -> list[str]:
        before = len(runtime.sent)
        engine.reconciler.request_slice()
        await engine.step()  # starts the read in the background
        assert engine.reconciler.running is not None
        await engine.reconciler.running
        await engine.step()  # repairs what it found
        return [c for batch in runtime.sent[before:] for c in batch]

    assert await one_slice() == [] and await one_slice() == []
    assert await one_slice() == ["set server a4_10004/s1 addr 127.0.0.1 port 31001",
                                 "set server a4_10004/s1 state ready"]
    assert runtime.state_reads[1:] == [["a0_10000", "a1_10001"], ["a2_10002", "a3_10003"],
                                       ["a4_10004"]]
    await one_slice()  # the next round starts over
    assert runtime.state_reads[-1] == ["a0_10000", "a1_10001"]
    engine.request_reconcile()  # a full read still reads all (a worker changed, say)
    await engine.step()
    assert engine.reconciler.running is not None
    await engine.reconciler.running
    assert runtime.state_reads[-1] is None


async def test_an_event_stream_that_fails_unexpectedly_is_reconnected_and_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception other than a MarathonError (a bug, an input no rule foresaw) ended the
    event loop for good: churn waited for the next resync, and health said all was well."""
    engine, _, _, _ = make_engine()
    stop = asyncio.Event()
    opened: list[int] = []
    syncs: list[int] = []
    monkeypatch.setattr(engine, "request_full_sync", lambda: syncs.append(1))
    monkeypatch.setattr("servicerouter.engine.reconnect_delays",
                        lambda: iter(lambda: 0.0, None))

    class Stream:
        url = "http://m1:8080"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            opened.append(1)

        async def __aenter__(self) -> Stream:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        def __aiter__(self) -> Stream:
            return self

        async def __anext__(self) -> Any:
            if len(opened) == 1:
                raise RecursionError("maximum recursion depth exceeded")
            stop.set()
            raise StopAsyncIteration

    monkeypatch.setattr("servicerouter.engine.EventStream", Stream)
    await asyncio.wait_for(engine._event_loop(stop), 10)
    assert len(opened) == 2  # reconnected
    assert syncs  # and resynced: events may have been missed
    assert any("RecursionError" in p for p in engine.marathon_health.problems())


async def test_warnings_are_logged_once_and_only_the_current_apps_ones_remembered(
        caplog: pytest.LogCaptureFixture) -> None:
    """Every warning ever logged was remembered, for the daemon's lifetime: apps come
    and go (one per CI build), and a tenant's label names change with its deploys."""
    engine, _, _, _ = make_engine()

    class Builds:
        build = 0

        async def get_apps(self) -> Any:
            from servicerouter.marathon.client import FetchResult
            apps = [{"id": f"/ci/build-{self.build}", "portDefinitions": [{"port": 10000}],
                     "labels": {f"HAPROXY_0_X{i}": "v" for i in range(100)}, "tasks": []}]
            return FetchResult({"apps": apps}, "http://m", 0.0, 0)

    marathon = engine.marathon = Builds()  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="servicerouter.events"):
        for build in range(20):
            marathon.build = build
            assert await engine.intake.full_sync()
            assert await engine.intake.full_sync()  # the same answer: nothing logged again
    logged = [r.getMessage() for r in caplog.records if "HAPROXY_0_X0 " in r.getMessage()]
    assert len(logged) == 20 and "/ci/build-19" in logged[-1]
    current = [w for w in engine.events._warned if "/ci/build-19:" in w]
    assert current and len(engine.events._warned) == len(current)  # not all 20 builds'


async def test_event_times_kept_for_a_failing_reload_are_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While reloads keep failing under churn every event's time waited for the reload
    that would apply it: a list that grew for as long as the failure lasted."""
    import servicerouter.engine as engine_module

    monkeypatch.setattr(engine_module, "MAX_AWAITING_RELOAD", 5)
    engine, _, _, reloader = make_engine()
    await started(engine, 1)
    reloader.fail = True
    for n in range(10):  # each a new app: a reload each, every one failing
        new = App(f"/new{n}", services=(Service(f"/new{n}", 0, 10100 + n),), tasks=(
            Task(f"n{n}", f"/new{n}", "127.0.0.1", (32000 + n,), "TASK_RUNNING"),))
        engine.mark(engine.state.set_app(new), event_time=float(n))
        await engine.step()
    assert engine.awaiting_reload == [0.0, 1.0, 2.0, 3.0, 4.0]  # the longest waits kept
    reloader.fail = False
    engine.request_reload(ReloadReason.MANUAL)
    await engine.step()
    assert engine.awaiting_reload == []
    assert counter(engine, "servicerouter_event_to_apply_seconds_count") == 5
