"""Command builders refuse anything that could inject into the socket; batching plan."""

from __future__ import annotations

import pytest

from servicerouter.haproxy import runtime_commands as c
from servicerouter.haproxy.runtime import RuntimeClient, parse_address


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (c.set_server_addr("be_1", "s1", "10.0.0.1", 31000),
         "set server be_1/s1 addr 10.0.0.1 port 31000"),
        (c.set_server_addr("b", "s", "::1"), "set server b/s addr ::1"),
        (c.set_server_state("b.x:y-z", "s", "drain"), "set server b.x:y-z/s state drain"),
        (c.set_weight("b", "s", 0), "set server b/s weight 0"),
        (c.set_server_health("b", "s", "up"), "set server b/s health up"),
        (c.add_server("b", "s9", "10.0.0.1", 80, "check", "weight", "5"),
         "add server b/s9 10.0.0.1:80 check weight 5"),
        (c.add_server("b", "s9", "::1", 80), "add server b/s9 [::1]:80"),
        (c.del_server("b", "s"), "del server b/s"),
        (c.enable_health("b", "s"), "enable health b/s"),
        (c.disable_health("b", "s"), "disable health b/s"),
        (c.show_servers_state(), "show servers state"),
        (c.show_servers_state("b"), "show servers state b"),
    ],
)  # fmt: skip
def test_builders(built: str, expected: str) -> None:
    assert built == expected


@pytest.mark.parametrize(
    "build",
    [
        lambda: c.set_server_addr("b;show info", "s", "1.2.3.4", 80),
        lambda: c.set_server_addr("b", "s\nshow info", "1.2.3.4", 80),
        lambda: c.set_server_addr("b", "s s", "1.2.3.4", 80),
        lambda: c.set_server_addr("", "s", "1.2.3.4", 80),
        lambda: c.set_server_addr("b", "s", "1.2.3.4;x", 80),
        lambda: c.set_server_addr("b", "s", "example.com", 80),
        lambda: c.set_server_addr("b", "s", "1.2.3.4", 0),
        lambda: c.set_server_addr("b", "s", "1.2.3.4", 70000),  # 2.6 would wrap it to 4464
        lambda: c.set_server_addr("b", "s", "1.2.3.4", True),
        lambda: c.set_server_addr("b", "s", "1.2.3.4", "80"),
        lambda: c.set_server_state("b", "s", "up"),
        lambda: c.set_server_health("b", "s", "ready"),
        lambda: c.set_server_health("b", "s", "up;show info"),
        lambda: c.set_weight("b", "s", 257),
        lambda: c.set_weight("b", "s", -1),
        lambda: c.add_server("b", "s", "1.2.3.4", 80, "check;show info"),
        lambda: c.add_server("b", "s", "1.2.3.4", 80, "weight 5"),
        lambda: c.show_servers_state("a b"),
    ],
)
def test_builders_reject(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("/run/haproxy/admin.sock", "/run/haproxy/admin.sock"),
        ("unix@/run/a.sock", "/run/a.sock"),
        ("relative.sock", "relative.sock"),
        ("127.0.0.1:9999", ("127.0.0.1", 9999)),
        ("ipv4@127.0.0.1:9999", ("127.0.0.1", 9999)),
        ("ipv6@[::1]:9999", ("::1", 9999)),
        ("localhost:9999", ("localhost", 9999)),
    ],
)
def test_parse_address(address: str, target: object) -> None:
    assert parse_address(address) == target


def test_plan_packs_lines_under_bufsize_and_isolates_queries() -> None:
    client = RuntimeClient("/x.sock", bufsize=2048, margin=512)
    cmds = [c.set_weight("backend", f"s{i}", 1) for i in range(200)]
    cmds.insert(50, "show servers state")
    plan = client.plan(cmds)
    assert plan[1] == [[50]]
    assert [i for s in plan for ln in s for i in ln] == list(range(len(cmds)))
    for session in plan:
        for line in session:
            assert len(";".join(cmds[i] for i in line)) + 1 <= 2048 - 512


@pytest.mark.parametrize("bad", ["", "  ", "a;b", "a\nb", "a\rb", "x" * 20000])
def test_execute_rejects_malformed_before_sending(bad: str) -> None:
    with pytest.raises(ValueError):
        RuntimeClient("/nonexistent.sock").plan(["set server b/s weight 1", bad])
