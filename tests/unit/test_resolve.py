"""CachingResolver: DNS never blocks the daemon's event loop; odd names are no crash."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from servicerouter import resolve as resolve_mod
from servicerouter.resolve import CachingResolver


class SlowDNS:
    """getaddrinfo that answers only once released (a resolver that takes its time)."""

    def __init__(self, ip: str = "10.1.2.3") -> None:
        self.ip = ip
        self.release = threading.Event()
        self.calls: list[str] = []

    def __call__(self, host: str, *_: Any, **__: Any) -> list[Any]:
        self.calls.append(host)
        self.release.wait(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (self.ip, 0))]


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> SlowDNS:
    dns = SlowDNS()
    monkeypatch.setattr(resolve_mod.socket, "getaddrinfo", dns)
    return dns


async def test_a_slow_lookup_on_the_loop_does_not_block_it_and_asks_for_a_sync(
        slow_dns: SlowDNS) -> None:
    resolved = asyncio.Event()
    resolver = CachingResolver(background=True, on_resolved=resolved.set)
    try:
        # Answers at once (the lookup is still held), and asks the resolver only once.
        assert resolver("agent-1.example") is None
        assert resolver("agent-1.example") is None
        assert not slow_dns.release.is_set()
        slow_dns.release.set()
        await asyncio.wait_for(resolved.wait(), 10)
        assert resolver("agent-1.example") == "10.1.2.3"
        assert slow_dns.calls == ["agent-1.example"]
        assert resolver.pending == 0
    finally:
        slow_dns.release.set()
        resolver.close()


async def test_an_expired_answer_is_served_while_it_refreshes(slow_dns: SlowDNS) -> None:
    resolved = asyncio.Event()
    resolver = CachingResolver(ttl=0.0, background=True, on_resolved=resolved.set)
    try:
        slow_dns.release.set()
        await asyncio.to_thread(resolver, "agent-1.example")  # off the loop: inline
        slow_dns.release.clear()
        slow_dns.ip = "10.9.9.9"
        assert resolver("agent-1.example") == "10.1.2.3"  # stale, not None, not blocked
        slow_dns.release.set()
        await asyncio.wait_for(resolved.wait(), 10)
        assert resolver._cache["agent-1.example"][0] == "10.9.9.9"
    finally:
        slow_dns.release.set()
        resolver.close()


def test_without_background_a_lookup_is_inline(slow_dns: SlowDNS) -> None:
    slow_dns.release.set()  # render: waits for the answer
    assert CachingResolver()("agent-1.example") == "10.1.2.3"


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a" * 300])
def test_a_name_the_idna_codec_refuses_is_unresolved_not_an_exception(host: str) -> None:
    assert CachingResolver()(host) is None


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve_mod, "MAX_HOSTS", 32)
    resolver = CachingResolver()
    for i in range(200):
        assert resolver(f"10.0.{i // 256}.{i % 256}") == f"10.0.{i // 256}.{i % 256}"
    assert len(resolver._cache) <= 32
