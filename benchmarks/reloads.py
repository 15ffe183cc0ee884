"""2. Reloads per 1,000 replacements inside slot capacity, both strategies: 1,000 task
replacements at 100/s (50 apps x 10 fake tasks, 16 slots each), counting HAProxy's own
reloads (the master's ``show proc``) and the daemon's runtime commands."""

from __future__ import annotations

from .churn import ChurnStack
from .common import Context, Table


def run(ctx: Context) -> list[Table]:
    table = Table("reloads", "Reloads per 1,000 replacements inside slot capacity",
                  ["strategy", "replacements", "rate/s", "HAProxy reloads", "reloads/1000",
                   "runtime cmds", "not ready"])
    apps, instances, count = (5, 4, 20) if ctx.quick else (50, 10, 1000)
    for strategy in ctx.strategies:
        with ChurnStack(ctx, "reloads", strategy, apps, instances) as stack:
            p = stack.replace(100.0, count, 5.0 if strategy == "runtime" else 15.0)
            row = p.row()
            table.rows.append({"strategy": strategy, "replacements": p.replaced,
                               "rate/s": 100.0, **{k: row[k] for k in (
                                   "HAProxy reloads", "reloads/1000", "runtime cmds",
                                   "not ready")}})
    table.notes.append(f"{apps} apps x {instances} tasks; every replacement stays within the "
                       "backend's pre-allocated slots. The reload strategy coalesces to at most "
                       "one reload per --min-reload-interval (1 s, the default).")
    return [table]
