"""Whether Marathon is reachable, as the daemon sees it right now.

Two inputs, each updated the moment it changes: the outcome of the last
request (a full sync or a single-app refetch, after failover across every
URL) and the event stream (alive from its first complete line, lost the moment
it closes, fails to connect or stays silent for ``--stall-timeout``). Marathon
is up when both are good. This drives ``servicerouter_marathon_up``,
``servicerouter_marathon_stream_connected`` and the Marathon reasons of
``/healthz``. No I/O.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Gauge

log = logging.getLogger("servicerouter.marathon")


class MarathonHealth:
    def __init__(self, up: Gauge, stream_connected: Gauge) -> None:
        self._up = up
        self._stream_gauge = stream_connected
        self.request_error: str | None = "no request to Marathon has completed yet"
        self.stream_error: str | None = "the event stream is not connected yet"
        self.stream_url: str | None = None
        self.since = time.monotonic()  # when `up` last changed
        self._publish()

    @property
    def up(self) -> bool:
        return self.request_error is None and self.stream_error is None

    @property
    def stream_connected(self) -> bool:
        return self.stream_error is None

    def problems(self) -> list[str]:
        """Why Marathon is not up, one sentence each (empty when it is)."""
        out = []
        if self.request_error is not None:
            out.append(f"Marathon: {self.request_error}")
        if self.stream_error is not None:
            out.append(f"Marathon event stream: {self.stream_error}")
        return out

    def request_ok(self) -> None:
        was, self.request_error = self.up, None
        self._changed(was)

    def request_failed(self, reason: str) -> None:
        was, self.request_error = self.up, reason
        self._changed(was)

    def stream_alive(self, url: str) -> None:
        was, self.stream_error, self.stream_url = self.up, None, url
        self._changed(was)

    def stream_lost(self, reason: str) -> None:
        was, self.stream_error, self.stream_url = self.up, reason, None
        self._changed(was)

    def _changed(self, was: bool) -> None:
        if self.up != was:
            self.since = time.monotonic()
            if self.up:
                log.info("Marathon is up: requests succeed and the event stream is live")
            else:
                log.warning("Marathon is down: %s; HAProxy keeps its current config",
                            "; ".join(self.problems()))
        self._publish()

    def _publish(self) -> None:
        self._up.set(1 if self.up else 0)
        self._stream_gauge.set(1 if self.stream_connected else 0)
