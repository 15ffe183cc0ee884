"""IP-per-task service ports from a range: deterministic, order-free, bounded."""

from __future__ import annotations

import random

from servicerouter.layout import Settings
from servicerouter.model import App, NetworkMode, Service
from servicerouter.portassign import assign_all, assign_ports


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
    assert len(warnings) == 1 and all(m.id in ("/b", "/c") for m in moved)
