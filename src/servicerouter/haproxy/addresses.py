"""Addresses as HAProxy parses them. Pure."""

from __future__ import annotations

import functools
import ipaddress


def hostport(ip: str, port: int) -> str:
    """An address as HAProxy parses it: ``1.2.3.4:80``, ``*:80``, ``ipv6@::1:80``."""
    if ip in ("*", ""):
        return f"*:{port}"
    if _is_ipv6(ip):
        return f"ipv6@{ip}:{port}"
    return f"{ip}:{port}"


@functools.lru_cache(maxsize=65536)
def _is_ipv6(ip: str) -> bool:
    return isinstance(ipaddress.ip_address(ip), ipaddress.IPv6Address)
