"""IP-per-task service ports from a range: deterministic, order-free, bounded."""

from __future__ import annotations

import random

from servicerouter.layout import Settings
from servicerouter.model import App, NetworkMode, Service
from servicerouter.portassign import assign_all, assign_one, assign_ports
from servicerouter.state import ClusterState


def _app(app_id: str, ports: tuple[int, ...] = (0,),
         network: NetworkMode = NetworkMode.CONTAINER) -> App:
    return App(app_id, network=network,
               services=tuple(Service(app_id, i, p) for i, p in enumerate(ports)))


def test_same_apps_same_ports_whatever_the_order() -> None:
    apps = [_app(f"/team{i}/web", (0, 0)) for i in range(20)]
    first, _ = assign_ports(apps, 10050, 10100)
    for seed in range(5):
        shuffled = apps[:]
        random.Random(seed).shuffle(shuffled)
        assert assign_ports(shuffled, 10050, 10100)[0] == first
    assert len(set(first.values())) == 40
    assert all(10050 <= p <= 10100 for p in first.values())


def test_explicit_ports_reserved_ports_and_other_networks_are_left_alone() -> None:
    apps = [_app("/a", (10050, 0)), _app("/host", (0,), NetworkMode.HOST)]
    ports, _ = assign_ports(apps, 10050, 10051, reserved={10051})
    assert ports == {}  # 10050 is /a's own, 10051 reserved: nothing left
    ports, warnings = assign_ports(apps, 10050, 10052, reserved={10051})
    assert ports == {("/a", 1): 10052} and not warnings


def test_an_exhausted_range_warns_and_leaves_the_service_without_a_frontend() -> None:
    apps = [_app(f"/a{i}") for i in range(3)]
    ports, warnings = assign_ports(apps, 10050, 10051)
    assert len(ports) == 2 and len(warnings) == 1
    assert "range 10050-10051 has none left" in warnings[0]


def test_assigned_ports_are_recomputed_not_kept_and_marked() -> None:
    settings = Settings(ip_per_task_ports=(10050, 10100))
    (a,), _ = assign_all([_app("/a")], settings)
    assert a.services[0].auto_port and a.services[0].port
    again, _ = assign_all([a], settings)
    assert again[0] is a  # already right: the same object, nothing dirty
    off, _ = assign_all([_app("/a")], Settings(ip_per_task_ports=(0, 0)))
    assert off[0].services[0].port == 0


def test_reserved_daemon_ports_are_never_assigned() -> None:
    settings = Settings(ip_per_task_ports=(10050, 10051), stats_port=10050, http_port=0,
                        https_port=0)
    apps, _ = assign_all([_app("/a")], settings)
    assert apps[0].services[0].port == 10051


def test_one_app_arriving_reports_the_apps_whose_ports_it_moved() -> None:
    from servicerouter.portassign import assign_one

    settings = Settings(ip_per_task_ports=(10050, 10051))
    others, _ = assign_all([_app("/b"), _app("/c")], settings)
    app, moved, warnings = assign_one(_app("/a"), others, settings)
    # Three services, two ports: sorted order decides, and whoever lost is reported.
    ports = {a.id: a.services[0].port for a in [app, *others]}
    for m in moved:
        ports[m.id] = m.services[0].port
    assert sorted(p for p in ports.values() if p) == [10050, 10051]
    assert not warnings and all(m.id in ("/b", "/c") for m in moved)
    # whoever lost has the problem now (reported in /status)
    assert [p.reason for a in [app, *moved] for p in a.problems] == ["port_range"]


def _claimed(state: ClusterState, app_id: str) -> list[int]:
    return sorted(d.service.port for d in state.desired.values()
                  if d.service.app_id == app_id)


def test_a_held_port_stays_with_its_app_when_a_newcomer_names_it() -> None:
    """A tenant cannot take an IP-per-task app's assigned port with HAPROXY_0_PORT (or a
    port definition) naming it: the holder keeps it, the newcomer is refused."""
    settings = Settings()
    state = ClusterState(settings)
    apps, _ = assign_all([_app("/teama/x")], settings, state.held_ports())
    state.replace_all(apps)
    (port,) = _claimed(state, "/teama/x")

    thief = _app("/evil/y", (port,), NetworkMode.HOST)
    thief, moved, _ = assign_one(thief, apps, settings, state.held_ports())
    assert moved == []  # without the held ports /teama/x moved to the next free port
    state.set_app(thief)
    assert _claimed(state, "/teama/x") == [port]
    assert _claimed(state, "/evil/y") == []
    assert [p.reason for p in state.problems["/evil/y"]] == ["port_taken"]

    # ... and still after a restart, whatever order the full sync lists them in.
    again = ClusterState(settings)
    again.restore_owners(state.owners())
    apps, _ = assign_all([thief, _app("/teama/x")], settings, again.held_ports())
    again.replace_all(apps)
    assert _claimed(again, "/teama/x") == [port]
    assert [p.reason for p in again.problems["/evil/y"]] == ["port_taken"]


def test_a_held_port_off_the_apps_probe_start_is_kept_not_recomputed() -> None:
    """A port taken after a collision stays its holder's when the app it collided with
    leaves or a restart comes: assigned ports move only when their holder lets go."""
    settings = Settings(ip_per_task_ports=(10050, 10100))
    (alone,), _ = assign_all([_app("/a")], settings)
    start = alone.services[0].port
    blocker = _app("/blocker", (start,), NetworkMode.HOST)
    (_, pushed), _ = assign_all([blocker, _app("/a")], settings)
    assert pushed.services[0].port != start
    (kept,), _ = assign_all([_app("/a")], settings, {pushed.services[0].port: "/a"})
    assert kept.services[0].port == pushed.services[0].port
    # Two services of one app keep their own ports, not each other's.
    two = _app("/two", (0, 0))
    (first,), _ = assign_all([two], settings)
    held = {s.port: "/two" for s in first.services}
    (second,), _ = assign_all([two], settings, held)
    assert [s.port for s in second.services] == [s.port for s in first.services]


def test_an_exhausted_range_is_a_problem_in_status_not_only_a_log_line() -> None:
    """One app with as many port mappings as the range has ports starved every later
    app, and only the log said so: each service left without a port is now a problem
    of its app (/status, servicerouter_services_excluded{reason="port_range"})."""
    settings = Settings(ip_per_task_ports=(10050, 10051), stats_port=0, http_port=0,
                        https_port=0)
    apps, warnings = assign_all([_app("/greedy", (0, 0)), _app("/late")], settings)
    assert not warnings
    late = next(a for a in apps if a.id == "/late")
    (problem,) = late.problems
    assert (problem.app_id, problem.index, problem.reason) == ("/late", 0, "port_range")
    assert "range 10050-10051 has no port left" in str(problem)
    again, _ = assign_all(apps, settings)  # idempotent: no second copy, same objects
    assert again == apps and all(a is b for a, b in zip(again, apps, strict=True))
    state = ClusterState(settings)
    state.replace_all(apps)
    assert [p.reason for p in state.problem_list()] == ["port_range"]
    # The greedy app gone, the late one gets a port and its problem ends.
    (late,), _ = assign_all([late], settings)
    assert late.services[0].port and not late.problems



def test_a_states_assignment_of_one_app_is_assign_one_among_all_its_apps() -> None:
    """ClusterState.assign_ports (a one-app refetch, worked out by its PortBook from what
    changed) answers as assign_one over every other app did: the app's ports, the apps it
    moved (in the state's order) and the warnings, as apps come, are redefined (needing
    ports, naming ports of the range, or neither) and go, among held, unheld and named
    ports and deployment group members sharing their ports; also when an answer is not
    applied."""
    from servicerouter.deployments import GROUP, STARTED_AT

    settings = Settings(ip_per_task_ports=(10050, 10059), stats_port=10055, http_port=0,
                        https_port=0)
    for seed in range(4):
        rng = random.Random(seed)

        def some_app(app_id: str, rng: random.Random = rng) -> App:
            kind = rng.randrange(4)
            if kind == 0:  # names a port of the range, or of none
                return _app(app_id, (rng.choice([10050 + rng.randrange(10), 11000]),),
                            NetworkMode.HOST)
            ports = tuple(rng.choice([0, 0, 10050 + rng.randrange(10)])
                          for _ in range(rng.randrange(1, 3)))
            app = _app(app_id, ports)
            if kind == 1:  # a blue/green member: its ports are its group's
                return App(app.id, labels={GROUP: "shop/web", STARTED_AT:
                                           f"2024-05-01T1{rng.randrange(10)}:00:00"},
                           network=app.network, services=app.services)
            return app

        ids = [f"/t{i % 3}/app{i}" for i in range(14)] + ["/shop/web-blue", "/shop/web-green"]
        state = ClusterState(settings)
        assigned, _ = assign_all([some_app(i) for i in ids[:10]], settings,
                                 state.held_ports())
        state.replace_all(assigned)

        def old_way(app: App, state: ClusterState = state) -> tuple[App, list[App], list[str]]:
            return assign_one(app, [a for i, a in state.apps.items() if i != app.id],
                              settings, state.held_ports())

        moved_most, short = 0, 0
        for step in range(300):
            app_id = rng.choice(ids)
            if app_id in state.apps and rng.random() < 0.15:
                state.remove_app(app_id)
                continue
            app = some_app(app_id)
            got = state.assign_ports(app)
            assert got == old_way(app), (seed, step, app)
            moved_most = max(moved_most, len(got[1]))
            short += any(p.reason == "port_range" for a in state.apps.values()
                         for p in a.problems)
            if rng.random() < 0.1:
                continue  # asked, not applied
            state.set_app(got[0])  # as a refetch does; the next one sees it
            for other in got[1]:
                state.set_app(other)
        assert moved_most >= 2  # the order of the moved apps was compared too
        assert short > 30  # and apps the range had no port for

    # Before the first full sync: the owners file's ports are held too.
    restarted = ClusterState(settings)
    restarted.restore_owners(state.owners())
    got = restarted.assign_ports(_app("/t0/app0", (0, 0)))
    assert got == assign_one(_app("/t0/app0", (0, 0)), [], settings, restarted.held_ports())


def test_the_port_book_keeps_nothing_of_apps_gone_between_refetches() -> None:
    """IP-per-task apps come and go through full syncs with no one-app refetch between
    (the PortBook works out what changed only when asked): it keeps nothing of the ones
    gone, however many."""
    settings = Settings(ip_per_task_ports=(10050, 19999))
    state = ClusterState(settings)
    live = [_app(f"/live/app{i}") for i in range(5)]
    assigned, _ = assign_all(live, settings, state.held_ports())
    state.replace_all(assigned)
    state.assign_ports(_app("/live/app0"))  # asked once
    for k in range(300):
        for apps in ([*state.apps.values(), _app(f"/ci/build{k}")], live):
            assigned, _ = assign_all(apps, settings, state.held_ports())
            state.replace_all(assigned)
    book = state._ports
    assert len(book._stale) + len(book._check) <= 5
    assert set(book._shares) == set(book._members) == {a.id for a in live}
    assert state.assign_ports(_app("/new")) == assign_one(
        _app("/new"), list(state.apps.values()), settings, state.held_ports())
