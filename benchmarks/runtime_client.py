"""Runtime API throughput: ``measure()`` and the designs the client rejected
(``measure_alternatives()``), run by ``python -m benchmarks --only runtime``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from servicerouter.haproxy import runtime_commands as c
from servicerouter.haproxy.runtime import RuntimeClient


def _commands(backend: str, servers: Sequence[str], n: int, round_: int) -> list[str]:
    """``n`` real address changes (the port flips every round, so each one applies)."""
    return [
        c.set_server_addr(backend, servers[i % len(servers)], "127.0.0.1", 20000 + round_ % 2)
        for i in range(n)
    ]


async def measure(
    client: RuntimeClient,
    backend: str,
    servers: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    min_commands: int = 20000,
    min_seconds: float = 0.3,
) -> list[dict[str, Any]]:
    """For each batch size, run ``execute()`` repeatedly (at least ``min_commands`` commands
    and ``min_seconds``; commands are built and validated outside the timing, and
    alternate between two ports so every ``set server addr`` really changes something);
    one dict per size: batch, batches, commands, seconds,
    commands_per_s, ms_per_batch. Every command must succeed."""
    out = []
    for size in batch_sizes:
        variants = [_commands(backend, servers, size, r) for r in (0, 1)]  # built untimed
        done = batches = 0
        start = time.perf_counter()
        while done < min_commands or time.perf_counter() - start < min_seconds:
            results = await client.execute(variants[batches % 2])
            if not all(r.ok for r in results):
                bad = next(r for r in results if not r.ok)
                raise RuntimeError(f"{bad.command!r} -> {bad.status}: {bad.reply}")
            done += size
            batches += 1
        secs = time.perf_counter() - start
        out.append(
            {
                "batch": size,
                "batches": batches,
                "commands": done,
                "seconds": round(secs, 4),
                "commands_per_s": round(done / secs),
                "ms_per_batch": round(secs / batches * 1000, 3),
            }
        )
    return out


async def _raw(path: str, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    data = await reader.read(-1)
    writer.close()
    return data


async def measure_alternatives(
    path: str, backend: str, servers: Sequence[str], n: int = 20000
) -> dict[str, float]:
    """Commands/s of the designs ``RuntimeClient`` did not pick (unix socket only)."""
    cmds = _commands(backend, servers, n, 1)
    client = RuntimeClient(path)
    lines = [";".join(cmds[i] for i in ln).encode() + b"\n" for ln in client.plan(cmds)[0]]
    res: dict[str, float] = {}

    t = time.perf_counter()
    for cmd in cmds[:2000]:
        await _raw(path, cmd.encode() + b"\n")
    res["one_connection_per_command"] = 2000 / (time.perf_counter() - t)

    t = time.perf_counter()
    for line in lines:  # non-interactive: one connection per ~15 KB line, sequential
        await _raw(path, line)
    res["non_interactive_line_per_connection"] = n / (time.perf_counter() - t)

    for k in (2, 4):
        t = time.perf_counter()
        chunks = [lines[i::k] for i in range(k)]  # loses ordering between lines
        await asyncio.gather(*(_raw(path, b"prompt\n" + b"".join(ch) + b"quit\n") for ch in chunks))
        res[f"prompt_sessions_x{k}_concurrent"] = n / (time.perf_counter() - t)

    t = time.perf_counter()
    await _raw(path, b"prompt\n" + b"".join(lines) + b"quit\n")
    res["raw_one_prompt_session_no_parsing"] = n / (time.perf_counter() - t)

    cmds = _commands(backend, servers, n, 0)
    t = time.perf_counter()
    await client.execute(cmds)
    res["runtime_client_one_prompt_session"] = n / (time.perf_counter() - t)
    return res
