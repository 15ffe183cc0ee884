"""The cheap line-by-line reconcile scan finds exactly what the full reconcile repairs."""

from __future__ import annotations

import random

import pytest

from servicerouter.haproxy.runtime_parse import ParseError, ServerState
from servicerouter.layout import BackendShape, Layout, SlotTable
from servicerouter.model import Endpoint, EndpointState, Service
from servicerouter.planner import reconcile
from servicerouter.servercheck import StateScan, state_line, suspects


def ep(b: int, n: int, state: EndpointState = EndpointState.READY) -> Endpoint:
    return Endpoint(f"app{b}.t{n}", "10.0.0.1", 31000 + n, state)


def world(backends: int = 3, slots: int = 4) -> tuple[Layout, SlotTable]:
    layout = {f"app{b}_10000": BackendShape(f"app{b}_10000", Service(f"/app{b}", 0, 10000),
                                             slots) for b in range(backends)}
    table: SlotTable = {name: [ep(b, 1), ep(b, 2, EndpointState.DRAIN)] + [None] * (slots - 2)
                        for b, name in enumerate(layout)}
    return layout, table


def haproxy(layout: Layout, table: SlotTable) -> list[ServerState]:
    """What a HAProxy that agrees with the table reports."""
    out = []
    for b, (name, shape) in enumerate(layout.items(), start=1):
        slots = table[name]
        for i in range(shape.slots):
            e = slots[i] if i < len(slots) else None
            addr, port, admin = ("127.0.0.1", 1, 0x05) if e is None else (
                e.ip, e.port, 0x08 if e.state is EndpointState.DRAIN else 0x04)
            out.append(ServerState(b, name, i + 1, f"s{i + 1}", addr, 2, admin, 1, 1,
                                   0, 0, 0, 0, port))
    return out


def lines(states: list[ServerState]) -> list[str]:
    return ["1", "# be_id be_name srv_id srv_name srv_addr ...", *map(state_line, states)]


def test_an_agreeing_haproxy_leaves_nothing_to_check() -> None:
    layout, table = world()
    states = haproxy(layout, table)
    states.insert(0, ServerState(1, "stats", 1, "other", "1.2.3.4", 2, 0, 1, 1, 0, 0, 0, 0, 80))
    assert suspects(layout, table, lines(states)) == ({}, [])


def test_only_the_differing_backend_is_parsed_and_repaired_as_before() -> None:
    layout, table = world()
    states = haproxy(layout, table)
    states[5] = ServerState(2, "app1_10000", 2, "s2", "10.0.0.1", 2, 0, 1, 1, 0, 0, 0, 0,
                            31002)  # should be draining
    suspect, actual = suspects(layout, table, lines(states))
    assert list(suspect) == ["app1_10000"]
    assert {s.backend for s in actual} == {"app1_10000"} and len(actual) == 4
    assert reconcile(suspect, table, actual) == reconcile(layout, table, states)
    assert reconcile(suspect, table, actual)[0] == ["set server app1_10000/s2 state drain"]


def test_a_backend_haproxy_lacks_or_lacks_slots_of_is_a_suspect() -> None:
    layout, table = world()
    states = [s for s in haproxy(layout, table)
              if s.backend != "app0_10000" and (s.backend, s.server) != ("app2_10000", "s4")]
    suspect, actual = suspects(layout, table, lines(states))
    assert sorted(suspect) == ["app0_10000", "app2_10000"]
    assert reconcile(suspect, table, actual)[1] == reconcile(layout, table, states)[1]


def test_chunks_give_the_same_answer_as_one_feed() -> None:
    layout, table = world(backends=20)
    states = haproxy(layout, table)
    states[17] = ServerState(1, states[17].backend, 2, states[17].server, "10.9.9.9", 2, 0,
                             1, 1, 0, 0, 0, 0, 1)
    text = lines(states)
    scan = StateScan(layout, table)
    for k in range(0, len(text), 7):
        scan.feed(text[k:k + 7])
    assert scan.finish() == suspects(layout, table, text)
    assert scan.lines == len(states)


@pytest.mark.parametrize("seed", range(30))
def test_random_damage_is_repaired_exactly_like_the_full_reconcile(seed: int) -> None:
    rnd = random.Random(seed)
    layout, table = world(backends=8, slots=6)
    states = haproxy(layout, table)
    for _ in range(rnd.randint(0, 6)):
        k = rnd.randrange(len(states))
        s = states[k]
        states[k] = ServerState(s.backend_id, s.backend, s.server_id, s.server,
                                rnd.choice([s.addr, "10.0.0.2", "127.0.0.1"]), s.op_state,
                                rnd.choice([0, 0x01, 0x04, 0x05, 0x08, 0x09]), 1, 1, 0, 0, 0,
                                0, rnd.choice([s.port, 1, 31001, 31002]))
    if rnd.random() < 0.3:
        del states[rnd.randrange(len(states))]
    suspect, actual = suspects(layout, table, lines(states))
    assert reconcile(suspect, table, actual) == reconcile(layout, table, states)


def test_output_of_another_shape_is_an_error() -> None:
    layout, table = world()
    with pytest.raises(ParseError, match="format version"):
        suspects(layout, table, ["Permission denied"])
    with pytest.raises(ParseError, match="short"):
        suspects(layout, table, ["1", "1 app0_10000 1 s1 10.0.0.1 2"])


def test_server_names_and_admin_states_out_of_the_ordinary_are_judged_as_before() -> None:
    layout, table = world(backends=2)
    states = haproxy(layout, table)
    text = [state_line(s) for s in states]
    # "s01" names slot 1 too (read from the name, as before the name table); a name that
    # is no slot's makes its backend a suspect; an admin state that is not a number is
    # output of another shape.
    text[0] = text[0].replace(" s1 ", " s01 ", 1)
    assert suspects(layout, table, ["1", *text]) == ({}, [])
    text[5] = text[5].replace(" s2 ", " backup ", 1)
    assert list(suspects(layout, table, ["1", *text])[0]) == ["app1_10000"]
    fields = text[1].split(" ")
    fields[6] = "x"
    with pytest.raises(ParseError, match="bad 'show servers state' line"):
        suspects(layout, table, ["1", " ".join(fields)])


def test_an_app_held_in_a_spare_backend_is_matched_by_haproxys_backend_name() -> None:
    # Range mode: the service "app0_10000" lives in HAProxy's backend "_pool_1".
    layout, table = world(backends=1)
    layout = {"app0_10000": BackendShape("_pool_1", layout["app0_10000"].service, 4)}
    states = haproxy({"_pool_1": layout["app0_10000"]}, {"_pool_1": table["app0_10000"]})
    lines = ["1", *map(state_line, states)]
    assert suspects(layout, table, lines) == ({}, [])  # in agreement: nothing to repair
    states[0] = ServerState(1, "_pool_1", 1, "s1", "10.9.9.9", 2, 0x04, 1, 1, 0, 0, 0, 0,
                            31001)
    found, actual = suspects(layout, table, ["1", *map(state_line, states)])
    assert list(found) == ["app0_10000"]
    commands, broken = reconcile(found, table, actual)
    assert commands == ["set server _pool_1/s1 addr 10.0.0.1 port 31001",
                        "set server _pool_1/s1 state ready"] and not broken



def test_answers_per_backend_each_with_a_version_line_and_an_unknown_one() -> None:
    """``show servers state <backend>`` per backend (a slice of the periodic read): each
    answer has its version line; a backend HAProxy lacks is said so, and is suspect as
    when the whole dump lacks it."""
    layout, table = world()
    states = haproxy(layout, table)
    answers = ["Can't find backend.", ""]
    for name in sorted(layout)[1:]:
        answers += [*lines([s for s in states if s.backend == name]), ""]
    scan = StateScan(layout, table)
    scan.feed(answers)
    assert list(scan.finish()[0]) == ["app0_10000"]
    assert scan.lines == 8
