"""`make demo` (the README's first command) keeps working: a short run churns
tasks with no reload and leaves no process behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import needs_haproxy
from .harness import TLS

pytestmark = [pytest.mark.integration, needs_haproxy]


def _ours(workdir: Path) -> list[str]:
    out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(workdir) in line]


def test_demo_churns_without_reloads_and_cleans_up(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "servicerouter.demo", "--duration", "6",
                          "--interval", "1", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert re.search(r"/demo/web +curl http://127\.0\.0\.1:10001/", out)
    actions = re.findall(r"^  (killed task|scaled|scaling)", out, re.M)
    assert len(actions) >= 3
    reloads = [int(n) for n in re.findall(r"HAProxy reloads since start: (\d+)", out)]
    updates = [int(n) for n in re.findall(r"runtime updates: (\d+)", out)]
    assert reloads and max(reloads) == 0
    assert updates and updates[-1] > 0
    assert _ours(tmp_path) == []


def test_demo_in_range_mode_shows_new_apps_arriving_without_reloads(tmp_path: Path) -> None:
    from servicerouter.demo.procs import free_port_range

    low, high = free_port_range(16)
    run = subprocess.run([sys.executable, "-m", "servicerouter.demo", "--duration", "12",
                          "--interval", "0.5", "--workdir", str(tmp_path),
                          "--service-port-range", f"{low}-{high}"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert re.search(rf"/demo/web +curl http://127\.0\.0\.1:{low + 3}/", out)
    assert re.search(r"^  new app /demo/new1: curl http://127\.0\.0\.1:\d+/ served", out, re.M)
    created = [int(n) for n in re.findall(r"apps created: (\d+)   reloads: 0$", out, re.M)]
    assert created and max(created) >= 1, out
    assert not re.search(r"reloads: [1-9]", out), out
    assert _ours(tmp_path) == []


def _why(seen: list[str], line: str, reply: httpx.Response) -> str:
    """What the daemon and HAProxy said when a port shown as serving did not answer 200
    (the demo removes its workdir when it stops: read it now)."""
    out = [f"{line.strip()} answered {reply.status_code}", *seen]
    work = next((m.group(1) for s in seen if (m := re.match(r"demo: working in (\S+)", s))),
                None)
    daemon = next((m.group(1) for s in seen
                   if (m := re.match(r"demo: servicerouter on (http://\S+)", s))), None)
    if daemon is not None:
        app = re.search(r"demo: (/demo/\w+)", line)
        try:
            out.append(httpx.get(f"{daemon}/status", params={"app": app.group(1)} if app
                                 else None, timeout=5).text)
        except httpx.HTTPError as exc:
            out.append(f"/status: {exc!r}")
    if work is not None:
        for name in ("servicerouter.log", "simulator.log"):
            log = Path(work) / name
            if log.exists():
                out += [f"--- {name}", *log.read_text(errors="replace").splitlines()[-40:]]
    return "\n".join(out)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A TMPDIR short enough for HAProxy's socket paths (at most 97 characters)."""
    path = Path(tempfile.mkdtemp(prefix="sr-demo-test-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_demo_shows_ports_that_already_serve_and_removes_its_temp_dir(short_tmp: Path) -> None:
    # TMPDIR: the demo's own temporary workdir lands here, where the test can look.
    tmp_path = short_tmp
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # --duration 1: one churn action; what is checked here comes before the churn (each
    # port shown answers) and after it (the temporary workdir removed).
    demo = subprocess.Popen([sys.executable, "-m", "servicerouter.demo", "--duration", "1",
                             "--interval", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    seen: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            seen.append(line)
            m = re.search(r"curl (http://127\.0\.0\.1:\d+/)", line)
            if m:  # the moment a port is shown, it answers
                r = httpx.get(m.group(1), headers={"Connection": "close"}, timeout=5,
                              verify=TLS)
                assert r.status_code == 200, _why(seen, line, r)
        assert demo.wait(120) == 0, "".join(seen)
    finally:
        if demo.poll() is None:  # SIGTERM: the demo stops what it started, as on Ctrl-C
            demo.terminate()
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait(10)
    assert sum("curl http" in line for line in seen) == 3, "".join(seen)
    assert list(tmp_path.glob("servicerouter-demo-*")) == [], "the demo left its workdir"


def test_sigterm_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    demo = subprocess.Popen([sys.executable, "-m", "servicerouter.demo", "--duration", "600",
                             "--workdir", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("demo: churning"):
                break
        assert _ours(tmp_path), "".join(seen)  # the simulator, the daemon, HAProxy, tasks
        demo.terminate()
        assert demo.wait(60) == 0, "".join(seen)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
    assert _ours(tmp_path) == [], "".join(seen)
