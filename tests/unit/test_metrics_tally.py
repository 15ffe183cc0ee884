"""metrics.Tally, the hot-path counter: exported exactly as prometheus_client's Counter."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from servicerouter.metrics import Metrics, Tally


def test_a_tally_is_exported_as_the_counter_it_replaces() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("x_events", "Events, by type.", ["event_type"], registry=theirs)
    tally = Tally("x_events", "Events, by type.", "event_type", ours)
    plain = Counter("x_batches", "Batches.", registry=theirs)
    plain_tally = Tally("x_batches", "Batches.", None, ours)
    assert generate_latest(ours) == generate_latest(theirs)  # before any count, too
    counter.labels("b").inc()
    counter.labels("a").inc(2)
    counter.labels("idle")  # a child never counted shows 0
    plain.inc(3)
    tally.labels("b").inc()
    tally.add({"a": 2})
    tally.labels("idle")
    plain_tally.inc(3)
    assert generate_latest(ours) == generate_latest(theirs)
    assert b'x_events_total{event_type="a"} 2.0' in generate_latest(ours)


def test_the_daemon_counters_read_what_was_counted() -> None:
    m = Metrics()
    m.marathon_events.labels("status_update_event").inc()
    m.runtime_batches.inc()
    m.count_commands(["set server web_80/s1 state ready"])
    get = m.registry.get_sample_value
    assert get("servicerouter_marathon_events_total",
               {"event_type": "status_update_event"}) == 1
    assert get("servicerouter_runtime_batches_total") == 1
    assert get("servicerouter_runtime_commands_total", {"command": "set_server_state"}) == 1
