"""ClusterState and the event fast path: which backends an event dirties."""

from __future__ import annotations

from servicerouter.layout import Settings
from servicerouter.marathon.eventdata import deployment_app_ids
from servicerouter.marathon.events import MarathonEvent
from servicerouter.model import App, Health, Service, Task
from servicerouter.state import ClusterState


def app(tasks: tuple[Task, ...] = (), health: bool = False, app_id: str = "/web",
        port: int = 10000) -> App:
    return App(id=app_id, services=(Service(app_id, 0, port), Service(app_id, 1, port + 1)),
               tasks=tasks, has_health_checks=health)


def task(n: int, state: str = "TASK_RUNNING", health: Health = Health.NONE) -> Task:
    return Task(f"web.instance-{n}._app.1", "/web", "127.0.0.1", (31000 + n, 32000 + n),
                state, health)


def test_set_app_dirties_its_services() -> None:
    s = ClusterState(Settings())
    assert s.set_app(app((task(1),))) == {"web_10000", "web_10001"}
    assert s.set_app(app((task(1),))) == set()  # no change, nothing dirty
    assert [e.port for e in s.desired["web_10001"].endpoints] == [32001]


def test_task_update_and_removal() -> None:
    s = ClusterState(Settings())
    s.set_app(app())
    assert s.update_task(task(2)) == {"web_10000", "web_10001"}
    assert [e.task_id for e in s.desired["web_10000"].endpoints] == [task(2).id]
    assert s.update_task(task(3, "TASK_STAGING")) == set()  # not routable: no change
    assert s.remove_task("/web", task(2).id) == {"web_10000", "web_10001"}
    assert s.desired["web_10000"].endpoints == ()


def test_unknown_app_events_change_nothing() -> None:
    s = ClusterState(Settings())
    assert s.update_task(task(1)) == set()
    assert s.remove_app("/nope") == set()


def test_health_event_applies_to_the_instance_tasks() -> None:
    s = ClusterState(Settings())
    s.set_app(app((task(1),), health=True))
    assert s.desired["web_10000"].endpoints == ()  # no health results yet
    assert s.set_health("/web", "web.instance-1", True) == {"web_10000", "web_10001"}
    assert len(s.desired["web_10000"].endpoints) == 1
    s.set_health("/web", "web.instance-1", False)
    assert s.desired["web_10000"].endpoints == ()


def test_replace_all_keeps_apps_that_failed_to_parse() -> None:
    s = ClusterState(Settings())
    s.set_app(app((task(1),)))
    s.set_app(app(app_id="/api", port=11000))
    dirty = s.replace_all([], keep=["/web"])
    assert "/web" in s.apps and "/api" not in s.apps
    assert dirty == {"api_11000", "api_11001"}


def test_group_filter_selects_services() -> None:
    s = ClusterState(Settings(groups=("external",)))
    assert s.set_app(app((task(1),))) == set()  # no HAPROXY_GROUP: not selected


def test_deployment_apps_reads_the_plan() -> None:
    data = {"plan": {"steps": [{"actions": [{"action": "ScaleApplication", "app": "/a"}]},
                               {"actions": [{"app": "/b"}, {"pod": "/p"}]}]}}
    assert deployment_app_ids(MarathonEvent("deployment_success", data, 0.0)) == {"/a", "/b"}
    assert deployment_app_ids(MarathonEvent("deployment_success", {"plan": None}, 0.0)) == set()


def one_port_app(app_id: str, port: int) -> App:
    return App(id=app_id, services=(Service(app_id, 0, port),))


def test_a_port_is_bound_by_one_app_only_and_freed_ports_pass_on() -> None:
    s = ClusterState(Settings())
    assert s.set_app(one_port_app("/first", 10000)) == {"first_10000"}
    assert s.set_app(one_port_app("/second", 10000)) == set()  # refused: port taken
    assert set(s.desired) == {"first_10000"}
    (problem,) = s.problems["/second"]
    assert (problem.reason, problem.value) == ("port_taken", "10000")
    assert "already bound by app /first" in problem.message
    # The owner keeps its port across updates and full syncs.
    s.replace_all([one_port_app("/second", 10000), one_port_app("/first", 10000)])
    assert set(s.desired) == {"first_10000"}
    # Once the owner lets go, the refused app gets the port.
    assert s.remove_app("/first") == {"first_10000", "second_10000"}
    assert set(s.desired) == {"second_10000"}
    assert s.problems == {}


def test_ports_servicerouter_binds_itself_are_refused() -> None:
    s = ClusterState(Settings(stats_port=9090, http_port=80, https_port=443))
    for port in (9090, 80, 443):
        assert s.set_app(one_port_app(f"/p{port}", port)) == set()
    assert s.desired == {}


def _full_refresh(s: ClusterState) -> dict[str, object]:
    """What a fresh state computes for the same apps through the whole admission."""
    fresh = ClusterState(s.settings)
    for a in s.apps.values():
        fresh.set_app(a)
    return {"desired": fresh.desired, "problems": fresh.problems}


def test_task_events_give_the_state_the_whole_admission_would() -> None:
    # The task-event path recomputes endpoints only; where tasks decide admission (a
    # task port outside 1-65535, the server cap) it must still leave the service out,
    # cap it, and let it back in, exactly as a full refresh would.
    s = ClusterState(Settings(max_servers_per_backend=2))
    s.set_app(app())
    steps = [
        lambda: s.update_task(task(1)),
        lambda: s.update_task(task(2, health=Health.HEALTHY)),
        lambda: s.update_task(task(3)),  # a third server: capped at 2
        lambda: s.remove_task("/web", task(3).id),  # back under the cap
        lambda: s.update_task(Task("web.instance-9._app.1", "/web", "127.0.0.1",
                                   (70000, 32009), "TASK_RUNNING")),  # port 70000
        lambda: s.update_task(task(4, "TASK_KILLING")),
        lambda: s.remove_task("/web", "web.instance-9._app.1"),  # the bad port leaves
        lambda: s.set_health("/web", "web.instance-2", False),
        lambda: s.update_task(task(5, "TASK_STAGING")),  # not routed: nothing to do
        lambda: s.update_task(task(5, "TASK_STARTING")),
        lambda: s.update_task(task(5)),  # now routed
        lambda: s.update_task(task(5, "TASK_KILLING")),
        lambda: s.remove_task("/web", task(5).id),
        lambda: s.remove_task("/web", task(1).id),
    ]
    reasons = []
    for step in steps:
        step()
        assert {"desired": s.desired, "problems": s.problems} == _full_refresh(s)
        reasons.append(sorted({p.reason for p in s.problem_list()}))
    assert ["too_many_servers"] in reasons and any("task_port" in r for r in reasons)
    assert reasons[-1] == []


def test_with_tasks_keeps_every_other_field() -> None:
    from dataclasses import fields, replace

    from servicerouter.model import NetworkMode, Problem

    full = App(id="/x", version="v1", labels={"A": "1"}, network=NetworkMode.CONTAINER,
               container_ports=(80,), has_health_checks=True,
               services=(Service("/x", 0, 10000),), tasks=(task(1),),
               problems=(Problem("/x", 0, "port", "ports[0]", "0", "no"),))
    assert all(getattr(full, f.name) != getattr(App(id="/y"), f.name) for f in fields(App))
    assert full.with_tasks((task(2),)) == replace(full, tasks=(task(2),))


def test_task_events_edit_endpoints_exactly_as_rebuilding_them_would() -> None:
    # The event path edits one task's endpoint into each service's tuple (same order as
    # model.endpoints: task order). Seeded random churn, every kind of step, against a
    # fresh state computing everything from the apps: same desired state after each.
    import random

    from servicerouter.model import Options

    rng = random.Random(11)
    states = ["TASK_RUNNING", "TASK_RUNNING", "TASK_KILLING", "TASK_STAGING",
              "TASK_STARTING"]
    for health_checked in (False, True):
        for setting in (Settings(), Settings(health_check=False),
                        Settings(max_servers_per_backend=3)):
            s = ClusterState(setting)
            check = Options(health_check=True, health_check_port_index=1)
            s.set_app(App(id="/web", has_health_checks=health_checked, services=(
                Service("/web", 0, 10000), Service("/web", 1, 10001, options=check))))
            for _ in range(300):
                n = rng.randrange(8)
                tid = f"web.instance-{n}._app.1"
                roll = rng.random()
                if roll < 0.25:
                    s.remove_task("/web", tid)
                elif roll < 0.35:
                    s.set_health("/web", f"web.instance-{n}", rng.random() < 0.7)
                else:
                    health = rng.choice(list(Health))
                    ports = (31000 + rng.randrange(4), 32000 + n)
                    ip = None if rng.random() < 0.05 else "127.0.0.1"
                    s.update_task(Task(tid, "/web", ip, ports if rng.random() > 0.05
                                       else ports[:1], rng.choice(states), health))
                assert {"desired": s.desired, "problems": s.problems} == _full_refresh(s)


def test_edit_endpoints_leaves_what_it_cannot_place_to_the_full_rule() -> None:
    from servicerouter.model import Endpoint, edit_endpoints

    a, b, c = (Endpoint(t, "127.0.0.1", 31000 + i) for i, t in enumerate("abc"))
    b2 = Endpoint("b", "127.0.0.1", 32000)
    assert edit_endpoints((a, b, c), "b", b2, False) == (a, b2, c)
    assert edit_endpoints((a, b, c), "b", None, False) == (a, c)
    assert edit_endpoints((a, b), "c", c, True) == (a, b, c)
    assert edit_endpoints((a, b), "c", None, True) == (a, b)
    old = (a, b)
    assert edit_endpoints(old, "b", b, False) is old  # unchanged: the same tuple
    assert edit_endpoints((a, c), "b", b, False) is None  # routed anew mid-list
    assert edit_endpoints((a, b, b), "b", b2, False) is None  # one task id twice
