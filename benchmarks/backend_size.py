"""``python -m benchmarks.backend_size [N ...]``: ``haproxy -c`` time against servers in
one backend (the rendered shape: disabled slots with health checks), plus one small
second backend. Prints a table; CPU heavy at the top sizes, run it once.

This is what ``--max-servers-per-backend`` is chosen from (README, "Multi-tenant safety").
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servicerouter.haproxy.render import render
from servicerouter.layout import BackendShape, Settings
from servicerouter.model import Endpoint, Options, Service

SIZES = (1000, 2000, 5000, 10000, 20000)


def config(servers: int, tmp: Path) -> str:
    settings = Settings(socket_path=str(tmp / "admin.sock"), stats_port=0, http_port=0,
                        https_port=0)
    opts = Options(health_check=True)
    big = BackendShape("big_10001", Service("/big", 0, 10001, opts), servers)
    small = BackendShape("small_10002", Service("/small", 0, 10002, opts), 8)
    table: dict[str, list[Endpoint | None]] = {
        "big_10001": [Endpoint(f"t{i}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                               31000 + i % 1000) for i in range(servers)],
        "small_10002": [None] * 8,
    }
    return render({"big_10001": big, "small_10002": small}, table, settings)


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or list(SIZES)
    print("| servers in one backend | haproxy -c (s) |")
    print("|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="sr-backend-size-") as d:
        tmp = Path(d)
        for n in sizes:
            path = tmp / f"{n}.cfg"
            path.write_text(config(n, tmp))
            started = time.perf_counter()
            subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], check=True, timeout=120)
            print(f"| {n:,} | {time.perf_counter() - started:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
