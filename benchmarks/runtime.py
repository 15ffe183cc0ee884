"""3. Runtime client: commands per second for batches of 1, 10, 100 and 1,000 commands,
and for one connection per command, against a throwaway HAProxy (100 servers).

Reuses ``runtime_client.measure`` / ``measure_alternatives``: every command is a real
``set server addr`` change (two ports alternate), every reply is parsed and checked.
"""

from __future__ import annotations

import asyncio
import shutil

from servicerouter.demo.procs import free_port
from servicerouter.haproxy.process import HAProxyProcess
from servicerouter.haproxy.runtime import RuntimeClient

from .common import Context, Table
from .runtime_client import measure, measure_alternatives

BATCHES = (1, 10, 100, 1000)


async def _run(ctx: Context) -> Table:
    root = ctx.dir("runtime")
    port = free_port()
    servers = [f"s{i}" for i in range(1, 101)]
    slots = "".join(f"    server {s} 127.0.0.1:1 disabled\n" for s in servers)
    cfg = root / "haproxy.cfg"
    cfg.write_text(
        f"global\n    stats socket {root}/admin.sock mode 600 level admin\n"
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
        f"    timeout server 5s\nfrontend f\n    bind 127.0.0.1:{port}\n"
        f"    default_backend b\nbackend b\n{slots}"
    )
    proc = HAProxyProcess(cfg, root / "master.sock",
                          haproxy_bin=shutil.which("haproxy") or "haproxy")
    await proc.start()
    table = Table("runtime", "Runtime client throughput (set server addr, real changes)",
                  ["mode", "batch", "commands", "commands/s", "ms per batch"])
    try:
        sock = str(root / "admin.sock")
        client = RuntimeClient(sock)
        min_commands = 2000 if ctx.quick else 20000
        min_seconds = 0.05 if ctx.quick else 0.5
        for row in await measure(client, "b", servers, BATCHES, min_commands=min_commands,
                                 min_seconds=min_seconds):
            table.rows.append({"mode": "RuntimeClient.execute, one kept prompt session",
                               "batch": row["batch"], "commands": row["commands"],
                               "commands/s": row["commands_per_s"],
                               "ms per batch": row["ms_per_batch"]})
        alt = await measure_alternatives(sock, "b", servers, n=2000 if ctx.quick else 20000)
        table.rows.append({"mode": "one connection per command (haproxyadmin-style)",
                           "batch": 1, "commands": 2000,
                           "commands/s": round(alt["one_connection_per_command"]),
                           "ms per batch": round(1000 / alt["one_connection_per_command"], 3)})
        table.notes.append(
            "Alternatives (commands/s): " + ", ".join(
                f"{k} {v:,.0f}" for k, v in alt.items() if k != "one_connection_per_command"))
    finally:
        await proc.stop()
    return table


def run(ctx: Context) -> list[Table]:
    return [asyncio.run(_run(ctx))]
