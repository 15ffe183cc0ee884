"""Errors raised at the I/O edge towards Marathon.

Every error derives from `MarathonError` and its `str()` is one line naming the
URL(s) involved and what went wrong. URLs in messages never carry credentials.
The helpers at the end turn an httpx failure or an error body into that one line.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence

import httpx


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

    @property
    def reason(self) -> str:
        """This refusal as one URL's failure in a round (``MarathonUnavailable``)."""
        return f"HTTP {self.status}, access refused: {self.message}"


def refusal(refused: Sequence[MarathonAuthError],
            failures: Sequence[tuple[str, str]]) -> MarathonAuthError | None:
    """After a round over the URLs: the first refusal when every URL refused access
    (401/403), which is not retried; None when some URL failed otherwise, so the round
    is retried as an unavailable Marathon (the refusals are among ``failures``)."""
    return refused[0] if refused and len(refused) == len(failures) else None


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


def marathon_message(response: httpx.Response) -> str:
    """Marathon's `{"message": ...}` from an error body, else a short excerpt."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    if not response.content:
        return "empty body"
    return excerpt(response.content)


def transport_reason(exc: httpx.TransportError, timeout: httpx.Timeout) -> tuple[str, str]:
    """(outcome, short reason) for a failed request, e.g. ("error", "connection refused")."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "timeout", f"connect timed out after {timeout.connect:g}s"
    if isinstance(exc, httpx.ReadTimeout):
        return "timeout", f"no bytes for {timeout.read:g}s"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", f"timed out ({type(exc).__name__})"
    cause = _root_os_error(exc)
    if isinstance(cause, ConnectionRefusedError):
        return "error", "connection refused"
    if isinstance(cause, socket.gaierror):
        return "error", f"cannot resolve host: {cause.strerror}"
    text = (cause.strerror if cause is not None else None) or str(exc) or type(exc).__name__
    if "connection refused" in text.lower():
        return "error", "connection refused"
    if isinstance(exc, httpx.ConnectError):
        text = f"cannot connect: {text}"
    return "error", text


def _root_os_error(exc: BaseException) -> OSError | None:
    """The innermost OSError with an errno under httpx's and anyio's wrappers."""
    found: OSError | None = None
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, OSError) and current.errno is not None:
            found = current
        current = current.__cause__ or current.__context__
        seen += 1
    return found
