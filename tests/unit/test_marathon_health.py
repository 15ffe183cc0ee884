"""MarathonHealth: the gauges and /healthz reasons follow each request and the stream."""

from __future__ import annotations

from servicerouter.marathon_health import MarathonHealth
from servicerouter.metrics import Metrics


def gauges(m: Metrics) -> tuple[float | None, float | None]:
    return (m.registry.get_sample_value("servicerouter_marathon_up"),
            m.registry.get_sample_value("servicerouter_marathon_stream_connected"))


def test_up_needs_a_good_request_and_a_live_stream() -> None:
    m = Metrics()
    h = MarathonHealth(m.marathon_up, m.stream_connected)
    assert gauges(m) == (0, 0) and not h.up
    h.request_ok()
    assert gauges(m) == (0, 0)
    assert h.problems() == ["Marathon event stream: the event stream is not connected yet"]
    h.stream_alive("http://m1:8080")
    assert gauges(m) == (1, 1) and h.up and h.problems() == []


def test_a_lost_stream_or_a_failed_request_shows_at_once_and_recovers_at_once() -> None:
    m = Metrics()
    h = MarathonHealth(m.marathon_up, m.stream_connected)
    h.request_ok()
    h.stream_alive("http://m1:8080")
    h.stream_lost("event stream http://m1:8080: the server closed the stream")
    assert gauges(m) == (0, 0)
    assert "the server closed the stream" in h.problems()[0]
    h.stream_alive("http://m2:8080")
    assert gauges(m) == (1, 1) and h.stream_url == "http://m2:8080"
    h.request_failed("full sync failed: no Marathon answered GET /v2/apps: ...")
    assert gauges(m) == (0, 1)
    assert h.problems() == ["Marathon: full sync failed: no Marathon answered GET /v2/apps: ..."]
    h.request_ok()
    assert gauges(m) == (1, 1)
