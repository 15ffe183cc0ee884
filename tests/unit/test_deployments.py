"""Blue/green deployments (zdd.py's labels): which apps join a group, how the pair is
routed as one app, and the desired state it yields through every ClusterState path."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest

from servicerouter.deployments import DeploymentError, deployment_of, merge
from servicerouter.layout import Settings
from servicerouter.model import App, EndpointState, Health, Problem, Service, Task, shown
from servicerouter.state import ClusterState

PORT = 10080
NAME = f"shop_web_{PORT}"  # the pair's services are named after the group


def labels(colour: str, started: str, target: int = 2, **more: str) -> dict[str, str]:
    return {"HAPROXY_DEPLOYMENT_GROUP": "shop/web", "HAPROXY_0_PORT": str(PORT),
            "HAPROXY_DEPLOYMENT_COLOUR": colour, "HAPROXY_DEPLOYMENT_STARTED_AT": started,
            "HAPROXY_DEPLOYMENT_TARGET_INSTANCES": str(target),
            "HAPROXY_DEPLOYMENT_NEW_INSTANCES": "0", "HAPROXY_DEPLOYMENT_ALT_PORT": "10081",
            **more}


def task(app_id: str, n: int, state: str = "TASK_RUNNING",
         health: Health = Health.NONE) -> Task:
    return Task(f"{app_id.strip('/').replace('/', '_')}.instance-{n}._app.1", app_id,
                "127.0.0.1", (31000 + n,), state, health)


def app(app_id: str, tasks: tuple[Task, ...] = (), checked: bool = False,
        version: str = "2024-05-01T00:00:00.000Z", **label_kw: str) -> App:
    colour = app_id.rsplit("-", 1)[-1]
    started = "2024-05-01T10:00:00" if colour == "blue" else "2024-05-01T11:00:00"
    return App(app_id, version, labels(colour, started, **label_kw),
               services=(Service(app_id, 0, PORT),), tasks=tasks, has_health_checks=checked)


BLUE, GREEN = "/shop/web-blue", "/shop/web-green"


def blue(*ns: int) -> App:
    return app(BLUE, tuple(task(BLUE, n) for n in ns))


def green(*ns: int, state: str = "TASK_RUNNING", checked: bool = False,
          health: Health = Health.NONE) -> App:
    return app(GREEN, tuple(task(GREEN, n, state, health) for n in ns), checked)


def routed(s: ClusterState) -> dict[str, str]:
    """Task id -> ready/drain, of the pair's one service."""
    return {e.task_id: e.state.name.lower() for e in s.desired[NAME].endpoints}


# -- labels ----------------------------------------------------------------------------

def test_labels_give_the_group_as_an_app_id_and_the_deploy_time() -> None:
    d = deployment_of(blue(1))
    assert d is not None and d.group == "/shop/web" and d.target_instances == 2
    assert d.started_at == datetime.datetime(2024, 5, 1, 10) and d.new_instances
    assert deployment_of(App("/web", labels={"HAPROXY_0_PORT": "1"})) is None
    aware = app(BLUE, HAPROXY_DEPLOYMENT_STARTED_AT="2024-05-01T12:00:00+02:00")
    assert deployment_of(aware).started_at == datetime.datetime(2024, 5, 1, 10)  # type: ignore[union-attr]


@pytest.mark.parametrize(("label", "value", "why"), [
    ("HAPROXY_DEPLOYMENT_GROUP", "Shop/Web!", "is not a Marathon app path"),
    ("HAPROXY_DEPLOYMENT_GROUP", "/", "is not a Marathon app path"),
    ("HAPROXY_DEPLOYMENT_GROUP", "web", "names a group in /, but only apps of that folder may "
                                        "join it (this app is in /shop; for it the label "
                                        "would be shop/web)"),
    ("HAPROXY_DEPLOYMENT_GROUP", "other/web", "names a group in /other"),
    ("HAPROXY_DEPLOYMENT_STARTED_AT", "yesterday", "is not an ISO 8601 date and time"),
    ("HAPROXY_DEPLOYMENT_TARGET_INSTANCES", "-1", "is not a number of instances"),
    ("HAPROXY_DEPLOYMENT_NEW_INSTANCES", "lots", "is not a number of instances"),
    ("HAPROXY_DEPLOYMENT_ALT_PORT", "70000", "is not a port"),
    # Values int() and datetime refuse with another error, which escaped state.py:
    ("HAPROXY_DEPLOYMENT_TARGET_INSTANCES", "²", "is not a number of instances"),
    ("HAPROXY_DEPLOYMENT_NEW_INSTANCES", "9" * 5000, "is not a number of instances"),
    ("HAPROXY_DEPLOYMENT_ALT_PORT", "¹", "is not a port"),
    ("HAPROXY_DEPLOYMENT_ALT_PORT", "9" * 5000, "is not a port"),
    ("HAPROXY_DEPLOYMENT_STARTED_AT", "0001-01-01T00:00:00+01:00", "is not an ISO 8601"),
    ("HAPROXY_DEPLOYMENT_STARTED_AT", "9999-12-31T23:59:59-01:00", "is not an ISO 8601"),
])
def test_a_value_that_cannot_work_names_the_label(label: str, value: str, why: str) -> None:
    with pytest.raises(DeploymentError) as info:
        deployment_of(app(BLUE, **{label: value}))
    assert str(info.value).startswith(f"{label}={shown(value)!r} {why}")
    problem = info.value.problem(BLUE)
    assert (problem.reason, problem.label, problem.index) == ("deployment_group", label, -1)


# -- merge -----------------------------------------------------------------------------

def _merged(*apps: App) -> App:
    return merge("/shop/web", apps, [deployment_of(a) for a in apps])  # type: ignore[misc]


def test_alone_an_app_is_routed_under_its_group() -> None:
    one = _merged(blue(1))
    assert one.id == "/shop/web" and one.services[0].app_id == "/shop/web"
    assert [t.state for t in one.tasks] == ["TASK_RUNNING"]


def test_old_tasks_drain_as_new_ones_run_keeping_the_target() -> None:
    # Payload order does not matter: the earlier STARTED_AT is the old app.
    for pair in ((blue(1, 2), green(1)), (green(1), blue(1, 2))):
        merged = _merged(*pair)
        assert merged.labels["HAPROXY_DEPLOYMENT_COLOUR"] == "blue"  # the old definition
        assert [(t.app_id, t.state) for t in merged.tasks] == [
            (BLUE, "TASK_KILLING"), (BLUE, "TASK_RUNNING"), (GREEN, "TASK_RUNNING")]
    assert [t.state for t in _merged(blue(1, 2), green(1, 2)).tasks[:2]] == ["TASK_KILLING"] * 2


def test_with_health_checks_only_healthy_new_tasks_count() -> None:
    unhealthy = green(1, 2, checked=True, health=Health.UNHEALTHY)
    assert all(t.state == "TASK_RUNNING" for t in _merged(blue(1, 2), unhealthy).tasks[:2])
    healthy = green(1, checked=True, health=Health.HEALTHY)
    assert [t.state for t in _merged(blue(1, 2), healthy).tasks[:2]] == [
        "TASK_KILLING", "TASK_RUNNING"]


def test_a_traffic_split_drains_nothing_while_both_hold_the_target() -> None:
    # zdd.py --new-instances 2 of 4: green starts with 2, blue is scaled to 2 after it.
    b = app(BLUE, tuple(task(BLUE, n) for n in (1, 2)), version="2024-05-01T11:00:05.000Z",
            target=4, HAPROXY_DEPLOYMENT_NEW_INSTANCES="2")
    g = app(GREEN, tuple(task(GREEN, n) for n in (1, 2)), version="2024-05-01T11:00:00.000Z",
            target=4, HAPROXY_DEPLOYMENT_NEW_INSTANCES="2")
    assert all(t.state == "TASK_RUNNING" for t in _merged(b, g).tasks)


# -- ClusterState ----------------------------------------------------------------------

def test_a_blue_green_deploy_changes_tasks_never_the_service() -> None:
    s = ClusterState(Settings())
    assert s.set_app(blue(1, 2)) == {NAME}
    service = s.desired[NAME].service
    assert service.app_id == "/shop/web" and routed(s) == {
        task(BLUE, 1).id: "ready", task(BLUE, 2).id: "ready"}
    assert s.set_app(green()) == set()  # no task yet: nothing changes
    assert s.update_task(task(GREEN, 1)) == {NAME}  # the event path
    assert routed(s) == {task(BLUE, 1).id: "drain", task(BLUE, 2).id: "ready",
                         task(GREEN, 1).id: "ready"}
    s.update_task(task(GREEN, 2))
    assert set(routed(s).values()) == {"drain", "ready"} and routed(s)[task(BLUE, 2).id] == "drain"
    assert s.deployment("/shop/web") == ([BLUE, GREEN], BLUE)
    assert s.deployment(BLUE) is None
    assert s.remove_app(BLUE) == {NAME}
    assert s.deployment("/shop/web") == ([GREEN], GREEN)
    assert routed(s) == {task(GREEN, 1).id: "ready", task(GREEN, 2).id: "ready"}
    assert s.desired[NAME].service == service  # the same shape: no reload
    assert set(s.desired) == {NAME} and not s.problems
    assert s.held_ports() == {PORT: "/shop/web"}


def test_an_app_outside_the_folder_is_left_out_and_takes_nothing() -> None:
    s = ClusterState(Settings())
    s.set_app(blue(1))
    intruder = App("/other/x", "v", {"HAPROXY_DEPLOYMENT_GROUP": "shop/web",
                                     "HAPROXY_0_PORT": str(PORT)},
                   services=(Service("/other/x", 0, PORT),), tasks=(task("/other/x", 1),))
    assert s.set_app(intruder) == set()
    assert routed(s) == {task(BLUE, 1).id: "ready"}
    (problem,) = s.problems["/other/x"]
    assert problem.reason == "deployment_group" and "only apps of that folder" in str(problem)


def test_a_live_app_with_the_groups_id_keeps_it() -> None:
    s = ClusterState(Settings())
    owner = App("/shop/web", "v", {}, services=(Service("/shop/web", 0, PORT),),
                tasks=(task("/shop/web", 9),))
    s.set_app(owner)
    s.set_app(blue(1))
    assert routed(s) == {task("/shop/web", 9).id: "ready"}
    assert "is the id of app /shop/web" in str(s.problems[BLUE][0])
    s.remove_app("/shop/web")  # gone: the deployment may take its id now
    assert routed(s) == {task(BLUE, 1).id: "ready"} and BLUE not in s.problems
    s.set_app(owner)  # back, without the label: the live app wins again
    assert routed(s) == {task("/shop/web", 9).id: "ready"} and BLUE in s.problems


def test_a_full_sync_of_a_pair_is_the_same_as_events() -> None:
    s = ClusterState(Settings())
    s.replace_all([green(1), blue(1, 2)])
    assert routed(s) == {task(BLUE, 1).id: "drain", task(BLUE, 2).id: "ready",
                         task(GREEN, 1).id: "ready"}
    assert s.replace_all([green(1)]) == {NAME}
    assert routed(s) == {task(GREEN, 1).id: "ready"}


def test_health_events_of_the_new_app_drain_the_old() -> None:
    s = ClusterState(Settings())
    s.set_app(blue(1, 2))
    s.set_app(green(1, checked=True))
    assert routed(s)[task(BLUE, 1).id] == "ready"  # green not healthy yet
    assert s.set_health(GREEN, "shop_web-green.instance-1", True) == {NAME}
    assert routed(s)[task(BLUE, 1).id] == "drain" and routed(s)[task(GREEN, 1).id] == "ready"
    drained = next(e for e in s.desired[NAME].endpoints if e.task_id == task(BLUE, 1).id)
    assert drained.state is EndpointState.DRAIN


def test_apps_naming_each_other_as_their_group_are_judged_once() -> None:
    # /shop/a in group shop/b, /shop/b in group shop/a: each is the id of a live app
    # outside the group, so both are refused; judging one again used to judge the
    # other again, without end (RecursionError: the daemon down, by a tenant's labels).
    s = ClusterState(Settings())
    a = App("/shop/a", "v", {"HAPROXY_DEPLOYMENT_GROUP": "shop/b"},
            services=(Service("/shop/a", 0, 10001),))
    b = App("/shop/b", "v", {"HAPROXY_DEPLOYMENT_GROUP": "shop/a"},
            services=(Service("/shop/b", 0, 10002),))
    s.set_app(a)
    s.set_app(b)
    assert not s.desired and set(s.problems) == {"/shop/a", "/shop/b"}
    s.remove_app("/shop/a")  # gone: /shop/b may form its group /shop/a now
    assert set(s.desired) == {"shop_a_10002"} and not s.problems


def test_a_live_app_joining_the_group_of_its_own_id_lets_the_refused_in() -> None:
    s = ClusterState(Settings())
    s.set_app(App("/shop/web", "v", {}, services=(Service("/shop/web", 0, PORT),)))
    s.set_app(green(1))
    assert GREEN in s.problems  # /shop/web is a live app outside the group
    s.set_app(app("/shop/web", (task("/shop/web", 9),)))  # now it is the group's member
    assert not s.problems and set(routed(s)) == {task("/shop/web", 9).id, task(GREEN, 1).id}



def test_a_task_not_yet_routed_still_counts_in_the_drain() -> None:
    # The old app's tasks count towards the pair's target, routed or not: a staging
    # one arriving by event drains as a full sync would (the event fast path skipped
    # the group, and left the pair routed on stale tasks until the next change).
    s = ClusterState(Settings())
    s.set_app(blue(1))
    s.set_app(green(1))
    assert routed(s)[task(BLUE, 1).id] == "ready"  # 1 old + 1 new = the target, 2
    s.update_task(task(BLUE, 2, "TASK_STAGING"))
    fresh = ClusterState(Settings())
    fresh.replace_all(list(s.apps.values()))
    assert routed(s) == routed(fresh) == {task(BLUE, 1).id: "drain",
                                          task(GREEN, 1).id: "ready"}


def test_any_order_of_events_gives_the_state_a_fresh_sync_would() -> None:
    # Seeded random walk over every ClusterState path a group's members go through:
    # after each step the incremental state matches a fresh one given the same apps.
    import random

    from servicerouter.model import Mode, Options

    rng = random.Random(5)
    ids = ["/shop/web", BLUE, GREEN, "/shop/web-red", "/shop/other", "/web-x",
           "/shop/other/api"]
    groups = ["shop/web", "shop/web", None, "bad!", "other/web", "shop", "shop/other",
              "shop/web", "shop/web-blue"]
    ports = {g: 10080 + n for n, g in enumerate(["/shop/web", "/shop/other", BLUE, "/shop"])}

    def random_app(app_id: str) -> App:
        group = rng.choice(groups)
        lab = {"HAPROXY_DEPLOYMENT_STARTED_AT": f"2024-05-01T1{rng.randrange(3)}:00:00",
               "HAPROXY_DEPLOYMENT_TARGET_INSTANCES": str(rng.randrange(4))}
        if rng.random() < 0.3:
            lab["HAPROXY_DEPLOYMENT_NEW_INSTANCES"] = "1"
        if group is not None:
            lab["HAPROXY_DEPLOYMENT_GROUP"] = group
        # Members share the group's port; an app on its own has a port of its own:
        # each id routed has one port, so no two claim one (who wins depends on order).
        port = ports.get("/" + group if group in groups[-4:] else app_id,
                         11000 + ids.index(app_id))
        tasks = tuple(task(app_id, n, rng.choice(["TASK_RUNNING", "TASK_STAGING"]),
                           rng.choice(list(Health)))
                      for n in rng.sample(range(4), rng.randrange(4)))
        # The /shop tenant's host, a path per port (so per routed id): claimed, handed
        # between a group and its members, never contested (who wins depends on order).
        opts = Options(vhosts=("shop.example.com",), paths=(f"/p{port}",), mode=Mode.HTTP) \
            if app_id != "/web-x" or group == "shop" else Options()
        return App(app_id, f"2024-05-01T00:00:0{rng.randrange(3)}.000Z", lab,
                   services=(Service(app_id, 0, port, opts),), tasks=tasks,
                   has_health_checks=rng.random() < 0.5)

    settings = Settings(http_port=0, https_port=0)
    holds = 0
    for step in range(1500):
        if step % 150 == 0:
            s = ClusterState(settings)
        roll, app_id = rng.random(), rng.choice(ids)
        if roll < 0.3:
            s.set_app(random_app(app_id))
        elif roll < 0.4:
            s.remove_app(app_id)
        elif roll < 0.5:
            apps = [random_app(i) if rng.random() < 0.3 else s.apps[i]
                    for i in ids if i in s.apps and rng.random() < 0.8]
            s.replace_all(apps, keep=[i for i in ids if rng.random() < 0.2])
        elif roll < 0.75:
            n = rng.randrange(4)
            s.update_task(task(app_id, n, rng.choice(["TASK_RUNNING", "TASK_STAGING"]),
                               rng.choice(list(Health))))
        elif roll < 0.85:
            s.remove_task(app_id, task(app_id, rng.randrange(4)).id)
        else:
            s.set_health(app_id, task(app_id, rng.randrange(4)).id.rsplit(".", 2)[0],
                         rng.random() < 0.6)
        fresh = ClusterState(settings)
        fresh.replace_all(list(s.apps.values()))
        held = {a for a in s._holding if s._groups.refused(a)}
        held |= {a for a in fresh._holding if fresh._groups.refused(a)}
        # A refused app keeps holding what it held (state.py, _hold_refused): history
        # (in a fresh sync too: an app that joined a group as the oldest definition, then
        # refused when a younger app took the group's id), until fixed or deleted.
        if not held:
            assert (s.desired, s.problems, s.held_ports()) == \
                (fresh.desired, fresh.problems, fresh.held_ports()), step
            # The owner of a host (its first claimer is history, not state: not compared).
            assert {h: k for h, (k, _) in s.owners().hosts.items()} == \
                {h: k for h, (k, _) in fresh.owners().hosts.items()}, step
        else:
            holds += 1
            assert not set(s.desired) & {n for a in held for n in s._holding.get(a, ())}, step
            assert {a: s.problems[a] for a in held} == {a: fresh.problems[a] for a in held}
        assert all(s.app(d.service.app_id) for d in s.desired.values()), step  # guard.py
        g, f = s._groups, fresh._groups
        assert g._inside == f._inside, step
        assert (g._group_of, g._members, g._merged, g._deploy_problem, g._blocked) == \
            (f._group_of, f._members, f._merged, f._deploy_problem, f._blocked), step
    assert 100 < holds < 1000  # both ways of the walk are taken


def test_a_refused_group_label_holds_no_port_of_the_prior_owners() -> None:
    # At a restart the owners before it claim first, a group among them; a label that
    # cannot join (another folder) used to count as that group, so /evil/x naming the
    # departed /other/victim kept its port from every other app, for good.
    from servicerouter.owners import Owners

    s = ClusterState(Settings())
    s.restore_owners(Owners(ports={PORT: "/other/victim"}))
    evil = App("/evil/x", "1", {"HAPROXY_DEPLOYMENT_GROUP": "other/victim"},
               services=(Service("/evil/x", 0, 10099),))
    s.replace_all([evil, App("/shop/y", "2", {}, services=(Service("/shop/y", 0, PORT),))])
    assert set(s.desired) == {f"shop_y_{PORT}"} and s.held_ports() == {PORT: "/shop/y"}
    assert set(s.problems) == {"/evil/x"}


def test_a_group_holds_its_prior_port_at_a_restart() -> None:
    from servicerouter.owners import Owners

    s = ClusterState(Settings())
    s.restore_owners(Owners(ports={PORT: "/shop/web"}))
    rival = App("/shop/y", "0", {}, services=(Service("/shop/y", 0, PORT),))  # older
    s.replace_all([rival, blue(1)])
    assert set(routed(s)) == {task(BLUE, 1).id} and s.held_ports() == {PORT: "/shop/web"}


def test_a_group_named_after_a_tenants_folder_takes_none_of_its_hosts() -> None:
    # At the root, /shop-blue may name the group "shop": the root is its folder. Routed
    # as /shop, the pair owned the hosts of the /shop tenant (--vhost-policy group) and
    # routed shop.example.com/login to itself; without the label it is refused them.
    from servicerouter.model import Mode, Options

    def web(app_id: str, port: int, path: str, **more: str) -> App:
        opts = Options(vhosts=("shop.example.com",), paths=(path,), mode=Mode.HTTP)
        return App(app_id, "1", more, services=(Service(app_id, 0, port, opts),))

    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(web("/shop/web", 10001, "/"))
    s.set_app(web("/shop-blue", 10002, "/login", HAPROXY_DEPLOYMENT_GROUP="shop"))
    assert set(s.desired) == {"shop_web_10001"}
    (p,) = s.problems["/shop-blue"]
    assert "is a Marathon group with live apps in it" in p.message
    s.remove_app("/shop/web")  # no /shop folder now: the group may form
    assert set(s.desired) == {"shop_10002"} and not s.problems
    s.set_app(web("/shop/web", 10001, "/"))  # the tenant back: the group is left out
    assert set(s.desired) == {"shop_web_10001"} and set(s.problems) == {"/shop-blue"}


def test_at_the_root_only_zdds_own_ids_join_a_group() -> None:
    # Every app at the root is a tenant of its own (--vhost-policy group): the folder
    # rule let /evil join "web", drain /web-blue's tasks and take web.example.com.
    from servicerouter.model import Mode, Options

    def root(app_id: str, started: str, n: int) -> App:
        opts = Options(vhosts=("web.example.com",), mode=Mode.HTTP)
        return App(app_id, "1", {"HAPROXY_DEPLOYMENT_GROUP": "web",
                                 "HAPROXY_DEPLOYMENT_STARTED_AT": started,
                                 "HAPROXY_DEPLOYMENT_TARGET_INSTANCES": "1"},
                   services=(Service(app_id, 0, 10080, opts),), tasks=(task(app_id, n),))

    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(root("/web-blue", "2024-05-01T10:00:00", 1))
    s.set_app(root("/evil", "2099-01-01T00:00:00", 2))
    assert {e.task_id: e.state.name for e in s.desired["web_10080"].endpoints} == {
        task("/web-blue", 1).id: "READY"}
    (p,) = s.problems["/evil"]
    assert (p.reason, p.label) == ("deployment_group", "HAPROXY_DEPLOYMENT_GROUP")
    assert "only /web-blue and /web-green (zdd.py's ids) may join it" in p.message
    s.set_app(root("/web-green", "2024-05-01T11:00:00", 3))  # zdd.py's next deploy joins
    assert {e.task_id: e.state.name for e in s.desired["web_10080"].endpoints} == {
        task("/web-blue", 1).id: "DRAIN", task("/web-green", 3).id: "READY"}
    assert set(s.problems) == {"/evil"}


def test_a_new_app_without_the_old_ones_health_checks_drains_nothing_unrouted() -> None:
    # The pair is routed with the old app's health checks, so the new app's unchecked
    # tasks are not routed; counted as healthy, they drained every old task: no server.
    checked_blue = app(BLUE, tuple(task(BLUE, n, health=Health.HEALTHY) for n in (1, 2)),
                       checked=True)
    s = ClusterState(Settings())
    s.set_app(checked_blue)
    s.set_app(green(1, 2))  # no health checks, running
    assert routed(s) == {task(BLUE, 1).id: "ready", task(BLUE, 2).id: "ready"}


def test_a_groups_frontend_that_failed_to_bind_is_tried_again_at_a_full_sync() -> None:
    # A full sync lets every bind failure try again; the group's service, named for an
    # id that is no Marathon app, was let out of its exclusion but never routed again.
    from servicerouter.model import Problem

    s = ClusterState(Settings())
    s.set_app(blue(1))
    failed = Problem("/shop/web", 0, "bind_failed", "service port index 0", f"*:{PORT}",
                     "cannot be bound: Address already in use")
    s.exclude(NAME, failed)
    assert NAME not in s.desired and s.problems == {"/shop/web": (failed,)}
    assert s.replace_all(list(s.apps.values())) == {NAME}
    assert routed(s) == {task(BLUE, 1).id: "ready"} and not s.problems


def _counting_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the apps whose deployment labels ClusterState reads from now on."""
    import servicerouter.deployment_groups as groups_module

    parsed: list[str] = []
    real = groups_module.deployment_of
    monkeypatch.setattr(groups_module, "deployment_of",
                        lambda a: parsed.append(a.id) or real(a))
    return parsed


def _simple(app_id: str, port: int, group: str | None = None, version: str = "0") -> App:
    """An app of one service, naming ``group`` as its deployment group if given."""
    labels = {"HAPROXY_DEPLOYMENT_GROUP": group} if group else {}
    return App(app_id, version, labels, services=(Service(app_id, 0, port),))


def test_an_app_event_does_not_scan_the_refused_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every set_app looked for the apps naming it (and now its folders) through all
    # refused apps, each label parsed again: 1,000 refused apps of one tenant made each
    # other app's event 30 times slower, a first sync of 10,000 apps 2-4 s. Looked up now.
    s = ClusterState(Settings())
    for n in range(100):
        s.set_app(_simple(f"/x/b{n}", 20000 + n, "other/x"))
    assert len(s.problems) == 100
    parsed = _counting_parses(monkeypatch)
    s.set_app(_simple("/t/web", 10001, version="1"))
    assert [a for a in parsed if a != "/t/web"] == []  # at most its own labels are read


def test_apps_entering_a_busy_folder_judge_its_claimants_not_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Apps of /a naming the group "a/shop" are refused while /a/shop holds apps; only
    # the first app to enter the folder, or the last to leave, can change that.
    s = ClusterState(Settings())
    s.set_app(_simple("/a/shop/web", 10001))
    for n in range(50):
        s.set_app(_simple(f"/a/r{n}", 20000 + n, "a/shop"))
    assert len(s.problems) == 50
    parsed = _counting_parses(monkeypatch)
    s.set_app(_simple("/a/shop/api", 10002, version="1"))
    s.remove_app("/a/shop/api")
    assert parsed == ["/a/shop/api"]
    s.remove_app("/a/shop/web")  # the last: the group may form
    assert len(parsed) == 51 and not s.problems and set(s.desired) == {"a_shop_20000"}


def test_ip_per_task_members_share_the_groups_assigned_port() -> None:
    # marathon-lb assigns IP-per-task service ports after the merge, to the group; here
    # each member got a port of its own id's, so the pair's port (the old app's) moved
    # to the new app's when the old one was deleted: a reload, and clients cut off.
    from servicerouter.model import NetworkMode
    from servicerouter.portassign import assign_all, assign_one

    def member(app_id: str, started: str) -> App:
        return App(app_id, "v", {"HAPROXY_DEPLOYMENT_GROUP": "shop/web",
                                 "HAPROXY_DEPLOYMENT_STARTED_AT": started},
                   network=NetworkMode.CONTAINER, services=(Service(app_id, 0, 0),),
                   tasks=(task(app_id, 1),))

    settings = Settings()
    old, new = assign_all([member(BLUE, "2024-05-01T10:00:00"),
                           member(GREEN, "2024-05-01T11:00:00")], settings)[0]
    assert old.services[0].port == new.services[0].port != 0
    s = ClusterState(settings)
    s.replace_all([old, new])
    (before,) = s.desired.values()
    s.remove_app(BLUE)
    alone, _, _ = assign_one(member(GREEN, "2024-05-01T11:00:00"), [], settings,
                             s.held_ports())
    s.set_app(alone)
    (after,) = s.desired.values()
    assert after.service == before.service  # the same name and port: no reload


def test_an_app_joining_or_leaving_a_group_keeps_its_port_from_a_waiting_app() -> None:
    # The app let its port go before its group claimed it (and the group before the app
    # took it back): an older app of another tenant, refused that port, took it.
    s = ClusterState(Settings())
    plain = App(BLUE, "2", {}, services=(Service(BLUE, 0, PORT),), tasks=(task(BLUE, 1),))
    s.set_app(plain)
    s.set_app(App("/x/y", "1", {}, services=(Service("/x/y", 0, PORT),)))
    assert s.held_ports() == {PORT: BLUE} and "/x/y" in s.problems
    s.set_app(replace(plain, labels={"HAPROXY_DEPLOYMENT_GROUP": "shop/web"}))
    assert s.held_ports() == {PORT: "/shop/web"} and set(s.desired) == {NAME}
    s.set_app(plain)  # the label dropped: the group empties, the app takes its port back
    assert s.held_ports() == {PORT: BLUE} and set(s.desired) == {f"shop_web-blue_{PORT}"}
    assert set(s.problems) == {"/x/y"}


@pytest.mark.parametrize("policy", ["group", "exclusive"])
def test_an_app_joining_or_leaving_a_group_keeps_its_host_from_a_waiting_app(
        policy: str) -> None:
    from servicerouter.model import Mode, Options

    opts = Options(vhosts=("h.example.com",), mode=Mode.HTTP)
    s = ClusterState(Settings(http_port=0, https_port=0, vhost_policy=policy))
    plain = App(BLUE, "2", {}, services=(Service(BLUE, 0, PORT, opts),))
    s.set_app(plain)
    s.set_app(App("/x/y", "1", {}, services=(Service("/x/y", 0, 10090, opts),)))
    assert set(s.problems) == {"/x/y"}
    s.set_app(replace(plain, labels={"HAPROXY_DEPLOYMENT_GROUP": "shop/web"}))
    assert set(s.desired) == {NAME} and set(s.problems) == {"/x/y"}
    s.set_app(plain)
    assert set(s.desired) == {f"shop_web-blue_{PORT}"} and set(s.problems) == {"/x/y"}


def test_a_members_own_problems_show_under_it_until_its_definition_is_routed() -> None:
    # The new app's bad label is reported while the old definition is routed, so the
    # deploy hears of it before it takes over; then it shows under the group's id.
    s = ClusterState(Settings())
    s.set_app(blue(1))
    bad = Problem(GREEN, 0, "label_invalid", "HAPROXY_0_VHOST", "x y", "is not a host name")
    s.set_app(replace(green(1), problems=(bad,)))
    assert s.problems[GREEN] == (bad,) and "/shop/web" not in s.problems
    s.remove_app(BLUE)
    assert GREEN not in s.problems
    assert [p.app_id for p in s.problems["/shop/web"]] == ["/shop/web"]


# -- at the root: who had the group's id first keeps it --------------------------------

def _root_web(app_id: str, version: str, n: int, **more: str) -> App:
    """An app at the root routing shop.test on PORT; /web-blue and /web-green are
    zdd.py's pair of group "web" (routed as /web), /web a plain app of another tenant."""
    from servicerouter.model import Mode, Options

    lab = {"HAPROXY_0_PORT": str(PORT), **more}
    if app_id != "/web":
        lab |= {"HAPROXY_DEPLOYMENT_GROUP": "web", "HAPROXY_DEPLOYMENT_TARGET_INSTANCES": "1",
                "HAPROXY_DEPLOYMENT_STARTED_AT": "2024-05-01T10:00:00" if "blue" in app_id
                else "2024-05-01T11:00:00"}
    opts = Options(vhosts=("shop.test",), mode=Mode.HTTP)
    return App(app_id, version, lab, services=(Service(app_id, 0, PORT, opts),),
               tasks=(task(app_id, n),))


WEB = f"web_{PORT}"  # group web's service and the plain app /web's: one name


def _web_tasks(s: ClusterState) -> set[str]:
    return {e.task_id for e in s.desired[WEB].endpoints} if WEB in s.desired else set()


def _hosts(s: ClusterState) -> dict[str, str]:
    return {h: k for h, (k, _) in s.owners().hosts.items()}


def test_at_the_root_a_later_app_with_the_groups_id_is_the_one_left_out() -> None:
    # Group web routed with shop.test and its port; another tenant creates /web: the
    # group was left out (an outage caused by creating an app), and /web, the same
    # owner key, took shop.test and the port. First come: /web is the one refused.
    s = ClusterState(Settings())
    s.set_app(_root_web("/web-blue", "2024-05-01T10:00:00.000Z", 1))
    s.set_app(_root_web("/web-green", "2024-05-01T11:00:00.000Z", 2))
    pair = _web_tasks(s)
    assert pair == {task("/web-blue", 1).id, task("/web-green", 2).id}
    s.set_app(_root_web("/web", "2024-05-02T00:00:00.000Z", 9))
    assert _web_tasks(s) == pair and s.deployment("/web") is not None
    assert _hosts(s) == {"shop.test": "/web"} and s.held_ports() == {PORT: "/web"}
    (p,) = [p for p in s.problem_list() if p.reason == "deployment_group"]
    assert p.app_id == "/web" and p.index == -1
    assert "deployment group web (/web-blue, /web-green)" in p.message, p.message
    assert "/web-blue" not in s.problems and "/web-green" not in s.problems
    # A change of /web, or a full sync of the same apps, decides nothing again.
    s.set_app(_root_web("/web", "2024-05-03T00:00:00.000Z", 8))
    s.replace_all([_root_web(a.id, "2024-06-01T00:00:00.000Z", n)
                   for n, a in enumerate(list(s.apps.values()))])
    assert s.deployment("/web") is not None and len(_web_tasks(s)) == 2
    assert task("/web", 9).id not in _web_tasks(s) and task("/web", 8).id not in _web_tasks(s)
    # zdd.py's next deploy: blue deleted, green alone keeps the id.
    s.remove_app("/web-blue")
    assert s.deployment("/web") is not None and "/web" in s.problems
    # The group gone: the waiting app has the id now, and the names let go.
    s.remove_app("/web-green")
    assert s.deployment("/web") is None and not s.problems
    assert _web_tasks(s) == {task("/web", 0).id} or _web_tasks(s) == {task("/web", 1).id} \
        or _web_tasks(s) == {task("/web", 2).id}
    assert _hosts(s) == {"shop.test": "/web"} and s.held_ports() == {PORT: "/web"}


def test_at_the_root_an_app_with_the_groups_id_first_keeps_it() -> None:
    # The other way round, as before: /web was first, the pair is refused until it goes.
    s = ClusterState(Settings())
    s.set_app(_root_web("/web", "2024-05-02T00:00:00.000Z", 9))
    s.set_app(_root_web("/web-blue", "2024-05-01T10:00:00.000Z", 1))
    assert _web_tasks(s) == {task("/web", 9).id}
    assert "is the id of app /web" in str(s.problems["/web-blue"][0])
    s.replace_all([_root_web("/web-blue", "2024-06-01T10:00:00.000Z", 1),
                   _root_web("/web", "2024-06-02T00:00:00.000Z", 9)])
    assert _web_tasks(s) == {task("/web", 9).id} and "/web-blue" in s.problems
    s.remove_app("/web")
    assert _web_tasks(s) == {task("/web-blue", 1).id} and not s.problems


def test_at_a_restart_whoever_held_the_groups_id_keeps_it() -> None:
    # After a restart every app is new at once; the owners file says who held /web,
    # whatever the definitions' age (/web's is older than the pair's here).
    from servicerouter.owners import Owners

    plain = _root_web("/web", "2024-01-01T00:00:00.000Z", 9)
    pair = [_root_web("/web-blue", "2024-05-01T10:00:00.000Z", 1),
            _root_web("/web-green", "2024-05-01T11:00:00.000Z", 2)]
    before = ClusterState(Settings())
    before.replace_all(pair)
    before.set_app(plain)
    assert "/web" in before.problems
    after = ClusterState(Settings())
    after.restore_owners(Owners.from_json(before.owners().to_json()))
    after.replace_all([plain, *pair])
    assert after.deployment("/web") is not None and _web_tasks(after) == _web_tasks(before)
    assert after.problems == before.problems
    # And the other way round: /web held it, though the pair's definitions are older.
    newer = _root_web("/web", "2024-07-01T00:00:00.000Z", 9)
    before = ClusterState(Settings())
    before.set_app(newer)
    before.replace_all([newer, *pair])
    assert _web_tasks(before) == {task("/web", 9).id}
    after = ClusterState(Settings())
    after.restore_owners(Owners.from_json(before.owners().to_json()))
    after.replace_all([*pair, newer])
    assert _web_tasks(after) == {task("/web", 9).id} and after.problems == before.problems


def test_a_shadowed_apps_task_events_route_nothing() -> None:
    # The event fast path edits the endpoints of the services routed under the app's
    # id: the group's, whose id the waiting /web has.
    s = ClusterState(Settings())
    s.set_app(_root_web("/web-blue", "2024-05-01T10:00:00.000Z", 1))
    s.set_app(_root_web("/web", "2024-05-02T00:00:00.000Z", 9))
    assert s.update_task(task("/web", 7)) == set()
    assert s.set_health("/web", "web.instance-9", True) == set()
    assert s.remove_task("/web", task("/web", 9).id) == set()
    assert _web_tasks(s) == {task("/web-blue", 1).id}


def test_when_the_group_goes_the_apps_that_waited_longer_get_its_names_first() -> None:
    # The app waiting for the group's id shares its owner key: taking the id it took
    # shop.test too, past /x, refused shop.test since before /web came.
    from servicerouter.model import Mode, Options

    s = ClusterState(Settings())
    s.set_app(_root_web("/web-blue", "2024-05-01T10:00:00.000Z", 1))
    opts = Options(vhosts=("shop.test",), mode=Mode.HTTP)
    s.set_app(App("/x", "2024-05-01T12:00:00.000Z", {},
                  services=(Service("/x", 0, 10090, opts),), tasks=(task("/x", 3),)))
    assert [p.reason for p in s.problems["/x"]] == ["vhost_taken"]
    s.set_app(_root_web("/web", "2024-05-02T00:00:00.000Z", 9))
    s.remove_app("/web-blue")
    assert _hosts(s) == {"shop.test": "/x"} and "/x" not in s.problems
    assert s.held_ports() == {10090: "/x", PORT: "/web"}
    assert [p.reason for p in s.problems["/web"]] == ["vhost_taken"]
