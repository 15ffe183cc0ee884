"""A periodic full resync reuses the apps whose JSON did not change and parses the
changed one again (marathon/parsecache.py): the change is routed, the others stay."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from servicerouter.demo.procs import free_port

from .conftest import needs_haproxy
from .harness import Daemon, Simulator, running, wait_for, wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]


def reused(daemon: Daemon) -> list[int]:
    """Apps reused unparsed, per full sync logged so far."""
    return [int(n) for n in re.findall(r"full sync from .*?(\d+) apps reused unparsed",
                                       daemon.proc.output())]


def test_a_resync_reparses_only_the_app_whose_labels_changed(tmp_path: Path,
                                                             simulator: Simulator) -> None:
    keep_port, keep = simulator.launch("/keep", 2)
    change_port, change = simulator.launch("/change", 2)
    daemon = Daemon(tmp_path, simulator.url, "--resync-interval", "1").start()
    with running(daemon):
        wait_routed(keep_port, keep)
        wait_routed(change_port, change)
        wait_for(lambda: 2 in reused(daemon), 20, what="a resync that reused both apps")
        # Only a resync can see the change now: the events about it are dropped.
        simulator.http.post("/_sim/events/drop", params={"count": 1000}).raise_for_status()
        new_port = free_port()
        r = simulator.http.put("/v2/apps/change", params={"force": "true"},
                               json={"labels": {"HAPROXY_0_PORT": str(new_port)}})
        assert r.status_code == 200, r.text
        # A label change restarts the app: wait for its two new tasks, not the old two
        # still running before the restart begins (on a busy machine it begins later).
        live = simulator.wait_tasks("/change", lambda t: len(t) == 2 and not t & change,
                                    what="2 new running tasks")
        wait_routed(new_port, live, timeout=30)
        wait_routed(keep_port, keep)
        syncs = len(reused(daemon))
        # /change settled: its new JSON is reused in turn by a later resync.
        wait_for(lambda: len(reused(daemon)) > syncs and reused(daemon)[-1] == 2, 20,
                 what="a later resync that reused both apps")
