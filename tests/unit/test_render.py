"""Layout + slot table → haproxy.cfg text: structure, options, overrides, template errors."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from servicerouter.haproxy.render import (
    TemplateError,
    builtin_templates,
    hostport,
    prune_crt_lists,
    render,
)
from servicerouter.layout import AUTO_GRACE_SERVICES, Settings, build_layout, desired_state
from servicerouter.layout import grace_ms as grace_ms_of
from servicerouter.marathon.parse import parse_apps
from servicerouter.model import App, Endpoint, Mode, Options, Service, Task

from .payloads import APP_FIXTURES, load, resolve


def render_fixture(name: str, settings: Settings | None = None, **kw) -> str:
    settings = settings or Settings()
    apps = parse_apps(load(name), name, resolve).apps
    layout, table = build_layout(desired_state(apps, settings), {}, settings)
    return render(layout, table, settings, **kw)


def render_apps(apps: list[App], settings: Settings | None = None, **kw) -> str:
    settings = settings or Settings()
    layout, table = build_layout(desired_state(apps, settings), {}, settings)
    return render(layout, table, settings, **kw)


def section(text: str, header: str) -> list[str]:
    """The lines of one section (``frontend x``), without the header."""
    lines = text.splitlines()
    start = lines.index(header)
    out = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        out.append(line.strip())
    return out


def one(options: Options = Options(), port: int = 10001,  # noqa: B008
        endpoints: int = 2, app_id: str = "/web") -> App:
    tasks = tuple(Task(f"t{n}", app_id, f"10.0.0.{n}", (31000 + n,), "TASK_RUNNING")
                  for n in range(1, endpoints + 1))
    return App(app_id, services=(Service(app_id, 0, port, options),), tasks=tasks)


@pytest.mark.parametrize("name", APP_FIXTURES)
def test_every_selected_service_port_is_bound(name: str) -> None:
    apps = parse_apps(load(name), name, resolve).apps
    text = render_fixture(name)
    ports = {s.port for a in apps for s in a.services if s.port and s.options.enabled is not False}
    assert ports
    for port in ports:
        assert re.search(rf"^    bind \S+:{port}\b", text, re.M), port
    # every frontend has its backend, and vice versa
    frontends = set(re.findall(r"^frontend (\S+)", text, re.M)) - {"stats", "http_in",
                                                                    "https_in", "appid_in"}
    backends = set(re.findall(r"^backend (\S+)", text, re.M)) - {"stats_page",
                                                                  "servicerouter_daemon"}
    assert frontends == backends


@pytest.mark.parametrize("name", APP_FIXTURES)
def test_free_slots_are_disabled_on_loopback_port_1(name: str) -> None:
    text = render_fixture(name)
    servers = re.findall(r"^    server (s\d+) (\S+)(.*)$", text, re.M)
    assert servers
    free = [s for s in servers if s[1] == "127.0.0.1:1"]
    assert free and all(" disabled" in s[2] for s in free)
    # slots per backend are numbered s1..sN, N a multiple of the increment
    for backend in re.findall(r"^backend (\S+)", text, re.M):
        names = [ln.split()[1] for ln in section(text, f"backend {backend}")
                 if ln.startswith("server ")]
        assert names == [f"s{i}" for i in range(1, len(names) + 1)]
        assert len(names) % Settings().slots_increment == 0


def test_task_endpoints_fill_the_first_slots() -> None:
    text = render_fixture("apps_host_2ports.json")
    lines = section(text, "backend shop_frontend_10101")
    # intervalSeconds 10 in the app's health check
    assert "server s1 10.0.1.11:31822 check inter 10000 fall 4" in lines
    assert "server s2 127.0.0.1:1 disabled check inter 10000 fall 4" in lines
    assert "option httpchk GET /health" in lines
    assert "mode http" in lines and "option forwardfor" in lines


def test_draining_endpoint_starts_disabled() -> None:
    text = render_fixture("apps_legacy_bridge.json")
    lines = section(text, "backend legacy_nginx_10210")
    assert "server s1 10.0.7.5:31500 check inter 5000 fall 4 cookie s1" in lines
    assert "server s2 10.0.7.6:31600 disabled check inter 5000 fall 4 cookie s2" in lines


def test_sticky_backend_has_cookie_lines() -> None:
    text = render_apps([one(Options(sticky=True, mode=Mode.HTTP))])
    lines = section(text, "backend web_10001")
    assert "cookie SRVID insert indirect nocache" in lines
    servers = [ln for ln in lines if ln.startswith("server ")]
    assert servers and all(ln.endswith(f"cookie {ln.split()[1]}") for ln in servers)


def test_non_sticky_backend_has_no_cookie() -> None:
    assert "cookie" not in render_apps([one()])


@pytest.mark.parametrize(
    ("options", "expected", "absent", "server_suffix"),
    [
        (Options(), ["mode tcp", "balance roundrobin"], ["option httpchk", "option forwardfor"],
         ":31001"),
        (Options(balance="leastconn", mode=Mode.HTTP), ["mode http", "balance leastconn",
                                                        "option forwardfor"], [], ":31001"),
        # TCP health check: check on servers, no httpchk
        (Options(health_check=True, health_check_interval_ms=500), [], ["option httpchk"],
         " check inter 500"),
        (Options(health_check=True, health_check_path="/ping"), ["option httpchk GET /ping"],
         [], " check inter 2000"),
    ],
)
def test_backend_options(options, expected, absent, server_suffix) -> None:
    lines = section(render_apps([one(options)]), "backend web_10001")
    for line in expected:
        assert line in lines
    for word in absent:
        assert not any(ln.startswith(word) for ln in lines)
    assert next(ln for ln in lines if ln.startswith("server s1 ")).endswith(server_suffix)


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("*", "bind *:10001"), ("10.1.2.3", "bind 10.1.2.3:10001"),
     ("::1", "bind ipv6@::1:10001")],
)
def test_frontend_bind_address(bind: str, expected: str) -> None:
    assert expected in section(render_apps([one(Options(bind_address=bind))]),
                               "frontend web_10001")


def test_ssl_cert_on_a_service_frontend() -> None:
    text = render_apps([one(Options(ssl_cert="/etc/ssl/web.pem"))])
    assert "bind *:10001 ssl crt /etc/ssl/web.pem" in section(text, "frontend web_10001")
    assert "https_in" not in text  # no vhosts: no shared frontend


def vhost_app(**kw) -> App:
    return one(Options(mode=Mode.HTTP, vhosts=("shop.example.com", "www.example.com"), **kw))


def test_vhosts_route_through_http_in() -> None:
    text = render_apps([vhost_app()])
    lines = section(text, "frontend http_in")
    assert "bind *:80" in lines
    assert "acl host_web_10001 hdr(host),field(1,:) -i shop.example.com www.example.com" in lines
    assert "use_backend web_10001 if host_web_10001" in lines
    assert "https_in" not in text  # no certificates: no HTTPS frontend
    assert "redirect" not in text


def test_vhost_path_and_redirect() -> None:
    text = render_apps([vhost_app(paths=("/api", "/v2"), path_ignore_case=True,
                                  redirect_to_https=True)],
                       Settings(ssl_certs=("/etc/ssl/default.pem",)))
    lines = section(text, "frontend http_in")
    assert "acl path_web_10001 path_beg -i /api /v2" in lines
    assert "use_backend web_10001 if host_web_10001 path_web_10001" in lines
    https = section(text, "frontend https_in")
    assert "bind *:443 ssl crt /etc/ssl/default.pem" in https
    assert "acl sni_web_10001 ssl_fc_sni -i shop.example.com www.example.com" in https
    # SNI first, Host as the fallback
    uses = [ln for ln in https if ln.startswith("use_backend")]
    assert uses == ["use_backend web_10001 if sni_web_10001 path_web_10001",
                    "use_backend web_10001 if host_web_10001 path_web_10001"]
    assert not any("redirect" in ln for ln in https)
    # The redirect lives in the backend, before anything else answers, for plain
    # requests for the service's vhosts through the shared HTTP frontend (marathon-lb's
    # rule in its HTTP frontend: the service's own port serves plain HTTP)
    backend = section(text, "backend web_10001")
    acl = "acl service_vhost hdr(host),field(1,:) -i shop.example.com www.example.com"
    redirect = ("http-request redirect location https://%[hdr(host),field(1,:)]%[pathq] "
                "code 301 if !{ ssl_fc } { dst_port 80 } service_vhost")
    assert backend.index(acl) < backend.index(redirect)
    # With AUTH, every plain request: no credentials are asked over plain HTTP.
    text = render_apps([vhost_app(redirect_to_https=True, auth=("r", "u", "$6$s$h"))],
                       Settings(ssl_certs=("/etc/ssl/default.pem",)))
    assert ("http-request redirect location https://%[hdr(host),field(1,:)]%[pathq] "
            "code 301 unless { ssl_fc }") in section(text, "backend web_10001")


def test_longer_paths_route_first() -> None:
    apps = [one(Options(mode=Mode.HTTP, vhosts=("h.example.com",), paths=p), port=port,
                app_id=f"/{name}")
            for name, p, port in [("a", ("/api",), 10001), ("b", ("/api/v2",), 10002),
                                  ("c", (), 10003)]]
    uses = [ln for ln in section(render_apps(apps), "frontend http_in")
            if ln.startswith("use_backend")]
    assert [u.split()[1] for u in uses] == ["b_10002", "a_10001", "c_10003"]


@pytest.mark.parametrize(
    ("settings", "service_cert", "https_bind"),
    [
        (Settings(), None, None),
        (Settings(ssl_certs=("/etc/ssl/a.pem",)), None, "bind *:443 ssl crt /etc/ssl/a.pem"),
        (Settings(), "/etc/ssl/web.pem", "bind *:443 ssl crt /etc/ssl/web.pem"),
        (Settings(ssl_certs=("/etc/ssl/a.pem",), https_port=8443), "/etc/ssl/web.pem",
         "bind *:8443 ssl crt /etc/ssl/a.pem crt /etc/ssl/web.pem"),
        (Settings(ssl_certs=("/etc/ssl/a.pem",), https_port=0), None, None),
    ],
)
def test_https_in_only_with_certificates(settings, service_cert, https_bind) -> None:
    text = render_apps([vhost_app(ssl_cert=service_cert)], settings)
    if https_bind is None:
        assert "frontend https_in" not in text
    else:
        assert https_bind in section(text, "frontend https_in")


def test_http_port_zero_disables_http_in() -> None:
    text = render_apps([vhost_app()], Settings(http_port=0, ssl_certs=("/etc/ssl/a.pem",)))
    assert "frontend http_in" not in text
    assert "frontend https_in" in text
    assert "frontend web_10001" in text


def test_no_vhosts_no_shared_frontends() -> None:
    text = render_apps([one()], Settings(ssl_certs=("/etc/ssl/a.pem",)))
    assert "http_in" not in text and "https_in" not in text


@pytest.mark.parametrize(("port", "present"), [(9090, True), (0, False)])
def test_stats_port(port: int, present: bool) -> None:
    text = render_apps([one()], Settings(stats_port=port))
    assert ("frontend stats" in text) is present
    if present:
        assert "bind 127.0.0.1:9090" in section(text, "frontend stats")


def test_global_section_from_settings(tmp_path: Path) -> None:
    sock = str(tmp_path / "admin.sock")
    text = render_apps([one()], Settings(socket_path=sock, maxconn=5000,
                                         hard_stop_after="30s"))
    lines = section(text, "global")
    assert f"stats socket {sock} mode 600 level admin expose-fd listeners" in lines
    assert "maxconn 5000" in lines and "hard-stop-after 30s" in lines
    assert "maxconn" not in "\n".join(section(render_apps([one()]), "global"))


def test_no_apps_still_renders_a_config() -> None:
    text = render({}, {}, Settings())
    assert "global" in text and "defaults" in text
    assert re.findall(r"^backend (\S+)", text, re.M) == ["stats_page"]


def test_free_slot_params_match_the_backend() -> None:
    layout, table = build_layout(desired_state([one(endpoints=0)], Settings()), {}, Settings())
    table = {"web_10001": [Endpoint("t1", "10.0.0.1", 1), None]}
    lines = section(render(layout, table, Settings()), "backend web_10001")
    assert lines.count("server s1 10.0.0.1:1") == 1
    # slots the table does not cover are free too
    assert "server s4 127.0.0.1:1 disabled" in lines


@pytest.mark.parametrize(
    ("ip", "port", "expected"),
    [("10.0.0.1", 80, "10.0.0.1:80"), ("*", 80, "*:80"), ("", 80, "*:80"),
     ("fd00::1", 8080, "ipv6@fd00::1:8080")],
)
def test_hostport(ip: str, port: int, expected: str) -> None:
    assert hostport(ip, port) == expected


def test_drain_state_round_trip_is_disabled_not_missing() -> None:
    a = one(endpoints=1)
    a = replace(a, tasks=(replace(a.tasks[0], state="TASK_KILLING"),))
    lines = section(render_apps([a]), "backend web_10001")
    # no config keyword for drain: disabled now, the post-reload reconcile drains it
    assert "server s1 10.0.0.1:31001 disabled" in lines


# ------------------------------------------------------------- operator templates

def test_operator_template_overrides_one_file(tmp_path: Path) -> None:
    (tmp_path / "defaults.j2").write_text(
        "defaults\n    mode tcp\n    timeout connect 1s\n    # operator defaults\n")
    text = render_apps([one()], templates=tmp_path)
    assert "# operator defaults" in text
    assert "timeout connect 1s" in text
    assert "option redispatch" not in text  # the built-in defaults.j2 is replaced
    assert "frontend web_10001" in text  # the other files still come from the built-ins


def test_operator_template_dir_as_string(tmp_path: Path) -> None:
    (tmp_path / "stats.j2").write_text("# no stats here\n")
    assert "# no stats here" in render_apps([one()], templates=str(tmp_path))


def test_builtin_templates_exist() -> None:
    names = {p.name for p in builtin_templates().glob("*.j2")}
    assert {"haproxy.cfg.j2", "global.j2", "defaults.j2", "stats.j2", "vhosts.j2",
            "service.j2"} <= names


@pytest.mark.parametrize(
    ("file", "body", "line"),
    [
        ("service.j2", "frontend {{ b.name }}\n\n{% if %}\n", 3),  # syntax error
        ("service.j2", "frontend {{ b.name }}\n{% for x in b.servers %}\n", 2),  # unclosed
        ("defaults.j2", "defaults\n    mode tcp\n    {{ no_such_variable }}\n", 3),  # undefined
        ("stats.j2", "frontend stats\n  bind {{ settings.nope }}\n", 2),  # undefined attribute
        ("global.j2", "global\n  {{ 1 // 0 }}\n", 2),  # error while rendering
    ],
)
def test_broken_template_names_file_and_line(tmp_path: Path, file: str, body: str,
                                             line: int) -> None:
    (tmp_path / file).write_text(body)
    with pytest.raises(TemplateError) as info:
        render_apps([one()], templates=tmp_path)
    message = str(info.value)
    assert file in message
    assert f":{line}" in message


def test_missing_included_template_names_it(tmp_path: Path) -> None:
    (tmp_path / "haproxy.cfg.j2").write_text('{% include "nope.j2" %}\n')
    with pytest.raises(TemplateError, match=r"nope\.j2"):
        render_apps([one()], templates=tmp_path)


@pytest.mark.parametrize("file", ["haproxy.cfg.j2", "service.j2"])
def test_a_template_that_is_not_utf8_is_named(tmp_path: Path, file: str) -> None:
    """An included snippet was blamed on the line including it, the top file on no file."""
    (tmp_path / file).write_bytes(b"# caf\xe9 (Latin-1)\n")
    with pytest.raises(TemplateError) as info:
        render_apps([one()], templates=tmp_path)
    assert str(info.value) == (f"template {tmp_path / file}: not UTF-8 (invalid continuation "
                               "byte at byte 5); save it as UTF-8")


def test_operator_template_can_loop_over_servers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from servicerouter.haproxy.render import render as _render
    from servicerouter.layout import BackendShape, Settings
    from servicerouter.model import Endpoint, Service

    (tmp_path / "service.j2").write_text(
        "backend {{ b.name }}\n{% for s in b.servers %}"
        "    server {{ s.name }} {{ s.address }}{% if s.disabled %} disabled{% endif %}"
        " weight 50\n{% endfor %}")
    shape = BackendShape("web_10000", Service("/web", 0, 10000), 2)
    text = _render({"web_10000": shape}, {"web_10000": [Endpoint("t1", "10.0.0.1", 31001)]},
                   Settings(stats_port=0), tmp_path)
    assert "    server s1 10.0.0.1:31001 weight 50\n" in text
    assert "    server s2 127.0.0.1:1 disabled weight 50\n" in text


@pytest.mark.parametrize(("grace_ms", "services", "line"), [
    (-1, 1, None),  # auto, few services: the new worker's start is a pause of ms
    (-1, AUTO_GRACE_SERVICES, "grace 1000"),  # auto at scale
    (0, AUTO_GRACE_SERVICES, None),  # turned off
    (250, 1, "grace 250"),
])
def test_haproxy_grace_in_the_global_section(grace_ms: int, services: int,
                                             line: str | None) -> None:
    settings = Settings(grace_ms=grace_ms)
    apps = [one(port=10000 + n, app_id=f"/a{n}", endpoints=1) for n in range(services)]
    lines = section(render_apps(apps, settings), "global")
    assert [ln for ln in lines if ln.startswith("grace")] == ([line] if line else [])
    assert grace_ms_of(settings, services) == (int(line.split()[1]) if line else 0)


def test_apps_certificates_go_in_a_crt_list_each_for_its_own_vhosts(tmp_path: Path) -> None:
    apps = [one(Options(mode=Mode.HTTP, vhosts=(f"t{i}.example.com", f"*.t{i}.example.com"),
                        ssl_cert=f"/certs/t{i}.pem"), port=10001 + i, app_id=f"/t{i}")
            for i in range(40)]
    folder = str(tmp_path / "haproxy.cfg.d")
    settings = Settings(ssl_certs=("/etc/ssl/default.pem",), crt_list_dir=folder)
    text = render_apps(apps, settings)
    (bind,) = [ln for ln in section(text, "frontend https_in") if ln.startswith("bind ")]
    (listed,) = Path(folder).glob("crt-*.list")
    assert bind == f"bind *:443 ssl crt /etc/ssl/default.pem crt-list {listed}"
    lines = listed.read_text().splitlines()
    assert len(lines) == 40
    assert "/certs/t7.pem t7.example.com *.t7.example.com" in lines
    # The same apps render the same file; other apps another, the first kept for the
    # config HAProxy runs until pruned.
    assert render_apps(apps, settings) == text
    other = render_apps(apps[:39], settings)
    assert len(list(Path(folder).glob("crt-*.list"))) == 2
    prune_crt_lists(folder, other)
    (left,) = Path(folder).glob("crt-*.list")
    assert left != listed and f"crt-list {left}" in other
    # One tenant (--vhost-policy open): a certificate answers for its own names.
    text = render_apps(apps[:1], replace(settings, vhost_policy="open"))
    (listed,) = [p for p in Path(folder).glob("crt-*.list") if f"crt-list {p}" in text]
    assert listed.read_text() == "/certs/t0.pem\n"
    # Without a folder (render to stdout), on the bind line as before.
    text = render_apps(apps[:2], replace(settings, crt_list_dir=""))
    assert "bind *:443 ssl crt /etc/ssl/default.pem crt /certs/t0.pem crt /certs/t1.pem" \
        in section(text, "frontend https_in")


def test_a_bind_line_past_haproxys_64_words_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """HAProxy 2.6 reads 64 words of a line: a 31st file on the HTTPS frontend's bind
    line made the config fail for everyone (``too many words``). Rendering it is refused,
    naming the counts and the fix; the daemon's crt-list keeps apps' files off the line."""
    apps = [one(Options(mode=Mode.HTTP, vhosts=(f"t{i}.example.com",),
                        ssl_cert=f"/certs/t{i}.pem"), port=10001 + i, app_id=f"/t{i}")
            for i in range(2)]
    operators = tuple(f"/etc/ssl/o{i}.pem" for i in range(29))
    settings = Settings(ssl_certs=operators)
    with pytest.raises(TemplateError) as raised:
        render_apps(apps, settings)  # to stdout: 29 + 2 files on the line
    assert str(raised.value) == (
        "--ssl-certs names 29 file(s), the apps' HAPROXY_{n}_SSL_CERT 2 more (their "
        "crt-list is only written with --output or by the daemon): HAProxy 2.6 reads 64 "
        "words of a line, room for 30 on the HTTPS frontend's bind line; name a folder in "
        "--ssl-certs instead of its files (HAProxy loads every file in it)")
    bind = section(render_apps(apps[:1], settings), "frontend https_in")[0]
    assert bind.count(" crt ") == 30 and len(bind.split()) == 63  # the most that fits
    folder = str(tmp_path / "haproxy.cfg.d")
    text = render_apps(apps, replace(settings, crt_list_dir=folder))  # 29 + the crt-list
    assert "crt-list" in section(text, "frontend https_in")[0]
    with pytest.raises(TemplateError, match=r"^--ssl-certs names 30 file\(s\), the apps' "
                       r"crt-list 1 more: HAProxy"):
        render_apps(apps, Settings(ssl_certs=(*operators, "/etc/ssl/o.pem"),
                                   crt_list_dir=folder))
    with pytest.raises(TemplateError, match=r"^--ssl-certs names 31 file\(s\): HAProxy"):
        render_apps([], Settings(ssl_certs=tuple(f"/etc/ssl/{i}.pem" for i in range(31))))


def test_a_certificate_with_many_long_vhosts_spans_crt_list_lines_haproxy_reads(
        tmp_path: Path) -> None:
    # HAProxy 2.6 refuses a crt-list line over 65,535 characters or 2,048 words, and with
    # it the HTTPS frontend of every tenant: one tenant's file with a thousand long VHOST
    # names (or three services naming it, 1,000 names each) did.
    long_names = [f"h{i}.{'x' * 60}.{'y' * 25}.example.com" for i in range(1000)]
    apps = [one(Options(mode=Mode.HTTP, vhosts=tuple(long_names), ssl_cert="/certs/big.pem"),
                port=10001, app_id="/big/web")]
    apps += [one(Options(mode=Mode.HTTP, vhosts=tuple(f"s{n}-{i}.example.com"
                                                      for i in range(1000)),
                         ssl_cert="/certs/many.pem"), port=10002 + n, app_id=f"/many/s{n}")
             for n in range(3)]
    folder = str(tmp_path / "haproxy.cfg.d")
    render_apps(apps, Settings(ssl_certs=("/etc/ssl/default.pem",), crt_list_dir=folder))
    (listed,) = Path(folder).glob("crt-*.list")
    lines = listed.read_text().splitlines()
    assert all(len(ln) <= 65535 and len(ln.split()) <= 1001 for ln in lines)
    listed_for: dict[str, list[str]] = {}
    for ln in lines:
        path, *hosts = ln.split()
        listed_for.setdefault(path, []).extend(hosts)
    assert listed_for["/certs/big.pem"] == long_names
    assert listed_for["/certs/many.pem"] == [f"s{n}-{i}.example.com" for n in range(3)
                                             for i in range(1000)]
    assert len(lines) == 2 + 3
