"""Desired state, slot capacity and slot placement across rebuilds."""

from __future__ import annotations

import pytest

from servicerouter.layout import (
    Settings,
    build_layout,
    desired_services,
    desired_state,
    fill_slots,
    selected,
    slot_counts,
)
from servicerouter.model import (
    App,
    Endpoint,
    EndpointState,
    Health,
    Options,
    Service,
    Task,
)

D = EndpointState.DRAIN


def ep(n: int, state: EndpointState = EndpointState.READY) -> Endpoint:
    return Endpoint(f"t{n}", f"10.0.0.{n}", 31000 + n, state)


def task(n: int, state: str = "TASK_RUNNING", health: Health = Health.NONE) -> Task:
    return Task(f"t{n}", "/a", f"10.0.0.{n}", (31000 + n, 32000 + n), state, health)


def app(*tasks: Task, services: tuple[Service, ...] | None = None, hc: bool = False) -> App:
    services = services or (Service("/a", 0, 10001), Service("/a", 1, 10002))
    return App("/a", services=services, tasks=tasks, has_health_checks=hc)


@pytest.mark.parametrize(
    ("options", "port", "groups", "expected"),
    [
        (Options(), 10001, (), True),
        (Options(), 0, (), False),
        (Options(enabled=False), 10001, (), False),
        (Options(groups=("external",)), 10001, (), True),
        (Options(groups=("external",)), 10001, ("external",), True),
        (Options(groups=("internal", "external")), 10001, ("external",), True),
        (Options(groups=("internal",)), 10001, ("external",), False),
        (Options(), 10001, ("external",), False),
    ],
)
def test_selected(options: Options, port: int, groups: tuple, expected: bool) -> None:
    assert selected(Service("/a", 0, port, options), Settings(groups=groups)) is expected


def test_desired_services_names_and_endpoints_per_port() -> None:
    a = app(task(1), task(2, "TASK_KILLING"), task(3, "TASK_STAGING"))
    got = desired_services(a, Settings())
    assert sorted(got) == ["a_10001", "a_10002"]
    assert got["a_10001"].endpoints == (ep(1), Endpoint("t2", "10.0.0.2", 31002, D))
    assert [e.port for e in got["a_10002"].endpoints] == [32001, 32002]


@pytest.mark.parametrize(("health_check", "expected"), [(True, ["t1"]), (False, ["t1", "t2"])])
def test_desired_services_health_check_setting(health_check: bool, expected: list) -> None:
    a = app(task(1, health=Health.HEALTHY), task(2, health=Health.UNHEALTHY), hc=True)
    got = desired_services(a, Settings(health_check=health_check))
    assert [e.task_id for e in got["a_10001"].endpoints] == expected


def test_desired_state_over_apps_skips_unselected() -> None:
    a = app(task(1), services=(Service("/a", 0, 10001), Service("/a", 1, 0)))
    b = App("/b", services=(Service("/b", 0, 10003, Options(enabled=False)),))
    c = App("/c/d", services=(Service("/c/d", 0, 10004),))
    assert sorted(desired_state([a, b, c], Settings())) == ["a_10001", "c_d_10004"]


@pytest.mark.parametrize(
    ("want", "current", "size", "expected"),
    [
        # fresh: in order
        ((ep(1), ep(2)), None, 4, [ep(1), ep(2), None, None]),
        # a task keeps its slot even when it comes later in the list
        ((ep(1), ep(2)), [None, None, ep(1)], 4, [ep(2), None, ep(1), None]),
        # a gone task frees its slot, and a new task reuses the first free one
        ((ep(1), ep(3)), [ep(1), ep(2), None, None], 4, [ep(1), ep(3), None, None]),
        ((ep(2), ep(4)), [ep(1), ep(2), ep(3), None], 4, [ep(4), ep(2), None, None]),
        # a state change (ready → drain) stays in the same slot
        ((ep(1), ep(2, D)), [ep(1), ep(2)], 4, [ep(1), ep(2, D), None, None]),
        # shrinking: a kept task beyond the new size moves to a free slot
        ((ep(1),), [None, None, None, None, ep(1)], 2, [ep(1), None]),
        # a corrupt table holding one task twice: only the first copy is kept
        ((ep(1), ep(2)), [ep(1), ep(1)], 3, [ep(1), ep(2), None]),
        ((), [ep(1)], 2, [None, None]),
    ],
)
def test_fill_slots(want, current, size, expected) -> None:
    assert fill_slots(want, current, size) == expected


def test_fill_slots_keeps_tasks_across_many_rebuilds() -> None:
    slots = fill_slots(tuple(ep(n) for n in range(1, 6)), None, 8)
    where = {e.task_id: i for i, e in enumerate(slots) if e}
    alive = list(range(1, 6))
    for new in range(6, 30):
        alive = [*alive[1:], new]  # rolling restart: oldest leaves, one arrives
        slots = fill_slots(tuple(ep(n) for n in alive), slots, 8)
        for i, e in enumerate(slots):
            if e is None:
                continue
            assert where.setdefault(e.task_id, i) == i, "a task moved"
        assert sorted(e.task_id for e in slots if e) == sorted(f"t{n}" for n in alive)


def _desired(name: str, eps: tuple[Endpoint, ...]) -> dict:
    a = App("/a", services=(Service("/a", 0, 10001),))
    d = desired_services(a, Settings())["a_10001"]
    return {name: type(d)(d.service, eps)}


@pytest.mark.parametrize(("count", "size"), [(0, 4), (2, 4), (3, 8), (5, 8), (7, 12)])
def test_build_layout_capacity(count: int, size: int) -> None:
    """Defaults: at least 2 free, in blocks of 4 (issue #11: 5 tasks take 8 slots, not 16)."""
    eps = tuple(ep(n) for n in range(1, count + 1))
    layout, table = build_layout(_desired("a_10001", eps), {}, Settings())
    assert layout["a_10001"].slots == size
    assert len(table["a_10001"]) == size
    assert [e for e in table["a_10001"] if e] == list(eps)


def test_build_layout_keeps_slots_and_never_shrinks_under_a_kept_task() -> None:
    previous = {"a_10001": [None] * 20 + [ep(1)] + [None] * 3}
    layout, table = build_layout(_desired("a_10001", (ep(1), ep(2))), previous, Settings())
    assert layout["a_10001"].slots == 21
    assert table["a_10001"][20] == ep(1)
    assert table["a_10001"][0] == ep(2)


def test_build_layout_drops_backends_no_longer_desired() -> None:
    previous = {"old_1": [ep(9)], "a_10001": [ep(1)]}
    layout, table = build_layout(_desired("a_10001", (ep(1),)), previous, Settings())
    assert set(layout) == set(table) == {"a_10001"}


@pytest.mark.parametrize(
    ("options", "dynamic"),
    [
        (Options(), True),
        (Options(balance="leastconn"), True),
        (Options(balance="static-rr"), False),
        (Options(balance="source"), False),
        (Options(sticky=True), False),
    ],
)
def test_dynamic_backends(options: Options, dynamic: bool) -> None:
    a = App("/a", services=(Service("/a", 0, 10001, options),))
    layout, _ = build_layout(desired_services(a, Settings()), {}, Settings())
    assert layout["a_10001"].dynamic is dynamic


def test_slot_counts() -> None:
    table = {"x": [ep(1), None, ep(2, D)], "y": [None, None]}
    assert slot_counts(table) == (2, 3)
