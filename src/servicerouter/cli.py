"""Command line: argument parsing and wiring only.

``servicerouter render|run|sync|simulate``. Every ``run``, ``render`` and ``sync``
flag can also come from the environment as ``SERVICEROUTER_<FLAG>`` (:mod:`.envflags`).
Invoked with no subcommand but with flags
(``servicerouter --marathon URL --haproxy-config PATH``), it runs the daemon,
as the old ``servicerouter.py`` did.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .entry import ignore_reloads_while_starting, runs_daemon, stop_received
from .envflags import apply_env, env_errors
from .layout import Settings
from .redact import hidden, redact_url

if TYPE_CHECKING:
    from .oneshot import Rendered

SUBCOMMANDS = ("render", "run", "sync", "simulate")
_CERT_PATH = re.compile(r"^/[A-Za-z0-9._/-]{1,1023}$")
_SNIPPET_FILE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class CliError(Exception):
    """A one-line error for the operator; exit status 1."""


class UsageError(CliError):
    """A flag's value, or a combination of flags, that cannot work whatever the host's
    state: exit status 2, as argparse's own errors, which a supervisor can tell from
    a failure worth restarting for (the systemd units: RestartPreventExitStatus=2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        errors = env_errors(self)  # a bad SERVICEROUTER_* of this command's flags
        if errors:
            self.error(errors[0])
        return super().parse_known_args(args, namespace)


def _port(value: str) -> int:
    if not value.strip().isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0-65535)")
    return int(value)


def _bind_address(value: str) -> str:
    """An address HAProxy can bind: an IP, a host name, or * (it goes into haproxy.cfg
    as it is, so nothing else: a space or a newline would break or extend the config)."""
    text = value.strip()
    if text in ("", "*") or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", text):
        return text
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an IP address, a host name or *") from None


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in low..high (a typo of 10**6 slots per backend
    would render, validate and reload a config of millions of servers)."""
    def count(value: str) -> int:
        text = value.strip()
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number in {low}-{high}")
        return int(text)
    return count


def templates_dir(args: argparse.Namespace) -> Path | None:
    """``--templates DIR``, which must exist (a typo must not silently mean the
    built-in templates)."""
    if not args.templates:
        return None
    path = Path(args.templates)
    if not path.is_dir():
        raise CliError(f"--templates {args.templates}: no such directory")
    return path


def _grace(value: str) -> int:
    """An argparse type: --haproxy-grace, ``auto`` (-1) or 0-60 seconds, as whole
    milliseconds."""
    if value.strip().lower() == "auto":
        return -1
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 60:
        raise argparse.ArgumentTypeError(f"{value!r} is not auto or a number of seconds "
                                         "in 0-60")
    return round(seconds * 1000)


def positive_seconds(value: str) -> float:
    """An argparse type: a finite number of seconds above 0 (0 would spin: a full sync, a
    reconcile or a stream reconnect every few milliseconds; inf would wait for ever)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):  # inf: a Marathon that never answers would hang us
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds > 0")
    return seconds


def _add_marathon(p: argparse.ArgumentParser, required: bool, routes: bool = True) -> None:
    """Marathon's flags; ``routes``: the command replaces what HAProxy routes (run, sync)."""
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="how much to log, on stderr")
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text, or one JSON object per line for log shippers")
    g = p.add_argument_group("Marathon")
    g.add_argument("--marathon", action="append", metavar="URL", default=None,
                   required=required, help="Marathon base URL; repeat for a cluster")
    g.add_argument("--marathon-credentials", metavar="USER:PASS",
                   help="HTTP basic auth for Marathon")
    g.add_argument("--dcos-token", metavar="JWT", help="DC/OS auth token for Marathon")
    g.add_argument("--marathon-ca", metavar="PATH",
                   help="CA bundle to verify Marathon's TLS certificate")
    g.add_argument("--marathon-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                   help="overall deadline of one request to one Marathon URL, body included; "
                        "a slower one is skipped like a dead one (default 30)")
    g.add_argument("--no-verify-tls", action="store_true",
                   help="do not verify Marathon's TLS certificate (not recommended)")
    g.add_argument("--group", action="append", metavar="NAME", default=None,
                   help="only apps whose HAPROXY_GROUP includes NAME; repeatable "
                        "(default: every app)")
    g.add_argument("--health-check", action=argparse.BooleanOptionalAction, default=True,
                   help="route a task of an app with Marathon health checks only when healthy")
    if routes:
        g.add_argument("--allow-empty-marathon", action="store_true",
                       help="apply an answer that lists no apps at all even while apps are "
                            "routed (default: refused, HAProxy keeps its routes; Marathon "
                            "on empty storage answers that way)")


def _add_haproxy_process(p: argparse.ArgumentParser, daemon: bool) -> None:
    """The flags saying which HAProxy to validate and reload and how: one definition for
    ``run`` (``daemon``: it can also start HAProxy) and ``sync``."""
    g = p.add_argument_group("HAProxy process")
    g.add_argument("--haproxy-config", default="/etc/haproxy/haproxy.cfg", metavar="PATH",
                   help="config file servicerouter compares, validates and replaces "
                        "(default %(default)s)")
    g.add_argument("--haproxy-bin", default="haproxy", metavar="PATH",
                   help="haproxy binary for haproxy -c (and for run --start-haproxy) "
                        "(default %(default)s)")
    how = g.add_mutually_exclusive_group()
    if daemon:
        how.add_argument("--start-haproxy", action="store_true",
                         help="start and supervise HAProxy (master-worker) and stop it on exit")
        g.add_argument("--keep-haproxy-on-exit", action="store_true",
                       help="with --start-haproxy: run HAProxy detached, so that it keeps "
                            "serving when servicerouter stops, crashes or is upgraded; a "
                            "restarted servicerouter adopts it (without a reload when nothing "
                            "changed)")
    how.add_argument("--reload-command", metavar="CMD",
                     help="reload with this command (e.g. 'systemctl reload haproxy'); "
                          "default: systemctl or /etc/init.d/haproxy when found")
    # run: also where --start-haproxy puts the master socket, so not exclusive there.
    (g if daemon else how).add_argument(
        "--haproxy-master-socket", metavar="PATH",
        help="HAProxy's master CLI socket (e.g. /run/haproxy-master.sock on Debian): reload "
             "an HAProxy started elsewhere through it and confirm the new worker; with run "
             "--start-haproxy, where HAProxy puts it")


def _add_render(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HAProxy configuration")
    g.add_argument("--haproxy-socket", default="/run/haproxy/admin.sock", metavar="PATH",
                   help="admin stats socket the config declares (default %(default)s)")
    g.add_argument("--stats-port", type=_port, default=9090,
                   help="HAProxy stats + Prometheus exporter port, 0 = none (default 9090)")
    g.add_argument("--stats-address", type=_bind_address, default="127.0.0.1",
                   help="address the stats listener binds (default %(default)s)")
    g.add_argument("--http-port", type=_port, default=80,
                   help="virtual-host HTTP port, bound when a service has a vhost; 0 = none")
    g.add_argument("--https-port", type=_port, default=443,
                   help="virtual-host HTTPS port, bound when a service has a vhost and a "
                        "certificate exists; 0 = none")
    g.add_argument("--ssl-certs", action="append", metavar="PEM[,PEM]", default=None,
                   help="certificates for the HTTPS frontend; repeatable or comma-separated "
                        "(marathon-lb's form)")
    g.add_argument("--slots-min-free", type=whole_number(0, 1000), default=2,
                   help="free server slots each backend keeps at least (default 2)")
    g.add_argument("--slots-increment", type=whole_number(1, 1000), default=4,
                   help="backends grow in blocks of this many slots (default 4)")
    g.add_argument("--haproxy-grace", type=_grace, default="auto", metavar="auto|SECONDS",
                   help="after a reload, the old worker keeps accepting connections this long "
                        "(HAProxy's 'grace'), so that the new one's start is no pause for "
                        "clients; 0 = none; auto: 1 from 2,000 services on, else 0 (default "
                        "auto, at most 60)")
    g.add_argument("--templates", metavar="DIR",
                   help="folder of templates that replace the built-in ones by file name; "
                        "snippets/NAME.j2 in it are selectable with HAPROXY_{n}_SNIPPET=NAME")
    g.add_argument("--allow-label-templates", action="store_true",
                   help="trusted clusters only: honour the template labels HAPROXY_{n}_"
                        "FRONTEND_HEAD, _BACKEND_HEAD and _BACKEND_HTTP_OPTIONS; each such app "
                        "is validated alone and left out if broken")
    g.add_argument("--strict-mode", action="store_true",
                   help="expose only services labelled HAPROXY_{n}_ENABLED=true (marathon-lb)")
    g.add_argument("--syslog-socket", metavar="PATH|IP:PORT", default=None,
                   help="HAProxy logs to this syslog socket (marathon-lb: /dev/log); "
                        "default: no HAProxy logging")
    g.add_argument("--min-serv-port-ip-per-task", type=_port, default=10050, metavar="PORT",
                   help="IP-per-task apps without a service port get one from this range; "
                        "0 = off (default %(default)s)")
    g.add_argument("--max-serv-port-ip-per-task", type=_port, default=10100, metavar="PORT",
                   help="upper end of that range (default %(default)s)")
    g.add_argument("--app-id-port", type=_port, default=0,
                   help="port of the frontend routing by X-Marathon-App-Id (marathon-lb: "
                        "9091, which is our --listen default); 0 = none (default)")
    g = p.add_argument_group("multi-tenant safety (README: Multi-tenant safety)")
    g.add_argument("--ssl-cert-dir", action="append", metavar="DIR", default=None,
                   help="folder apps' HAPROXY_{n}_SSL_CERT files may come from (symlinks "
                        "resolved, may not lead out); repeatable; the --ssl-certs files are "
                        "allowed too (default: none)")
    g.add_argument("--vhost-policy", choices=["group", "exclusive", "open"], default="group",
                   help="who may use a virtual host another app claimed first: group: apps "
                        "of its top-level Marathon group, by path; exclusive: nobody; open: "
                        "anyone (single tenant) (default group)")
    g.add_argument("--max-servers-per-backend", type=whole_number(0, 1_000_000), default=2000,
                   metavar="N",
                   help="an app's service routes to at most its first N tasks (by task id), "
                        "so one app cannot make validating and reloading slow for all; "
                        "0 = no cap (default 2000)")


# What --help (and an error about its variable) shows of these flags' values: the
# defaults shown come from the environment, where the secrets are.
SHOWN = {"--marathon": redact_url, "--marathon-credentials": hidden, "--dcos-token": hidden}


def build_parser(env: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = dict(os.environ) if env is None else env
    parser = _Parser(prog="servicerouter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"servicerouter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    render = sub.add_parser("render", help="print a haproxy.cfg for the current Marathon state")
    _add_marathon(render, required=False, routes=False)
    render.add_argument("--apps-json", metavar="FILE",
                        help="render from a saved /v2/apps payload instead of Marathon")
    render.add_argument("--output", "-o", metavar="PATH",
                        help="write the config atomically here instead of stdout; refused (exit 1, "
                             "nothing written) while a daemon or a sync manages PATH")
    render.add_argument("--mesos-dns", metavar="DOMAIN",
                        help="Mesos-DNS mode: backends are server-template slots HAProxy "
                             "resolves from the SRV records _<app>._tcp.DOMAIN (e.g. "
                             "marathon.mesos); no daemon needed")
    render.add_argument("--dns-resolver", metavar="IP:PORT",
                        help="with --mesos-dns: the Mesos-DNS server HAProxy asks")
    _add_render(render)
    from .daemon import add_range_arguments

    add_range_arguments(render, files="<--output>.d")

    run = sub.add_parser("run", help="the daemon: keep HAProxy routing Marathon's tasks")
    _add_marathon(run, required=False)
    _add_render(run)
    _add_haproxy_process(run, daemon=True)
    from .daemon import add_run_arguments  # keeps the daemon's flags next to its wiring

    add_run_arguments(run)

    sync = sub.add_parser("sync", help="for cron: fetch, render, and only if the config "
                                       "changed validate, replace and reload HAProxy")
    _add_marathon(sync, required=False)
    _add_render(sync)
    _add_haproxy_process(sync, daemon=False)
    add_range_arguments(sync)

    sub.add_parser("simulate", help="a Marathon API simulator (see simulate --help)",
                   add_help=False)
    for p in (render, run, sync):
        apply_env(p, env, SHOWN)
    return parser


# HAProxy 2.6 refuses a UNIX socket path longer than this ("socket path ... too long
# (max 97)"): a clear error at start beats a candidate config rejected at every reload.
MAX_SOCKET_PATH = 97


def check_socket_path(flag: str, path: str | None) -> None:
    if path and len(path) > MAX_SOCKET_PATH:
        raise UsageError(f"{flag} {path}: {len(path)} characters; HAProxy takes socket paths "
                       f"of at most {MAX_SOCKET_PATH}")


def sockets_clash(master: str | None, stats: str | None) -> str | None:
    """Why ``--haproxy-master-socket`` cannot be ``master`` next to ``--haproxy-socket``
    ``stats`` (one path for both: the master and its worker take the file from each
    other), or None."""
    if master and stats and os.path.abspath(master) == os.path.abspath(stats):
        return (f"--haproxy-master-socket {master} is also --haproxy-socket: HAProxy's "
                "master CLI and its worker's stats socket need a path each")
    return None


def check_config_path(path: str | None) -> None:
    """``--haproxy-config`` must name a file. Empty, it failed as "PosixPath('.') has an
    empty name", naming no flag; a folder, the daemon ran and failed every write."""
    if path is None:
        return
    if not path.strip():
        raise UsageError("--haproxy-config is empty: give the path of the config file "
                         "HAProxy runs from")
    if os.path.isdir(path):
        raise CliError(f"--haproxy-config {path}: is a directory, not the config file")


def settings_from(args: argparse.Namespace) -> Settings:
    check_socket_path("--haproxy-socket", args.haproxy_socket)
    check_config_path(getattr(args, "haproxy_config", None))
    if args.max_servers_per_backend < 0:
        raise UsageError("--max-servers-per-backend must be >= 0 (0: no cap)")
    for flag in ("slots_min_free", "slots_increment"):
        if getattr(args, flag) < (0 if flag == "slots_min_free" else 1):
            raise UsageError(f"--{flag.replace('_', '-')} must be "
                           f"{'>= 0' if flag == 'slots_min_free' else '>= 1'}")
    low, high = args.min_serv_port_ip_per_task, args.max_serv_port_ip_per_task
    if low and high < low:
        raise UsageError(f"--max-serv-port-ip-per-task {high} is below "
                       f"--min-serv-port-ip-per-task {low}")
    return Settings(
        ip_per_task_ports=(low, high),
        allow_label_templates=args.allow_label_templates,
        strict_mode=args.strict_mode,
        syslog_socket=syslog_target(args.syslog_socket),
        app_id_port=args.app_id_port,
        daemon_address=_daemon_address(getattr(args, "listen", None)),
        snippets=snippet_names(args.templates),
        socket_path=args.haproxy_socket,
        grace_ms=args.haproxy_grace,
        stats_port=args.stats_port,
        stats_address=args.stats_address,
        http_port=args.http_port,
        https_port=args.https_port,
        ssl_certs=split_certs(args.ssl_certs),
        slots_min_free=args.slots_min_free,
        slots_increment=args.slots_increment,
        health_check=args.health_check,
        groups=tuple(args.group or ()),
        ssl_cert_dirs=tuple(args.ssl_cert_dir or ()),
        vhost_policy=args.vhost_policy,
        max_servers_per_backend=args.max_servers_per_backend,
        haproxy_bin=getattr(args, "haproxy_bin", "haproxy"),
    )


def split_certs(values: Sequence[str] | None) -> tuple[str, ...]:
    """``--ssl-certs a,b --ssl-certs c`` → (a, b, c): each an absolute file path."""
    certs = [c.strip() for v in values or () for c in v.split(",") if c.strip()]
    for c in certs:
        if not _CERT_PATH.match(c) or "/../" in c:
            raise UsageError(f"--ssl-certs: {c!r} is not an absolute path of [A-Za-z0-9._/-]")
    certs = list(dict.fromkeys(certs))
    from .haproxy.render import BIND_LINE_CERTS

    if len(certs) >= BIND_LINE_CERTS:  # else an app's certificate would break every reload
        raise UsageError(
            f"--ssl-certs names {len(certs)} files: HAProxy 2.6 reads 64 words of a line, "
            f"room for {BIND_LINE_CERTS - 1} of them and the apps' crt-list on the HTTPS "
            "frontend's bind line; name a folder instead of its files (HAProxy loads "
            "every file in it)")
    return tuple(certs)


def syslog_target(value: str | None) -> str | None:
    """An absolute socket path or IP:PORT for HAProxy's ``log`` line, or None."""
    if not value:
        return None
    if _CERT_PATH.match(value) and "/../" not in value:
        return value
    host, sep, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        if sep and port.isdigit() and 0 < int(port) < 65536:
            return value
    except ValueError:
        pass
    raise UsageError(f"--syslog-socket {value!r} is neither an absolute socket path nor IP:PORT")


def snippet_names(templates: str | None) -> tuple[str, ...]:
    """Names of the operator's snippets: ``<templates>/snippets/<name>.j2``."""
    if not templates:
        return ()
    folder = Path(templates) / "snippets"
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.stem for p in folder.glob("*.j2")
                        if p.is_file() and _SNIPPET_FILE.match(p.stem)))


def _daemon_address(listen: tuple[str, int] | None) -> str:
    """Where HAProxy's stats frontend forwards marathon-lb's endpoints: the daemon's web."""
    if not listen:
        return ""
    host, port = listen
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"ipv6@{host}:{port}" if ":" in host else f"{host}:{port}"


def marathon_client(args: argparse.Namespace, **kw: Any) -> Any:
    from .marathon.client import MarathonClient

    if not args.marathon:
        raise UsageError("--marathon URL is required (or SERVICEROUTER_MARATHON)")
    auth = None
    if args.marathon_credentials:
        user, sep, password = args.marathon_credentials.partition(":")
        if not sep:
            raise UsageError("--marathon-credentials must be USER:PASS")
        auth = (user, password)
    verify: bool | str = False if args.no_verify_tls else (args.marathon_ca or True)
    return MarathonClient(args.marathon, auth=auth, dcos_token=args.dcos_token,
                          verify=verify, request_timeout=args.marathon_timeout, **kw)


async def _render(args: argparse.Namespace) -> int:
    from .haproxy.lock import ConfigLock

    if not args.output:
        rendered = await render_config(args)
        sys.stdout.write(rendered.text)
        return 0
    target = Path(args.output)  # checked before anything is fetched
    if not target.parent.is_dir():
        raise CliError(f"--output {args.output}: directory {target.parent} does not exist")
    # A daemon (or a sync) that manages this file holds its lock: writing it (and its map
    # files) behind that one's back would leave HAProxy a config nobody drives.
    with ConfigLock(target, "--output").held(CliError, "nothing was written"):
        return await _render_to(args, target)


async def _render_to(args: argparse.Namespace, target: Path) -> int:
    from .haproxy.files import CONFIG_MODE, atomic_write
    from .oneshot import write_maps

    rendered = await render_config(args)
    try:  # the maps first: the config never names a map file that is not there
        write_maps(rendered.map_dir, rendered.maps)
        atomic_write(target, rendered.text, new_mode=CONFIG_MODE)
    except OSError as exc:
        raise CliError(f"--output {args.output}: {exc.strerror or exc}") from None
    return 0


async def render_text(args: argparse.Namespace) -> str:
    """Fetch (or read ``--apps-json``) and render one config; messages go to stderr."""
    return (await render_config(args)).text


async def render_config(args: argparse.Namespace) -> Rendered:
    """:func:`render_text` with, in range mode, the map files the config reads."""
    from . import hostfacts, owners, pool
    from .haproxy.render import render
    from .layout import build_layout
    from .marathon.parse import parse_apps, refuse_empty
    from .oneshot import Rendered
    from .portassign import assign_all
    from .resolve import CachingResolver
    from .state import ClusterState

    settings = settings_from(args)
    # sync: --haproxy-config; render: --output (to stdout, the bind line names them all)
    written = getattr(args, "haproxy_config", None) or getattr(args, "output", None)
    if written:
        from dataclasses import replace

        from .daemon import crt_list_dir

        settings = replace(settings, crt_list_dir=crt_list_dir(Path(written)))
    if getattr(args, "service_port_range", None):  # checked before anything is fetched
        settings = _range_settings(args, settings)
    templates = templates_dir(args)  # checked before anything is fetched
    dns = None
    if getattr(args, "mesos_dns", None):  # checked before anything is fetched
        from .mesosdns import MesosDNS, parse_domain, parse_resolver

        if not args.dns_resolver:
            raise UsageError("--mesos-dns needs --dns-resolver IP:PORT (Mesos-DNS's address)")
        try:
            dns = MesosDNS(parse_domain(args.mesos_dns), parse_resolver(args.dns_resolver))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if getattr(args, "apps_json", None):
        try:
            payload = json.loads(Path(args.apps_json).read_bytes())
        except OSError as exc:
            raise CliError(f"--apps-json {args.apps_json}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise CliError(f"--apps-json {args.apps_json}: not JSON ({exc})") from None
        except ValueError as exc:  # bytes that are not UTF-8 (or -16, -32)
            raise CliError(f"--apps-json {args.apps_json}: not JSON text ({exc})") from None
        source = args.apps_json
    else:
        async with marathon_client(args) as client:
            fetched = await client.get_apps()
        payload, source = fetched.data, fetched.url
    result = parse_apps(payload, source, CachingResolver(), settings.allow_label_templates)
    kept = getattr(args, "haproxy_config", None)  # sync: the owners its last run served
    prior = owners.load(owners.owners_path(Path(kept))) if kept else None
    if prior is not None and not args.allow_empty_marathon:
        refuse_empty(result, source, len(set(prior.ports.values())),
                     "--allow-empty-marathon applies it")
    result.apps, assigned = assign_all(result.apps, settings, prior.ports if prior else None)
    for message in [*map(str, result.errors), *result.warnings, *assigned]:
        print(f"servicerouter: {message}", file=sys.stderr)
    if settings.allow_label_templates:  # each such app rendered and validated alone first,
        from .haproxy.process import validate  # as the daemon does: one broken app is left
        from .label_templates import TemplateVetting  # out, not every run failed

        async def check(text: str) -> tuple[bool, str]:
            checked = await validate(text, getattr(args, "haproxy_bin", "haproxy"))
            return checked.ok, checked.output

        result.apps, broken = await TemplateVetting(settings, templates, check).vet(
            result.apps)
        for app_id, message in broken.items():
            print(f"servicerouter: app {app_id}: {message}", file=sys.stderr)
    if dns is not None:  # backends resolved by HAProxy from Mesos-DNS: the apps it can name
        from .mesosdns import admit

        result.apps, left_out = admit(list(result.apps))
        for message in left_out:
            print(f"servicerouter: {message}", file=sys.stderr)
    # The same admission as the daemon (README: Multi-tenant safety); problems are logged.
    state = ClusterState(settings)
    if prior is not None:
        state.restore_owners(prior)
    state.set_facts(hostfacts.gather(result.apps, settings))
    state.replace_all(result.apps)
    if kept:  # sync: an address HAProxy cannot bind (a port another process holds) passes
        # haproxy -c and fails the reload, every run, for every app: left out first, as
        # the daemon's guard does before each reload (its problems are logged)
        from .guard import Guard
        from .haproxy.control import ConfigFile

        Guard(state, ConfigFile(Path(kept), args.haproxy_bin), settings,
              templates).exclude_unbindable()
    if dns is not None:
        from .mesosdns import render_config as render_dns

        return Rendered(render_dns(state.desired, settings, dns, templates))

    def rendered() -> Rendered:
        layout, table = pool.with_pool(*build_layout(state.desired, {}, settings), {}, settings)
        text = render(layout, table, settings, templates)

        async def isolate(output: str) -> Rendered | None:
            """sync: leave out what haproxy -c blames, as the daemon's guard does."""
            from .guard import Guard
            from .haproxy.control import ConfigFile

            config = ConfigFile(Path(kept or "haproxy.cfg"), args.haproxy_bin)
            guard = Guard(state, config, settings, templates)
            if not await guard.exclude_rejected(layout, table, text, output,
                                                f"{config.path}.rejected", {}):
                return None
            return rendered()

        return Rendered(text, settings.map_dir, pool.map_files(layout, settings),
                        state.owners() if kept else None, isolate if kept else None)

    return rendered()


def _range_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """render/sync --service-port-range: as ``run`` does, the map files next to the config
    (sync: --haproxy-config; render: --output, which it then needs)."""
    from .daemon import range_settings

    config = getattr(args, "haproxy_config", None) or getattr(args, "output", None)
    if getattr(args, "mesos_dns", None):
        raise UsageError("--service-port-range does not combine with --mesos-dns")
    if not config:
        raise UsageError("render --service-port-range needs --output PATH: the config names "
                       "its map files, written next to it in PATH.d")
    return range_settings(settings, args.service_port_range, args.pool_spares, Path(config))


async def _sync(args: argparse.Namespace) -> int:
    from .oneshot import SyncError, sync

    check_config_path(args.haproxy_config)  # before its lock is made next to it
    check_haproxy_bin(args.haproxy_bin)  # not "haproxy -c rejected" after a fetch
    try:
        done = await sync(args, lambda: render_config(args))
    except SyncError as exc:
        raise CliError(str(exc)) from None
    if done:  # cron mails any output: say only what changed
        print(f"servicerouter: {done}")
    return 0


def check_haproxy_bin(path: str) -> None:
    """``--haproxy-bin`` names an executable (``run`` and ``sync`` need ``haproxy -c``)."""
    if shutil.which(path) is None:
        raise CliError(f"--haproxy-bin {path}: no such executable "
                       "(needed for haproxy -c and --start-haproxy)")


def _check_marathon_urls(args: argparse.Namespace) -> None:
    """A --marathon (or $SERVICEROUTER_MARATHON) that is not a URL is a usage error, exit
    2: found when the client was built it exited 1, and a supervisor (the systemd units'
    RestartPreventExitStatus=2) restarted the daemon for ever on a typo."""
    from .marathon.client import parse_marathon_url
    from .marathon.errors import MarathonConfigError

    for url in getattr(args, "marathon", None) or ():
        try:
            parse_marathon_url(url)
        except MarathonConfigError as exc:
            raise UsageError(f"--marathon: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulate":
        from .simulator.cli import main as simulate

        return simulate(argv[1:])
    if runs_daemon(argv) and argv[0] != "run":
        argv = ["run", *argv]  # the old servicerouter.py invocation
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run":  # also when called as a function (entry.py did it already)
        ignore_reloads_while_starting()
    from .logformat import configure

    configure(args.log_level, args.log_format)
    for noisy in ("httpx", "httpcore", "asyncio"):  # one line per request is not news
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    from .haproxy.master_cli import HAProxyProcessError
    from .haproxy.render import TemplateError
    from .marathon.errors import MarathonError
    from .stopping import Stopped, run_stoppable

    try:
        _check_marathon_urls(args)
        if args.command in ("render", "sync"):
            status = run_stoppable((_render if args.command == "render" else _sync)(args))
            late = stop_received()  # after the run, before the exit (entry.catch_stops)
            if late is not None:
                raise Stopped(late)
            return status
        from .daemon import run_daemon

        return asyncio.run(run_daemon(args))
    except Stopped as exc:  # a sync said what became of its files (oneshot.py)
        print(f"servicerouter: {args.command} {exc}", file=sys.stderr)
        return exc.status
    except UsageError as exc:
        print(f"servicerouter: error: {exc} (see --help)", file=sys.stderr)
        return 2
    except (CliError, MarathonError, TemplateError, HAProxyProcessError, OSError,
            ValueError) as exc:
        print(f"servicerouter: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
