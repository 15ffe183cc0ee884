"""The ``servicerouter`` command's first instructions (also ``python -m servicerouter``).

A daemon run takes SIGHUP and SIGUSR1 as "nothing to reload yet" from here on, before
the ~0.1-0.3 s of imports that follow: a ``kill -HUP`` or a supervisor's reload sent
while Python loads the daemon used to end it (SIGHUP's default action). The daemon's
own handlers replace these once it can reload. What is left is the interpreter's own
start, before any of our code runs (~20 ms).
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


def runs_daemon(argv: Sequence[str]) -> bool:
    """Whether these arguments start the daemon: ``run``, or the old ``servicerouter.py``
    invocation (flags and no subcommand)."""
    return bool(argv) and (argv[0] == "run" or (
        argv[0].startswith("--") and argv[0] not in ("--help", "--version")))


def main() -> int:
    if runs_daemon(sys.argv[1:]):
        ignore_reloads_while_starting()
    from .cli import main as cli_main

    return cli_main()
