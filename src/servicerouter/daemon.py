"""``servicerouter run``: its flags, and the wiring of engine, HAProxy and web."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from .haproxy.control import ConfigFile, build_reloader
from .haproxy.lock import ConfigInUse, ConfigLock, lock_path
from .haproxy.process import kill_children
from .haproxy.runtime import RuntimeClient
from .layout import Settings
from .marathon.events import DEFAULT_MAX_EVENT_BYTES
from .metrics import Metrics
from .owners import owners_path
from .planner import ReloadReason
from .resolve import CachingResolver
from .sdnotify import Notifier
from .stopping import unless_stopped

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("servicerouter")


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (port 1-65535)")
    return host.strip("[]") or "127.0.0.1", int(port)


def _amount(unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number >= 0 of ``unit`` (named in its error)."""
    def amount(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number >= 0 or number == float("inf"):
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of {unit} >= 0")
        return number
    return amount


_seconds = _amount("seconds")


def _bind(flag: str, host: str, port: int) -> socket.socket:
    """Bind the web listener now, so that a busy port is one clear error before the
    daemon says it listens (and before it starts HAProxy)."""
    from .cli import CliError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        # With getaddrinfo's proto (IPPROTO_TCP), not 0: asyncio sets TCP_NODELAY only on
        # connections whose socket says TCP. Without it every keep-alive answer (headers
        # and body are two writes) waited ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, kind, proto)
    except (OSError, IndexError) as exc:
        raise CliError(f"{flag} {host}:{port}: {getattr(exc, 'strerror', None) or exc}"
                       ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CliError(f"{flag} {host}:{port}: cannot listen: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


def _event_bytes(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = -1
    if size < 1024:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of bytes >= 1024")
    return size


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import positive_seconds, whole_number

    add_range_arguments(p)
    g = p.add_argument_group("daemon")
    g.add_argument("--listen", type=_hostport, default=("127.0.0.1", 9091), metavar="HOST:PORT",
                   help="/metrics, /healthz, /livez, /status, /config (default 127.0.0.1:9091)")
    g.add_argument("--update-strategy", choices=["runtime", "reload"], default="runtime",
                   help="runtime: task churn through the Runtime API (default); reload: every "
                        "change reloads, as marathon-lb does (for comparison)")
    g.add_argument("--resync-interval", type=positive_seconds, default=300.0, metavar="SECONDS",
                   help="full fetch from Marathon every this often (default 300)")
    g.add_argument("--reconcile-interval", type=positive_seconds, default=10.0, metavar="SECONDS",
                   help="compare HAProxy's servers with the slot table this often (default 10)")
    g.add_argument("--min-reload-interval", type=_seconds, default=1.0, metavar="SECONDS",
                   help="at most one reload per this many seconds (default 1)")
    g.add_argument("--tenant-reload-burst", type=whole_number(1, 1000), default=10,
                   metavar="N",
                   help="reloads a tenant's (top-level group's) apps may cause in a row "
                        "before their next one waits for --tenant-reload-interval (default 10)")
    g.add_argument("--tenant-reload-interval", type=_seconds, default=30.0, metavar="SECONDS",
                   help="a tenant gets one more reload every this many seconds; 0 = no "
                        "limit (default 30)")
    g.add_argument("--coalesce-ms", type=_amount("milliseconds"), default=0.0, metavar="MS",
                   help="events arriving within this window are applied together (default 0)")
    g.add_argument("--drain-seconds", type=_seconds, default=0.0, metavar="SECONDS",
                   help="drain a departed task this long before removing it (default 0)")
    g.add_argument("--stall-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                   help="reconnect the event stream after this much silence (default 30)")
    g.add_argument("--max-event-bytes", type=_event_bytes, default=DEFAULT_MAX_EVENT_BYTES,
                   metavar="BYTES", help="skip (unread) any Marathon event larger than this, "
                   "with a warning and a full resync (default 1048576)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the runtime commands and reloads it would perform, as changes "
                        "come; touch no HAProxy socket, file or process (--listen still "
                        "serves /status)")


def add_range_arguments(p: argparse.ArgumentParser, files: str = "<--haproxy-config>.d"
                        ) -> None:
    """--service-port-range and --pool-spares (run, sync, render: the same config)."""
    from .cli import whole_number

    g = p.add_argument_group("range mode (README: Service port range)")
    g.add_argument("--service-port-range", metavar="LOW-HIGH", default=None,
                   help="bind this whole port range in one frontend and route it by a port "
                        "map, so apps with a service port in it (and vhosts) come and go "
                        f"without reloads; map files go in {files} (default: off)")
    g.add_argument("--pool-spares", type=whole_number(1, 1000), default=8, metavar="N",
                   help="with --service-port-range: at least N spare backends per backend "
                        "shape for new apps (default 8)")


def range_settings(settings: Settings, text: str, spares: int, config: Path) -> Settings:
    """--service-port-range: validated, with the map folder next to the config; the range's
    ports must be free (or held by HAProxy itself) on this host."""
    from . import hostfacts, pool
    from .cli import CliError, UsageError

    try:
        low, high = pool.parse_port_range(text)
    except ValueError as exc:
        raise UsageError(f"--service-port-range: {exc}") from None
    if spares < 1:
        raise UsageError(f"--pool-spares {spares}: must be >= 1")
    map_dir = f"{config.resolve()}.d"
    if not _MAP_DIR.fullmatch(map_dir):
        raise UsageError(f"--haproxy-config {config}: the map folder {map_dir} must be a path "
                       "of [A-Za-z0-9._/-] (HAProxy reads it unquoted)")
    busy = [p for p in range(low, high + 1) if p not in settings.own_ports
            and hostfacts.bind_problem("*", p) is not None]
    if busy:
        raise CliError(f"--service-port-range {text}: {len(busy)} of its ports are in use by "
                       f"another process (e.g. {', '.join(map(str, busy[:5]))}); HAProxy must "
                       "bind the whole range")
    return replace(settings, service_port_range=(low, high), map_dir=map_dir,
                   pool_spares=spares)


_MAP_DIR = re.compile(r"/[A-Za-z0-9._/-]+")


def crt_list_dir(config: Path) -> str:
    """The folder of the shared HTTPS frontend's crt-list: next to the config, as the map
    files; "" (the apps' certificates on its bind line, as before) when HAProxy could
    not read that path unquoted."""
    folder = f"{config.resolve()}.d"
    return folder if _MAP_DIR.fullmatch(folder) else ""


class _WebServer(uvicorn.Server):
    """uvicorn without its own SIGTERM/SIGINT handlers: they would replace the daemon's
    while the server runs (and log nothing); the daemon stops the server itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


ACCEPT_ERROR_EVERY = 10.0


class AcceptErrors:
    """A loop exception handler that says "cannot accept" once per ACCEPT_ERROR_EVERY
    seconds, with a count, and passes everything else on.

    Out of file descriptors, asyncio logs "socket.accept() out of system resource" with a
    traceback for every accept it tries, up to the listener's backlog (uvicorn: 2048)
    each time the socket is readable: measured, 7,000 tracebacks (42,000 lines) a second
    for as long as it lasted, 885,000 lines in 20 s."""

    def __init__(self, other: Callable[[dict[str, Any]], object],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._other = other
        self._clock = clock
        self._last = -float("inf")
        self._missed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != "socket.accept() out of system resource":
            self._other(context)
            return
        now = self._clock()
        if now - self._last < ACCEPT_ERROR_EVERY:
            self._missed += 1
            return
        exc = context.get("exception")
        log.error("--listen cannot accept connections: %s%s; /healthz, /metrics and "
                  "/status answer again once file descriptors are free", exc or "?",
                  f" ({self._missed} more times in the last {now - self._last:.0f}s)"
                  if self._missed else "")
        self._last, self._missed = now, 0


def _operator_signals(loop: asyncio.AbstractEventLoop, engine: Engine) -> None:
    """SIGHUP: reload HAProxy (reason ``manual``), re-reading templates and certificate
    files; SIGUSR1: full resync from Marathon. The daemon keeps running."""
    def hup() -> None:
        log.info("SIGHUP received; re-reading templates and reloading HAProxy (manual)")
        engine.request_reload(ReloadReason.MANUAL)

    def usr1() -> None:
        log.info("SIGUSR1 received; full resync from Marathon")
        engine.request_full_sync()

    loop.add_signal_handler(signal.SIGHUP, hup)
    loop.add_signal_handler(signal.SIGUSR1, usr1)


STATUS_INTERVAL = 5.0


def status_line(engine: Engine) -> str:
    """What ``systemctl status`` shows once HAProxy serves the config from Marathon."""
    services = sum(1 for shape in engine.layout.values() if shape.app_id)
    left_out = len(engine.app_errors) + len(engine.state.problem_list())
    return (f"HAProxy serves the config from Marathon: {services} services of "
            f"{len(engine.state.apps)} apps; {engine.reloads} reloads, "
            f"{engine.runtime_updates} runtime updates"
            + (f"; {left_out} problems (see /status)" if left_out else ""))


async def _tell_status(engine: Engine, notifier: Notifier) -> None:
    """Keep ``systemctl status`` current: once HAProxy first serves the config, then
    whenever the line changes (looked at every STATUS_INTERVAL; cancelled at stop)."""
    await engine.ready.wait()
    last = None
    while notifier.address:  # a send that failed gave up for good
        line = status_line(engine)
        if line != last:
            notifier.send(STATUS=line)
            last = line
        await asyncio.sleep(STATUS_INTERVAL)


def _lock_config(config: Path, socket: Path) -> list[ConfigLock]:
    """One daemon per --haproxy-config and per --haproxy-socket (haproxy/lock.py): a
    second one refuses to start. The socket's folder may belong to an HAProxy started
    elsewhere: where no lock can be made there, the config's lock alone is taken."""
    from .cli import CliError

    locks: list[ConfigLock] = []
    try:
        locks.append(ConfigLock(config).acquire())
        try:
            locks.append(ConfigLock(socket, "--haproxy-socket").acquire())
        except OSError as exc:
            log.warning("--haproxy-socket %s: cannot create the lock %s (%s); a second "
                        "daemon on this socket is not detected", socket, lock_path(socket),
                        exc.strerror or exc)
    except ConfigInUse as exc:
        for lock in locks:
            lock.release()
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"--haproxy-config {config}: cannot create the lock "
                       f"{lock_path(config)}: {exc.strerror or exc}") from None
    return locks


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
    from .cli import (
        UsageError,
        check_haproxy_bin,
        check_socket_path,
        marathon_client,
        settings_from,
        sockets_clash,
        templates_dir,
    )
    from .engine import Engine, EngineConfig

    notifier = Notifier.from_environment()  # first: no child may inherit NOTIFY_SOCKET
    settings = replace(settings_from(args), reserved_ports=(args.listen[1],),
                       crt_list_dir="" if args.dry_run  # which touches no file
                       else crt_list_dir(Path(args.haproxy_config)))
    if args.service_port_range:
        settings = range_settings(settings, args.service_port_range, args.pool_spares,
                                  Path(args.haproxy_config))
    templates = templates_dir(args)
    check_haproxy_bin(args.haproxy_bin)
    if not (args.start_haproxy or args.reload_command or args.haproxy_master_socket
            or args.dry_run):
        args.reload_command = detect_reload_command()
        if args.reload_command is None:
            raise UsageError("say how HAProxy is reloaded: --start-haproxy, "
                           "--haproxy-master-socket PATH or --reload-command CMD")
        log.info("no reload mode given; reloading with %r, as servicerouter.py did",
                 args.reload_command)
    if args.keep_haproxy_on_exit and not args.start_haproxy:
        raise UsageError("--keep-haproxy-on-exit goes with --start-haproxy (an HAProxy started "
                       "elsewhere is never stopped by servicerouter)")
    if args.start_haproxy and not args.haproxy_master_socket:
        args.haproxy_master_socket = str(Path(args.haproxy_config).with_suffix(".master.sock"))
    check_socket_path("--haproxy-master-socket", args.haproxy_master_socket)
    clash = sockets_clash(args.haproxy_master_socket, settings.socket_path)
    if clash:
        raise UsageError(f"{clash} (they took the file from each other)")
    config = EngineConfig(
        settings=settings,
        templates=templates,
        update_strategy=args.update_strategy,
        resync_interval=max(args.resync_interval, 1.0),
        reconcile_interval=max(args.reconcile_interval, 0.5),
        min_reload_interval=args.min_reload_interval,
        coalesce_window=args.coalesce_ms / 1000.0,
        drain_seconds=args.drain_seconds,
        stall_timeout=max(args.stall_timeout, 1.0),
        max_event_bytes=args.max_event_bytes,
        owners_file=None if args.dry_run else owners_path(Path(args.haproxy_config)),
        allow_empty_marathon=args.allow_empty_marathon,
        tenant_reload_interval=args.tenant_reload_interval,
        tenant_reload_burst=args.tenant_reload_burst,
    )
    metrics = Metrics()

    def on_request(endpoint: str, outcome: str, _seconds: float) -> None:
        metrics.marathon_requests.labels(endpoint, outcome).inc()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrors(loop.default_exception_handler))

    def stopping(name: str) -> None:
        log.info("%s received; stopping (HAProxy %s)", name,
                 "stops too" if args.start_haproxy and not args.keep_haproxy_on_exit
                 else "keeps serving")
        notifier.send(STOPPING="1")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        loop.add_signal_handler(sig, stopping, sig.name)
    # Signals whose default action would end the daemon without a word.
    quiet_killers = ("SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR",
                     "SIGXCPU", "SIGXFSZ")
    for sig in (getattr(signal, n) for n in quiet_killers if hasattr(signal, n)):
        loop.add_signal_handler(sig, log.warning, "%s ignored (SIGHUP reloads HAProxy, "
                                "SIGUSR1 resyncs from Marathon, SIGTERM stops)", sig.name)
    for sig in (signal.SIGHUP, signal.SIGUSR1):  # until the engine exists
        loop.add_signal_handler(sig, log.warning, "%s ignored: still starting", sig.name)

    host, port = args.listen
    listener = _bind("--listen", host, port)
    # The engine acts through these three; --dry-run swaps in stand-ins that print.
    runtime: Any
    writer: Any
    reloader: Any
    if args.dry_run:
        from .dryrun import dry_run_parts

        runtime, writer, reloader = dry_run_parts(args, settings.socket_path)
    else:
        writer = ConfigFile(Path(args.haproxy_config), args.haproxy_bin,
                            crt_list_dir=settings.crt_list_dir)
        reloader = build_reloader(args, writer)
        runtime = RuntimeClient(settings.socket_path)
    async with marathon_client(args, on_request=on_request) as marathon:
        locks = [] if args.dry_run else _lock_config(Path(args.haproxy_config),
                                                       Path(settings.socket_path))
        try:  # the locks go with the daemon, also when it fails to start
            if locks:  # ours alone now: what a killed predecessor left goes
                writer.cleanup()
            resolver = CachingResolver(background=True)  # DNS never blocks the loop
            engine = Engine(config, marathon, runtime, writer, reloader, metrics, resolver)
            resolver.on_resolved = engine.request_full_sync  # routes a newly resolved agent
            _operator_signals(loop, engine)
            from .web import GuardedH11Protocol, create_app

            server = _WebServer(uvicorn.Config(create_app(engine), host=host, port=port,
                                                   log_level="warning", lifespan="off",
                                                   log_config=None, http=GuardedH11Protocol))
            web = asyncio.ensure_future(server.serve(sockets=[listener]))
            log.info("servicerouter listening on http://%s:%d (metrics, healthz, status, config)",
                     host, port)
            # Signal handlers and the listener are in place: systemd may send a reload now.
            notifier.send(READY="1", STATUS="started; waiting for the first config to be live")
            status = asyncio.ensure_future(_tell_status(engine, notifier))
            try:
                await unless_stopped(reloader.start(engine), stop)
                await engine.run(stop)
            finally:
                status.cancel()
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(web, 5)
                await reloader.stop()
                await kill_children()
                writer.cleanup()
                resolver.close()
        finally:
            for lock in locks:
                lock.release()
    log.info("servicerouter stopped")
    return 0
