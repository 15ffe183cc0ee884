"""`make demo` (the README's first command) keeps working: a short run churns
tasks with no reload and leaves no process behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import needs_haproxy

pytestmark = [pytest.mark.integration, needs_haproxy]


def _ours(workdir: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
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
