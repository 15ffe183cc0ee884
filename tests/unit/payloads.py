"""Shared helpers for tests over Marathon payload fixtures (tests/fixtures only)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
APP_FIXTURES = sorted(p.name for p in FIXTURES.glob("apps_*.json"))

# Agent names the fake resolver knows; anything else is unresolvable.
HOSTS = {"agent-7.internal": "10.0.9.7"}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def resolve(host: str) -> str | None:
    """A pure stand-in for CachingResolver: IP literals pass, known names map."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return HOSTS.get(host)
