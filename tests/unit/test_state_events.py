"""ClusterState and the event fast path: which backends an event dirties."""

from __future__ import annotations

from servicerouter.layout import Settings
from servicerouter.model import App, Health, Service, Task
from servicerouter.state import ClusterState
from servicerouter.sync import deployment_apps


def app(tasks: tuple[Task, ...] = (), health: bool = False, app_id: str = "/web") -> App:
    return App(id=app_id, services=(Service(app_id, 0, 10000), Service(app_id, 1, 10001)),
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
    s.set_app(app(app_id="/api"))
    dirty = s.replace_all([], keep=["/web"])
    assert "/web" in s.apps and "/api" not in s.apps
    assert dirty == {"api_10000", "api_10001"}


def test_group_filter_selects_services() -> None:
    s = ClusterState(Settings(groups=("external",)))
    assert s.set_app(app((task(1),))) == set()  # no HAPROXY_GROUP: not selected


def test_deployment_apps_reads_the_plan() -> None:
    data = {"plan": {"steps": [{"actions": [{"action": "ScaleApplication", "app": "/a"}]},
                               {"actions": [{"app": "/b"}, {"pod": "/p"}]}]}}
    assert deployment_apps(data) == {"/a", "/b"}
    assert deployment_apps({"plan": None}) == set()
