"""free_port never hands the same port out twice, in one process or (with a claims
folder) in the test workers beside it, and never one in the kernel's ephemeral range:
a test's --http-port, not bound until the daemon's first reload, was given again as the
next app's service port, or became an outgoing connection's local port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servicerouter.demo import procs


class _Picks:
    """random.Random whose randrange yields these ports, in turn."""

    def __init__(self, ports: list[int]) -> None:
        self.ports: Iterator[int] = iter(ports)

    def randrange(self, low: int, high: int) -> int:
        port = next(self.ports)
        assert low <= port < high
        return port


class _Socket:
    """Binding fails for the ports in ``busy`` (in use on some address)."""

    busy: set[int] = set()

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        if address[1] in self.busy:
            raise OSError(98, "Address already in use")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(procs, "_handed_out", set())
    monkeypatch.setattr(procs.socket, "socket", lambda *a: _Socket())
    monkeypatch.delenv(procs.PORT_CLAIMS, raising=False)

    def picks(*ports: int) -> None:
        monkeypatch.setattr(procs.random, "Random", lambda: _Picks(list(ports)))
    return picks


def test_a_port_is_handed_out_once(fake: Any) -> None:
    fake(5001, 5001, 5002)
    assert procs.free_port() == 5001
    assert procs.free_port() == 5002


def test_a_port_in_use_is_skipped(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Socket, "busy", {5001})
    fake(5001, 5003)
    assert procs.free_port() == 5003


def test_a_port_another_worker_claimed_is_skipped(fake: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(procs.PORT_CLAIMS, str(tmp_path))
    (tmp_path / "5001").touch()  # the other worker's
    fake(5001, 5004)
    assert procs.free_port() == 5004
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5001", "5004"]


def test_real_ports_are_outside_the_ephemeral_range() -> None:
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range")
                 .read_text().split())
    port = procs.free_port()
    assert procs.FREE_PORTS[0] <= port < procs.FREE_PORTS[1]
    assert not low <= port <= high
    with socket.socket() as s:
        s.bind(("", port))  # free on every address
