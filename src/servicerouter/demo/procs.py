"""Child processes for the demo and the integration tests: started in their own
process group, stopped with everything they forked, and sent SIGTERM when their
starter dies (a demo or a test run killed outright leaves nothing running: the
daemon stops its HAProxy, the simulator its tasks)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..haproxy.children import pdeathsig

_handed_out: set[int] = set()
_handing_out = threading.Lock()
PORT_CLAIMS = "SERVICEROUTER_PORT_CLAIMS"
"""A folder shared by processes that hand out ports side by side (the test suite's
workers): a port or range is theirs once its file there is created (O_EXCL). The
kernel gave one worker the port another had just been given and not bound yet (its
HAProxy binds with SO_REUSEPORT, so both did, and traffic was split between them)."""


def claim(name: str) -> bool:
    """Whether ``name`` (a port, a range) is this process's to use: always, unless
    $SERVICEROUTER_PORT_CLAIMS names a folder where another process claimed it first."""
    folder = os.environ.get(PORT_CLAIMS)
    if not folder:
        return True
    try:
        os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o600))
    except FileExistsError:
        return False
    return True


def unclaim(name: str) -> None:
    """Give back what :func:`claim` took (a range a stopped simulator used)."""
    folder = os.environ.get(PORT_CLAIMS)
    if folder:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))


FREE_PORTS = (1024, 10000)
"""Where :func:`free_port` looks: below the kernel's ephemeral range (32768-60999), where
a port just handed out and not bound yet could become the local port of any outgoing
connection (HAProxy's bind then failed), and below 10000, where the benchmarks bind their
apps' service ports (10000+) and :func:`free_port_range` and the simulators' tasks
(12000-30000) live."""


def free_port() -> int:
    """A port free now on every address, and never one this process (or, with
    $SERVICEROUTER_PORT_CLAIMS, a process beside it) was given before. A port handed out
    but not bound yet (a daemon's ``--http-port`` before its first reload) looks free to
    the kernel, which gave it again to the next app's service port once: the daemon then
    rightly refused that app. Bounded tries."""
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(*FREE_PORTS)
        with _handing_out:
            if port in _handed_out:
                continue
            try:
                with socket.socket() as s:
                    s.bind(("", port))
            except OSError:
                continue
            _handed_out.add(port)
            if claim(str(port)):
                return port
    raise RuntimeError(f"no free port in {FREE_PORTS[0]}-{FREE_PORTS[1] - 1} this process "
                       "was not given before")


def free_port_range(count: int, low: int = 12000, high: int = 20000) -> tuple[int, int]:
    """``count`` consecutive ports free on every address, below the ephemeral range (so
    that no ``free_port`` of another run lands in them) and below 20000, where every
    simulator here places its tasks (a task listening inside a service port range kept
    HAProxy from binding the range): (first, last). Bounded tries."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(low, high - count)
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return first, first + count - 1
    raise RuntimeError(f"no {count} consecutive free ports in {low}-{high} after 200 tries")


def wait_for(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``check`` until it returns a truthy value; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = check()
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], Any] | None = None, timeout: float = 15.0,
              interval: float = 0.05, what: str = "the process to be ready") -> Proc:
        """Start; with ``ready``, wait for it and stop the process if it never is."""
        with self.log.open("ab") as f:
            self.popen = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          preexec_fn=pdeathsig(signal.SIGTERM),
                                          env={**os.environ, **self.env})
        if ready is not None:
            try:
                wait_for(ready, timeout, interval, what)
            except BaseException:
                self.stop()  # a start that fails must not leave the process behind
                raise
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL after ``timeout``; then whatever is left."""
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        return p.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
