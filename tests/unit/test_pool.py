"""Range mode (pool.py and planrange.plan_range): port map, host map, spare backends."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from servicerouter import pool
from servicerouter.haproxy.render import render
from servicerouter.haproxy.runtime_parse import ServerState
from servicerouter.layout import DesiredService, Layout, Settings, SlotTable, build_layout
from servicerouter.model import Endpoint, Mode, Options, Service
from servicerouter.naming import service_name
from servicerouter.planner import ReloadReason, plan, reconcile

S = Settings(socket_path="/run/a.sock", stats_port=0, http_port=8080, https_port=0,
             service_port_range=(20000, 20099), map_dir="/etc/haproxy/haproxy.cfg.d",
             pool_spares=2)
PORTS = "/etc/haproxy/haproxy.cfg.d/ports.map"
HOSTS = "/etc/haproxy/haproxy.cfg.d/hosts.map"
HTTP = Options(mode=Mode.HTTP)
TCP = Options()


def svc(app: str, port: int, options: Options = TCP, tasks: int = 1
        ) -> tuple[str, DesiredService]:
    eps = tuple(Endpoint(f"{app}.t{i}", "127.0.0.1", 31000 + port % 1000 * 10 + i)
                for i in range(tasks))
    return service_name(app, port), DesiredService(Service(app, 0, port, options), eps)


def cluster(*services: tuple[str, DesiredService], settings: Settings = S
            ) -> tuple[Layout, SlotTable]:
    return pool.with_pool(*build_layout(dict(services), {}, settings), {}, settings)


@pytest.mark.parametrize("text,expected", [("20000-20099", (20000, 20099)),
                                           (" 80-80 ", (80, 80))])
def test_port_range_parses(text: str, expected: tuple[int, int]) -> None:
    assert pool.parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["20000", "b-c", "20099-20000", "0-10", "1-70000", "1-2-3"])
def test_a_bad_port_range_is_named(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(")):
        pool.parse_port_range(text)


@pytest.mark.parametrize("port,options,why", [
    (20001, Options(), None),
    (20001, HTTP, None),
    (30000, Options(), "service port 30000 is outside --service-port-range 20000-20099"),
    (20001, Options(bind_address="127.0.0.1"), "a bind address (HAPROXY_0_BIND_ADDR=127.0.0.1)"),
    (20001, Options(ssl_cert="/c.pem"), "a per-port certificate (HAPROXY_0_SSL_CERT=/c.pem)"),
])
def test_own_frontend_says_why(port: int, options: Options, why: str | None) -> None:
    assert pool.own_frontend(Service("/a", 0, port, options), S) == why


def test_without_the_range_everything_has_its_own_frontend() -> None:
    assert pool.own_frontend(Service("/a", 0, 20001), Settings()) == "no --service-port-range"
    layout, _ = pool.with_pool(*build_layout(dict([svc("/a", 20001)]), {}, Settings()), {},
                               Settings())
    assert list(layout) == ["a_20001"] and pool.map_files(layout, Settings()) == {}


def test_the_pool_has_tcp_and_http_spares_and_every_shape_in_use() -> None:
    checked = replace(HTTP, health_check=True, health_check_path="/health")
    layout, table = cluster(svc("/a", 20001), svc("/b", 20002, checked))
    spares = [s for s in layout.values() if pool.is_spare(s)]
    shapes = sorted(repr(s.service.options) for s in spares)
    assert len(spares) == 6  # --pool-spares 2 x (tcp, http, http with a check)
    assert shapes.count(repr(Options())) == 2 and shapes.count(repr(HTTP)) == 2
    assert shapes.count(repr(checked)) == 2
    assert all(table[s.name] == [None] * s.slots for s in spares)


def test_the_pool_grows_with_its_services_and_with_demand() -> None:
    many = [svc(f"/a{i}", 20000 + i) for i in range(40)]
    layout, _ = cluster(*many)
    assert sum(pool.is_spare(s) for s in layout.values()) == 4 + 2  # 10% of 40 tcp; 2 http
    # After a run of apps taking spares, the next reload doubles what was taken.
    taken = {name: replace(shape, name=f"{pool.SPARE_PREFIX}9{i}")
             for i, (name, shape) in enumerate(sorted(layout.items()))
             if name < "a2" and not pool.is_spare(shape)}
    previous = {**{n: s for n, s in layout.items() if n not in taken}, **taken}
    grown, _ = pool.with_pool(*build_layout(dict(many), {}, S), previous, S)
    assert sum(pool.is_spare(s) and s.service.options == Options()
               for s in grown.values()) == pool.RUNWAY  # room for the next 100
    # A long stream: 2 x what was taken, once that is more than the runway.
    big = [svc(f"/b{i}", 20000 + i) for i in range(80)]
    layout, _ = cluster(*big)
    newer = {name for name, _ in big[10:]}
    previous = {name: replace(shape, name=f"{pool.SPARE_PREFIX}9{i}") if name in newer
                else shape for i, (name, shape) in enumerate(layout.items())}
    grown, _ = pool.with_pool(*build_layout(dict(big), {}, S), previous, S)
    assert sum(pool.is_spare(s) and s.service.options == Options()
               for s in grown.values()) == 2 * 70
    # A shape no new app came in keeps only --pool-spares.
    assert sum(pool.is_spare(s) and s.service.options == HTTP for s in grown.values()) == 2


def test_a_stream_of_new_apps_reloads_at_most_once_per_100_creations() -> None:
    """The default pool (--pool-spares 8) on a cold cluster, one new TCP app at a time,
    through the planner and a reload (with_pool) whenever it says so."""
    s = replace(S, pool_spares=Settings().pool_spares, service_port_range=(20000, 22999))
    desired: dict[str, DesiredService] = {}
    layout, table = pool.with_pool(*build_layout({}, {}, s), {}, s)
    reloads_at = []
    for i in range(1000):
        name, d = svc(f"/s{i}", 20000 + i)
        desired[name] = d
        p = plan(layout, table, desired, {name}, s)
        if p.reload:
            reloads_at.append(i + 1)
            layout, table = pool.with_pool(*build_layout(desired, table, s), layout, s)
            continue
        layout, table = dict(layout), {**table, **p.slots}
        for key, shape in p.layout.items():
            if shape is None:
                del layout[key], table[key]
            else:
                layout[key] = shape
    assert reloads_at[0] == 9  # the default 8 spares run out once
    assert all(b - a >= 100 for a, b in itertools.pairwise(reloads_at))
    assert len(reloads_at) <= 5, reloads_at
    print(f"reloads at creations {reloads_at}")


def test_range_bind_leaves_out_ports_other_frontends_bind() -> None:
    s = replace(S, service_port_range=(20000, 20010), reserved_ports=(20000,))
    layout, _ = cluster(svc("/a", 20005, Options(bind_address="127.0.0.1")), svc("/b", 20006),
                        settings=s)
    assert pool.range_bind(layout, s) == "*:20001-20004,*:20006-20010"


def test_render_routes_in_range_services_by_the_port_map() -> None:
    layout, table = cluster(svc("/a", 20001), svc("/b", 30000),
                            svc("/c", 20002, replace(HTTP, vhosts=("c.test",))))
    text = render(layout, table, S)
    assert "frontend service_range\n    bind *:20000-20099\n" in text
    assert f"reject unless {{ dst_port,map_int({PORTS}) -m found }}" in text
    assert "frontend a_20001" not in text and "frontend c_20002" not in text
    assert "frontend b_30000\n    bind *:30000\n" in text
    assert f"map_str({HOSTS})" in text and "acl host_" not in text
    files = pool.map_files(layout, S)
    assert files["ports.map"] == "20001 a_20001\n20002 c_20002\n"
    assert files["hosts.map"] == "c.test c_20002\n"
    assert set(files) == {"ports.map", "hosts.map", "spares.json"}


@pytest.mark.parametrize("routes,in_map,acl_hosts", [
    ([("/a", ("a.test",), ())], {"a.test"}, []),
    # Two routes name the host: their order (weight, path length) matters: ACLs.
    ([("/a", ("x.test",), ()), ("/b", ("x.test",), ("/api",))], set(), ["x.test", "x.test"]),
    ([("/a", ("p.test",), ("/p",))], set(), ["p.test"]),
    # A wildcard that matches the host could win by order: ACLs.
    ([("/a", ("w.x.test",), ()), ("/b", ("*.x.test",), ())], set(), ["w.x.test"]),
    ([("/a", ("Mixed.Test",), ())], {"mixed.test"}, []),
])
def test_a_host_is_in_the_map_only_when_no_ordering_rule_is_at_stake(
        routes: list[tuple[str, tuple[str, ...], tuple[str, ...]]], in_map: set[str],
        acl_hosts: list[str]) -> None:
    services = [svc(app, 20001 + i, replace(HTTP, vhosts=hosts, paths=paths))
                for i, (app, hosts, paths) in enumerate(routes)]
    layout, _ = cluster(*services)
    hosts, acls = pool.host_routes(layout, S)
    assert set(hosts) == in_map
    assert sorted(h for r in acls for h in r["hosts"]) == acl_hosts
    plain, all_acls = pool.host_routes(layout, replace(S, service_port_range=(0, 0)))
    assert plain == {} and len(all_acls) == len(routes)


def run(layout: Layout, table: SlotTable, desired: dict[str, DesiredService],
        dirty: set[str]) -> tuple[Layout, SlotTable, list[str], dict[str, str]]:
    """Plan, and commit the plan as the engine does."""
    p = plan(layout, table, desired, dirty, S)
    layout, table = dict(layout), dict(table)
    table.update(p.slots)
    for name, shape in p.layout.items():
        if shape is None:
            layout.pop(name, None)
            table.pop(name, None)
        else:
            layout[name] = shape
    return layout, table, p.commands, p.reload


def test_a_new_app_takes_a_spare_slots_first_then_the_map_entry() -> None:
    layout, table = cluster(svc("/a", 20001))
    desired = dict([svc("/a", 20001), svc("/new", 20002, tasks=2)])
    after, table, commands, reload = run(layout, table, desired, {"new_20002"})
    assert not reload
    spare = after["new_20002"].name
    assert spare.startswith(pool.SPARE_PREFIX) and spare not in after
    assert commands[-1] == f"add map {PORTS} 20002 {spare}"
    assert {c.split()[2] for c in commands[:-1]} == {f"{spare}/s1", f"{spare}/s2"}
    assert pool.ports_map(after, S)["20002"] == spare
    assert [e is not None for e in table["new_20002"][:3]] == [True, True, False]


def test_a_removed_app_loses_its_map_entry_first_and_its_spare_returns() -> None:
    layout, table = cluster(svc("/a", 20001))
    desired = dict([svc("/a", 20001), svc("/new", 20002)])
    after, table, _, _ = run(layout, table, desired, {"new_20002"})
    spare = after["new_20002"].name
    spares = sum(pool.is_spare(s) for s in after.values())
    back, table, commands, reload = run(after, table, dict([svc("/a", 20001)]), {"new_20002"})
    assert not reload
    assert commands == [f"del map {PORTS} 20002", f"set server {spare}/s1 state maint",
                        f"set server {spare}/s1 addr 127.0.0.1 port 1"]
    assert pool.is_spare(back[spare]) and "new_20002" not in back and "new_20002" not in table
    assert sum(pool.is_spare(s) for s in back.values()) == spares + 1
    # A removed app that had a backend of its own (from a reload) is unrouted, no reload,
    # and that backend returns to the pool as a spare under its old name.
    gone, gone_table, commands, reload = run(layout, table, {}, {"a_20001"})
    assert not reload and commands == [f"del map {PORTS} 20001",
                                       "set server a_20001/s1 state maint",
                                       "set server a_20001/s1 addr 127.0.0.1 port 1"]
    assert "a_20001" not in gone and "a_20001" not in gone_table
    returned = gone[pool.spare_key("a_20001")]
    assert pool.is_spare(returned) and returned.name == "a_20001"
    assert gone_table[pool.spare_key("a_20001")] == [None] * returned.slots
    # The next app of its shape takes it (the lowest name first: _pool_N, then it).
    taken = [s.name for s in gone.values() if pool.is_spare(s) and s.service.options == TCP]
    desired = dict([svc(f"/n{i}", 20010 + i) for i in range(len(taken))])
    full, _, commands, reload = run(gone, gone_table, desired, set(desired))
    assert not reload and sorted(s.name for s in full.values()) == sorted(
        [*taken, *(s.name for s in gone.values() if pool.is_spare(s)
                   and s.service.options != TCP)])
    holder = next(k for k, v in full.items() if v.name == "a_20001")
    assert f"add map {PORTS} {full[holder].service.port} a_20001" in commands
    assert pool.ports_map(full, S)[str(full[holder].service.port)] == "a_20001"
    # ... and the same app coming back takes its own old backend, whatever the order.
    again, _, commands, reload = run(gone, gone_table, dict([svc("/a", 20001)]), {"a_20001"})
    assert not reload and again["a_20001"].name == "a_20001"
    assert pool.spare_key("a_20001") not in again
    assert commands[-1] == f"add map {PORTS} 20001 a_20001"


@pytest.mark.parametrize("port,options,reason,why", [
    (30000, Options(), ReloadReason.OWN_FRONTEND, "outside --service-port-range"),
    (20002, Options(ssl_cert="/c.pem"), ReloadReason.OWN_FRONTEND, "a per-port certificate"),
    (20002, Options(auth=("r", "u", "h")), ReloadReason.OUTSIDE_POOL, "HAPROXY_0_AUTH"),
    (20002, Options(balance="leastconn"), ReloadReason.POOL_EXHAUSTED, "no spare backend"),
])
def test_what_still_needs_a_reload_says_why(port: int, options: Options, reason: ReloadReason,
                                            why: str) -> None:
    layout, table = cluster(svc("/a", 20001))
    name, d = svc("/new", port, options)
    p = plan(layout, table, {name: d}, {name}, S)
    assert p.reload == {name: reason} and why in p.why[name]
    assert not p.commands and not p.layout


def test_the_pool_runs_out() -> None:
    layout, table = cluster(svc("/a", 20001))
    desired = dict([svc(f"/n{i}", 20010 + i) for i in range(3)])
    p = plan(layout, table, desired, set(desired), S)
    assert list(p.reload.values()) == [ReloadReason.POOL_EXHAUSTED]  # 2 spares, 3 apps
    assert len([c for c in p.commands if c.startswith("add map")]) == 2


def test_a_new_app_whose_planning_raises_gives_its_spare_back_to_the_others() -> None:
    """Range mode: an entry whose planning raises is left to a reload, the spare it took
    is free again for the next new apps of the batch, and nothing of it is applied."""
    layout, table = cluster(svc("/a", 20001))
    name, d = svc("/bad", 20002)
    broken = replace(d, endpoints=(replace(d.endpoints[0], check_port=70000),))
    desired = {name: broken, **dict(svc(f"/n{i}", 20010 + i) for i in range(2))}
    p = plan(layout, table, desired, set(desired), S)
    assert p.reload == {name: ReloadReason.PLAN_ERROR}  # 2 spares, 2 good new apps
    assert "70000" in str(p.errors[name])
    assert {k for k, v in p.layout.items() if v is not None} == {"n0_20010", "n1_20011"}
    assert not any("20002" in c for c in p.commands) and name not in p.slots


def test_a_vhost_is_added_and_moved_through_the_host_map() -> None:
    layout, table = cluster(svc("/a", 20001, HTTP), svc("/b", 20002, HTTP))
    both = dict([svc("/a", 20001, replace(HTTP, vhosts=("v.test",))), svc("/b", 20002, HTTP)])
    layout, table, commands, reload = run(layout, table, both, {"a_20001"})
    assert not reload and commands == [f"add map {HOSTS} v.test a_20001"]
    moved = dict([svc("/a", 20001, HTTP), svc("/b", 20002, replace(HTTP, vhosts=("v.test",)))])
    layout, table, commands, reload = run(layout, table, moved, {"a_20001", "b_20002"})
    assert not reload and commands == [f"set map {HOSTS} v.test b_20002"]
    assert layout["b_20002"].service.options.vhosts == ("v.test",)


def test_a_vhost_change_the_map_cannot_express_reloads() -> None:
    layout, table = cluster(svc("/a", 20001, replace(HTTP, vhosts=("v.test",))))
    name, d = svc("/b", 20002, replace(HTTP, vhosts=("v.test",), paths=("/api",)))
    p = plan(layout, table, {**dict([svc("/a", 20001, replace(HTTP, vhosts=("v.test",)))]),
                             name: d}, {name}, S)
    assert p.reload == {name: ReloadReason.VHOST_ACL}
    assert not p.commands and not p.layout and not p.slots  # dropped whole


def test_an_options_change_moves_the_app_into_a_spare_of_its_new_shape() -> None:
    """TCP to HTTP: the app's tasks fill an HTTP spare, then the port map points there,
    then its old backend empties and goes back to the pool, with no reload. Clients are
    never routed to an empty backend, and its old backend serves until the map moves."""
    layout, table = cluster(svc("/a", 20001, tasks=2))
    before = {n: s for n, s in layout.items() if pool.is_spare(s)}
    after, table, commands, reload = run(layout, table, dict([svc("/a", 20001, HTTP, 2)]),
                                         {"a_20001"})
    assert not reload
    spare = after["a_20001"].name
    assert before[spare].service.options == HTTP  # a spare of the new shape
    assert after["a_20001"].service.options == HTTP and spare not in after
    map_at = commands.index(f"set map {PORTS} 20001 {spare}")
    assert {c.split()[2] for c in commands[:map_at]} == {f"{spare}/s1", f"{spare}/s2"}
    assert commands[map_at + 1:] == [
        "set server a_20001/s1 state maint", "set server a_20001/s2 state maint",
        "set server a_20001/s1 addr 127.0.0.1 port 1",
        "set server a_20001/s2 addr 127.0.0.1 port 1"]
    returned = after[pool.spare_key("a_20001")]
    assert pool.is_spare(returned) and returned.service.options == TCP
    assert table[pool.spare_key("a_20001")] == [None] * returned.slots
    assert [e is not None for e in table["a_20001"][:3]] == [True, True, False]
    assert pool.ports_map(after, S) == {"20001": spare}
    # Back to TCP: the app takes its own old backend again.
    again, _, commands, reload = run(after, table, dict([svc("/a", 20001, TCP, 2)]),
                                     {"a_20001"})
    assert not reload and again["a_20001"].name == "a_20001"
    assert f"set map {PORTS} 20001 a_20001" in commands
    assert pool.is_spare(again[spare]) and pool.spare_key("a_20001") not in again


def test_an_options_change_without_a_spare_of_its_shape_reloads_and_says_why() -> None:
    layout, table = cluster(svc("/a", 20001))
    p = plan(layout, table, dict([svc("/a", 20001, Options(balance="leastconn"))]),
             {"a_20001"}, S)
    assert p.reload == {"a_20001": ReloadReason.OPTIONS_CHANGED}
    assert "none is left" in p.why["a_20001"] and not p.commands and not p.layout
    # Options no spare can take (AUTH) are an options change too, as before.
    p = plan(layout, table, dict([svc("/a", 20001, Options(auth=("r", "u", "h")))]),
             {"a_20001"}, S)
    assert p.reload == {"a_20001": ReloadReason.OPTIONS_CHANGED} and not p.commands


def test_an_app_moving_out_of_a_backend_no_spare_can_take_drops_it() -> None:
    """An app whose old options were outside the pool (AUTH, given its backend by a
    reload) moves into a spare; its old backend empties and leaves the layout (the next
    reload drops it from the config)."""
    auth = replace(HTTP, auth=("r", "u", "h"))
    layout, table = cluster(svc("/a", 20001, auth))
    after, table, commands, reload = run(layout, table, dict([svc("/a", 20001, HTTP)]),
                                         {"a_20001"})
    spare = after["a_20001"].name
    assert not reload and commands[-2:] == [f"set map {PORTS} 20001 {spare}",
                                            "set server a_20001/s1 state maint"]
    assert pool.spare_key("a_20001") not in after and "a_20001" not in {
        s.name for s in after.values()}


def test_a_moved_app_with_an_acl_vhost_reloads_whole() -> None:
    """A vhost with a path stays an ACL naming the backend: the move cannot be expressed
    in the host map, so the entry is dropped whole (commands and the old backend's
    emptying included) and reloaded."""
    web = replace(HTTP, vhosts=("v.test",), paths=("/api",))
    moved = replace(web, balance="source")
    b = svc("/b", 20002, replace(HTTP, balance="source"))  # spares of the new shape
    layout, table = cluster(svc("/a", 20001, web), b)
    p = plan(layout, table, dict([svc("/a", 20001, moved), b]), {"a_20001"}, S)
    assert p.reload == {"a_20001": ReloadReason.VHOST_ACL}
    assert not p.commands and not p.layout and not p.slots


def test_reconcile_reads_an_app_in_a_spare_under_the_spare_name() -> None:
    layout, table = cluster()
    layout, table, _, _ = run(layout, table, dict([svc("/new", 20002)]), {"new_20002"})
    spare = layout["new_20002"].name
    held = table["new_20002"][0]
    assert held is not None
    actual = [ServerState(1, spare, i, f"s{i}", "127.0.0.1", 2, 1, 1, 1, 0, 0, 0, 0, 1)
              for i in range(1, 9)]  # HAProxy restarted from the file: all in maint
    commands, broken = reconcile({"new_20002": layout["new_20002"]}, table, actual)
    assert not broken
    assert commands == [f"set server {spare}/s1 addr 127.0.0.1 port {held.port}",
                        f"set server {spare}/s1 state ready"]



def test_a_spare_grown_by_a_new_app_counts_all_its_servers() -> None:
    """A new app with more tasks than the spare's slots adds servers at runtime: the
    layout says so, so that reconcile reads them all (a worker restarted from the file
    lacks them) and the spare returned to the pool is reused without ``add server``."""
    layout, table = cluster()
    layout, table, commands, _ = run(layout, table, dict([svc("/big", 20002, tasks=6)]),
                                     {"big_20002"})
    spare = layout["big_20002"].name
    assert sum(c.startswith("add server") for c in commands) == 2
    assert layout["big_20002"].slots == len(table["big_20002"]) == 6
    actual = [ServerState(1, spare, i, f"s{i}", "127.0.0.1", 2, 1, 1, 1, 0, 0, 0, 0, 1)
              for i in range(1, 5)]  # restarted from the file: the added servers are gone
    _, broken = reconcile({"big_20002": layout["big_20002"]}, table, actual)
    assert broken == {spare: ReloadReason.RESYNC}
    back, table, _, _ = run(layout, table, {}, {"big_20002"})
    assert back[spare].slots == 6
    again, _, commands, reload = run(back, table, dict([svc("/next", 20003, tasks=6)]),
                                     {"next_20003"})
    assert not reload and again["next_20003"].name == spare
    assert not any(c.startswith("add server") for c in commands)



def test_a_spare_whose_servers_had_their_own_check_port_never_serves_an_app_without(
) -> None:
    """``set server … check-port`` outlives the app that set it (a spare's addresses are
    cleared, not its check ports). An app checked on its traffic port must not take a
    spare an app with HAPROXY_{n}_BACKEND_HEALTHCHECK_PORT_INDEX left, or HAProxy checks
    its tasks on the old task's port and takes them down."""
    checked = Options(health_check=True)
    name, d = svc("/a", 20001, checked)
    d = replace(d, service=replace(d.service, options=replace(
        checked, health_check_port_index=1)),
        endpoints=tuple(replace(e, check_port=e.port + 500) for e in d.endpoints))
    layout, table = cluster((name, d), svc("/other", 20009, checked))
    gone, gone_table, _, reload = run(layout, table, {}, {name})
    assert not reload and pool.is_spare(gone[pool.spare_key(name)])
    plain = dict(svc(f"/b{i}", 20002 + i, checked) for i in range(3))
    p = plan(gone, gone_table, plain, set(plain), S)
    assert not [c for c in p.commands if c.startswith(f"set server {name}/")]
    assert not any(s.name == name for s in p.layout.values() if s is not None)
    # The label dropped in place: the app moves to servers checked on the traffic port.
    dropped = replace(d, service=replace(d.service, options=checked),
                      endpoints=tuple(replace(e, check_port=None) for e in d.endpoints))
    p = plan(layout, table, {name: dropped}, {name}, S)
    assert p.layout[name] is not None and p.layout[name].name != name


def test_show_map_parses_and_diffs() -> None:
    have = pool.parse_show_map("0x55d1 20001 a_20001\n0x55d2 20002 _pool_3\n")
    assert have == {"20001": "a_20001", "20002": "_pool_3"}
    assert pool.map_diff(PORTS, have, {"20002": "_pool_4", "20003": "c"}) == (
        [f"del map {PORTS} 20001"],
        [f"set map {PORTS} 20002 _pool_4", f"add map {PORTS} 20003 c"])
    with pytest.raises(ValueError, match="Unknown map"):
        pool.parse_show_map("Unknown map identifier. Please use #<id> or <file>.\n")
    # A key listed twice (a stale entry, then an ``add map``): HAProxy answers the first,
    # so that is what a key maps to, and ``set map`` (which sets every entry) repairs it.
    dup = pool.parse_show_map("0x1 20001 _pool_3\n0x2 20001 a_20001\n")
    assert dup == {"20001": "_pool_3"}
    assert pool.map_diff(PORTS, dup, {"20001": "a_20001"}) == (
        [], [f"set map {PORTS} 20001 a_20001"])



def test_the_spares_file_gives_the_pool_back() -> None:
    checked = replace(HTTP, health_check=True, health_check_path="/h",
                      network_allowed=("10.0.0.0/8",))
    layout, table = cluster(svc("/a", 20001, checked))
    layout, _, _, _ = run(layout, table, dict([svc("/a", 20001, checked),
                                               svc("/b", 20002, checked)]), {"b_20002"})
    spares = pool.parse_spares(pool.spares_text(layout))
    assert layout["b_20002"].name in spares  # a spare holding an app stays in the file
    assert spares == {s.name: pool.shape_of(s.service.options) for s in layout.values()
                      if s.name.startswith(pool.SPARE_PREFIX)}
    # A removed app's own backend, back in the pool, is in the file under its name.
    gone, _, _, _ = run(layout, table, dict([svc("/b", 20002, checked)]), {"a_20001"})
    assert pool.parse_spares(pool.spares_text(gone))["a_20001"] == pool.shape_of(checked)
    with pytest.raises(ValueError):
        pool.parse_spares("")


def test_a_moved_app_takes_its_host_map_entry_along() -> None:
    web = replace(HTTP, vhosts=("v.test",))
    b = svc("/b", 20002, replace(HTTP, balance="source"))  # spares of the new shape
    layout, table = cluster(svc("/a", 20001, web), b)
    after, _, commands, reload = run(layout, table, dict(
        [svc("/a", 20001, replace(web, balance="source")), b]), {"a_20001"})
    spare = after["a_20001"].name
    assert not reload and spare != "a_20001"
    maps = [f"set map {PORTS} 20001 {spare}", f"set map {HOSTS} v.test {spare}"]
    at = commands.index(maps[0])
    assert commands[at:at + 2] == maps and commands[at + 2:] == [
        "set server a_20001/s1 state maint", "set server a_20001/s1 addr 127.0.0.1 port 1"]
    assert pool.host_routes(after, S)[0] == {"v.test": spare}


def test_apps_of_many_shapes_cannot_fill_every_config_with_spares() -> None:
    """Shapes are the tenants' to choose (a health check path is enough): 100 new apps
    of 100 shapes used to bring 100 spares each (10,000 backends in every config). The
    pool stays within 2 spares per service plus the default shapes' room, and the
    default shapes and a stream of new apps of one shape still get theirs."""
    s = replace(S, pool_spares=Settings().pool_spares, service_port_range=(20000, 21999))
    odd = [svc(f"/evil/a{i}", 20000 + i,
               replace(HTTP, health_check=True, health_check_path=f"/h{i}"))
           for i in range(100)]
    stream = [svc(f"/shop/s{i}", 21000 + i) for i in range(20)]
    before, _ = pool.with_pool(*build_layout({}, {}, s), {}, s)
    layout, _ = pool.with_pool(*build_layout(dict(odd + stream), {}, s), before, s)
    spares = [x.service.options for x in layout.values() if pool.is_spare(x)]
    assert len(spares) <= 2 * 120 + 2 * (pool.RUNWAY + s.pool_spares), len(spares)
    assert spares.count(Options()) == pool.RUNWAY  # the TCP stream keeps its runway
    assert spares.count(HTTP) == s.pool_spares
    # Next reload (no new apps): still within the budget, every shape's minimum first.
    again, _ = pool.with_pool(*build_layout(dict(odd + stream), {}, s), layout, s)
    assert sum(pool.is_spare(x) for x in again.values()) <= 2 * 120 + 2 * (
        pool.RUNWAY + s.pool_spares)
