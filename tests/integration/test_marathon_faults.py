"""Marathon faults end to end: the simulator's fault switches, the daemon and real HAProxy.

Each test breaks Marathon one way (slow, redirecting, looping, oversized or
malformed events, out-of-order states, an outage) and asserts that traffic
through HAProxy keeps reaching exactly the right tasks and converges after
the fault. Failover and detection times are printed (run with -s), and only
generous bounds are asserted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import needs_haproxy
from .harness import Daemon, Simulator, responders, running, wait_for
from .harness import wait_routed as _wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]


def metric(daemon: Daemon, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", daemon.metrics(), re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def requests(daemon: Daemon, endpoint: str, outcome: str) -> float:
    return metric(daemon, f'servicerouter_marathon_requests_total{{endpoint="{endpoint}",'
                          f'outcome="{outcome}"}}')


def wait_routed(port: int, expected: set[str], timeout: float = 15.0) -> None:
    """harness.wait_routed, saying what answered instead when it times out."""
    try:
        _wait_routed(port, expected, timeout)
    except TimeoutError as exc:
        try:
            got: object = responders(port, 8)
        except Exception as why:
            got = why
        raise AssertionError(f"{exc}; traffic reached {got!r}") from None


def faulty(tmp: Path, name: str, faults: dict[str, Any] | None = None,
           standby_of: str | None = None) -> Simulator:
    (tmp / name).mkdir()
    extra = ["--standby-of", standby_of] if standby_of else []
    sim = Simulator(tmp / name, extra=extra).start()
    if faults:
        sim.http.post("/_sim/faults", json=faults).raise_for_status()
    return sim


def converges(simulator: Simulator, port: int, app_id: str, live: set[str],
              daemon: Daemon | None = None) -> set[str]:
    """Churn after the fault reaches HAProxy through events: replace a task, see it routed."""
    new = simulator.replace_one(app_id, live)
    try:
        wait_routed(port, new, timeout=15)  # resync is 30 s away: this is the event path
    except TimeoutError:
        if daemon is None:
            raise
        tasks = {t["id"]: (t["state"], t.get("ports")) for t in
                 simulator.app(app_id).get("tasks", [])}
        servers = [(s.server, s.addr, s.port, s.admin) for s in daemon.servers()]
        raise AssertionError(f"not routed: want {sorted(new)}; Marathon {tasks}; "
                             f"daemon {daemon.status(app=app_id)['services']}; "
                             f"HAProxy {servers}") from None
    return new


@pytest.fixture
def web(simulator: Simulator) -> Iterator[tuple[int, set[str]]]:
    yield simulator.launch("/faults/web", 2)


def started(daemon: Daemon, port: int, live: set[str]) -> float:
    """Start the daemon; seconds until traffic reaches exactly ``live``."""
    start = time.monotonic()
    daemon.start()
    wait_routed(port, live, timeout=30)
    return time.monotonic() - start


def test_a_first_marathon_answering_one_byte_per_second_is_skipped(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    slow = faulty(tmp_path, "slow", {"slow_bytes_per_second": 1})
    with running(slow):
        daemon = Daemon(tmp_path, slow.url, "--marathon", simulator.url,
                        "--marathon-timeout", "2")
        with running(daemon):
            took = started(daemon, port, live)
            print(f"\nslow first Marathon (1 B/s, --marathon-timeout 2): routed after "
                  f"{took:.1f}s")
            assert requests(daemon, "apps", "timeout") >= 1
            assert "no complete answer within 2s" in daemon.proc.output()
            converges(simulator, port, "/faults/web", live, daemon)
            assert took < 25


def test_a_first_marathon_answering_302_on_v2_apps_is_skipped(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    # It redirects to the good Marathon: following would work, but would also carry
    # credentials wherever a 302 points. It must be skipped, not followed.
    bad = faulty(tmp_path, "redirecting", {"apps_redirect": simulator.url})
    with running(bad):
        daemon = Daemon(tmp_path, bad.url, "--marathon", simulator.url,
                        "--marathon-credentials", "ops:s3cret")
        with running(daemon):
            took = started(daemon, port, live)
            print(f"\nfirst Marathon answering 302 on /v2/apps: routed after {took:.1f}s")
            assert requests(daemon, "apps", "redirect") >= 1
            assert "(not followed)" in daemon.proc.output()
            converges(simulator, port, "/faults/web", live, daemon)


def test_a_first_marathon_whose_body_cannot_be_decompressed_is_skipped(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    """A body that says gzip and is not (a proxy mangling answers) raised httpx's
    DecodingError out of the client: no failover to the next URL, and no full sync."""
    port, live = web
    bad = faulty(tmp_path, "mangled", {"apps_bad_gzip": True})
    with running(bad):
        daemon = Daemon(tmp_path, bad.url, "--marathon", simulator.url)
        with running(daemon):
            started(daemon, port, live)
            assert "body cannot be decompressed" in daemon.proc.output()
            converges(simulator, port, "/faults/web", live, daemon)


def test_an_events_redirect_loop_fails_over_to_the_third_marathon(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    # Two standbys (their /v2/apps is the leader's) whose /v2/events 302 to each other.
    a = faulty(tmp_path, "a", standby_of=simulator.url)
    b = faulty(tmp_path, "b", standby_of=simulator.url)
    with running(a, b):
        a.http.post("/_sim/faults", json={"events_redirect": b.url}).raise_for_status()
        b.http.post("/_sim/faults", json={"events_redirect": a.url}).raise_for_status()
        daemon = Daemon(tmp_path, a.url, "--marathon", b.url, "--marathon", simulator.url)
        with running(daemon):
            start = time.monotonic()
            daemon.start()
            wait_for(lambda: metric(daemon, "servicerouter_marathon_stream_connected") == 1,
                     15, what="the event stream connected")
            took = time.monotonic() - start
            print(f"\n/v2/events redirect loop between two URLs: stream on the third after "
                  f"{took:.1f}s (daemon start included)")
            wait_routed(port, live)
            assert requests(daemon, "events", "redirect") >= 4
            assert daemon.status()["marathon"]["stream_url"] == simulator.url
            converges(simulator, port, "/faults/web", live, daemon)


def test_an_oversized_event_is_skipped_with_a_resync_and_churn_goes_on(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    daemon = Daemon(tmp_path, simulator.url, "--max-event-bytes", "1048576").start()
    with running(daemon):
        wait_routed(port, live)
        syncs = metric(daemon, 'servicerouter_sync_duration_seconds_count{kind="full"}')
        big = {"eventType": "status_update_event", "appId": "/faults/web",
               "taskId": "huge", "taskStatus": "TASK_RUNNING", "host": "127.0.0.1",
               "ports": [1]}
        simulator.http.post("/_sim/events/inject", json={
            "events": [big], "pad_bytes": 3 * 1024 * 1024}).raise_for_status()
        wait_for(lambda: "skipped a status_update_event of" in daemon.proc.output(), 15,
                 what="the oversized event skipped")
        wait_for(lambda: metric(daemon, 'servicerouter_sync_duration_seconds_count'
                                        '{kind="full"}') > syncs, 15, what="a full resync")
        assert "--max-event-bytes 1048576" in daemon.proc.output()
        converges(simulator, port, "/faults/web", live, daemon)


def test_a_malformed_event_costs_only_its_app_and_never_its_neighbours(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    api_port, api_live = simulator.launch("/faults/api", 2)
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        wait_routed(api_port, api_live)
        refetches = requests(daemon, "app", "success")
        # A lying event: a task that does not exist, on port 99999.
        simulator.http.post("/_sim/events/inject", json={"events": [{
            "eventType": "status_update_event", "appId": "/faults/web", "taskId": "ghost",
            "taskStatus": "TASK_RUNNING", "host": "127.0.0.1", "ports": [99999]}]})
        # The next real status update is malformed too; the other app's follow right after.
        simulator.http.post("/_sim/faults", json={"malformed_status": 1}).raise_for_status()
        web_victim, api_victim = sorted(live)[0], sorted(api_live)[0]
        simulator.kill_task("/faults/web", web_victim)
        simulator.kill_task("/faults/api", api_victim)
        new = simulator.wait_tasks("/faults/web", lambda t: len(t) == 2 and web_victim not in t)
        api_new = simulator.wait_tasks("/faults/api",
                                       lambda t: len(t) == 2 and api_victim not in t)
        wait_routed(port, new)
        wait_routed(api_port, api_new)
        assert requests(daemon, "app", "success") > refetches  # its app was refetched
        output = daemon.proc.output()
        assert "app /faults/web: status_update_event not applied: ports [99999]" in output
        assert "99999" not in daemon.config.read_text()
        assert metric(daemon, 'servicerouter_reload_failures_total{stage="validate"}') == 0
        converges(simulator, api_port, "/faults/api", api_new)


def test_an_event_nested_too_deep_is_skipped_and_churn_goes_on_through_events(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    """One frame of JSON nested 100,000 deep (600 KB, under --max-event-bytes) ended the
    daemon's event loop with a RecursionError: no event was applied after it until the
    resync, and /healthz and the stream gauge still said all was well."""
    port, live = web
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        depth = 100_000
        raw = ("event: status_update_event\r\ndata: " + '{"a":' * depth + "1" + "}" * depth
               + "\r\n\r\n")
        r = simulator.http.post("/_sim/events/inject", json={"raw": raw})
        assert r.json()["streams"] == 1
        wait_for(lambda: "nested too deep" in daemon.proc.output(), 15,
                 what="the deep event skipped")
        live = converges(simulator, port, "/faults/web", live, daemon)  # by events
        converges(simulator, port, "/faults/web", live, daemon)
        assert "Traceback" not in daemon.proc.output()


def test_an_event_with_an_unpaired_surrogate_is_skipped_and_status_keeps_answering(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    """A status_update_event whose task id held "\\ud800" put a task in the model that
    UTF-8 cannot encode: /status answered 500 to everyone until the next resync."""
    port, live = web
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        task = simulator.app("/faults/web")["tasks"][0]
        frame = json.dumps({"eventType": "status_update_event", "appId": "/faults/web",
                            "taskId": "ghost\ud800", "taskStatus": "TASK_RUNNING",
                            "host": "127.0.0.1", "ports": task["ports"]})
        r = simulator.http.post("/_sim/events/inject", json={
            "raw": f"event: status_update_event\r\ndata: {frame}\r\n\r\n"})
        assert r.json()["streams"] == 1
        live = converges(simulator, port, "/faults/web", live, daemon)  # after the event
        status = daemon.http.get("/status")
        assert status.status_code == 200, status.text
        assert "ghost" not in status.text
        assert "holds an unpaired UTF-16 surrogate" in daemon.proc.output()


def test_event_types_nobody_asked_for_count_as_one_series(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    """Each event name the stream sent got a series of its own in /metrics: 200,000
    names grew /metrics to 42 MB (2.5 s to serve) and the daemon by 120 MB, for good."""
    port, live = web
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        raw = "".join(f"event: made_up_{i}\r\ndata: {{}}\r\n\r\n" for i in range(2000))
        assert simulator.http.post("/_sim/events/inject", json={"raw": raw}).json()["streams"]
        wait_for(lambda: metric(daemon, 'servicerouter_marathon_events_total'
                                        '{event_type="other"}') >= 2000, 15,
                 what="the made-up events counted")
        series = [line for line in daemon.metrics().splitlines()
                  if line.startswith("servicerouter_marathon_events_total{")]
        assert len(series) <= 20, series[:5]
        converges(simulator, port, "/faults/web", live, daemon)


def test_an_unreadable_event_is_followed_by_a_resync_so_its_change_is_not_lost(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    """An event whose data could not be read was skipped, and what it said waited for
    the periodic resync (300 s by default; 30 s here, longer than this test waits)."""
    port, live = web
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        # The replacement's events are lost; an unreadable frame stands for them.
        simulator.http.post("/_sim/events/drop", params={"count": 1000}).raise_for_status()
        new = simulator.replace_one("/faults/web", live)
        simulator.http.post("/_sim/events/drop", params={"count": 0}).raise_for_status()
        simulator.http.post("/_sim/events/inject", json={
            "raw": "event: status_update_event\r\ndata: {\"taskId\": \r\n\r\n"})
        wait_routed(port, new, timeout=15)
        assert "could not be read (see above); a full resync follows" in \
            daemon.proc.output()


def test_a_late_running_after_killed_never_puts_the_dead_task_back(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        simulator.http.post("/_sim/faults", json={"late_running": True}).raise_for_status()
        for _ in range(2):  # each kill is followed by a stale TASK_RUNNING
            live = converges(simulator, port, "/faults/web", live, daemon)
        log = simulator.http.get("/_sim/events/log").json()["events"]
        stale = [e for e in log if e.get("taskStatus") == "TASK_RUNNING"
                 and any(k.get("taskId") == e["taskId"] and k["seq"] < e["seq"]
                         and k.get("taskStatus") == "TASK_KILLED" for k in log)]
        assert len(stale) >= 2  # the fault really happened
        endpoints = {e["task_id"] for s in daemon.status(app="/faults/web")["services"]
                     for e in s["endpoints"]}
        assert endpoints == live


def health(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    r = daemon.http.get("/healthz")
    return r.status_code, dict(r.json())


def test_a_hung_marathon_shows_within_the_stall_timeout_and_recovers(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    daemon = Daemon(tmp_path, simulator.url, "--stall-timeout", "2",
                    "--marathon-timeout", "2").start()
    with running(daemon):
        wait_routed(port, live)
        wait_for(lambda: metric(daemon, "servicerouter_marathon_up") == 1, 15,
                 what="marathon_up 1")
        assert health(daemon) == (200, {"status": "ok"})
        pid = simulator.proc.popen.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)  # Marathon hangs; its tasks (own groups) keep serving
        try:
            start = time.monotonic()
            wait_for(lambda: metric(daemon, "servicerouter_marathon_up") == 0, 30,
                     what="marathon_up 0")
            shown = time.monotonic() - start
            code, body = health(daemon)
            assert code == 200 and body["status"] == "degraded"
            assert "event stream" in body["reason"]
            assert metric(daemon, "servicerouter_marathon_stream_connected") == 0
            wait_routed(port, live)  # HAProxy keeps routing the last known tasks
        finally:
            os.kill(pid, signal.SIGCONT)
        start = time.monotonic()
        wait_for(lambda: metric(daemon, "servicerouter_marathon_up") == 1, 30,
                 what="marathon_up 1 again")
        recovered = time.monotonic() - start
        assert health(daemon) == (200, {"status": "ok"})
        print(f"\nhung Marathon (--stall-timeout 2): marathon_up 0 after {shown:.1f}s, "
              f"1 again {recovered:.1f}s after it resumed")
        assert shown < 20 and recovered < 20
        converges(simulator, port, "/faults/web", live, daemon)


def test_an_unusable_marathon_shows_within_seconds_and_recovers(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        wait_for(lambda: metric(daemon, "servicerouter_marathon_up") == 1, 15,
                 what="marathon_up 1")
        dead = f"http://127.0.0.1:{_closed_port()}"
        simulator.http.post("/_sim/faults", json={"apps_redirect": dead,
                                                  "events_redirect": dead})
        start = time.monotonic()
        simulator.http.post("/_sim/streams/close").raise_for_status()  # leader gone
        wait_for(lambda: health(daemon)[1]["status"] == "degraded", 15, what="degraded")
        shown = time.monotonic() - start
        assert metric(daemon, "servicerouter_marathon_up") == 0
        wait_routed(port, live)
        simulator.http.delete("/_sim/faults").raise_for_status()
        start = time.monotonic()
        wait_for(lambda: health(daemon) == (200, {"status": "ok"}), 30, what="ok again")
        recovered = time.monotonic() - start
        print(f"\nMarathon unusable (stream closed, every URL refused): degraded after "
              f"{shown:.2f}s, ok {recovered:.1f}s after it came back")
        assert metric(daemon, "servicerouter_marathon_up") == 1
        converges(simulator, port, "/faults/web", live, daemon)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def full_syncs(daemon: Daemon) -> float:
    return metric(daemon, 'servicerouter_sync_duration_seconds_count{kind="full"}')


def test_an_event_storm_for_a_new_app_is_one_refetch_and_churn_goes_on(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        syncs, fetched = full_syncs(daemon), requests(daemon, "app", "success")
        storm = [{"eventType": "status_update_event", "appId": "/faults/new",
                  "taskId": f"faults_new.{i}", "taskStatus": "TASK_RUNNING",
                  "host": "127.0.0.1", "ports": [20000 + i % 100]} for i in range(1000)]
        simulator.http.post("/_sim/events/inject", json={"events": storm}).raise_for_status()
        live = converges(simulator, port, "/faults/web", live, daemon)  # not held up
        wait_for(lambda: metric(daemon, 'servicerouter_marathon_events_total'
                                        '{event_type="status_update_event"}') >= 1000,
                 15, what="the storm received")
        wait_for(lambda: requests(daemon, "app", "success") > fetched, 15,
                 what="the new app refetched")
        # /faults/new does not exist in Marathon (404): nothing to route, one request.
        print(f"\n1,000 TASK_RUNNING for a new app: "
              f"{requests(daemon, 'app', 'success') - fetched:.0f} refetch(es), "
              f"{full_syncs(daemon) - syncs:.0f} full syncs")
        assert requests(daemon, "app", "success") - fetched <= 2
        assert requests(daemon, "app", "error") == 0
        assert full_syncs(daemon) == syncs
        assert daemon.status()["counts"]["apps"] == 1


def test_app_updates_refetch_the_app_not_everything(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    port, live = web
    daemon = Daemon(tmp_path, simulator.url).start()
    with running(daemon):
        wait_routed(port, live)
        syncs = full_syncs(daemon)
        for instances in (3, 4, 3, 4, 3):  # 5 PUTs, each with a group_change_success
            simulator.scale("/faults/web", instances)
        live = simulator.wait_running("/faults/web", 3)
        wait_routed(port, live)
        log = simulator.http.get("/_sim/events/log").json()["events"]
        assert sum(e["eventType"] == "group_change_success" for e in log) >= 5
        print(f"\n5 app PUTs: {full_syncs(daemon) - syncs:.0f} full syncs")
        assert full_syncs(daemon) == syncs  # none of them cost a full sync


def test_a_stream_that_ends_at_once_backs_off_and_full_syncs_stay_few(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    """Each reconnect does a full sync (events may have been missed). A stream that
    attached and ended at once reset the backoff, so it was reconnected every ~0.1 s
    with a full GET /v2/apps each time (at 10,000 apps, ~30 MB for Marathon to serve,
    again and again). Only a stream that stayed up resets the backoff now."""
    port, live = web
    daemon = Daemon(tmp_path, simulator.url)
    with running(daemon):
        started(daemon, port, live)
        simulator.http.post("/_sim/faults", json={"events_close_after": 0}).raise_for_status()
        simulator.http.post("/_sim/streams/close").raise_for_status()
        begin = time.monotonic()
        reconnects = "servicerouter_marathon_stream_reconnects_total"
        wait_for(lambda: metric(daemon, reconnects) >= 6, 60, what="6 stream reconnects")
        took = time.monotonic() - begin
        print(f"\nstream ending at once: 6 reconnects in {took:.1f}s")
        # Backoff: 0.1, 0.2, ... doubling to 10 s, each at least half that (jitter):
        # the 5 waits between 6 reconnects are >= 1.55 s. Without it, ~0.5 s.
        assert took >= 1.5
        assert requests(daemon, "apps", "ok") <= metric(daemon, reconnects) + 2
        wait_routed(port, live)  # HAProxy keeps routing meanwhile
        simulator.http.post("/_sim/faults", json={"events_close_after": None}
                            ).raise_for_status()
        after = metric(daemon, reconnects)
        wait_for(lambda: metric(daemon, reconnects) > after
                 and metric(daemon, "servicerouter_marathon_stream_connected") == 1, 30,
                 what="a stream that stays")
        converges(simulator, port, "/faults/web", live, daemon)


def refused_empty(daemon: Daemon) -> int:
    """Times the daemon's log (shared by a restarted one) says it refused the answer."""
    return daemon.proc.output().count(
        "Marathon lists no apps at all, which would unroute the app routed here")


def unrouted(port: int) -> bool:
    try:
        responders(port, 1)
    except Exception:  # nothing listens on the port: HAProxy dropped the app's frontend
        return True
    return False


def test_a_marathon_on_empty_storage_does_not_take_every_route_away(
        tmp_path: Path, simulator: Simulator, web: tuple[int, set[str]]) -> None:
    """A Marathon leader on an empty or wrong ZooKeeper path answers {"apps": []} with no
    app_terminated_event: applied, every route went at once while the tasks ran on.
    It is refused, also by a restarted daemon (the owners file says what was routed),
    until the operator says every app is gone on purpose."""
    port, live = web
    daemon = Daemon(tmp_path, simulator.url)
    with running(daemon):
        started(daemon, port, live)
        reloads = daemon.reloads()
        simulator.http.post("/_sim/faults", json={"empty_store": True}).raise_for_status()
        assert daemon.http.post("/resync").status_code == 202
        wait_for(lambda: refused_empty(daemon), 20, what="the empty answer refused")
        status, body = health(daemon)
        assert status == 200 and body["status"] == "degraded"
        assert "Marathon lists no apps at all" in body["reason"]
        assert "POST /resync?accept_empty=1" in body["reason"]
        wait_routed(port, live)
        assert daemon.reloads() == reloads and daemon.status()["counts"]["apps"] == 1
    before = refused_empty(daemon)
    restarted = Daemon(tmp_path, simulator.url)
    with running(restarted):
        restarted.start(wait_healthy=False)
        wait_for(lambda: refused_empty(restarted) > before, 20,
                 what="the restart refusing it too")
        assert health(restarted)[0] == 503  # no successful sync yet
        wait_routed(port, live)  # HAProxy started from the config left on disk
        r = restarted.http.post("/resync", params={"accept_empty": "1"})
        assert r.status_code == 202 and "no apps will be applied" in r.text
        wait_for(lambda: health(restarted)[0] == 200, 30, what="the empty answer applied")
        assert unrouted(port) and restarted.status()["counts"]["apps"] == 0
        simulator.http.delete("/_sim/faults").raise_for_status()
        assert restarted.http.post("/resync").status_code == 202
        wait_routed(port, live, timeout=30)
        assert restarted.http.post("/resync", params={"accept_empty": "maybe"}
                                   ).status_code == 400
