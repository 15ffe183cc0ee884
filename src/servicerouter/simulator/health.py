"""Real health probes (HTTP, HTTPS, TCP and their MESOS_ variants) for the local executor."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from .model import JsonDict, Task

SUPPORTED = frozenset({"HTTP", "HTTPS", "TCP", "MESOS_HTTP", "MESOS_HTTPS", "MESOS_TCP"})


def probe_target(task: Task, check: JsonDict) -> tuple[str, int] | None:
    """The (address, port) a check of ``task`` connects to, or None if it has none."""
    app = task.app
    index = int(check.get("portIndex", 0))
    if app.network_mode == "container":
        address = task.ip_addresses[0]["ipAddress"] if task.ip_addresses else task.host
        if check.get("port"):
            return address, int(check["port"])
        mappings = app.port_mappings
        if index < len(mappings):
            return address, int(mappings[index]["containerPort"])
        return None
    if check.get("port"):
        return task.host, int(check["port"])
    if index < len(task.ports):
        return task.host, task.ports[index]
    return None


async def probe(address: str, port: int, check: JsonDict) -> tuple[bool, str | None]:
    """One probe. Returns (alive, failure cause). HTTP is alive on 200-399."""
    protocol = str(check.get("protocol", "HTTP")).replace("MESOS_", "")
    timeout = float(check.get("timeoutSeconds", 20))
    tls: ssl.SSLContext | None = None
    if protocol == "HTTPS":
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    writer: asyncio.StreamWriter | None = None
    try:
        reader, conn = await asyncio.wait_for(
            asyncio.open_connection(address, port, ssl=tls), timeout
        )
        writer = conn
        if protocol == "TCP":
            return True, None
        path = str(check.get("path") or "/")
        request = f"GET {path} HTTP/1.1\r\nHost: {address}:{port}\r\nConnection: close\r\n\r\n"
        conn.write(request.encode())
        await conn.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        if 200 <= status < 400:
            return True, None
        return False, f"{status} {b' '.join(parts[2:]).decode(errors='replace')}".strip()
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        return False, f"ConnectionAttemptFailedException: Connect to {address}:{port} failed: {exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
