"""The `servicerouter` command survives a reload signal while it is still loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# Imported first by the interpreter (PYTHONPATH): holds the import of servicerouter.cli,
# the ~0.1-0.3 s of imports a reload signal used to fall into, until told to go on.
HOLD = '''
import sys

class _Hold:
    def find_spec(self, name, path=None, target=None):
        if name == "servicerouter.cli":
            sys.meta_path.remove(self)
            print("loading cli", flush=True)
            sys.stdin.readline()
        return None

sys.meta_path.insert(0, _Hold())
'''


@pytest.mark.parametrize("argv", [["run"], ["--haproxy-config", "/nonexistent.cfg"]])
def test_a_reload_signal_while_the_daemon_loads_does_not_end_it(tmp_path: Path,
                                                                argv: list[str]) -> None:
    (tmp_path / "sitecustomize.py").write_text(HOLD)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SERVICEROUTER_MARATHON": ""}
    p = subprocess.Popen([sys.executable, "-m", "servicerouter", *argv], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "loading cli\n"
        p.send_signal(signal.SIGHUP)
        p.send_signal(signal.SIGUSR1)
        _, err = p.communicate("\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # It went on to read its flags: no --marathon is a usage error (2), not a signal death.
    assert p.returncode == 2, (p.returncode, err)
    assert "--marathon URL is required" in err
