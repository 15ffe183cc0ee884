"""The demo's and the tests' child processes do not outlive whoever started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from servicerouter.demo.procs import wait_for

STARTER = """
import sys, time
from pathlib import Path
from servicerouter.demo.procs import Proc
child = Proc("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"],
             Path(sys.argv[1]))
child.start()
print(child.popen.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_child_dies_with_a_starter_killed_outright(tmp_path: Path) -> None:
    """A demo or test run killed with SIGKILL runs no cleanup; its children (each in
    its own session, out of reach of a group kill) are sent SIGTERM by the kernel."""
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "log")],
                               stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert starter.stdout is not None
        child = int(starter.stdout.readline())
        assert _alive(child)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(30)
        wait_for(lambda: not _alive(child), 30, 0.05, what="the orphaned child to end")
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(30)
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)
