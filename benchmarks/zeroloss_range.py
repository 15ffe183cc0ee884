"""Zero loss with ``--service-port-range`` (issue #13): the zero-loss benchmark's ``new
apps`` phase, wrk on keep-alive connections, each new app taking a spare backend and a
``ports.map`` entry instead of a reload. See :mod:`benchmarks.zeroloss`."""

from __future__ import annotations

from .common import Context, Table
from .zeroloss import run_range


def run(ctx: Context) -> list[Table]:
    return run_range(ctx)
