"""Which services haproxy -c rejects: alerts mapped to sections, then bisection."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import replace

from servicerouter import isolation
from servicerouter.engine import Engine
from servicerouter.layout import BackendShape, Settings
from servicerouter.model import App, Options, Service, Task

from .test_engine import counter, make_engine

TEXT = """global
    stats socket /tmp/x.sock
frontend a_1
    bind *:70000
    default_backend a_1
backend a_1
    server s1 127.0.0.1:1 check inter 3000000000
frontend http_in
    bind *:80
    acl host_c_3 hdr(host),field(1,:) -i x.example.com
    use_backend c_3 if host_c_3
frontend https_in
    bind *:443 ssl crt /certs/d.pem crt /etc/shadow
backend b_2
    server s1 127.0.0.1:2
"""
OUTPUT = """[NOTICE]   (1) : haproxy version is 2.6.12
[ALERT]    (1) : config : parsing [/tmp/c.cfg:4] : 'bind' : invalid port '70000'
[ALERT]    (1) : config : [/tmp/c.cfg:11] : 'use_backend' : something about c_3
[ALERT]    (1) : config : parsing [/tmp/c.cfg:13] : 'bind *:443' in section 'frontend' : unable to load certificate from file '/etc/shadow'.
[ALERT]    (1) : config : Proxy 'e_5': unable to find required use_backend: 'nope'.
[ALERT]    (1) : config : Error(s) found in configuration file : /tmp/c.cfg
[ALERT]    (1) : config : Fatal errors found in configuration.
"""  # noqa: E501


def shape(name: str, **opts: object) -> BackendShape:
    return BackendShape(name, Service("/" + name, 0, 1, Options(**opts)), 1)  # type: ignore[arg-type]


def test_alerts_are_mapped_to_the_services_they_are_in() -> None:
    layout = {n: shape(n) for n in ("a_1", "b_2", "c_3", "e_5")}
    layout["d_4"] = shape("d_4", ssl_cert="/etc/shadow", vhosts=("d.example.com",))
    found = isolation.culprits(OUTPUT, TEXT, layout)
    assert set(found) == {"a_1", "c_3", "d_4", "e_5"}
    assert found["a_1"] == "parsing [/tmp/c.cfg:4] : 'bind' : invalid port '70000'"


async def test_bisection_finds_each_service_rejected_on_its_own() -> None:
    bad = {"s07", "s13"}
    calls = []

    async def check(names: Collection[str]) -> tuple[bool, str]:
        calls.append(len(names))
        hit = sorted(bad & set(names))
        return not hit, "".join(f"[ALERT] (1) : config : {n} is bad\n" for n in hit)

    names = [f"s{i:02d}" for i in range(20)]
    found = await isolation.rejected_services(names, {}, check)
    assert found == {"s07": "s07 is bad", "s13": "s13 is bad"}
    assert len(calls) <= 20
    # Nothing to blame when the config without any service is rejected too.

    async def never(names: Collection[str]) -> tuple[bool, str]:
        return False, "[ALERT] (1) : config : global section broken"

    assert await isolation.rejected_services(names, {}, never) is None


async def test_engine_leaves_out_what_haproxy_rejects_and_reloads_the_rest() -> None:
    engine, _, writer, reloader = make_engine()

    async def validate(text: str) -> tuple[bool, str]:
        writer.validated += 1
        if "backend bad_10009" in text:  # an alert that names no line: bisection finds it
            return False, "[ALERT] (1) : config : something went wrong"
        return True, ""

    writer.validate = validate  # type: ignore[method-assign]

    def one(app_id: str, port: int, balance: str = "roundrobin") -> App:
        return App(app_id, services=(Service(app_id, 0, port, Options(balance=balance)),),
                   tasks=(Task(f"{app_id}.1", app_id, "127.0.0.1", (31000,), "TASK_RUNNING"),))

    for app_id, port in (("/a", 10007), ("/bad", 10009), ("/c", 10011)):
        engine.mark(engine.state.set_app(one(app_id, port)))
    await engine.step()
    assert reloader.reloads == 1
    assert set(engine.layout) == {"a_10007", "c_10011"}
    (problem,) = engine.state.problems["/bad"]
    assert problem.reason == "haproxy_rejected" and "something went wrong" in problem.value
    assert "backend bad_10009" not in writer.written[-1]
    # Task churn of the bad app does not bring it back; a new definition does.
    await _changed(engine, one("/bad", 10009))
    assert reloader.reloads == 1 and "bad_10009" not in engine.layout
    await _changed(engine, one("/bad", 10009, balance="leastconn"))
    assert "bad_10009" not in engine.layout  # judged again, rejected again
    assert engine.state.problems["/bad"][0].reason == "haproxy_rejected"


async def _changed(engine: Engine, app: App) -> None:
    engine.mark(engine.state.set_app(app))
    engine.reload_pipeline.next_at = 0.0
    await engine.step()


def test_settings_default_cap() -> None:
    assert Settings().max_servers_per_backend == 2000


async def test_a_failed_reload_puts_the_last_good_config_back_on_disk() -> None:
    engine, _, writer, reloader = make_engine()
    engine.mark(engine.state.set_app(App("/a", services=(Service("/a", 0, 10007),))))
    await engine.step()
    good = writer.written[-1]
    reloader.fail = True
    engine.mark(engine.state.set_app(App("/b", services=(Service("/b", 0, 10009),))))
    await engine.step()
    assert "backend b_10009" in writer.written[-2]  # the candidate HAProxy failed on
    assert writer.written[-1] == good == engine.running_config


async def test_a_frontend_that_cannot_be_bound_is_left_out_before_the_reload() -> None:
    engine, _, _, reloader = make_engine()
    engine.guard.bind_problem = lambda address, port, own=(): (
        "cannot be bound: Address already in use" if port == 10009 else None)
    for app_id, port in (("/a", 10007), ("/held", 10009)):
        engine.mark(engine.state.set_app(App(app_id, services=(Service(app_id, 0, port),))))
    await engine.step()
    assert reloader.reloads == 1 and set(engine.layout) == {"a_10007"}
    (problem,) = engine.state.problems["/held"]
    assert (problem.reason, problem.label, problem.value) == (
        "bind_failed", "service port index 0", "*:10009")
    # Tried again at the next full sync: still held, so no reload at all.
    engine.mark(engine.state.replace_all(list(engine.state.apps.values())))
    engine.reload_pipeline.next_at = 0.0
    await engine.step()
    assert reloader.reloads == 1 and engine.state.problems["/held"] == (problem,)
    # Free now: routed at the next full sync.
    engine.guard.bind_problem = lambda address, port, own=(): None
    engine.mark(engine.state.replace_all(list(engine.state.apps.values())))
    engine.reload_pipeline.next_at = 0.0
    await engine.step()
    assert reloader.reloads == 2 and set(engine.layout) == {"a_10007", "held_10009"}
    assert engine.state.problems == {}


async def test_when_every_service_is_rejected_nobody_is_blamed() -> None:
    """An operator's template that breaks every backend is not the tenants' fault."""
    engine, _, writer, reloader = make_engine()
    broken = [False]

    async def validate(text: str) -> tuple[bool, str]:
        writer.validated += 1
        if broken[0] and "backend " in text:
            return False, "[ALERT] (1) : config : unknown keyword 'not-a-keyword'"
        return True, ""

    writer.validate = validate  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(App("/a", services=(Service("/a", 0, 10007),))))
    await engine.step()
    broken[0] = True
    for app_id, port in (("/b", 10009), ("/c", 10011)):
        engine.mark(engine.state.set_app(App(app_id, services=(Service(app_id, 0, port),))))
    await engine.step()
    assert reloader.reloads == 1 and set(engine.layout) == {"a_10007"}
    assert engine.state.problems == {} and engine.state.excluded == {}
    assert counter(engine, "servicerouter_reload_failures_total", stage="validate") == 1


async def test_churn_of_other_apps_is_applied_while_isolation_bisects() -> None:
    engine, runtime, writer, reloader = make_engine()
    web = App("/web", services=(Service("/web", 0, 10000),), tasks=(
        Task("w1", "/web", "127.0.0.1", (31001,), "TASK_RUNNING"),))
    engine.mark(engine.state.set_app(web))
    await engine.step()
    held, release = asyncio.Event(), asyncio.Event()

    async def validate(text: str) -> tuple[bool, str]:
        if "backend bad_10009" in text:  # names nothing: only bisection blames it
            return False, "[ALERT] (1) : config : something went wrong"
        held.set()  # isolation's check without the bad app waits here
        await release.wait()
        return True, ""

    writer.validate = validate  # type: ignore[method-assign]
    engine.mark(engine.state.set_app(App("/bad", services=(Service("/bad", 0, 10009),))))
    step = asyncio.ensure_future(engine.step())
    await asyncio.wait_for(held.wait(), 10)
    sent = len(runtime.sent)
    engine.mark(engine.state.set_app(replace(web, tasks=(*web.tasks, Task(
        "w2", "/web", "127.0.0.1", (31002,), "TASK_RUNNING")))))
    for _ in range(1000):  # bounded: the apply runs as soon as the loop gets to it
        if len(runtime.sent) > sent:
            break
        await asyncio.sleep(0.001)
    assert any("31002" in c for batch in runtime.sent[sent:] for c in batch)
    assert not step.done() and reloader.reloads == 1  # isolation still waits
    release.set()
    await asyncio.wait_for(step, 10)
    assert engine.state.problems["/bad"][0].reason == "haproxy_rejected"
    assert reloader.reloads == 2 and "bad_10009" not in engine.layout
    assert "127.0.0.1:31002" in writer.written[-1]  # the reload kept the runtime change


async def test_the_bind_test_is_told_which_addresses_haproxy_already_binds() -> None:
    """The guard hands the bind test HAProxy's own binds, so a privileged port next to
    HAProxy's own socket is not taken for another process's (hostfacts.bind_problem)."""
    engine, _, _, _ = make_engine()
    asked: list[tuple[str, int, set[str]]] = []

    def bind_problem(address: str, port: int, own: Collection[str] = ()) -> None:
        asked.append((address, port, set(own)))

    engine.guard.bind_problem = bind_problem
    engine.guard.served("frontend a\n    bind 127.0.0.1:1008\n    bind *:10007\n")
    engine.mark(engine.state.set_app(App("/a", services=(Service("/a", 0, 1008),))))
    await engine.step()
    assert asked == [("*", 1008, {"127.0.0.1:1008", "*:10007"})]


def test_a_line_of_another_file_is_not_read_as_a_line_of_the_config() -> None:
    # HAProxy's alert for a tenant's crt-list line that is too long names that line too;
    # read as the config's line 11, it blamed the service whose rule is there (c_3).
    output = ("[ALERT]    (1) : config : parsing [/tmp/c.cfg:13] : 'bind *:443' in section "
              "'frontend' : 'crt-list' : parsing [/tmp/c.cfg.d/crt-0123456789abcdef.list:11]: "
              "line too long, limit is 65535 characters\n"
              "[ALERT]    (1) : config : Error(s) found in configuration file : /tmp/c.cfg\n")
    layout = {n: shape(n) for n in ("a_1", "b_2", "c_3")}
    assert isolation.culprits(output, TEXT, layout) == {}
    # Without HAProxy's closing line, an alert's first file is the config's.
    first = output.splitlines()[0]
    assert isolation.culprits(first, TEXT, layout) == {}
    assert set(isolation.culprits(first.replace(":13]", ":4]"), TEXT, layout)) == {"a_1"}
