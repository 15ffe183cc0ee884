"""MarathonClient against httpx.MockTransport: failover, auth, bad bodies, metrics hook."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from servicerouter.marathon.client import MarathonClient, parse_marathon_url
from servicerouter.marathon.errors import (
    MarathonAuthError,
    MarathonConfigError,
    MarathonError,
    MarathonResponseError,
    MarathonUnavailable,
)

APPS = {"apps": [{"id": "/shop/web", "instances": 1, "tasks": []}]}
Handler = Callable[[httpx.Request], httpx.Response]


def make(
    handler: Handler, urls: list[str] | None = None, **kwargs: object
) -> tuple[MarathonClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    kwargs.setdefault("retry_initial", 0.001)
    kwargs.setdefault("retry_max", 0.002)
    client = MarathonClient(
        urls or ["http://m1:8080", "http://m2:8080"],
        transport=httpx.MockTransport(record),
        **kwargs,  # type: ignore[arg-type]
    )
    return client, seen


def refuse_m1(request: httpx.Request) -> httpx.Response:
    if request.url.host == "m1":
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
    return httpx.Response(200, json=APPS)


# -- construction ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("m1:8080", "must start with http:// or https://"),
        ("ftp://m1", "must start with http:// or https://"),
        ("http://", "has no host"),
        ("http://m1:8080/?x=1", "must not have a query"),
        ("http://m1:abc", "is not a URL"),
        ("http://m1:99999", "invalid port"),
    ],
)
def test_bad_urls_are_refused_naming_the_url(url: str, problem: str) -> None:
    with pytest.raises(MarathonConfigError, match=problem) as info:
        MarathonClient([url])
    assert isinstance(info.value, ValueError)
    assert url.split("?")[0].rstrip("/") in str(info.value)


def test_credentials_in_the_url_become_basic_auth_and_never_show() -> None:
    target = parse_marathon_url("https://ops:s%40cret@m1.example:8443/marathon/")
    assert target.url == "https://m1.example:8443/marathon"
    assert target.auth == ("ops", "s@cret")
    assert "cret" not in repr(target)
    with pytest.raises(MarathonConfigError) as info:
        MarathonClient(["ftp://ops:secret@m1"])
    assert "secret" not in str(info.value)


def test_no_urls_and_conflicting_auth_are_refused() -> None:
    with pytest.raises(MarathonConfigError, match="at least one"):
        MarathonClient([])
    with pytest.raises(MarathonConfigError, match="not both"):
        MarathonClient(["http://m1"], auth=("a", "b"), dcos_token="jwt")


def test_tls_is_verified_by_default_and_a_bad_ca_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MarathonConfigError, match="CA bundle"):
        MarathonClient(["https://m1:8443"], verify=str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(MarathonConfigError, match=r"garbage\.pem"):
        MarathonClient(["https://m1:8443"], verify=str(garbage))


def test_comma_separated_string_is_accepted() -> None:
    assert MarathonClient("http://m1:8080, http://m2:8080/").urls == (
        "http://m1:8080",
        "http://m2:8080",
    )


# -- get_apps ----------------------------------------------------------------------


async def test_get_apps_sends_embed_and_returns_the_answer() -> None:
    client, seen = make(lambda r: httpx.Response(200, json=APPS))
    async with client:
        result = await client.get_apps()
    # Only the fields the parser reads are decoded (marathon/appsdecode.py).
    assert result.apps == [{k: v for k, v in app.items() if k != "instances"}
                           for app in APPS["apps"]]
    assert result.url == "http://m1:8080"
    assert result.size > 0 and result.seconds >= 0
    assert seen[0].url.path == "/v2/apps"
    assert seen[0].url.params.get_list("embed") == ["apps.tasks"]
    assert seen[0].headers["Accept"] == "application/json"


async def test_failover_to_the_second_url_and_stay_there() -> None:
    client, seen = make(refuse_m1)
    async with client:
        first = await client.get_apps()
        second = await client.get_apps()
    assert first.url == second.url == "http://m2:8080"
    assert [r.url.host for r in seen] == ["m1", "m2", "m2"]


def m1_answers(status: int, message: str) -> Handler:
    """m1 answers ``status`` with Marathon's error body; m2 answers the apps."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "m1":
            return httpx.Response(status, json={"message": message})
        return httpx.Response(200, json=APPS)

    return handler


async def test_5xx_moves_to_the_next_url() -> None:
    client, _ = make(m1_answers(502, "Could not proxy: no leader"))
    async with client:
        assert (await client.get_apps()).url == "http://m2:8080"


async def test_all_down_is_retried_a_bounded_number_of_times_then_names_every_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "m1":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        raise httpx.ConnectTimeout("timed out", request=request)

    outcomes: list[tuple[str, str]] = []
    client, seen = make(
        handler,
        attempts=3,
        connect_timeout=5,
        on_request=lambda e, o, s: outcomes.append((e, o)),
    )
    async with client:
        with pytest.raises(MarathonUnavailable) as info:
            await client.get_apps()
    assert len(seen) == 6  # 3 rounds x 2 URLs
    message = str(info.value)
    assert message == (
        "no Marathon answered GET /v2/apps: http://m1:8080 (connection refused), "
        "http://m2:8080 (connect timed out after 5s)"
    )
    assert "\n" not in message
    assert outcomes[:2] == [("apps", "error"), ("apps", "timeout")]


async def test_auth_error_is_not_retried_and_says_why() -> None:
    outcomes: list[str] = []
    client, seen = make(
        lambda r: httpx.Response(
            401,
            json={"message": "invalid username or password"},
            headers={"WWW-Authenticate": 'Basic realm="Mesosphere"'},
        ),
        on_request=lambda e, o, s: outcomes.append(o),
    )
    async with client:
        with pytest.raises(MarathonAuthError) as info:
            await client.get_apps()
    assert len(seen) == 2  # each URL once: every one refused, so no second round
    assert outcomes == ["auth", "auth"]
    assert info.value.status == 401
    assert "http://m1:8080/v2/apps" in str(info.value)
    assert "invalid username or password" in str(info.value)


async def test_a_url_refusing_access_leaves_the_request_to_the_next(
        caplog: pytest.LogCaptureFixture) -> None:
    # One master whose credentials lag behind a rotation does not stop the others.
    client, seen = make(m1_answers(401, "invalid username or password"))
    async with client:
        result = await client.get_apps()
    assert result.url == "http://m2:8080" and [r.url.host for r in seen] == ["m1", "m2"]
    assert "http://m1:8080 (HTTP 401, access refused: invalid username or password)" \
        in caplog.text


async def test_refused_by_one_url_and_down_at_the_other_is_retried() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "m1":
            return httpx.Response(403, json={"message": "forbidden"})
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client, seen = make(handler, attempts=3)
    async with client:
        with pytest.raises(MarathonUnavailable) as info:
            await client.get_apps()
    assert len(seen) == 6  # 3 rounds x 2 URLs: the other one may come back
    assert str(info.value) == (
        "no Marathon answered GET /v2/apps: http://m1:8080 (HTTP 403, access refused: "
        "forbidden), http://m2:8080 (connection refused)")


async def test_non_json_body_names_the_url_and_shows_an_excerpt() -> None:
    client, _ = make(
        lambda r: httpx.Response(
            200,
            text="<html><body>Welcome to nginx</body></html>",
            headers={"Content-Type": "text/html"},
        ),
        urls=["http://m1:8080"],  # with another URL, that one is asked next (failover)
    )
    async with client:
        with pytest.raises(MarathonResponseError) as info:
            await client.get_apps()
    message = str(info.value)
    assert "http://m1:8080/v2/apps" in message
    assert "not JSON" in message and "text/html" in message and "Welcome to nginx" in message


@pytest.mark.parametrize("body", [{"app": {}}, {"apps": {"id": "/x"}}, [1, 2]])
async def test_json_without_an_apps_list_is_an_error(body: object) -> None:
    client, _ = make(lambda r: httpx.Response(200, json=body), urls=["http://m1:8080"])
    async with client:
        with pytest.raises(MarathonResponseError, match="no 'apps' list"):
            await client.get_apps()


async def test_unexpected_status_is_not_retried() -> None:
    client, seen = make(lambda r: httpx.Response(400, json={"message": "bad embed"}))
    async with client:
        with pytest.raises(MarathonResponseError, match=r"unexpected HTTP 400: bad embed"):
            await client.get_apps()
    assert len(seen) == 1


async def test_basic_auth_token_and_label_are_sent() -> None:
    client, seen = make(lambda r: httpx.Response(200, json=APPS), ["http://u:p@m1:8080"])
    async with client:
        await client.get_apps(label="HAPROXY_GROUP==external")
    assert seen[0].headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    assert seen[0].url.params["label"] == "HAPROXY_GROUP==external"
    assert seen[0].url.userinfo == b""

    client, seen = make(lambda r: httpx.Response(200, json=APPS), dcos_token="eyJ.jwt")
    async with client:
        await client.get_apps()
    assert seen[0].headers["Authorization"] == "token=eyJ.jwt"


async def test_leader_header_is_reported() -> None:
    client, _ = make(
        lambda r: httpx.Response(200, json=APPS, headers={"X-Marathon-Leader": "http://m2:8080"})
    )
    async with client:
        assert (await client.get_apps()).leader == "http://m2:8080"


async def test_a_failing_metrics_callback_does_not_break_requests() -> None:
    def boom(endpoint: str, outcome: str, seconds: float) -> None:
        raise RuntimeError("metrics bug")

    client, _ = make(lambda r: httpx.Response(200, json=APPS), on_request=boom)
    async with client:
        assert (await client.get_apps()).apps


# -- get_app -----------------------------------------------------------------------


async def test_get_app_returns_the_app_or_none_on_404() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/apps/shop/web":
            return httpx.Response(200, json={"app": {"id": "/shop/web"}})
        return httpx.Response(404, json={"message": "App '/gone' does not exist"})

    client, seen = make(handler)
    async with client:
        assert await client.get_app("/shop/web") == {"id": "/shop/web"}
        assert await client.get_app("/gone") is None
        with pytest.raises(ValueError):
            await client.get_app("/")
    assert seen[0].url.params["embed"] == "app.tasks"
    assert len(seen) == 2


async def test_an_app_without_its_tasks_is_not_marathons_answer() -> None:
    """Without embed=app.tasks (a proxy dropping the query string), the app comes
    without 'tasks': taken as is, its backend was emptied. The next URL is asked."""
    def handler(request: httpx.Request) -> httpx.Response:
        app: dict[str, object] = {"id": "/shop/web", "tasksRunning": 2}
        if request.url.host == "m2":
            app["tasks"] = []
        return httpx.Response(200, json={"app": app})

    client, _ = make(handler)
    async with client:
        assert await client.get_app("/shop/web") == {"id": "/shop/web", "tasksRunning": 2,
                                                     "tasks": []}
    client, _ = make(handler, urls=["http://m1:8080"])
    async with client:
        with pytest.raises(MarathonResponseError, match=r"http://m1:8080/v2/apps/shop/web: "
                           r"the app carries no tasks, yet says tasksRunning=2"):
            await client.get_app("/shop/web")


async def test_an_app_holding_an_unpaired_surrogate_is_not_taken() -> None:
    """Refetched, it would have put a string UTF-8 cannot encode into the model (a task
    id: /status failed for every caller until it left)."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"app": {"id": "/shop/web", "tasks": '
                                           b'[{"id": "web.1\\ud800"}]}}')

    client, _ = make(handler, urls=["http://m1:8080"])
    async with client:
        with pytest.raises(MarathonResponseError) as caught:
            await client.get_app("/shop/web")
    assert "'web.1\\ud800' holds an unpaired UTF-16 surrogate" in str(caught.value)


async def test_get_app_fails_over_like_get_apps() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "m1":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200, content=json.dumps({"app": {"id": "/a"}}).encode())

    client, _ = make(handler)
    async with client:
        assert await client.get_app("a") == {"id": "/a"}


def test_every_error_is_a_marathon_error() -> None:
    for cls in (MarathonAuthError, MarathonResponseError, MarathonUnavailable, MarathonConfigError):
        assert issubclass(cls, MarathonError)


# -- redirects, deadlines and where credentials go -----------------------------------


async def test_a_302_on_v2_apps_is_not_followed_and_the_next_url_answers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "m1":
            return httpx.Response(302, headers={"Location": "http://evil:80/v2/apps"})
        return httpx.Response(200, json=APPS)

    outcomes: list[str] = []
    client, seen = make(handler, auth=("ops", "pw"),
                        on_request=lambda e, o, s: outcomes.append(o))
    async with client:
        assert (await client.get_apps()).url == "http://m2:8080"
    assert [r.url.host for r in seen] == ["m1", "m2"]
    assert outcomes == ["redirect", "success"]


async def test_every_url_redirecting_names_each_redirect() -> None:
    client, _ = make(lambda r: httpx.Response(302, headers={"Location": "http://x/"}),
                     attempts=1)
    async with client:
        with pytest.raises(MarathonUnavailable, match=r"HTTP 302 redirect to http://x/ "
                                                      r"\(not followed\)"):
            await client.get_apps()


def test_credentials_belong_to_configured_targets_only() -> None:
    client = MarathonClient(["http://m1:8080", "https://m2/marathon"], dcos_token="jwt")
    m1, m2 = client.targets
    assert client.configured(httpx.URL("http://m1:8080/v2/events?x=1")) is m1
    assert client.configured(httpx.URL("https://m2:443/marathon/v2/events")) is m2
    assert client.configured(httpx.URL("https://m2/other/v2/events")) is None
    assert client.configured(httpx.URL("http://m1:8081/v2/events")) is None
    assert client.configured(httpx.URL("https://m1:8080/v2/events")) is None
    stranger = type(m1)(url="http://evil")
    assert client.auth_for(m1) is not None
    assert client.auth_for(stranger) is None
    assert client.has_credentials
    assert not MarathonClient(["http://m1"]).has_credentials
    assert "Authorization" not in client.http.headers  # never a default header


def test_a_request_timeout_must_be_positive() -> None:
    with pytest.raises(MarathonConfigError, match="request timeout must be > 0"):
        MarathonClient(["http://m1"], request_timeout=0)


# -- bodies that would not fit in memory (the daemon survives its inputs) -------------


async def test_a_body_that_never_ends_is_cut_off_at_max_body() -> None:
    sent = 0

    async def endless():  # type: ignore[no-untyped-def]
        nonlocal sent
        while True:
            sent += 1
            yield b" " * 65536

    client, _ = make(lambda r: httpx.Response(200, content=endless()), max_body=1 << 20)
    async with client:
        with pytest.raises(MarathonResponseError, match=r"larger than 1048576 bytes") as info:
            await client.get_apps()
    assert "http://m1:8080/v2/apps" in str(info.value)
    assert sent <= 20  # stopped reading just past the limit, not at the deadline


async def test_a_gzip_bomb_is_cut_off_at_max_body_after_decompression() -> None:
    bomb = gzip.compress(b"\0" * (16 << 20))  # ~16 KB on the wire, 16 MB inflated
    client, _ = make(
        lambda r: httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip"}),
        max_body=1 << 20,
    )
    async with client:
        with pytest.raises(MarathonResponseError, match=r"larger than 1048576 bytes"):
            await client.get_apps()


async def test_a_declared_content_length_over_max_body_is_refused_unread() -> None:
    client, _ = make(
        lambda r: httpx.Response(200, content=b'{"apps": []}',
                                 headers={"Content-Length": str(10**12)}),
        max_body=1 << 20,
    )
    async with client:
        with pytest.raises(MarathonResponseError, match=r"Content-Length 1000000000000"):
            await client.get_apps()


async def test_a_body_under_max_body_is_read_whole_and_decompressed() -> None:
    body = gzip.compress(json.dumps(APPS).encode())
    client, _ = make(
        lambda r: httpx.Response(200, content=body, headers={"Content-Encoding": "gzip"}),
        max_body=1 << 20,
    )
    async with client:
        result = await client.get_apps()
    assert [a["id"] for a in result.apps] == ["/shop/web"]


async def test_json_nested_too_deep_is_a_clear_error_not_a_recursion_error() -> None:
    # (nested outside its apps: an app nested too deep is only that app's error, test_parse)
    deep = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "apps": []}'
    client, _ = make(lambda r: httpx.Response(200, content=deep), urls=["http://m1:8080"])
    async with client:
        with pytest.raises(MarathonResponseError, match=r"nested too deep") as info:
            await client.get_apps()
    assert "http://m1:8080/v2/apps" in str(info.value)


def test_max_body_must_be_positive() -> None:
    with pytest.raises(MarathonConfigError, match="max body"):
        MarathonClient(["http://m1"], max_body=0)
