"""free_port never hands the same port out twice in one process, even when the kernel
does: a test's --http-port, not bound until the daemon's first reload, was given again
as the next app's service port."""

from __future__ import annotations

from typing import Any

import pytest

from servicerouter.demo import procs


class _Kernel:
    """Binds to port 0 get these ports, in turn (the real kernel may repeat one that was
    handed out but is not bound yet)."""

    ports = iter([47001, 47001, 47002])

    def __enter__(self) -> _Kernel:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def bind(self, _: Any) -> None:
        self.port = next(self.ports)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_is_handed_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs, "_handed_out", set())
    monkeypatch.setattr(procs.socket, "socket", lambda *a: _Kernel())
    assert procs.free_port() == 47001
    assert procs.free_port() == 47002

