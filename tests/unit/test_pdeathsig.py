"""The parent-death signal that ties HAProxy (and ``haproxy -c``) to the daemon's life.

``PR_SET_PDEATHSIG`` only fires for a parent that dies after it was set. These tests run
the real ``preexec_fn`` in a forked child, once with its parent alive and once with its
parent already gone (the daemon SIGKILLed between fork and exec), and watch through a
pipe whether the child would go on to exec HAProxy."""

from __future__ import annotations

import os
import select
import signal
import time

from servicerouter.haproxy.children import pdeathsig


def _read_until_eof(fd: int, timeout: float = 30.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 1024)
            if not chunk:
                return data
            data += chunk
    raise AssertionError(f"the child kept the pipe open for {timeout}s; read {data!r}")


def _run_preexec(*, parent_gone: bool) -> bytes:
    """Fork an intermediate 'daemon' that builds the preexec_fn and forks the 'HAProxy'
    child; return what the child wrote after running the preexec_fn."""
    r, w = os.pipe()
    daemon = os.fork()
    if daemon == 0:  # pragma: no cover - runs in the forked 'daemon'
        try:
            os.close(r)
            preexec = pdeathsig(signal.SIGTERM)
            me = os.getpid()
            child = os.fork()
            if child == 0:
                if parent_gone:  # the daemon is killed before the child reaches prctl
                    deadline = time.monotonic() + 30
                    while os.getppid() == me and time.monotonic() < deadline:
                        time.sleep(0.01)
                preexec()
                os.write(w, b"would exec haproxy")
                os._exit(0)
            if not parent_gone:
                os.waitpid(child, 0)
        finally:
            os._exit(0)
    os.close(w)
    try:
        os.waitpid(daemon, 0)
        return _read_until_eof(r)
    finally:
        os.close(r)


def test_a_child_orphaned_before_the_signal_was_set_does_not_go_on() -> None:
    assert _run_preexec(parent_gone=True) == b""


def test_a_child_whose_daemon_lives_goes_on() -> None:
    assert _run_preexec(parent_gone=False) == b"would exec haproxy"
