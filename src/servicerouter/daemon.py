"""``servicerouter run``: its flags, and the wiring of engine, HAProxy and web."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
from pathlib import Path

import uvicorn

from .haproxy.control import ConfigFile, build_reloader
from .haproxy.runtime import RuntimeClient
from .marathon.events import DEFAULT_MAX_EVENT_BYTES
from .metrics import Metrics
from .resolve import CachingResolver

log = logging.getLogger("servicerouter")


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(value)
    return host.strip("[]") or "127.0.0.1", int(port)


def _seconds(value: str) -> float:
    seconds = float(value)
    if seconds < 0:
        raise ValueError(value)
    return seconds


def _event_bytes(value: str) -> int:
    size = int(value)
    if size < 1024:
        raise ValueError(value)
    return size


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HAProxy process")
    g.add_argument("--haproxy-config", default="/etc/haproxy/haproxy.cfg", metavar="PATH",
                   help="config file servicerouter writes (default %(default)s)")
    g.add_argument("--haproxy-bin", default="haproxy", metavar="PATH",
                   help="haproxy binary for validation and --start-haproxy")
    how = g.add_mutually_exclusive_group()
    how.add_argument("--start-haproxy", action="store_true",
                     help="start and supervise HAProxy (master-worker) and stop it on exit")
    how.add_argument("--reload-command", metavar="CMD",
                     help="reload with this command (e.g. 'systemctl reload haproxy')")
    g.add_argument("--haproxy-master-socket", metavar="PATH",
                   help="HAProxy's master CLI socket: reload an HAProxy started elsewhere "
                        "through it, or where --start-haproxy puts it")
    g = p.add_argument_group("daemon")
    g.add_argument("--listen", type=_hostport, default=("127.0.0.1", 9091), metavar="HOST:PORT",
                   help="/metrics, /healthz, /status, /config (default 127.0.0.1:9091)")
    g.add_argument("--update-strategy", choices=["runtime", "reload"], default="runtime",
                   help="runtime: task churn through the Runtime API (default); reload: every "
                        "change reloads, as marathon-lb does (for comparison)")
    g.add_argument("--resync-interval", type=_seconds, default=300.0, metavar="SECONDS",
                   help="full fetch from Marathon every this often (default 300)")
    g.add_argument("--reconcile-interval", type=_seconds, default=10.0, metavar="SECONDS",
                   help="compare HAProxy's servers with the slot table this often (default 10)")
    g.add_argument("--min-reload-interval", type=_seconds, default=1.0, metavar="SECONDS",
                   help="at most one reload per this many seconds (default 1)")
    g.add_argument("--coalesce-ms", type=_seconds, default=2.0, metavar="MS",
                   help="events arriving within this window are applied together (default 2)")
    g.add_argument("--drain-seconds", type=_seconds, default=0.0, metavar="SECONDS",
                   help="drain a departed task this long before removing it (default 0)")
    g.add_argument("--stall-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="reconnect the event stream after this much silence (default 30)")
    g.add_argument("--max-event-bytes", type=_event_bytes, default=DEFAULT_MAX_EVENT_BYTES,
                   metavar="BYTES", help="skip (unread) any Marathon event larger than this, "
                   "with a warning and a full resync (default 1048576)")


def detect_reload_command(root: Path = Path("/")) -> str | None:
    """The init system's reload, as ``servicerouter.py`` looked for it."""
    units = ("lib/systemd/system/haproxy.service", "usr/lib/systemd/system/haproxy.service",
             "etc/systemd/system/haproxy.service")
    if any((root / u).is_file() for u in units) and shutil.which("systemctl"):
        return "systemctl reload haproxy"
    if (root / "etc/init.d/haproxy").is_file():
        return "/etc/init.d/haproxy reload"
    return None


async def run_daemon(args: argparse.Namespace) -> int:
    from .cli import CliError, marathon_client, settings_from
    from .engine import Engine, EngineConfig

    settings = settings_from(args)
    if not (args.start_haproxy or args.reload_command or args.haproxy_master_socket):
        args.reload_command = detect_reload_command()
        if args.reload_command is None:
            raise CliError("say how HAProxy is reloaded: --start-haproxy, "
                           "--haproxy-master-socket PATH or --reload-command CMD")
        log.info("no reload mode given; reloading with %r, as servicerouter.py did",
                 args.reload_command)
    if args.start_haproxy and not args.haproxy_master_socket:
        args.haproxy_master_socket = str(Path(args.haproxy_config).with_suffix(".master.sock"))
    config = EngineConfig(
        settings=settings,
        templates=Path(args.templates) if args.templates else None,
        update_strategy=args.update_strategy,
        resync_interval=max(args.resync_interval, 1.0),
        reconcile_interval=max(args.reconcile_interval, 0.5),
        min_reload_interval=args.min_reload_interval,
        coalesce_window=args.coalesce_ms / 1000.0,
        drain_seconds=args.drain_seconds,
        stall_timeout=max(args.stall_timeout, 1.0),
        max_event_bytes=args.max_event_bytes,
    )
    metrics = Metrics()

    def on_request(endpoint: str, outcome: str, _seconds: float) -> None:
        metrics.marathon_requests.labels(endpoint, outcome).inc()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    writer = ConfigFile(Path(args.haproxy_config), args.haproxy_bin)
    reloader = build_reloader(args, writer)
    runtime = RuntimeClient(settings.socket_path)
    async with marathon_client(args, on_request=on_request) as marathon:
        engine = Engine(config, marathon, runtime, writer, reloader, metrics, CachingResolver())
        from .web import create_app

        host, port = args.listen
        server = uvicorn.Server(uvicorn.Config(create_app(engine), host=host, port=port,
                                               log_level="warning", lifespan="off"))
        web = asyncio.ensure_future(server.serve())
        log.info("servicerouter listening on http://%s:%d (metrics, healthz, status, config)",
                 host, port)
        try:
            await reloader.start(engine)
            await engine.run(stop)
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(web, 5)
            await reloader.stop()
    log.info("servicerouter stopped")
    return 0
