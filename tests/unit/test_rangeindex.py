"""RangeIndex (range mode): kept entry by entry, it answers as pool.py's passes over the
whole layout do, and plans made with it are the plans made without."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from servicerouter import pool
from servicerouter.layout import DesiredService, Layout, Settings, SlotTable, build_layout
from servicerouter.model import Endpoint, Mode, Options, Service
from servicerouter.naming import service_name
from servicerouter.planner import Plan, plan
from servicerouter.rangeindex import RangeIndex

MAPPED = Settings(socket_path="/run/a.sock", stats_port=0, http_port=8080, https_port=0,
                  service_port_range=(20000, 20099), map_dir="/etc/haproxy/maps",
                  pool_spares=3)
UNMAPPED = replace(MAPPED, http_port=0)  # range mode without a shared frontend: no host map
HOSTS = ("a.test", "A.test", *(f"h{i}.{d}" for i in range(12) for d in ("x.test", "y.test")))
WILDCARDS = ("*.x.test", "*.test")


def some_service(rng: random.Random, app: str) -> tuple[str, DesiredService]:
    port = 20000 + rng.randrange(40) if rng.random() < 0.9 else 30000 + rng.randrange(5)
    options = Options(mode=rng.choice([Mode.TCP, Mode.HTTP, Mode.HTTP]),
                      balance=rng.choice(["roundrobin", "roundrobin", "leastconn"]))
    if options.mode is Mode.HTTP and rng.random() < 0.7:
        vhosts = rng.sample(HOSTS, rng.randrange(1, 3))
        if rng.random() < 0.1:
            vhosts.append(rng.choice(WILDCARDS))
        options = replace(options, vhosts=tuple(vhosts),
                          paths=("/api",) if rng.random() < 0.2 else (),
                          backend_weight=rng.choice([0, 0, 5]))
    eps = tuple(Endpoint(f"{app}.t{i}", "127.0.0.1", 31000 + i)
                for i in range(rng.randrange(1, 4)))
    return service_name(app, port), DesiredService(Service(app, 0, port, options), eps)


def same_answers(index: RangeIndex, layout: Layout, settings: Settings) -> None:
    assert index.map_files() == pool.map_files(layout, settings)  # ports, hosts, spares
    named = {h.lower() for s in layout.values() for h in s.service.options.vhosts
             if not h.startswith("*.")}
    assert {h for hosts in index._under.values() for h in hosts} == named  # none kept
    for options in {s.service.options for s in layout.values()}:
        free = sorted((s for s in layout.values()
                       if pool.is_spare(s) and s.service.options == options),
                      key=lambda s: s.name, reverse=True)
        assert index.spares(options) == free


def fields(p: Plan) -> tuple[object, ...]:
    return (p.commands, p.slots, p.grown, p.reload, p.layout, p.why,
            {k: str(v) for k, v in p.errors.items()})


@pytest.mark.parametrize("settings", [MAPPED, UNMAPPED])
def test_plans_and_maps_with_the_index_are_those_of_the_whole_layout(settings: Settings
                                                                     ) -> None:
    """Random apps come, change shape, vhosts, paths, weights and ports, and go, through
    runtime plans (spares taken and returned) and now and then a reload: each plan made
    with the index equals the plan made from the layout, and after each step the index's
    port map, host map, spares file and free spares are pool's of the whole layout."""
    vhost_plans = 0
    for seed in range(4):
        rng = random.Random(seed)
        apps = [f"/t{i % 4}/app{i}" for i in range(30)]
        desired = dict(some_service(rng, app) for app in apps[:12])
        layout, table = pool.with_pool(*build_layout(desired, {}, settings), {}, settings)
        index = RangeIndex(settings, layout)
        same_answers(index, layout, settings)
        for step in range(80):
            dirty = set()
            for _ in range(rng.randrange(1, 4)):
                app = rng.choice(apps)
                for name in [n for n, d in desired.items() if d.service.app_id == app]:
                    del desired[name]
                    dirty.add(name)
                if rng.random() < 0.7:
                    name, d = some_service(rng, app)
                    if all(o.service.port != d.service.port for o in desired.values()):
                        desired[name] = d
                        dirty.add(name)
            if rng.random() < 0.1:  # a reload: the layout anew, the index with it
                layout, table = pool.with_pool(*build_layout(desired, table, settings),
                                               layout, settings)
                index.reset(layout)
                same_answers(index, layout, settings)
                continue
            whole = plan(layout, table, desired, dirty, settings)
            indexed = plan(layout, table, desired, dirty, settings, index)
            assert fields(indexed) == fields(whole), (seed, step)
            vhost_plans += any(" map " in c and "hosts.map" in c for c in whole.commands)
            assert index.hosts == pool.host_routes(layout, settings)[0]  # left as it was
            table = {**table, **whole.slots}
            layout = dict(layout)
            for name, shape in whole.layout.items():  # committed as the engine does
                if shape is None:
                    layout.pop(name, None)
                    table.pop(name, None)
                else:
                    layout[name] = shape
                index.put(name, shape)
            for name, size in whole.grown.items():
                layout[name] = replace(layout[name], slots=size)
                index.put(name, layout[name])
            same_answers(index, layout, settings)
    if settings is MAPPED:
        assert vhost_plans > 20  # host map changes were compared too


def test_a_layout_entry_set_again_keeps_its_place_in_the_port_map() -> None:
    """Two entries routing one port (not expected): the later in the layout wins, as in
    pool.ports_map, also after the earlier one is set again."""
    one = DesiredService(Service("/a", 0, 20001, Options()), ())
    two = DesiredService(Service("/b", 0, 20001, Options()), ())
    layout: Layout = {}
    table: SlotTable = {}
    layout, table = build_layout({"a": one, "b": two}, table, MAPPED)
    index = RangeIndex(MAPPED, layout)
    assert index.ports_map() == pool.ports_map(layout, MAPPED) == {"20001": "b"}
    layout["a"] = replace(layout["a"], slots=layout["a"].slots + 1)
    index.put("a", layout["a"])
    assert index.ports_map() == pool.ports_map(layout, MAPPED)
