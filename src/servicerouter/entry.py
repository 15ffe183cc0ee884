"""The ``servicerouter`` command's first instructions (also ``python -m servicerouter``).

A daemon run takes SIGHUP and SIGUSR1 as "nothing to reload yet" from here on, before
the ~0.1-0.3 s of imports that follow: a ``kill -HUP`` or a supervisor's reload sent
while Python loads the daemon used to end it (SIGHUP's default action). The daemon's
own handlers replace these once it can reload.

``render`` and ``sync`` catch SIGTERM and SIGINT from here on in the same way: one received
while Python loads them (a stop a supervisor sends as a cron job starts) is noted, and
the command stops as soon as it can act on it, before it touches any file (exit 143 or
130). It was SIGTERM's default action, status -15. After their run (stopping.py), one
is noted again, for the last moments before the exit.

What is left is the interpreter's own start, before any of our code runs (~20 ms).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence


def _starting(signum: int, frame: object) -> None:
    """SIGHUP or SIGUSR1 before the daemon's handlers exist: nothing to reload yet."""


def ignore_reloads_while_starting() -> None:
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, _starting)


_stops: list[int] = []  # the first SIGTERM or SIGINT catch_stops() noted


def _stop(signum: int, frame: object) -> None:
    """SIGTERM or SIGINT before (or after) a one-shot command's own handling: noted."""
    if not _stops:
        _stops.append(signum)


def catch_stops() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)


def stop_received() -> int | None:
    """The signal catch_stops() noted, if any."""
    return _stops[0] if _stops else None


def runs_oneshot(argv: Sequence[str]) -> bool:
    """Whether these arguments run ``render`` or ``sync``."""
    return bool(argv) and argv[0] in ("render", "sync")


def runs_daemon(argv: Sequence[str]) -> bool:
    """Whether these arguments start the daemon: ``run``, or the old ``servicerouter.py``
    invocation (flags and no subcommand)."""
    return bool(argv) and (argv[0] == "run" or (
        argv[0].startswith("--") and argv[0] not in ("--help", "--version")))


def main() -> int:
    if runs_daemon(sys.argv[1:]):
        ignore_reloads_while_starting()
    elif runs_oneshot(sys.argv[1:]):
        catch_stops()
    from .cli import main as cli_main

    return cli_main()
