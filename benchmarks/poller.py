"""A dedicated poller of HAProxy's admin socket, run as its own process:
``python -m benchmarks.poller --socket PATH --out FILE --duration SECONDS``.

In a tight loop it opens a connection, sends ``show servers state`` and reads the whole
reply (a new connection each time, so after a reload it talks to the new worker). Each
time a (backend, address, port) becomes administratively ready (not maint, not drain) it
appends ``<t_done> <t_sent> <backend> <addr> <port>`` to FILE (epoch seconds, the same
clock as the simulator's event log), and the same line ending in `` down`` when one stops
being ready (a task killed, or a worker that lacks a change). ``t_done`` (reply read) is
an upper bound of when the change happened; the previous poll's ``t_sent`` a lower
bound, so the resolution is one poll interval, reported in ``FILE.summary`` (JSON) when
it stops (SIGTERM or duration).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import time

NOT_READY = 0x01 | 0x02 | 0x20 | 0x08 | 0x10  # maint (forced, inherited, DNS) or drain


def poll(path: str, request: bytes = b"show servers state\n") -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(request)
        chunks = []
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def ready_set(data: bytes) -> set[tuple[bytes, bytes, bytes]]:
    out = set()
    for line in data.split(b"\n")[1:]:
        if not line or line[:1] == b"#":
            continue
        f = line.split(b" ", 19)
        if len(f) < 19 or int(f[6]) & NOT_READY:
            continue
        out.add((f[1], f[4], f[18]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=float, default=900.0)
    ap.add_argument("--backends", help="file naming the backends to poll, one a line "
                    "(default: all; at 10,000 apps a whole dump is 13.6 MB per poll)")
    args = ap.parse_args()
    request = b"show servers state\n"
    if args.backends:
        with open(args.backends) as f:
            names = [ln.strip() for ln in f if ln.strip()]
        request = ";".join(f"show servers state {n}" for n in names).encode() + b"\n"
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    deadline = time.monotonic() + args.duration
    prev: set[tuple[bytes, bytes, bytes]] = set()
    intervals: list[float] = []
    errors = 0
    last_done = None
    with open(args.out, "w", buffering=1) as out:
        while not stopping and time.monotonic() < deadline:
            t_sent = time.time()
            try:
                data = poll(args.socket, request)
            except OSError:
                errors += 1
                time.sleep(0.001)
                continue
            t_done = time.time()
            if not data.startswith(b"1\n"):
                errors += 1
                continue
            ready = ready_set(data)
            lines = [f"{t_done:.6f} {t_sent:.6f} {b.decode()} {a.decode()} {p.decode()}\n"
                     for b, a, p in ready - prev]
            lines += [f"{t_done:.6f} {t_sent:.6f} {b.decode()} {a.decode()} {p.decode()} down\n"
                      for b, a, p in prev - ready]
            if lines:
                out.write("".join(lines))
            prev = ready
            if last_done is not None:
                intervals.append(t_done - last_done)
            last_done = t_done
            time.sleep(0.0002)  # leave the CPU to the daemon and HAProxy (2 cores)
    intervals.sort()

    def pct(p: float) -> float:
        return intervals[min(len(intervals) - 1, int(len(intervals) * p / 100))] * 1000 \
            if intervals else float("nan")

    with open(args.out + ".summary", "w") as f:
        json.dump({"polls": len(intervals) + 1, "errors": errors, "interval_ms_p50": pct(50),
                   "interval_ms_p99": pct(99),
                   "interval_ms_max": intervals[-1] * 1000 if intervals else float("nan")}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
