"""Errors raised at the I/O edge towards Marathon.

Every error derives from `MarathonError` and its `str()` is one line naming the
URL(s) involved and what went wrong. URLs in messages never carry credentials.
"""

from __future__ import annotations

from collections.abc import Sequence


class MarathonError(Exception):
    """Base class of everything the Marathon client and event stream raise."""


class MarathonConfigError(MarathonError, ValueError):
    """A Marathon URL or client option is unusable (raised at construction)."""


class MarathonUnavailable(MarathonError):
    """No configured Marathon answered (connection refused, timeout, 5xx)."""

    def __init__(self, failures: Sequence[tuple[str, str]], *, what: str = "the request") -> None:
        self.failures: tuple[tuple[str, str], ...] = tuple(failures)
        detail = ", ".join(f"{url} ({reason})" for url, reason in self.failures) or "no URL tried"
        super().__init__(f"no Marathon answered {what}: {detail}")


class MarathonAuthError(MarathonError):
    """401/403: credentials missing or refused. Never retried."""

    def __init__(self, url: str, status: int, message: str) -> None:
        self.url = url
        self.status = status
        self.message = message
        hint = "check the HTTP credentials or the DC/OS token"
        super().__init__(f"Marathon {url} refused access (HTTP {status}): {message} ({hint})")


class MarathonResponseError(MarathonError):
    """Marathon answered, but not with something we can use."""

    def __init__(self, url: str, problem: str, *, status: int | None = None) -> None:
        self.url = url
        self.status = status
        self.problem = problem
        super().__init__(f"Marathon {url}: {problem}")


class StreamError(MarathonError):
    """The event stream ended; the caller reconnects and resyncs."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"event stream {url}: {problem}")


class StreamStalled(StreamError):
    """No bytes (not even a heartbeat) for `stall_timeout` seconds."""


class StreamClosed(StreamError):
    """The server closed the stream (leader change, slow consumer, restart)."""


def excerpt(body: bytes, limit: int = 120) -> str:
    """A short, printable, single-line excerpt of a response body for messages."""
    text = body[: limit * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return repr(text)
