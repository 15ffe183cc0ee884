"""Pure Runtime API parsers, on transcripts captured from HAProxy 2.6.12."""

from __future__ import annotations

import pytest

from servicerouter.haproxy.runtime_parse import (
    ParseError,
    Status,
    classify,
    is_query,
    parse_servers_state,
    parse_show_info,
    parse_show_stat,
    split_prompt_replies,
)

HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
    "srv_agent_port"
)
STATE = "\n".join(
    [
        "1",
        HEADER,
        "3 web 1 s1 127.0.0.1 2 4 10 1 0 1 0 0 8 0 0 0 - 18081 - 0 0 - - 0",
        "3 web 2 s2 127.0.0.1 0 5 1 1 7 1 0 0 14 0 0 0 - 1 - 0 0 - - 0",
        "3 web 3 s3 127.0.0.1 2 12 1 1 0 6 3 4 6 0 0 0 - 18081 - 0 0 - - 0",
        "3 web 4 s4 127.0.0.1 2 0 1 1 0 6 3 4 6 0 0 0 - 18081 - 0 0 - - 0",
        "4 lc 1 a1 ::1 0 1 1 1 7 1 0 0 8 0 0 0 app.example - - 0 0 - - 0",
        "",
    ]
)


def test_parse_servers_state_fields() -> None:
    s1, *_, a1 = parse_servers_state(STATE)
    assert (s1.backend, s1.server, s1.addr, s1.port) == ("web", "s1", "127.0.0.1", 18081)
    assert (s1.op_state, s1.admin_state, s1.weight, s1.backend_id, s1.server_id) == (
        2, 4, 10, 3, 1,
    )  # fmt: skip
    assert (a1.addr, a1.port, a1.fqdn) == ("::1", 0, "app.example")


# (line index, in_maint, draining, ready, up, admin)
@pytest.mark.parametrize(
    ("index", "in_maint", "draining", "ready", "up", "admin"),
    [
        (0, False, False, True, True, "ready"),  # 0x04 only: a `disabled` slot set ready
        (1, True, False, False, False, "maint"),  # 0x05: `disabled` in the config
        (2, False, True, False, True, "drain"),  # 0x0c: disabled slot, then `state drain`
        (3, False, False, True, True, "ready"),
        (4, True, False, False, False, "maint"),  # 0x01: `add server` default
    ],
)
def test_server_state_properties(
    index: int, in_maint: bool, draining: bool, ready: bool, up: bool, admin: str
) -> None:
    s = parse_servers_state(STATE)[index]
    assert (s.in_maint, s.draining, s.ready, s.up, s.admin) == (
        in_maint, draining, ready, up, admin,
    )  # fmt: skip


@pytest.mark.parametrize(
    "text",
    ["2\n# x\n", "1\n3 web 1 s1 127.0.0.1 2 4\n", "1\n3 web x s1 1 2 4 1 1 0 1 0 0 8 0 0 0 - 1\n"],
)
def test_parse_servers_state_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_servers_state(text)


def test_parse_servers_state_empty() -> None:
    assert parse_servers_state("") == []
    assert parse_servers_state("1\n" + HEADER + "\n") == []


@pytest.mark.parametrize(
    ("data", "expected", "replies", "exact"),
    [
        # prompt ack, then each reply followed by "\n> " (real 2.6.12 transcript shapes)
        ("\n> \n> No such server.\n\n> ", 2, ["", "No such server."], True),
        # a message printed without its own newline still splits correctly
        ("\n> Empty weight string\n> \n> ", 2, ["Empty weight string", ""], True),
        # cut short: the complete prefix is usable, the rest is unknown
        ("\n> \n> No such ser", 3, [""], False),
        ("\n> ", 1, [], False),
        ("", 1, [], False),
        # a single command is exact whatever its reply contains
        ("\n> a\n\nb\n> c\n\n> ", 1, ["a\n\nb\n> c"], True),
        ("\n> a\n> b\n> ", 1, ["a\n> b"], True),
        # more replies than commands: ambiguous
        ("\n> \n> \n> \n> ", 2, ["", "", ""], False),
    ],
)
def test_split_prompt_replies(data: str, expected: int, replies: list[str], exact: bool) -> None:
    assert split_prompt_replies(data, expected) == (replies, exact)


@pytest.mark.parametrize(
    ("command", "reply", "status"),
    [
        ("set server b/s state ready", "", Status.OK),
        ("set server b/s addr 1.2.3.4 port 80", "IP changed from '1' to '2' by ...\n", Status.OK),
        ("set server b/s addr 1.2.3.4", "no need to change the addr, port changed ...", Status.OK),
        ("add server b/s 1.2.3.4:80", "New server registered.\n", Status.OK),
        ("del server b/s", "Server deleted.\n", Status.OK),
        ("set server b/nope state ready", "No such server.\n", Status.ERROR),
        ("set server nope/s state ready", "No such backend.\n", Status.ERROR),
        ("set server b state ready", "Require 'backend/server'.\n", Status.ERROR),
        ("set server b/s addr foo", "Invalid addr 'foo' by 'stats socket command'\n", Status.ERROR),
        ("del server b/s", "Only servers in maintenance mode can be deleted.\n", Status.ERROR),
        ("bogus", "Unknown command, but maybe one of the following ...\n", Status.ERROR),
        ("set server b/s weight 1", "Something new in 3.x\n", Status.ERROR),
        ("show servers state", "1\n# be_id ...\n", Status.OK),
        ("show servers state nope", "Can't find backend.\n", Status.ERROR),
        ("show info", "Name: HAProxy\n", Status.OK),
    ],
)
def test_classify(command: str, reply: str, status: Status) -> None:
    assert classify(command, reply) is status


def test_is_query() -> None:
    assert is_query("show stat") and is_query("help") and not is_query("set server b/s weight 1")


def test_parse_show_info() -> None:
    info = parse_show_info("Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nPid: 3160\nUptime: 0d 0h\n")
    assert info["Pid"] == "3160" and info["Version"] == "2.6.12-1+deb12u4"
    assert info["Uptime"] == "0d 0h"


def test_parse_show_stat() -> None:
    rows = parse_show_stat("# pxname,svname,status,weight,\nweb,FRONTEND,OPEN,,\nweb,s1,UP,10,\n\n")
    assert rows[1] == {"pxname": "web", "svname": "s1", "status": "UP", "weight": "10"}
    with pytest.raises(ParseError):
        parse_show_stat("pxname,svname\n")


# -- an admin socket answering what HAProxy would not: ParseError, short -------------


def test_show_stat_with_a_field_over_the_csv_limit_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="not CSV"):  # was csv.Error, not a ValueError
        parse_show_stat("# pxname,svname\nx," + "y" * 200_000 + "\n")


def test_a_huge_bad_servers_state_line_is_named_but_not_copied_whole() -> None:
    with pytest.raises(ParseError) as info:
        parse_servers_state("1\n" + "x " * 1_000_000 + "\n")
    assert len(str(info.value)) < 1000
    with pytest.raises(ParseError) as info:
        parse_servers_state("1\n" + "z" * 1_000_000 + "\n")
    assert "short 'show servers state' line" in str(info.value) and len(str(info.value)) < 1000
