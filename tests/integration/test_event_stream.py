"""The event stream's failure modes: stall, disconnect, 302 from a standby, and
a missed event repaired by the periodic full resync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import needs_haproxy
from .harness import Daemon, Simulator, running, wait_for, wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]


def metric(daemon: Daemon, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", daemon.metrics(), re.MULTILINE)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def app(simulator: Simulator) -> tuple[int, set[str]]:
    return simulator.launch("/events", 2)


def test_stalled_stream_is_reconnected(tmp_path: Path, simulator: Simulator,
                                       app: tuple[int, set[str]]) -> None:
    port, live = app
    daemon = Daemon(tmp_path, simulator.url, "--stall-timeout", "1.5").start()
    with running(daemon):
        wait_routed(port, live)
        simulator.http.post("/_sim/streams/stall").raise_for_status()
        wait_for(lambda: "event stream: " in daemon.proc.output()
                 and "reconnecting" in daemon.proc.output(), 10, what="stall detected")
        simulator.http.post("/_sim/streams/resume").raise_for_status()
        wait_for(lambda: metric(daemon, "servicerouter_marathon_stream_reconnects_total") >= 1,
                 15, what="a reconnect")
        wait_routed(port, simulator.replace_one("/events", live))


def test_closed_stream_is_reconnected_and_events_flow_again(
        tmp_path: Path, simulator: Simulator, app: tuple[int, set[str]]) -> None:
    port, live = app
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        simulator.http.post("/_sim/streams/close").raise_for_status()
        wait_for(lambda: metric(daemon, "servicerouter_marathon_stream_reconnects_total") >= 1,
                 15, what="a reconnect")
        wait_routed(port, simulator.replace_one("/events", live))


def test_standby_redirects_the_stream_to_the_leader(tmp_path: Path,
                                                    simulator: Simulator,
                                                    app: tuple[int, set[str]]) -> None:
    port, live = app
    standby = Simulator(tmp_path / "standby", extra=["--standby-of", simulator.url])
    (tmp_path / "standby").mkdir()
    standby.start()
    with running(standby):
        daemon = Daemon(tmp_path, standby.url).start()  # only the standby is configured
        with running(daemon):
            wait_routed(port, live)
            # Routed within seconds (resync is 30 s away): events came from the leader.
            wait_routed(port, simulator.replace_one("/events", live), timeout=10)
            assert metric(daemon, 'servicerouter_marathon_events_total{event_type='
                                  '"status_update_event"}') > 0


def test_full_resync_repairs_a_missed_event(tmp_path: Path, simulator: Simulator,
                                            app: tuple[int, set[str]]) -> None:
    port, live = app
    # 1.5 s: the events are dropped, so only a resync can route the replacement, whenever
    # it comes; the replacement itself takes ~0.6 s.
    daemon = Daemon(tmp_path, simulator.url, "--resync-interval", "1.5").start()
    with running(daemon):
        wait_routed(port, live)
        syncs = metric(daemon, 'servicerouter_sync_duration_seconds_count{kind="full"}')
        simulator.http.post("/_sim/events/drop", params={"count": 1000}).raise_for_status()
        new = simulator.replace_one("/events", live)
        wait_routed(port, new, timeout=15)
        assert metric(daemon, 'servicerouter_sync_duration_seconds_count{kind="full"}') > syncs
