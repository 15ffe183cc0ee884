"""What the daemon logs: per-app apply lines, reload causes, HAProxy's levels, JSON."""

from __future__ import annotations

import json
import logging

from servicerouter.applylog import command_backend, reload_causes, runtime_lines
from servicerouter.haproxy.process import haproxy_log_level
from servicerouter.layout import BackendShape, DesiredService
from servicerouter.logformat import JsonFormatter
from servicerouter.model import Endpoint, Service


def ep(n: int) -> Endpoint:
    return Endpoint(f"t{n}", "10.0.0.1", 31000 + n)


SHOP = Service("/shop/web", 0, 10000)
LAYOUT = {"shop_web_10000": BackendShape("shop_web_10000", SHOP, 4)}


def test_one_line_per_app_with_tasks_added_removed_and_commands() -> None:
    commands = ["set server shop_web_10000/s1 state maint",
                "set server shop_web_10000/s1 addr 10.0.0.1 port 31003",
                "set server shop_web_10000/s1 state ready"]
    lines = runtime_lines(commands, {"shop_web_10000": [ep(3), ep(2), None, None]},
                          {"shop_web_10000": [ep(1), ep(2), None, None]}, LAYOUT, 3.2)
    assert lines == ["/shop/web: +1 -1 tasks, runtime, 3 commands, 3 ms"]
    assert command_backend("add server a_80/s9 10.0.0.1:80") == "a_80"
    assert command_backend("enable health a_80/s9") == "a_80"


def test_reload_lines_name_the_apps_behind_them() -> None:
    desired = {"shop_web_10000": DesiredService(SHOP, ()),
               **{f"x{i}_1": DesiredService(Service(f"/x{i}", 0, 1), ()) for i in range(7)}}
    pending = {"shop_web_10000": "options_changed", "gone_1": "removed_app",
               **{f"x{i}_1": "new_app" for i in range(7)}, "*": "startup"}
    assert reload_causes(pending, desired, LAYOUT) == (
        "new_app: /x0, /x1, /x2, /x3, /x4 +2 more; options_changed: /shop/web; "
        "removed_app: gone_1; startup")


def test_haproxy_lines_keep_their_level_but_per_server_changes_are_debug() -> None:
    assert haproxy_log_level("[ALERT]    (1) : config : parsing [x:3] : unknown") == logging.ERROR
    assert haproxy_log_level("[WARNING]  (1) : Former worker (2) exited") == logging.WARNING
    assert haproxy_log_level("[NOTICE]   (1) : New worker (3) forked") == logging.INFO
    assert haproxy_log_level("[WARNING]  (9) : Server web_80/s1 is DOWN, reason: Layer4 "
                             "connection problem") == logging.DEBUG
    assert haproxy_log_level("[WARNING]  (9) : Proxy web_80 stopped (cumulated conns: "
                             "FE: 0, BE: 0).") == logging.DEBUG
    assert haproxy_log_level("[ALERT]    (9) : backend 'web_80' has no server "
                             "available!") == logging.ERROR


def test_json_log_lines() -> None:
    record = logging.LogRecord("servicerouter.engine", logging.INFO, __file__, 1,
                               "reloaded HAProxy (%s)", ("startup",), None)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "INFO" and doc["logger"] == "servicerouter.engine"
    assert doc["message"] == "reloaded HAProxy (startup)" and doc["time"].endswith("+00:00")


def test_a_backend_returned_to_the_pool_gets_no_line_of_its_own() -> None:
    commands = ["del map /m/ports.map 10000", "set server shop_web_10000/s1 state maint",
                "set server shop_web_10000/s1 addr 127.0.0.1 port 1"]
    slots = {"shop_web_10000": [None] * 4, "_pool_shop_web_10000": [None] * 4}
    lines = runtime_lines(commands, slots, {"shop_web_10000": [ep(1), None, None, None]},
                          LAYOUT, 1.0)
    assert lines == ["/shop/web: +0 -1 tasks, runtime, 2 commands, 1 ms"]


def test_runtime_commands_are_counted_by_verb() -> None:
    from servicerouter.metrics import Metrics

    m = Metrics()
    m.count_commands(["set server web_80/s1 addr 10.0.0.1 port 31001",
                      "set server web_80/s1 state ready", "set server web_80/s2 state maint",
                      "add server web_80/s17 10.0.0.2:31002 check", "add map /m.map k web_80"])
    m.count_commands(["set server web_80/s1 state drain"])
    counted = {s.labels["command"]: s.value for metric in m.registry.collect()
               for s in metric.samples if s.name == "servicerouter_runtime_commands_total"}
    assert counted == {"set_server_addr": 1, "set_server_state": 3, "add_server": 1,
                       "add_map": 1}
