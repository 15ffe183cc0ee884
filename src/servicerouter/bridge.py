"""``haproxy-marathon-bridge HOST:PORT [HOST:PORT ...]``: the seed's minimal bridge.

Also, as the seed's script did, ``install_haproxy_system HOST:PORT ...`` and
``refresh_system_haproxy`` (see :mod:`servicerouter.bridge_system`).

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
import io
import logging
import os
import sys
import syslog
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import __version__
from . import bridge_system as bs
from .haproxy.render import builtin_templates, hostport, template_environment
from .layout import Settings
from .marathon.errors import MarathonError
from .marathon.parse import parse_apps, refuse_empty
from .naming import slot_name
from .resolve import CachingResolver
from .state import ClusterState


def _url(hostport_arg: str) -> str:
    if "://" in hostport_arg:
        return hostport_arg
    host, sep, port = hostport_arg.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{hostport_arg!r} is not HOST:PORT")
    return f"http://{hostport_arg}"


def render_bridge(payload: Any, source: str, stats_port: int = 9090, routed: int = 0
                  ) -> tuple[str, list[str]]:
    """The minimal config for a ``/v2/apps`` payload, and the messages to report.

    The apps are admitted as servicerouter's (README "Multi-tenant safety") on what
    this config does with them, a port and tasks: one service port, one app (two
    listeners on it split its connections between two apps), not the stats port,
    task ports HAProxy can connect to, at most --max-servers-per-backend's default
    servers. The labels it does not render (certificates, bind addresses, vhosts)
    are not judged. An answer listing no apps at all while ``routed`` apps are routed
    raises PayloadError (a Marathon on empty storage), as for ``sync``."""
    result = parse_apps(payload, source, CachingResolver())
    refuse_empty(result, source, routed, "--allow-empty-marathon applies it")
    messages = [*map(str, result.errors), *result.warnings]
    state = ClusterState(replace(Settings(), stats_port=stats_port, http_port=0, https_port=0))
    state.replace_all([replace(a, services=tuple(
        replace(s, options=replace(s.options, ssl_cert=None, bind_address="*", vhosts=(),
                                   paths=())) for s in a.services)) for a in result.apps])
    messages += [str(p) for p in sorted(state.problem_list(), key=lambda p: (p.app_id, p.index))]
    listeners = []
    for name, d in sorted(state.desired.items()):
        servers = [{"name": slot_name(i + 1), "address": hostport(e.ip, e.port)}
                   for i, e in enumerate(d.endpoints)]
        listeners.append({"name": name, "port": d.service.port, "servers": servers})
    env = template_environment((str(builtin_templates()),))
    text = env.get_template("bridge.cfg.j2").render(
        version=__version__, source=source, listeners=listeners, stats_port=stats_port)
    if not text.endswith("\n"):  # no listener: HAProxy rejects a last line without LF
        text += "\n"
    return text, messages


async def _fetch(urls: list[str]) -> tuple[Any, str]:
    from .marathon.client import MarathonClient

    async with MarathonClient(urls, attempts=1) as client:
        fetched = await client.get_apps()
    return fetched.data, fetched.url


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(value)
    return port


def _parser(mode: str | None) -> argparse.ArgumentParser:
    prog = "haproxy-marathon-bridge" + (f" {mode}" if mode else "")
    descriptions = {
        None: "Print a minimal haproxy.cfg for the apps of the first Marathon that answers. "
              "Also: 'install_haproxy_system HOST:PORT ...' and 'refresh_system_haproxy' "
              "(see their --help).",
        INSTALL: "As root: install HAProxy with the system's package manager, record the "
                 f"Marathons in /{bs.MARATHONS}, install /{bs.COMMAND} and a cron job "
                 f"/{bs.CRON} that refreshes HAProxy every minute.",
        REFRESH: f"Regenerate /{bs.HAPROXY_CONFIG} from the Marathons given, else from "
                 f"those in /{bs.MARATHONS}; only if it changed, validate it (haproxy -c), "
                 "replace it atomically and reload HAProxy without breaking connections.",
    }
    parser = argparse.ArgumentParser(
        prog=prog, description=descriptions[mode],
        epilog=f"'{bs.PROG} {LOGGED} ...' (as the old script's cron job ran it) sends the "
               "output to syslog instead.")
    # refresh: the old script's cron job passed the Marathons ($(cat .../marathons)).
    parser.add_argument("marathons", nargs="*" if mode == REFRESH else "+",
                        metavar="HOST:PORT")
    parser.add_argument("--stats-port", type=_port, default=9090,
                        help="HAProxy stats page on 127.0.0.1:PORT, 0 = none (default 9090)")
    if mode is not None:
        parser.add_argument("--root", default="/", metavar="DIR",
                            help="put every path under DIR instead of / (default /)")
    if mode == INSTALL:
        parser.add_argument("--package-manager", metavar="PATH",
                            help="package manager to install HAProxy with; its file name "
                                 f"({', '.join(bs.PACKAGE_MANAGERS)}) picks the arguments "
                                 "(default: the first of them found on PATH)")
    if mode == REFRESH:
        parser.add_argument("--haproxy-bin", default="haproxy", metavar="PATH",
                            help="haproxy binary for validation (default haproxy)")
        parser.add_argument("--allow-empty-marathon", action="store_true",
                            help="apply an answer that lists no apps at all although the "
                                 "config routes apps (by default the refresh fails with "
                                 "exit 1 and changes nothing)")
    parser.add_argument("--version", action="version", version=f"servicerouter {__version__}")
    return parser


INSTALL = "install_haproxy_system"
REFRESH = "refresh_system_haproxy"
LOGGED = "logged"  # the old script's prefix: its cron job ran 'logged refresh_system_haproxy'


class _Syslog(io.TextIOBase):
    """A stream whose lines go to syslog at one priority, as the old script's ``logged``
    sent stdout (info) and stderr (notice) through logger(1)."""

    def __init__(self, priority: int) -> None:
        self._priority = priority
        self._line = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:
            syslog.syslog(self._priority, line)
        return len(text)

    def flush(self) -> None:
        if self._line:
            syslog.syslog(self._priority, self._line)
            self._line = ""


def _generator(stats_port: int, routed: Callable[[], int] = lambda: 0) -> Any:
    async def generate(marathons: list[str]) -> str:
        payload, source = await _fetch([_url(m) for m in marathons])
        text, messages = render_bridge(payload, source, stats_port, routed())
        for m in messages:
            print(f"haproxy-marathon-bridge: {m}", file=sys.stderr)
        return text

    return generate


def _system(mode: str, args: argparse.Namespace) -> int:
    from .haproxy.master_cli import HAProxyProcessError

    paths = bs.Paths(Path(args.root))
    try:
        if mode == INSTALL:
            if os.geteuid() != 0 and paths.root == Path("/"):
                raise bs.BridgeError(
                    "install_haproxy_system must run as root: it installs a package and "
                    f"writes /{bs.MARATHONS}, /{bs.COMMAND} and /{bs.CRON}; nothing was "
                    "changed (use sudo, or --root DIR to install into a scratch tree)")
            for m in args.marathons:  # refuse a bad list before installing anything
                _url(m)
            extra = [] if args.stats_port == 9090 else ["--stats-port", str(args.stats_port)]
            bs.install(paths, args.marathons, args.package_manager, extra)
            return 0
        with bs.refresh_lock(paths) as locked:
            if not locked:
                print(f"haproxy-marathon-bridge: another refresh holds {paths / bs.LOCK}; "
                      "skipped", file=sys.stderr)
                return 0
            def routed() -> int:  # read under the lock, as the refresh compares
                return 0 if args.allow_empty_marathon else bs.routed_listeners(paths.config)

            done = asyncio.run(bs.refresh(paths, _generator(args.stats_port, routed),
                                          args.haproxy_bin, args.marathons or None))
        if done != "unchanged":  # cron mails any output: say only what changed
            print(f"haproxy-marathon-bridge: {done}")
        return 0
    except (bs.BridgeError, MarathonError, HAProxyProcessError, ValueError, OSError) as exc:
        print(f"haproxy-marathon-bridge: error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [LOGGED]:
        syslog.openlog(bs.PROG, syslog.LOG_PID, syslog.LOG_USER)
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Syslog(syslog.LOG_INFO), _Syslog(syslog.LOG_NOTICE)
        try:
            return _main(argv[1:])
        except SystemExit as exc:  # argparse's usage errors, logged like the rest
            return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = out, err
    return _main(argv)


def _main(argv: list[str]) -> int:
    mode = argv[0] if argv and argv[0] in (INSTALL, REFRESH) else None
    args = _parser(mode).parse_args(argv[1:] if mode else argv)
    # A one-shot for cron: a Marathon failover that still got an answer is not news
    # (cron mails any output); errors are, and are printed below or by the log.
    logging.basicConfig(level=logging.ERROR, format="haproxy-marathon-bridge: %(message)s")
    logging.getLogger("servicerouter.state").setLevel(logging.CRITICAL)  # render_bridge's
    if mode is not None:
        return _system(mode, args)
    try:
        urls = [_url(m) for m in args.marathons]
        payload, source = asyncio.run(_fetch(urls))
        text, messages = render_bridge(payload, source, args.stats_port)
    except (MarathonError, ValueError) as exc:
        print(f"haproxy-marathon-bridge: error: {exc}", file=sys.stderr)
        return 1
    for m in messages:
        print(f"haproxy-marathon-bridge: {m}", file=sys.stderr)
    sys.stdout.write(text)
    return 0
