"""Async HTTP client for Marathon's REST API: `/v2/apps` with failover across URLs.

One `MarathonClient` holds one `httpx.AsyncClient` (connection pooling, TLS,
auth) and the list of Marathon URLs. Each request tries the URLs in order,
starting from the one that last answered; a connection error, a timeout, a 5xx,
a redirect or a 401/403 moves on to the next URL (one master whose credentials
lag behind a rotation does not stop the others). Every request has an overall
deadline (`request_timeout`), not only per-read timeouts, so a Marathon that
answers one byte per second is skipped like a dead one. When every URL failed,
the whole round is retried with bounded exponential backoff (tenacity); when
every URL refused access (401/403), it is not retried: asking again would not
change the credentials.

Credentials (basic auth, the DC/OS token) are attached per request and only to
the configured Marathon URLs: never as a default header, so nothing carries
them to a host the operator did not name (see `EventStream` for redirects).

The event stream (`events.py`) reuses the same client, its URLs and its auth.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from .. import __version__
from ..redact import redact_url as _redact
from .appsdecode import DecodedApps, decode_apps
from .errors import (
    MarathonAuthError,
    MarathonConfigError,
    MarathonResponseError,
    MarathonUnavailable,
    excerpt,
    marathon_message,
    refusal,
    transport_reason,
)
from .fields import tasks_left_out, unpaired_surrogate
from .wire import EventStreamTransport

__all__ = ["FetchResult", "MarathonClient", "MarathonTarget", "marathon_message",
           "parse_marathon_url", "transport_reason"]

log = logging.getLogger(__name__)

Accept = Callable[["MarathonTarget", httpx.Response], Awaitable[Any]]
"""What a 200 is made into (decoded, checked); MarathonResponseError: not usable."""

OnRequest = Callable[[str, str, float], None]
"""`on_request(endpoint, outcome, seconds)`: endpoint is "apps", "app" or "events";
outcome is "success", "error", "timeout", "auth" or "redirect"."""

Auth = tuple[str, str]

DEFAULT_MAX_BODY = 256 * 1024 * 1024
"""Bytes of one answer's body, after decompression (`/v2/apps` is ~30 MB at 10,000
apps): a gzip bomb or a body that never ends is cut off here, not held in memory."""


@dataclass(frozen=True)
class MarathonTarget:
    """One Marathon base URL (never with credentials in it) and the auth to use there."""

    url: str
    auth: Auth | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FetchResult:
    """A decoded `/v2/apps` answer (only the fields the parser reads: see appsdecode.py),
    which Marathon answered it, and how long it took."""

    data: dict[str, Any]
    url: str
    seconds: float
    size: int
    leader: str | None = None

    @property
    def apps(self) -> Sequence[Any]:
        apps: Sequence[Any] = self.data["apps"]  # a list, or DecodedApps
        return apps


_WIRE_HEADERS = frozenset(("content-encoding", "content-length", "transfer-encoding"))


class _TooLarge(Exception):
    """A body over `MarathonClient.max_body`; its argument says how that was seen."""


def _unlink_stream(response: httpx.Response) -> None:
    """Free a read response by reference counting, not by the cyclic collector.

    httpx 0.28 links a response and its stream both ways (encode/httpx#3733), so
    the body (~30 MB of ``/v2/apps`` at 10,000 apps) would live until a collection,
    and a full sync pauses the collector (heap.py): it would stay through the whole
    sync. The response is read and closed here; its stream is never used again."""
    if response.is_closed:
        response.stream = httpx.ByteStream(b"")


def parse_marathon_url(raw: str, default_auth: Auth | None = None) -> MarathonTarget:
    """Validate one Marathon base URL; move credentials `http://user:pass@host` into auth.

    A path prefix is kept (DC/OS: `https://leader.mesos/service/marathon`).
    """
    text = raw.strip()
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise MarathonConfigError(f"Marathon URL {_redact(text)!r} is not a URL: "
                                  f"{_why_invalid(text, exc)}") from None
    if url.scheme not in ("http", "https"):
        raise MarathonConfigError(
            f"Marathon URL {_redact(text)!r} must start with http:// or https://"
        )
    if not url.host:
        raise MarathonConfigError(f"Marathon URL {_redact(text)!r} has no host")
    if url.port is not None and not 0 < url.port < 65536:
        raise MarathonConfigError(f"Marathon URL {_redact(text)!r} has an invalid port")
    if url.query or url.fragment:
        raise MarathonConfigError(
            f"Marathon URL {_redact(text)!r} must not have a query or fragment"
        )
    auth = default_auth
    if url.username or url.password:
        auth = (url.username, url.password)  # httpx has already %-decoded them
    base = url.copy_with(username=None, password=None)
    return MarathonTarget(url=str(base).rstrip("/"), auth=auth)


def _why_invalid(text: str, exc: httpx.InvalidURL) -> str:
    """httpx's reason, unless it may quote a piece of the password ("Invalid port: 'pa'"
    for ``user:pa/ss@host``): then the reason for the URL without its user:password."""
    if _redact(text) == text:
        return str(exc)
    try:
        httpx.URL(_redact(text))
    except httpx.InvalidURL as other:
        return str(other)
    return "its user:password part is not valid (%-encode '/', '@' and ':' in it)"


def _ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    """``True``: the system's CAs (OpenSSL's default store, /etc/ssl/certs on Debian;
    SSL_CERT_FILE and SSL_CERT_DIR move it), where an operator installs a private CA,
    not the bundle certifi ships with httpx."""
    if verify is True:
        return ssl.create_default_context()
    if verify is False:
        return False
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise MarathonConfigError(f"CA bundle {verify!r} is unusable: {exc}") from None


class _TokenAuth(httpx.Auth):
    """DC/OS `Authorization: token=<JWT>`, attached per request like basic auth."""

    def __init__(self, token: str) -> None:
        self._header = f"token={token}"

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = self._header
        yield request


def _port(url: httpx.URL) -> int | None:
    return url.port or {"http": 80, "https": 443}.get(url.scheme)


class MarathonClient:
    """Async client for one Marathon cluster (one or more URLs).

    Use as `async with MarathonClient([...]) as client:` or call `aclose()`.
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        auth: Auth | None = None,
        dcos_token: str | None = None,
        verify: bool | str = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        request_timeout: float = 30.0,
        attempts: int = 3,
        retry_initial: float = 0.5,
        retry_max: float = 5.0,
        retry_total: float = 60.0,
        on_request: OnRequest | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u.strip()]
        if not urls:
            raise MarathonConfigError("at least one Marathon URL is required")
        if auth is not None and dcos_token:
            raise MarathonConfigError("give either HTTP basic auth or a DC/OS token, not both")
        if attempts < 1:
            raise MarathonConfigError(f"attempts must be >= 1, got {attempts}")
        if request_timeout <= 0:
            raise MarathonConfigError(f"request timeout must be > 0, got {request_timeout:g}")
        if max_body < 1:
            raise MarathonConfigError(f"max body must be >= 1 byte, got {max_body}")
        self.max_body = max_body
        self.targets: tuple[MarathonTarget, ...] = tuple(parse_marathon_url(u, auth) for u in urls)
        self.timeout = httpx.Timeout(connect_timeout, read=read_timeout, pool=connect_timeout)
        self.deadline = request_timeout
        """Overall seconds for one request to one URL, headers and body included."""
        self._token = _TokenAuth(dcos_token) if dcos_token else None
        self.events_leader: MarathonTarget | None = None
        """Leader learned from a 302 on `/v2/events`; `events.py` tries it first."""
        self._good = 0
        self._attempts = attempts
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._retry_total = retry_total
        self._on_request = on_request
        headers = {"Accept": "application/json", "User-Agent": f"servicerouter/{__version__}"}
        # One TLS context (what httpx makes of `verify` with trust_env off) for both
        # the requests and the event stream.
        self._ssl = httpx.create_ssl_context(verify=_ssl_context(verify), trust_env=False)
        self._headers = headers
        self._transport = transport
        self.http = httpx.AsyncClient(
            headers=headers,
            timeout=self.timeout,
            verify=self._ssl,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )
        self._events_http: httpx.AsyncClient | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(t.url for t in self.targets)

    async def __aenter__(self) -> MarathonClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()
        if self._events_http is not None:
            await self._events_http.aclose()

    @property
    def events_http(self) -> httpx.AsyncClient:
        """The event stream's own client (made when first used): the same headers and
        TLS verification, and a transport that hands it the body without httpx's
        per-chunk layers (wire.py)."""
        if self._events_http is None:
            self._events_http = httpx.AsyncClient(
                headers=self._headers,
                timeout=self.timeout,
                follow_redirects=False,
                trust_env=False,
                transport=self._transport or EventStreamTransport(self._ssl),
            )
        return self._events_http

    # -- shared with events.py ---------------------------------------------------

    def candidates(self) -> list[MarathonTarget]:
        """The configured targets in the order to try, starting from the last one that answered."""
        return list(self.targets[self._good :] + self.targets[: self._good])

    def mark_answered(self, target: MarathonTarget) -> None:
        if target in self.targets:
            self._good = self.targets.index(target)

    @property
    def has_credentials(self) -> bool:
        return self._token is not None or any(t.auth is not None for t in self.targets)

    def auth_for(self, target: MarathonTarget) -> httpx.Auth | None:
        """The credentials for `target`: only ever a configured one (None otherwise)."""
        if target not in self.targets:
            return None
        if self._token is not None:
            return self._token
        return httpx.BasicAuth(*target.auth) if target.auth else None

    def configured(self, url: httpx.URL) -> MarathonTarget | None:
        """The configured target `url` lies under (same scheme, host, port and path prefix)."""
        for target in self.targets:
            base = httpx.URL(target.url)
            if (base.scheme, base.host, _port(base)) != (url.scheme, url.host, _port(url)):
                continue
            prefix = base.path.rstrip("/")
            if url.path == prefix or url.path.startswith(prefix + "/"):
                return target
        return None

    def report(self, endpoint: str, outcome: str, seconds: float) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(endpoint, outcome, seconds)
        except Exception:  # a metrics bug must never stop routing
            log.exception("on_request callback failed for %s/%s", endpoint, outcome)

    # -- requests ----------------------------------------------------------------

    async def get_apps(self, *, label: str | None = None) -> FetchResult:
        """`GET /v2/apps?embed=apps.tasks` (tasks imply deployments), decoded.

        `label` is passed through as Marathon's label selector (e.g. `HAPROXY_GROUP`).
        """
        params: list[tuple[str, str]] = [("embed", "apps.tasks")]
        if label:
            params.append(("label", label))

        async def decoded(target: MarathonTarget, response: httpx.Response) -> Any:
            # In a thread (~0.1 s of CPU at 10,000 apps): the event loop goes on meanwhile.
            data = await asyncio.to_thread(self._decode, target, "/v2/apps", response,
                                           decode_apps)
            if not isinstance(data, dict) or not isinstance(data.get("apps"),
                                                            (list, DecodedApps)):
                raise MarathonResponseError(
                    target.url + "/v2/apps",
                    f"JSON has no 'apps' list: {excerpt(response.content)}",
                    status=response.status_code,
                )
            return data

        target, response, seconds, data = await self._get("apps", "/v2/apps", params,
                                                          accept=decoded)
        return FetchResult(
            data=data,
            url=target.url,
            seconds=seconds,
            size=len(response.content),
            leader=response.headers.get("X-Marathon-Leader"),
        )

    async def get_app(self, app_id: str) -> dict[str, Any] | None:
        """`GET /v2/apps/{id}?embed=app.tasks`: the app, or None when Marathon says 404."""
        segments = [s for s in app_id.strip().split("/") if s]
        if not segments:
            raise ValueError(f"app id {app_id!r} is empty")
        path = "/v2/apps/" + "/".join(quote(s, safe="") for s in segments)

        async def decoded(target: MarathonTarget, response: httpx.Response) -> Any:
            data = self._decode(target, path, response)
            app = data.get("app") if isinstance(data, dict) else None
            if not isinstance(app, dict):
                raise MarathonResponseError(
                    target.url + path,
                    f"JSON has no 'app' object: {excerpt(response.content)}",
                    status=response.status_code,
                )
            bad = unpaired_surrogate(app)  # as parse_apps skips such an app
            if bad is not None:
                raise MarathonResponseError(
                    target.url + path, f"the string {bad} holds an unpaired UTF-16 "
                    "surrogate (not Unicode text)", status=response.status_code)
            if tasks_left_out(app):  # as parse_apps refuses a whole answer of such apps
                raise MarathonResponseError(
                    target.url + path, f"the app carries no tasks, yet says tasksRunning="
                    f"{str(app['tasksRunning'])[:40]}: not an answer to "
                    "embed=app.tasks (a proxy dropping the query string?)",
                    status=response.status_code)
            return app

        got = await self._get("app", path, [("embed", "app.tasks")], allow_404=True,
                              accept=decoded)
        _, response, _, app = got
        return None if response.status_code == 404 else app

    @staticmethod
    def _decode(target: MarathonTarget, path: str, response: httpx.Response,
                decode: Callable[[bytes], Any] = json.loads) -> Any:
        # json.loads(bytes) is what httpx 0.28's .json() does; decoding .text first
        # is ~15% slower on a 5 MB /v2/apps (benchmark in the commit message).
        try:
            return decode(response.content)
        except (ValueError, RecursionError) as exc:
            ctype = response.headers.get("Content-Type", "no Content-Type")
            what = ("JSON nested too deep to decode" if isinstance(exc, RecursionError)
                    else "not JSON")
            raise MarathonResponseError(
                target.url + path,
                f"body is {what} ({ctype}, {len(response.content)} bytes): "
                f"{excerpt(response.content)}",
                status=response.status_code,
            ) from None

    async def _get(
        self,
        endpoint: str,
        path: str,
        params: list[tuple[str, str]],
        *,
        allow_404: bool = False,
        accept: Accept | None = None,
    ) -> tuple[MarathonTarget, httpx.Response, float, Any]:
        """The first usable answer: target, response, seconds and what ``accept`` made of
        a 200 (None without it). A 200 that ``accept`` refuses (MarathonResponseError: an
        HTML page, JSON of another shape) moves on to the next URL like a 5xx."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts) | stop_after_delay(self._retry_total),
            # exponential from retry_initial up to retry_max, plus up to retry_initial of jitter
            wait=wait_exponential(multiplier=self._retry_initial, max=self._retry_max)
            + wait_random(0, self._retry_initial),
            retry=retry_if_exception_type(MarathonUnavailable),
            before_sleep=lambda state: log.warning(
                "%s; retrying (attempt %d of %d)",
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number + 1,
                self._attempts,
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._round(endpoint, path, params, allow_404, accept)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _fetch(self, url: str, query: httpx.QueryParams,
                     auth: httpx.Auth | None) -> httpx.Response:
        """GET `url` and read its body, decompressed, up to `max_body` bytes (else
        `_TooLarge`): httpx alone would hold whatever a server sends, or inflates."""
        request = self.http.build_request("GET", url, params=query)
        response = await self.http.send(request, auth=auth, stream=True)
        try:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_body:
                raise _TooLarge(f"Content-Length {declared}")
            parts: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_body:
                    raise _TooLarge(f"{size} bytes read")
                parts.append(chunk)
        finally:
            await response.aclose()
        # The body as read, in a response of its own (httpx has no public way to hand a
        # streamed response a body read under a cap). Its headers lose what described
        # the bytes on the wire: the body is decompressed and whole.
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in _WIRE_HEADERS]
        return httpx.Response(response.status_code, headers=headers,
                              content=b"".join(parts), request=request)

    async def _round(
        self, endpoint: str, path: str, params: list[tuple[str, str]], allow_404: bool,
        accept: Accept | None = None,
    ) -> tuple[MarathonTarget, httpx.Response, float, Any]:
        """Try every URL once; return the first usable answer."""
        query = httpx.QueryParams(tuple(params))
        failures: list[tuple[str, str]] = []
        refused: list[MarathonAuthError] = []
        unusable: list[MarathonResponseError] = []
        for target in self.candidates():
            url = target.url + path
            start = time.monotonic()
            try:
                response = await asyncio.wait_for(
                    self._fetch(url, query, self.auth_for(target)), self.deadline
                )
            except _TooLarge as exc:
                self.report(endpoint, "error", time.monotonic() - start)
                raise MarathonResponseError(
                    url, f"body is larger than {self.max_body} bytes ({exc}); not read further",
                ) from None
            except asyncio.TimeoutError:
                self.report(endpoint, "timeout", time.monotonic() - start)
                failures.append((target.url, f"no complete answer within {self.deadline:g}s"))
                continue
            except httpx.TransportError as exc:
                outcome, reason = transport_reason(exc, self.timeout)
                self.report(endpoint, outcome, time.monotonic() - start)
                failures.append((target.url, reason))
                continue
            except httpx.DecodingError as exc:  # not a TransportError: it ended the sync
                self.report(endpoint, "error", time.monotonic() - start)
                failures.append((target.url, f"body cannot be decompressed as its "
                                             f"Content-Encoding says ({exc})"))
                continue
            seconds = time.monotonic() - start
            _unlink_stream(response)
            status = response.status_code
            if status in (401, 403):
                self.report(endpoint, "auth", seconds)
                refused.append(MarathonAuthError(url, status, marathon_message(response)))
                failures.append((target.url, refused[-1].reason))
                continue
            if status >= 500:
                self.report(endpoint, "error", seconds)
                failures.append((target.url, f"HTTP {status}: {marathon_message(response)}"))
                continue
            if 300 <= status < 400:
                # A standby proxies /v2/apps; a redirect here is a misbehaving or
                # intercepting server. Not followed (credentials stay home): next URL.
                self.report(endpoint, "redirect", seconds)
                where = response.headers.get("Location") or "no Location"
                failures.append((target.url, f"HTTP {status} redirect to {where} (not followed)"))
                continue
            if status != 200 and not (allow_404 and status == 404):
                self.report(endpoint, "error", seconds)
                raise MarathonResponseError(
                    url, f"unexpected HTTP {status}: {marathon_message(response)}", status=status
                )
            data = None
            if accept is not None and status == 200:
                try:
                    data = await accept(target, response)
                except MarathonResponseError as exc:
                    self.report(endpoint, "error", seconds)
                    unusable.append(exc)
                    failures.append((target.url, exc.problem))
                    continue
            self.report(endpoint, "success", seconds)
            if failures:
                log.warning("Marathon failover for GET %s: %s; %s answered", path,
                            ", ".join(f"{u} ({r})" for u, r in failures), target.url)
            self.mark_answered(target)
            return target, response, seconds, data
        if len(failures) == 1 and unusable:  # one Marathon: its own error, as it was
            raise unusable[0]
        raise refusal(refused, failures) or MarathonUnavailable(failures, what=f"GET {path}")
