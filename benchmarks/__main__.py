"""``python -m benchmarks [--quick] [--all | --only NAME ...] [--json FILE]``: run the
benchmarks, print one table each. ``make bench`` runs the default set, every target of the
scale and churn issues, in one run under 10 minutes on a 2-core machine; the range-mode
benchmarks (``newapp``, ``vhosts``, ``zeroloss_range``: about 5 more minutes) run with
``--all`` (``make bench-all``) or ``--only``. ``--quick`` uses tiny sizes (the smoke test)."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .common import STRATEGIES, Context, Table, machine

DEFAULT = ("runtime", "scale", "convergence", "reloads", "zeroloss", "tail", "subscribers",
           "slots")
# Range mode (issue #13, ~260 s more) and certificate admission (~15 s): not in the
# default run.
EXTRA = ("newapp", "vhosts", "zeroloss_range", "certs")
ORDER = (*DEFAULT, *EXTRA)


def run(names: list[str], quick: bool, strategies: list[str] | None = None,
        tmp: Path | None = None) -> list[Table]:
    own = tmp is None
    root = tmp or Path(tempfile.mkdtemp(prefix="sr-bench-"))
    ctx = Context(root, quick=quick, strategies=tuple(strategies or STRATEGIES))
    tables: list[Table] = []
    try:
        for name in names:
            mod = importlib.import_module(f"benchmarks.{name}")
            t0 = time.monotonic()
            print(f"== {name} ...", file=sys.stderr, flush=True)
            got = mod.run(ctx)
            print(f"== {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
            for t in got:
                print(t.markdown(), flush=True)
            tables.extend(got)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return tables


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (kill, a CI runner's timeout) unwinds like Ctrl-C: every stack's exit stops
    # the simulator, daemon and HAProxy it started. Left to its default, the benchmark
    # died alone and they kept running (and holding ports).
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--only", action="append", choices=ORDER, metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(ORDER)}")
    ap.add_argument("--all", action="store_true",
                    help=f"also the range-mode benchmarks ({', '.join(EXTRA)})")
    ap.add_argument("--strategy", action="append", choices=STRATEGIES,
                    help="only this update strategy (repeatable; default both)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep the logs")
    args = ap.parse_args(argv)
    chosen = args.only or (ORDER if args.all else DEFAULT)
    names = [n for n in ORDER if n in chosen]
    info = machine()
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"# servicerouter benchmarks, {started:%Y-%m-%d %H:%M} UTC"
          f"{' (quick)' if args.quick else ''}\n")
    for k, v in info.items():
        print(f"- {k}: {v}")
    print()
    t0 = time.monotonic()
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    tables = run(names, args.quick, args.strategy, keep)
    total = time.monotonic() - t0
    print(f"total: {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"date": started.isoformat(), "machine": info, "quick": args.quick,
             "seconds": round(total, 1), "tables": [t.as_dict() for t in tables]},
            indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
