"""A task for the demo and the tests: answers every request with its task id.

Started by the simulator's executor as ``python -m servicerouter.demo.backend``
with ``$PORT`` and ``$MESOS_TASK_ID`` set, exactly as Marathon starts a task.
On SIGTERM it behaves like a well-run service: it keeps serving for
``$SHUTDOWN_DELAY`` seconds (default 0.5) while the load balancer drains it
(Marathon reports TASK_KILLING as the kill starts), then exits.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffered: headers and body leave in one write. Unbuffered, they take two,
    # and Nagle plus delayed ACKs add ~40 ms to every keep-alive request.
    wbufsize = 65536
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    port = int(os.environ.get("PORT0") or os.environ.get("PORT") or "0")
    _Handler.body = (os.environ.get("MESOS_TASK_ID", "unknown") + "\n").encode()
    delay = float(os.environ.get("SHUTDOWN_DELAY", "0.5"))
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True

    def lame_duck(*_: object) -> None:
        threading.Timer(delay, server.shutdown).start()

    signal.signal(signal.SIGTERM, lame_duck)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
