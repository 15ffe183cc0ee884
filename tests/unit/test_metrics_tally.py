"""metrics.Tally and metrics.Timings, the hot-path counter and histogram: exported exactly
as prometheus_client's Counter and Histogram."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from servicerouter.metrics import LATENCY_BUCKETS, Metrics, Tally, Timings


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


def test_timings_are_exported_as_the_histogram_they_replace() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    hist = Histogram("x_seconds", "Durations.", buckets=LATENCY_BUCKETS, registry=theirs)
    by_kind = Histogram("x_sync_seconds", "By kind.", ["kind"], buckets=LATENCY_BUCKETS,
                        registry=theirs)
    timings = Timings("x_seconds", "Durations.", LATENCY_BUCKETS, None, ours)
    timings_by_kind = Timings("x_sync_seconds", "By kind.", LATENCY_BUCKETS, "kind", ours)
    assert generate_latest(ours) == generate_latest(theirs)
    by_kind.labels("full")
    timings_by_kind.labels("full")
    # On a bound, between bounds, below the first, past the last (+Inf only).
    for value in (0.0005, 0.003, 0.0001, 0.01, 42.0, 0.0):
        hist.observe(value)
        timings.observe(value)
        by_kind.labels("incremental").observe(value * 2)
        timings_by_kind.labels("incremental").observe(value * 2)
    assert generate_latest(ours) == generate_latest(theirs)
    assert b'x_seconds_bucket{le="+Inf"} 6.0' in generate_latest(ours)
