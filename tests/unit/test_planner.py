"""The runtime-or-reload decision, slot bookkeeping and reconciliation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from servicerouter.haproxy.runtime_parse import ServerState
from servicerouter.layout import BackendShape, DesiredService, Settings, build_layout
from servicerouter.model import Endpoint, EndpointState, Mode, Options, Service
from servicerouter.planner import ReloadReason, health_up, plan, plan_backend, reconcile

B = "web_10000"
SERVICE = Service("/web", 0, 10000)


def ep(n: int, state: EndpointState = EndpointState.READY) -> Endpoint:
    return Endpoint(f"web.t{n}", "127.0.0.1", 31000 + n, state)


def shape(slots: int = 4, service: Service = SERVICE) -> BackendShape:
    return BackendShape(B, service, slots)


def desired(*eps: Endpoint, service: Service = SERVICE) -> dict[str, DesiredService]:
    return {B: DesiredService(service, tuple(eps))}


def test_new_endpoint_fills_the_first_free_slot_and_is_made_ready() -> None:
    p = plan({B: shape()}, {B: [ep(1), None, None, None]}, desired(ep(1), ep(2)), [B])
    assert p.commands == [
        f"set server {B}/s2 addr 127.0.0.1 port 31002",
        f"set server {B}/s2 state ready",
    ]
    assert p.slots[B] == [ep(1), ep(2), None, None]
    assert not p.reload


def test_removed_endpoint_goes_to_maint_and_its_slot_is_reused() -> None:
    p = plan({B: shape()}, {B: [ep(1), ep(2), None, None]}, desired(ep(2), ep(3)), [B])
    assert p.commands == [
        f"set server {B}/s1 state maint",
        f"set server {B}/s1 addr 127.0.0.1 port 31003",
        f"set server {B}/s1 state ready",
    ]
    assert p.slots[B] == [ep(3), ep(2), None, None]


def test_every_task_replaced_never_leaves_the_backend_with_no_server() -> None:
    """All tasks gone at once (a new worker that missed them): each slot goes to maint
    only as its new task takes it, so one is down at a time, never all."""
    p = plan({B: shape()}, {B: [ep(1), ep(2), None, None]}, desired(ep(3), ep(4), ep(5)),
             [B])
    ready = {"s1", "s2"}  # what HAProxy routes to, command by command
    for c in p.commands:
        server, state = c.split()[2].split("/")[1], c.split()[-1]
        if state == "maint":
            ready.discard(server)
        elif state == "ready":
            ready.add(server)
        assert ready, f"no server ready after {c!r}"
    assert p.slots[B] == [ep(3), ep(4), ep(5), None]


def test_a_removed_task_not_replaced_goes_to_maint_after_the_new_ones_are_ready() -> None:
    p = plan({B: shape()}, {B: [ep(1), ep(2), None, None]}, desired(ep(3)), [B])
    assert p.commands == [
        f"set server {B}/s1 state maint",
        f"set server {B}/s1 addr 127.0.0.1 port 31003",
        f"set server {B}/s1 state ready",
        f"set server {B}/s2 state maint",
    ]


def test_a_live_task_keeps_its_slot() -> None:
    p = plan({B: shape()}, {B: [None, None, ep(7), None]}, desired(ep(1), ep(7)), [B])
    assert p.slots[B][2] == ep(7)
    assert p.slots[B][0] == ep(1)


def test_killing_task_drains_in_place() -> None:
    p = plan({B: shape()}, {B: [ep(1), None, None, None]},
             desired(ep(1, EndpointState.DRAIN)), [B])
    assert p.commands == [f"set server {B}/s1 state drain"]
    assert p.slots[B][0] == ep(1, EndpointState.DRAIN)


def test_a_task_already_draining_never_gets_a_new_slot() -> None:
    p = plan({B: shape()}, {B: [None] * 4}, desired(ep(1, EndpointState.DRAIN)), [B])
    assert not p


def test_nothing_changed_means_an_empty_plan() -> None:
    p = plan({B: shape()}, {B: [ep(1), None, None, None]}, desired(ep(1)), [B])
    assert not p and p.commands == [] and p.reload == {}


@pytest.mark.parametrize(
    ("layout", "want", "reason"),
    [
        ({}, desired(ep(1)), ReloadReason.NEW_APP),
        ({B: shape()}, {}, ReloadReason.REMOVED_APP),
        ({B: shape()}, desired(ep(1), service=replace(SERVICE, port=10001)),
         ReloadReason.OPTIONS_CHANGED),
        ({B: shape()}, desired(ep(1), service=replace(
            SERVICE, options=Options(mode=Mode.HTTP))), ReloadReason.OPTIONS_CHANGED),
    ],
)
def test_shape_changes_need_a_reload(layout, want, reason) -> None:
    p = plan(layout, {}, want, [B])
    assert p.reload == {B: reason}
    assert p.commands == []


def test_out_of_slots_adds_servers_at_runtime_when_the_algorithm_allows() -> None:
    p = plan({B: shape(2)}, {B: [ep(1), ep(2)]}, desired(ep(1), ep(2), ep(3)), [B])
    assert p.commands == [
        f"add server {B}/s3 127.0.0.1:31003",
        f"set server {B}/s3 state ready",
    ]
    assert p.grown == {B: 3}
    assert not p.reload


def test_added_server_carries_the_backend_keywords_and_health_checks() -> None:
    svc = replace(SERVICE, options=Options(health_check=True, mode=Mode.HTTP))
    p = plan({B: shape(1, svc)}, {B: [ep(1)]}, desired(ep(1), ep(2), service=svc), [B])
    assert p.commands[0] == f"add server {B}/s2 127.0.0.1:31002 check inter 2000"
    assert p.commands[1] == f"enable health {B}/s2"


CHECKED = replace(SERVICE, options=Options(health_check=True, mode=Mode.HTTP))


def test_a_checked_server_enters_rotation_at_full_health() -> None:
    # HAProxy starts a server leaving maint at health "rise": one failed first check
    # would take a task Marathon just called healthy DOWN.
    p = plan({B: shape(2, CHECKED)}, {B: [ep(1, EndpointState.DRAIN), None]},
             desired(ep(1, EndpointState.DRAIN), ep(2), service=CHECKED), [B])
    assert p.commands == [
        f"set server {B}/s2 addr 127.0.0.1 port 31002",
        f"set server {B}/s2 state ready",
        f"set server {B}/s2 health up",
    ]


def test_an_added_checked_server_enters_rotation_at_full_health() -> None:
    p = plan({B: shape(1, CHECKED)}, {B: [ep(1)]}, desired(ep(1), ep(2), service=CHECKED),
             [B])
    assert p.commands[1:] == [f"enable health {B}/s2", f"set server {B}/s2 state ready",
                              f"set server {B}/s2 health up"]


def test_without_marathon_health_gating_haproxys_check_starts_as_it_would() -> None:
    # --no-health-check routes tasks Marathon has not called healthy: HAProxy's check
    # is then the only gate, and a draining task is never pushed up either.
    p = plan({B: shape(2, CHECKED)}, {B: [None, None]}, desired(ep(1), service=CHECKED),
             [B], Settings(health_check=False))
    assert not any("health" in c for c in p.commands)
    p = plan({B: shape(2, CHECKED)}, {B: [ep(1), None]},
             desired(ep(1, EndpointState.DRAIN), service=CHECKED), [B])
    assert p.commands == [f"set server {B}/s1 state drain"]


def test_an_unchecked_server_gets_no_health_command() -> None:
    p = plan({B: shape(2)}, {B: [None, None]}, desired(ep(1)), [B])
    assert not any("health" in c for c in p.commands)


def test_health_up_after_a_reload_names_every_routed_checked_server() -> None:
    other = "api_10001"
    layout = {B: shape(3, CHECKED), other: BackendShape(other, Service("/api", 0, 10001), 2)}
    table = {B: [ep(1), None, ep(3, EndpointState.DRAIN)], other: [ep(4), None]}
    assert health_up(layout, table, vouched=True) == [f"set server {B}/s1 health up"]
    assert health_up(layout, table, vouched=False) == []


def test_sticky_backends_reload_to_grow() -> None:
    # HAProxy 2.6: "'cookie' option is not accepted for dynamic server".
    svc = replace(SERVICE, options=Options(sticky=True, mode=Mode.HTTP))
    p = plan({B: shape(1, svc)}, {B: [ep(1)]}, desired(ep(1), ep(2), service=svc), [B])
    assert p.reload == {B: ReloadReason.CAPACITY}


@pytest.mark.parametrize("balance", ["static-rr", "source"])
def test_out_of_slots_reloads_for_static_algorithms(balance: str) -> None:
    svc = replace(SERVICE, options=Options(balance=balance))
    p = plan({B: shape(1, svc)}, {B: [ep(1)]}, desired(ep(1), ep(2), service=svc), [B])
    assert p.reload == {B: ReloadReason.CAPACITY}


def test_only_dirty_backends_are_planned() -> None:
    other = "api_10001"
    layout = {B: shape(), other: BackendShape(other, Service("/api", 0, 10001), 4)}
    want = {**desired(ep(1)), other: DesiredService(Service("/api", 0, 10001), (ep(9),))}
    p = plan(layout, {B: [None] * 4, other: [None] * 4}, want, [B])
    assert set(p.slots) == {B}


def test_one_backend_reloading_does_not_hold_back_another() -> None:
    new = "new_10002"
    want = {**desired(ep(1)), new: DesiredService(Service("/new", 0, 10002), ())}
    p = plan({B: shape()}, {B: [None] * 4}, want, [B, new])
    assert p.reload == {new: ReloadReason.NEW_APP}
    assert p.slots[B][0] == ep(1)


def test_a_backend_whose_planning_raises_is_left_to_a_reload_and_the_others_go_on() -> None:
    """An endpoint the runtime API cannot take (a check port admission once let through:
    check-port raises) fails its own backend's plan, not the batch's: the other
    backends' commands are planned, and that one is reloaded from the desired state."""
    bad, bad_service = "bad_10001", Service("/bad", 0, 10001)
    layout = {B: shape(), bad: BackendShape(bad, bad_service, 4)}
    want = {**desired(ep(1)), bad: DesiredService(bad_service, (
        Endpoint("bad.t1", "127.0.0.1", 32001, check_port=70000),))}
    p = plan(layout, {B: [None] * 4, bad: [None] * 4}, want, [bad, B])
    assert p.commands == [f"set server {B}/s1 addr 127.0.0.1 port 31001",
                          f"set server {B}/s1 state ready"]
    assert p.slots == {B: [ep(1), None, None, None]}
    assert p.reload == {bad: ReloadReason.PLAN_ERROR}
    assert str(p.errors[bad]) == "invalid port 70000: must be an int in 1-65535"


def test_build_layout_sizes_with_headroom_and_keeps_slots() -> None:
    s = Settings(slots_min_free=4, slots_increment=8)
    want = desired(*(ep(n) for n in range(1, 6)))
    layout, table = build_layout(want, {B: [None] * 9 + [ep(3)]}, s)
    assert layout[B].slots == 16
    assert table[B][9] == ep(3)
    assert sum(e is not None for e in table[B]) == 5


def state(b: str, s: str, addr: str, port: int, admin: int) -> ServerState:
    return ServerState(1, b, 1, s, addr, 2, admin, 1, 1, 0, 0, 0, 0, port)


def test_reconcile_repairs_lost_runtime_changes() -> None:
    layout = {B: shape(2)}
    table = {B: [ep(1), None]}
    actual = [state(B, "s1", "127.0.0.1", 1, 0x05),  # still the config's disabled free slot
              state(B, "s2", "127.0.0.1", 31005, 0x00)]  # a stale endpoint still ready
    commands, broken = reconcile(layout, table, actual)
    assert commands == [
        f"set server {B}/s1 addr 127.0.0.1 port 31001",
        f"set server {B}/s1 state ready",
        f"set server {B}/s2 state maint",
    ]
    assert not broken


def test_reconcile_accepts_a_matching_haproxy_and_sees_drain() -> None:
    table = {B: [ep(1), ep(2, EndpointState.DRAIN)]}
    actual = [state(B, "s1", "127.0.0.1", 31001, 0x04),  # disabled in config, set ready
              state(B, "s2", "127.0.0.1", 31002, 0x08)]
    assert reconcile({B: shape(2)}, table, actual) == ([], {})


def test_reconcile_puts_a_checked_server_back_at_full_health_but_trusts_its_checks() -> None:
    table = {B: [ep(1), ep(2)]}
    actual = [state(B, "s1", "127.0.0.1", 31001, 0x05),  # restarted worker: maint
              state(B, "s2", "127.0.0.1", 31002, 0x00)]  # in rotation (DOWN or not)
    assert reconcile({B: shape(2, CHECKED)}, table, actual)[0] == [
        f"set server {B}/s1 state ready", f"set server {B}/s1 health up"]
    assert reconcile({B: shape(2, CHECKED)}, table, actual, vouched=False)[0] == [
        f"set server {B}/s1 state ready"]



def test_reconcile_gives_a_moved_server_its_tasks_check_port() -> None:
    """A worker restarted from the file serves each slot as rendered: an address and
    check port of a task that may have been replaced since. The repair that sets the
    current task's address also sets its check port, or HAProxy checks it on the old
    task's port (and takes a healthy task DOWN)."""
    checked = replace(ep(1), check_port=32001)
    table = {B: [checked, None]}
    actual = [state(B, "s1", "127.0.0.1", 31009, 0x00),  # the file's task, port 32009
              state(B, "s2", "127.0.0.1", 1, 0x05)]
    assert reconcile({B: shape(2, CHECKED)}, table, actual)[0] == [
        f"set server {B}/s1 addr 127.0.0.1 port 31001",
        f"set server {B}/s1 check-port 32001",
        f"set server {B}/s1 state ready", f"set server {B}/s1 health up"]


def test_reconcile_asks_for_a_reload_when_haproxy_lacks_a_backend() -> None:
    _, broken = reconcile({B: shape(2)}, {B: [ep(1), None]}, [])
    assert broken == {B: ReloadReason.RESYNC}


def test_plan_backend_cost_is_independent_of_other_backends() -> None:
    # plan_backend sees one backend only: the planner's unit of work.
    result = plan_backend(shape(), [ep(1), None, None, None], [ep(1), ep(2)])
    assert result is not None
    commands, slots = result
    assert len(commands) == 2 and slots[1] == ep(2)
