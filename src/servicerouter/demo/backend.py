"""A task for the demo and the tests: answers every request with its task id.

Started by the simulator's executor as ``python -m servicerouter.demo.backend``
with ``$PORT`` and ``$MESOS_TASK_ID`` set, exactly as Marathon starts a task.
For the tests of HTTP features it also answers three special requests:
``/_echo...`` with JSON (task id, path, request headers), ``/_location/<p>``
with a 302 to ``/<p>`` (``/_location?to=<url, quoted>``: to that URL), and an
``Upgrade`` request (a websocket handshake) with 101, after which it echoes every
byte until the client closes.
HAProxy's ``option httpchk`` speaks HTTP/1.0 (the simulator's probes and the tests,
HTTP/1.1), so HTTP/1.0 requests count as HAProxy's checks, and one can fail as a
check meeting a bad moment would: with ``$FAIL_FIRST_CHECK`` seconds the first is
answered 503 after that long; ``/_checks/fail/<seconds>`` does so to the next;
``/_checks/hang`` holds every check from then on unanswered; ``/_checks`` answers
how many came and how many were failed.
On SIGTERM it behaves like a well-run service: it keeps serving for
``$SHUTDOWN_DELAY`` seconds (default 0.5) while the load balancer drains it
(Marathon reports TASK_KILLING as the kill starts), then exits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

_WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffered: headers and body leave in one write. Unbuffered, they take two,
    # and Nagle plus delayed ACKs add ~40 ms to every keep-alive request.
    wbufsize = 65536
    body = b""
    fail = 0.0  # > 0: the next check is answered 503 after that many seconds
    hang = threading.Event()  # set: checks are never answered
    checks = failed = 0
    checks_lock = threading.Lock()

    def do_GET(self) -> None:
        if self.headers.get("Upgrade"):
            return self._tunnel()
        if self.request_version == "HTTP/1.0":
            with self.checks_lock:
                _Handler.checks += 1
                fail, _Handler.fail = _Handler.fail, 0.0
            if self.hang.is_set():
                threading.Event().wait()  # a daemon thread: it ends with the task
            if fail:
                time.sleep(fail)
                with self.checks_lock:
                    _Handler.failed += 1
                self.send_error(503)
                return None
        body, status, extra = self.body, 200, {}
        if self.path == "/_checks":
            body = f"{self.checks} {self.failed}\n".encode()
        elif self.path.startswith("/_checks/fail/"):
            with self.checks_lock:
                _Handler.fail = float(self.path.removeprefix("/_checks/fail/"))
        elif self.path == "/_checks/hang":
            self.hang.set()
        elif self.path.startswith("/_echo"):
            body = json.dumps({"task": self.body.decode().strip(), "path": self.path,
                               "headers": dict(self.headers.items())}).encode()
        elif self.path.startswith("/_location/"):
            status, extra = 302, {"Location": "/" + self.path.removeprefix("/_location/")}
        elif self.path.startswith("/_location?to="):
            status, extra = 302, {"Location": unquote(self.path.removeprefix("/_location?to="))}
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _tunnel(self) -> None:
        """Switch protocols, then echo bytes until the client closes (a websocket's shape)."""
        self.send_response(101)
        self.send_header("Upgrade", self.headers["Upgrade"])
        self.send_header("Connection", "Upgrade")
        key = self.headers.get("Sec-WebSocket-Key")
        if key:  # RFC 6455 accept value; HAProxy checks it
            digest = hashlib.sha1((key + _WEBSOCKET_GUID).encode()).digest()
            self.send_header("Sec-WebSocket-Accept", base64.b64encode(digest).decode())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while data := self.connection.recv(65536):
            self.connection.sendall(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    port = int(os.environ.get("PORT0") or os.environ.get("PORT") or "0")
    _Handler.body = (os.environ.get("MESOS_TASK_ID", "unknown") + "\n").encode()
    delay = float(os.environ.get("SHUTDOWN_DELAY", "0.5"))
    _Handler.fail = float(os.environ.get("FAIL_FIRST_CHECK", "0"))
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
