"""What a reloader knows that stops reloads (``problem()``): /healthz, /status and
``servicerouter_haproxy_master_up`` report it. The kept master that is alive but silent
is tested with the real HAProxy (tests/integration/test_daemon_lifecycle.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servicerouter.haproxy.control import ConfigFile, StartedHAProxy
from servicerouter.haproxy.process import SupervisionError
from servicerouter.metrics import Metrics


class Engine:
    def __init__(self) -> None:
        self.metrics = Metrics()


async def test_supervision_that_gave_up_is_the_reloaders_problem_until_a_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = StartedHAProxy(ConfigFile(tmp_path / "haproxy.cfg"), str(tmp_path / "m.sock"),
                             str(tmp_path / "admin.sock"))
    engine = Engine()
    started._engine = engine  # type: ignore[assignment]
    assert started.problem() is None

    async def exits_too_often(**_: Any) -> None:
        raise SupervisionError("HAProxy exited 6 times in 300.0s (last status 1); giving "
                               "up:\n[ALERT] a log line")

    monkeypatch.setattr(started.process, "supervise", exits_too_often)
    await started._supervise()
    assert started.problem() == ("HAProxy exited 6 times in 300.0s (last status 1); "
                                 "giving up:")
    assert engine.metrics.haproxy_up._value.get() == 0

    async def starts() -> None:
        pass

    monkeypatch.setattr(started, "_start", starts)  # the next reload starts it again
    await started.reload()
    assert started.problem() is None

