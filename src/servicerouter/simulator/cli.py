"""``servicerouter simulate``: run the Marathon simulator from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any, NoReturn

from .model import JsonDict
from .server import SimulatorServer

PROG = "servicerouter simulate"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _range(value: str) -> tuple[int, int]:
    lo, sep, hi = value.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or not 0 < int(lo) <= int(hi) <= 65535:
        raise argparse.ArgumentTypeError(f"expected LO-HI (e.g. 31000-32000), got {value!r}")
    return int(lo), int(hi)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value!r}")
    return seconds


def _credentials(value: str) -> str:
    if ":" not in value or value.startswith(":"):
        raise argparse.ArgumentTypeError("expected USER:PASS")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="A simulator of Marathon's REST API (1.5-1.10).")
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8080)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "none"),
        default="local",
        help="local: run each task's cmd on 127.0.0.1; none: start nothing",
    )
    p.add_argument(
        "--apps",
        metavar="FILE",
        help='JSON file, {"apps": [...]} or a list of app definitions, created at start',
    )
    p.add_argument(
        "--standby-of",
        metavar="URL",
        help="be a standby of this leader (redirect /v2/events, proxy the rest)",
    )
    p.add_argument(
        "--credentials", type=_credentials, metavar="USER:PASS", help="require HTTP basic auth"
    )
    p.add_argument(
        "--heartbeat-interval",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="event stream heartbeat interval (default 10)",
    )
    p.add_argument(
        "--kill-grace",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="SIGTERM -> SIGKILL grace (fake executor: KILLING -> KILLED delay)",
    )
    p.add_argument(
        "--task-start-delay",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="delay before a task starts (default 0)",
    )
    p.add_argument(
        "--port-range",
        type=_range,
        default=(31000, 32000),
        metavar="LO-HI",
        help="host ports for tasks (default 31000-32000)",
    )
    p.add_argument(
        "--task-log-dir",
        metavar="DIR",
        help="local executor: append each task's stdout and stderr to DIR/<task id>.log "
        "(default: discarded)",
    )
    p.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    return p


def load_apps(path: str) -> list[JsonDict]:
    try:
        with open(path, encoding="utf-8") as fh:
            data: Any = json.load(fh)
    except OSError as exc:
        raise UsageError(f"--apps {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--apps {path}: invalid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("apps"), list):
        data = data["apps"]
    if not isinstance(data, list) or not all(isinstance(a, dict) for a in data):
        raise UsageError(f'--apps {path}: expected {{"apps": [...]}} or a list of app objects')
    return data


async def _run(args: argparse.Namespace, apps: list[JsonDict]) -> int:
    host, port = args.listen
    sim = SimulatorServer(
        host,
        port,
        executor=args.executor,
        apps=apps,
        standby_of=args.standby_of,
        credentials=args.credentials,
        heartbeat_interval=args.heartbeat_interval,
        kill_grace=args.kill_grace,
        task_start_delay=args.task_start_delay,
        port_range=args.port_range,
        task_log_dir=args.task_log_dir,
        log_level="warning" if args.log_level == "info" else args.log_level,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    role = f"standby of {args.standby_of}" if args.standby_of else "leader"
    logging.getLogger("servicerouter.simulator").info(
        "Marathon simulator (%s, executor %s) on %s", role, args.executor, sim.url
    )
    await sim.serve_until(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        apps = load_apps(args.apps) if args.apps else []
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(_run(args, apps))
    except OSError as exc:
        print(
            f"{PROG}: error: cannot listen on {args.listen[0]}:{args.listen[1]}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # e.g. an invalid app in --apps (422 details)
        details = getattr(exc, "details", None)
        text = f"{exc}: {json.dumps(details)}" if details else str(exc)
        print(f"{PROG}: error: {text}", file=sys.stderr)
        return 1
