"""The container's HEALTHCHECK command, run for real against a running daemon, and
the image build itself where a container engine works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import needs_haproxy
from .harness import Daemon, Simulator, running, wait_for, wait_routed

dockerfile = pytest.importorskip("dockerfile", reason="pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration]


def healthcheck(listen: str) -> int:
    (check,) = [c for c in dockerfile.parse_file(str(ROOT / "Dockerfile"))
                if c.cmd == "HEALTHCHECK"]
    argv = list(check.value[1:])  # after CMD; python3 as in the image
    return subprocess.run(argv, env={**os.environ, "SERVICEROUTER_LISTEN": listen},
                          capture_output=True, timeout=30, check=False).returncode


@needs_haproxy
def test_healthcheck_passes_on_a_healthy_daemon_and_fails_without_one(
        tmp_path: Path, simulator: Simulator) -> None:
    simulator.launch("/hc/web", 1)
    daemon = Daemon(tmp_path, simulator.url)
    with running(daemon.start()):
        assert healthcheck(f"0.0.0.0:{daemon.listen_port}") == 0
        assert healthcheck(f"127.0.0.1:{daemon.listen_port}") == 0
    assert healthcheck(f"127.0.0.1:{daemon.listen_port}") != 0


def marathon_check_path() -> str:
    app = json.loads((ROOT / "contrib" / "marathon" / "servicerouter.json").read_text())
    (check,) = app["healthChecks"]
    return str(check["path"])


@needs_haproxy
def test_the_health_checks_keep_an_instance_that_lost_marathon_but_serves(
        tmp_path: Path, simulator: Simulator) -> None:
    """contrib's Marathon app and the image checked /healthz, which is 503 while the
    daemon has no recent full sync: Marathon (or an orchestrator acting on the image's
    HEALTHCHECK) killed an instance whose HAProxy still served the last good config,
    for a Marathon it could not reach, and the new instance then had nothing to serve.
    Here a restarted daemon that cannot reach Marathon serves the config left on disk:
    not ready (/healthz 503), but alive for both health checks."""
    from servicerouter.demo.procs import free_port

    port, live = simulator.launch("/hc/web", 2)
    first = Daemon(tmp_path, simulator.url)
    with running(first.start()):
        wait_routed(port, live)
    lost = Daemon(tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with running(lost.start(wait_healthy=False)):
        wait_for(lambda: "starting HAProxy on the existing" in lost.proc.output(), 30,
                 what="HAProxy started on the config left on disk")
        wait_routed(port, live)  # the last good config serves
        ready = lost.http.get("/healthz")
        assert ready.status_code == 503, ready.text
        assert "no successful sync with Marathon yet" in ready.json()["reason"]
        alive = lost.http.get(marathon_check_path())
        assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
        assert healthcheck(f"127.0.0.1:{lost.listen_port}") == 0
        wait_routed(port, live)


def _engine() -> str | None:
    for tool in ("docker", "podman"):
        if not shutil.which(tool):
            continue
        try:
            if subprocess.run([tool, "info"], capture_output=True, timeout=30,
                              check=False).returncode == 0:
                return tool
        except subprocess.TimeoutExpired:
            continue
    return None


@pytest.mark.skipif(_engine() is None, reason="no working container engine (docker info "
                                              "and podman info fail)")
def test_image_builds_and_runs_as_non_root() -> None:
    tool = _engine()
    assert tool
    tag = "servicerouter-test:latest"
    subprocess.run([tool, "build", "-t", tag, str(ROOT)], check=True, timeout=900)
    try:
        who = subprocess.run([tool, "run", "--rm", "--entrypoint", "id", tag, "-un"],
                             capture_output=True, text=True, timeout=120, check=True)
        assert who.stdout.strip() == "servicerouter"
        helped = subprocess.run([tool, "run", "--rm", tag, "--help"], capture_output=True,
                                text=True, timeout=120, check=True)
        assert "SERVICEROUTER_MARATHON" in helped.stdout
    finally:
        subprocess.run([tool, "rmi", "-f", tag], capture_output=True, timeout=120, check=False)
