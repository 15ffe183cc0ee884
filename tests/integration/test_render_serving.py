"""``render`` and ``haproxy-marathon-bridge`` against the simulator, served by
the real HAProxy to real backends on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from servicerouter.demo.procs import Proc

from .conftest import needs_haproxy
from .harness import Daemon, Simulator, running, wait_for, wait_routed

pytestmark = [pytest.mark.integration, needs_haproxy]


def test_rendered_config_serves_the_running_tasks(tmp_path: Path,
                                                  simulator: Simulator) -> None:
    simulator.create_app("/render/web", instances=3)
    simulator.create_app("/render/two", instances=1, ports=2)
    web = simulator.wait_running("/render/web", 3)
    two = simulator.wait_running("/render/two", 1)
    cfg = tmp_path / "haproxy.cfg"
    subprocess.run([sys.executable, "-m", "servicerouter", "render", "--marathon", simulator.url,
                    "--haproxy-socket", str(tmp_path / "admin.sock"), "--stats-port", "0",
                    "--output", str(cfg)], check=True, timeout=30)
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    haproxy = Proc("haproxy", ["haproxy", "-db", "-f", str(cfg)], tmp_path / "haproxy.log")
    with running(haproxy.start()):
        wait_for(lambda: (tmp_path / "admin.sock").exists(), what="HAProxy up")
        wait_routed(simulator.service_port("/render/web"), web)
        # Both service ports of /render/two reach its one task (the backend answers
        # on $PORT0 only, so the second port's traffic is checked for binding alone).
        wait_routed(simulator.service_port("/render/two", 0), two)
        assert str(simulator.service_port("/render/two", 1)) in cfg.read_text()


def test_bridge_prints_a_minimal_valid_config(tmp_path: Path, simulator: Simulator) -> None:
    port, live = simulator.launch("/bridge/web", 2)
    host_port = simulator.url.removeprefix("http://")
    out = subprocess.run([sys.executable, "-c", "import sys; from servicerouter.bridge import "
                          "main; sys.exit(main())", "127.0.0.1:1", host_port],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"bind 0.0.0.0:{port}" in text and "balance leastconn" in text
    assert text.count(" check\n") == len(live)
    cfg = tmp_path / "bridge.cfg"
    cfg.write_text(text)
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr



@pytest.mark.parametrize("stats", ["0", "9090"])
def test_bridge_config_for_a_marathon_with_no_apps_is_valid(
        tmp_path: Path, simulator: Simulator, stats: str) -> None:
    """A new cluster (or one whose apps all failed admission) has nothing to route: the
    config lacked its last newline, which haproxy -c rejects ("Missing LF on last line"),
    so every refresh of a fresh install failed."""
    out = subprocess.run([sys.executable, "-c", "import sys; from servicerouter.bridge import "
                          "main; sys.exit(main())", "--stats-port", stats,
                          simulator.url.removeprefix("http://")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "listen " not in out.stdout.replace("listen stats", "")
    cfg = tmp_path / "bridge.cfg"
    cfg.write_text(out.stdout)
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    said = check.stdout + check.stderr
    assert "Missing LF" not in said
    if stats == "0":  # nothing at all to listen on: HAProxy says so, and only that
        assert check.returncode == 2 and "will not start (no listener)" in said, said
    else:
        assert check.returncode == 0, said

def test_bridge_gives_a_service_port_to_one_app(tmp_path: Path, simulator: Simulator) -> None:
    """/evil/web names /bridge/shop's service port (HAPROXY_0_PORT): the bridge bound
    the port twice, and the kernel split its connections between the two apps' tasks.
    Now the port stays with the app that had it first and the other is named."""
    port, live = simulator.launch("/bridge/shop", 2)
    simulator.launch("/evil/web", 1, labels={"HAPROXY_0_PORT": str(port)})
    out = subprocess.run([sys.executable, "-c", "import sys; from servicerouter.bridge import "
                          "main; sys.exit(main())", "--stats-port", "0",
                          simulator.url.removeprefix("http://")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cfg = tmp_path / "bridge.cfg"
    cfg.write_text(out.stdout)
    haproxy = Proc("haproxy", ["haproxy", "-db", "-f", str(cfg)], tmp_path / "haproxy.log")
    with running(haproxy.start()):
        wait_routed(port, live)
    assert out.stdout.count(f"bind 0.0.0.0:{port}\n") == 1
    assert out.stderr == (f"haproxy-marathon-bridge: app /evil/web: HAPROXY_0_PORT='{port}' is "
                          "already bound by app /bridge/shop; service skipped until the port "
                          "is free\n")


def test_bridge_with_no_marathon_answering_fails_clearly() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys; from servicerouter.bridge import "
                          "main; sys.exit(main())", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.strip().splitlines()[-1].startswith("haproxy-marathon-bridge: error: "
                                                          "no Marathon answered")
    assert "Traceback" not in out.stderr


def test_render_refuses_to_write_a_config_a_daemon_manages(tmp_path: Path,
                                                           simulator: Simulator) -> None:
    """``render -o`` onto the daemon's --haproxy-config replaced the file behind its back
    (here with another admin socket and stats port: an HAProxy restarted on it would be
    out of the daemon's reach). Like ``sync``, it takes the config's lock and refuses."""
    port, live = simulator.launch("/managed/web", 2)
    daemon = Daemon(tmp_path, simulator.url)
    with running(daemon):
        daemon.start()
        wait_routed(port, live)
        before = daemon.config.read_bytes()
        inode = daemon.config.stat().st_ino
        out = subprocess.run([sys.executable, "-m", "servicerouter", "render", "--marathon",
                              simulator.url, "-o", str(daemon.config)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith(
            f"servicerouter: error: --output {daemon.config}: another servicerouter (pid "
            f"{daemon.proc.popen.pid if daemon.proc.popen else '?'}) manages it"), out.stderr
        assert daemon.config.read_bytes() == before and daemon.config.stat().st_ino == inode
        # Printing it is harmless, and still works beside the daemon.
        out = subprocess.run([sys.executable, "-m", "servicerouter", "render", "--marathon",
                              simulator.url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and f"bind *:{port}" in out.stdout, out.stderr
    # With no daemon the file is render's to write, and no lock file stays behind.
    out = subprocess.run([sys.executable, "-m", "servicerouter", "render", "--marathon",
                          simulator.url, "-o", str(daemon.config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "/run/haproxy/admin.sock" in daemon.config.read_text()
    assert not (tmp_path / "haproxy.cfg.lock").exists()
