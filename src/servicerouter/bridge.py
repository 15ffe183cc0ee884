"""``haproxy-marathon-bridge HOST:PORT [HOST:PORT ...]``: the seed's minimal bridge.

Fetches the apps from the first Marathon that answers and prints a minimal
``haproxy.cfg`` (one TCP listener per service port, ``balance leastconn``,
a health check on every server) to stdout, like the script Marathon once
shipped. Uses ``/v2/apps?embed=apps.tasks`` rather than the text/plain
``/v2/tasks`` (removed in Marathon 1.11), with the same routing rule as
``servicerouter``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .haproxy.render import builtin_templates, hostport, template_environment
from .layout import Settings, desired_state
from .marathon.errors import MarathonError
from .marathon.parse import parse_apps
from .naming import slot_name
from .resolve import CachingResolver


def _url(hostport_arg: str) -> str:
    if "://" in hostport_arg:
        return hostport_arg
    host, sep, port = hostport_arg.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{hostport_arg!r} is not HOST:PORT")
    return f"http://{hostport_arg}"


def render_bridge(payload: Any, source: str) -> tuple[str, list[str]]:
    """The minimal config for a ``/v2/apps`` payload, and the messages to report."""
    result = parse_apps(payload, source, CachingResolver())
    messages = [*map(str, result.errors), *result.warnings]
    listeners = []
    for name, d in sorted(desired_state(result.apps, Settings()).items()):
        servers = [{"name": slot_name(i + 1), "address": hostport(e.ip, e.port)}
                   for i, e in enumerate(d.endpoints)]
        listeners.append({"name": name, "port": d.service.port, "servers": servers})
    env = template_environment((str(builtin_templates()),))
    text = env.get_template("bridge.cfg.j2").render(
        version=__version__, source=source, listeners=listeners)
    return text, messages


async def _fetch(urls: list[str]) -> tuple[Any, str]:
    from .marathon.client import MarathonClient

    async with MarathonClient(urls, attempts=1) as client:
        fetched = await client.get_apps()
    return fetched.data, fetched.url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="haproxy-marathon-bridge",
        description="Print a minimal haproxy.cfg for the apps of the first Marathon that "
                    "answers.")
    parser.add_argument("marathons", nargs="+", metavar="HOST:PORT")
    parser.add_argument("--version", action="version", version=f"servicerouter {__version__}")
    args = parser.parse_args(argv)
    try:
        urls = [_url(m) for m in args.marathons]
        payload, source = asyncio.run(_fetch(urls))
        text, messages = render_bridge(payload, source)
    except (MarathonError, ValueError) as exc:
        print(f"haproxy-marathon-bridge: error: {exc}", file=sys.stderr)
        return 1
    for m in messages:
        print(f"haproxy-marathon-bridge: {m}", file=sys.stderr)
    sys.stdout.write(text)
    return 0
