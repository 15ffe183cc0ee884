"""marathon-lb parity in the pure code: health-check translation, selection (strict
mode, '*' groups, fail-closed refusals), and what the rendered config says."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from servicerouter import cli
from servicerouter.deployments import DeploymentError, deployment_of
from servicerouter.haproxy.render import render
from servicerouter.layout import BackendShape, Settings, build_layout, desired_state, selected
from servicerouter.layout import service_problem as problem
from servicerouter.marathon.parse import parse_app
from servicerouter.model import App, Health, Mode, Options, Service, Task, endpoints
from servicerouter.state import ClusterState

from .payloads import resolve


def _app(labels: dict[str, str] | None = None, checks: list[Any] | None = None,
         **extra: Any) -> dict[str, Any]:
    return {"id": "/w", "portDefinitions": [{"port": 10001}, {"port": 10002}],
            "labels": labels or {}, "healthChecks": checks or [],
            "tasks": [{"id": "w.1", "host": "10.0.0.1", "ports": [31001, 31002],
                       "state": "TASK_RUNNING", "healthCheckResults": [{"alive": True}]}],
            **extra}


def _opts(labels: dict[str, str] | None = None, checks: list[Any] | None = None,
          index: int = 0) -> tuple[Options, list[str]]:
    app, warnings = parse_app(_app(labels, checks), resolve)
    return app.services[index].options, warnings


def test_health_check_translation_is_complete() -> None:
    o, _ = _opts(checks=[{"protocol": "HTTP", "path": "/health", "intervalSeconds": 3,
                          "timeoutSeconds": 2, "maxConsecutiveFailures": 4}])
    assert (o.health_check, o.health_check_path, o.health_check_interval_ms) == (True,
                                                                                "/health", 3000)
    assert (o.health_check_timeout_ms, o.health_check_fall) == (2000, 5)  # fall = max + 1
    assert o.mode is Mode.HTTP and not o.health_check_ssl


@pytest.mark.parametrize("protocol", ["HTTP", "MESOS_HTTP"])
def test_http_checks_make_the_port_http_unless_mode_says_otherwise(protocol: str) -> None:
    assert _opts(checks=[{"protocol": protocol}])[0].mode is Mode.HTTP
    o, _ = _opts({"HAPROXY_0_MODE": "tcp"}, [{"protocol": protocol}])
    assert o.mode is Mode.TCP and o.health_check_path == "/"  # httpchk works in tcp mode


@pytest.mark.parametrize("protocol", ["HTTPS", "MESOS_HTTPS"])
def test_https_checks_speak_tls_and_keep_tcp_passthrough(protocol: str) -> None:
    o, _ = _opts(checks=[{"protocol": protocol, "path": "/ok"}])
    assert o.health_check_ssl and o.health_check_path == "/ok" and o.mode is Mode.TCP


def test_explicit_check_port_applies_to_every_service_port() -> None:
    for index in (0, 1):
        o, _ = _opts(checks=[{"protocol": "HTTP", "port": 8080}], index=index)
        assert o.health_check_port == 8080 and o.health_check_path == "/"
        assert o.mode is Mode.TCP  # a check elsewhere says nothing about this port


def test_command_check_warns_and_is_not_translated() -> None:
    o, warnings = _opts(checks=[{"protocol": "COMMAND", "command": {"value": "true"}}])
    assert not o.health_check
    assert any("COMMAND check, which HAProxy cannot run" in w for w in warnings)


def test_a_command_check_listed_first_does_not_hide_the_http_check() -> None:
    """marathon-lb picks the first check naming the port; a COMMAND check names none.
    Listed first, it hid the HTTP check: the port went unchecked (and TCP), warned."""
    o, warnings = _opts(checks=[{"protocol": "COMMAND", "command": {"value": "true"}},
                                {"protocol": "HTTP", "portIndex": 0, "path": "/health"}])
    assert (o.health_check, o.health_check_path, o.mode) == (True, "/health", Mode.HTTP)
    assert not warnings


def test_healthcheck_port_index_takes_the_check_of_the_health_port() -> None:
    """marathon-lb #198: the traffic port (0) has no check; the HTTP check is defined on
    the health port (1), and the label says port 0's tasks are healthy when port 1 is.
    The label was only applied to a check port 0 already had: nothing was checked."""
    check = {"protocol": "HTTP", "portIndex": 1, "path": "/health", "intervalSeconds": 5,
             "timeoutSeconds": 3, "maxConsecutiveFailures": 2}
    labels = {"HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1"}
    o, warnings = _opts(labels, [check])
    assert (o.health_check, o.health_check_path, o.health_check_interval_ms,
            o.health_check_timeout_ms, o.health_check_fall) == (True, "/health", 5000, 3000, 3)
    # The health port speaks HTTP; the traffic port's protocol is its own (marathon-lb
    # switched it to HTTP, and a TCP service then answered its clients 400).
    assert o.mode is Mode.TCP and not warnings
    app, _ = parse_app(_app(labels, [check]), resolve)
    (ep,) = endpoints(app, app.services[0])
    assert (ep.port, ep.check_port) == (31001, 31002)  # traffic on 0, checked on 1
    assert _opts(labels, [check], index=1)[0].health_check  # port 1 keeps its own check
    assert not _opts(checks=[check])[0].health_check  # without the label: port 0 unchecked
    assert _opts({**labels, "HAPROXY_0_MODE": "http"}, [check])[0].mode is Mode.HTTP


@pytest.mark.parametrize(
    ("field", "value"),
    [("intervalSeconds", float("inf")), ("intervalSeconds", float("nan")),
     ("intervalSeconds", -1), ("intervalSeconds", 10**9), ("timeoutSeconds", float("inf")),
     ("timeoutSeconds", "5"), ("maxConsecutiveFailures", -1),
     ("maxConsecutiveFailures", 10**6), ("port", 70000), ("port", True), ("portIndex", -1)],
)
def test_bad_health_check_numbers_leave_out_the_service_naming_the_field(field: str,
                                                                       value: Any) -> None:
    app, _ = parse_app(_app(checks=[{"protocol": "TCP", field: value}]), resolve)
    assert 0 not in [s.index for s in app.services]  # the checked port is left out
    assert {(p.reason, p.label) for p in app.problems} == {
        ("health_check", f"healthChecks[0].{field}")}


def test_healthcheck_port_index_uses_the_container_port() -> None:
    raw = {"id": "/c", "networks": [{"mode": "container", "name": "dcos"}],
           "labels": {"HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1"},
           "container": {"portMappings": [{"containerPort": 9000, "servicePort": 10001},
                                          {"containerPort": 9001, "servicePort": 10002}]},
           "healthChecks": [{"protocol": "HTTP", "portIndex": 0}]}
    app, warnings = parse_app(raw, resolve)
    assert app.services[0].options.health_check_port == 9001 and not warnings
    # Host networking: the port differs per task, so each endpoint carries its own.
    app, warnings = parse_app(_app({"HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1"},
                                   [{"protocol": "HTTP"}]), resolve)
    assert app.services[0].options.health_check_port is None and not warnings
    (ep,) = endpoints(app, app.services[0])
    assert (ep.port, ep.check_port) == (31001, 31002)
    text = _render_app(app)
    assert "server s1 10.0.0.1:31001 check inter 2000 fall 4 port 31002" in text
    assert "server s2 127.0.0.1:1 disabled check inter 2000 fall 4\n" in text


def _render_app(app: App) -> str:
    settings = Settings()
    layout, table = build_layout(desired_state([app], settings), {}, settings)
    return render(layout, table, settings)


def test_per_task_check_ports_are_set_at_runtime() -> None:
    from servicerouter.planner import plan

    app, _ = parse_app(_app({"HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1"},
                            [{"protocol": "HTTP"}]), resolve)
    settings = Settings()
    layout, table = build_layout(desired_state([app], settings), {}, settings)
    moved = replace(app, tasks=(Task("w.2", "/w", "10.0.0.2", (31005, 31006),
                                     "TASK_RUNNING", Health.HEALTHY),))
    p = plan(layout, table, desired_state([moved], settings), set(layout))
    name = next(iter(layout))
    assert f"set server {name}/s1 check-port 31006" in p.commands
    assert not p.reload


@pytest.mark.parametrize(("label", "value", "field"),
                         [("PATH", "/a", "paths"), ("STICKY", "true", "sticky"),
                          ("USE_HSTS", "t", "hsts"),
                          ("HTTP_BACKEND_PROXYPASS_PATH", "/p", "proxypass_path"),
                          ("HTTP_BACKEND_REVPROXY_PATH", "/r", "revproxy_path")])
def test_http_labels_without_a_vhost_leave_a_tcp_port_tcp(label: str, value: str,
                                                          field: str) -> None:
    # marathon-lb kept such a port TCP and these labels did nothing there (checked by
    # running its config()). Turned into HTTP, a database or TLS-passthrough port
    # answered its clients 400 after a migration.
    o, warnings = _opts({f"HAPROXY_0_{label}": value})
    assert o.mode is Mode.TCP and getattr(o, field) == getattr(Options(), field)
    assert any(f"HAPROXY_0_{label} needs HTTP mode" in w and "TCP" in w for w in warnings)
    # An HTTP health check of the port makes it HTTP, as in marathon-lb: they apply.
    o, warnings = _opts({f"HAPROXY_0_{label}": value}, [{"protocol": "HTTP"}])
    assert o.mode is Mode.HTTP and getattr(o, field) != getattr(Options(), field)
    assert not any("needs HTTP mode" in w for w in warnings)
    o, _ = _opts({f"HAPROXY_0_{label}": value, "HAPROXY_0_MODE": "http"})
    assert o.mode is Mode.HTTP and getattr(o, field) != getattr(Options(), field)


def test_auth_on_an_explicit_tcp_port_is_refused_not_served_open() -> None:
    o, _ = _opts({"HAPROXY_0_MODE": "tcp", "HAPROXY_0_AUTH": "r:u:$6$abcdefgh$abcdefghij"})
    assert o.refused and "not exposed" in o.refused
    svc = Service("/w", 0, 10001, o)
    assert problem(svc, Settings()) == o.refused
    assert desired_state([App("/w", services=(svc,))], Settings()) == {}
    state = ClusterState(Settings())  # reported as a problem of that service, not served
    state.set_app(App("/w", services=(svc,)))
    assert state.desired == {}
    assert [(p.index, p.reason) for p in state.problems["/w"]] == [(0, "label_refused")]
    assert str(state.problems["/w"][0]) == f"app /w: {o.refused}"


def _svc(**kw: Any) -> Service:
    return Service("/w", 0, 10001, Options(**kw))


@pytest.mark.parametrize(
    ("options", "settings", "expected"),
    [({}, Settings(), True),
     ({}, Settings(strict_mode=True), False),
     ({"enabled": True}, Settings(strict_mode=True), True),
     ({"enabled": False}, Settings(), False),
     ({"groups": ("external",)}, Settings(groups=("*",)), True),
     ({}, Settings(groups=("*",)), True),
     ({"groups": ("*",)}, Settings(groups=("internal",)), False),  # as marathon-lb
     ({"groups": ("a", "b")}, Settings(groups=("b",)), True)],
)
def test_selection(options: dict[str, Any], settings: Settings, expected: bool) -> None:
    assert selected(_svc(**options), settings) is expected


@pytest.mark.parametrize(
    ("options", "settings", "refused"),
    [({"redirect_to_https": True, "vhosts": ("a.test",)}, Settings(), True),
     ({"redirect_to_https": True, "vhosts": ("a.test",)}, Settings(ssl_certs=("/c.pem",)),
      False),
     ({"redirect_to_https": True, "vhosts": ("a.test",), "ssl_cert": "/c.pem"}, Settings(),
      False),
     ({"redirect_to_https": True, "vhosts": ("a.test",)},
      Settings(ssl_certs=("/c.pem",), https_port=0), True),
     ({"redirect_to_https": True}, Settings(ssl_certs=("/c.pem",)), True),
     ({"snippet": "gzip"}, Settings(), True),
     ({"snippet": "gzip"}, Settings(snippets=("gzip",)), False)],
)
def test_labels_that_cannot_be_honoured_are_not_exposed(options: dict[str, Any],
                                                       settings: Settings,
                                                       refused: bool) -> None:
    assert (problem(_svc(**options), settings) is not None) is refused


def _render(*services: Service, settings: Settings | None = None) -> str:
    settings = settings or Settings()
    apps = [App(s.app_id, services=(s,), tasks=(Task("t1", s.app_id, "10.0.0.1", (31001,),
                                                     "TASK_RUNNING"),))
            for s in services]
    layout, table = build_layout(desired_state(apps, settings), {}, settings)
    return render(layout, table, settings)


def test_auth_acl_hsts_and_rewrites_live_in_the_backend() -> None:
    text = _render(_svc(mode=Mode.HTTP, vhosts=("a.test",), auth=("R x", "bob", "$6$s$h"),
                        network_allowed=("10.0.0.0/8", "::1/128"), hsts=True,
                        proxypass_path="/api", revproxy_path="/api", redir_path="/home"))
    assert "userlist users_w_10001\n    user bob password $6$s$h\n" in text
    assert 'http-request auth realm "R x" unless { http_auth(users_w_10001) }' in text
    assert ("    acl network_allowed src 10.0.0.0/8 ::1/128\n"
            "    http-request deny deny_status 403 unless network_allowed\n") in text
    assert "http-response set-header Strict-Transport-Security max-age=15768000" in text
    assert "http-request set-header Host a.test" in text
    assert "http-request replace-path '^/api(/(.*))?$' '/\\2'" in text
    assert ("    acl revproxy_host res.hdr(location),field(3,/),field(1,:) -i a.test\n"
            "    http-response replace-header Location '^(https?://[^/:]*(:[0-9]+)?)?/(.*)$' "
            "'\\1/api/\\3' if { res.hdr(location) -m beg / } || revproxy_host\n") in text
    assert "    acl service_vhost hdr(host),field(1,:) -i a.test\n" in text
    assert ("http-request redirect location /home code 301 if "
            "{ path / } service_vhost") in text
    # The ACL is checked before auth: a denied client never sees a challenge.
    assert text.index("deny_status 403") < text.index("http-request auth")


def test_network_acl_in_tcp_mode_rejects_the_connection() -> None:
    text = _render(_svc(network_allowed=("10.0.0.0/8",)))
    assert ("    acl network_allowed src 10.0.0.0/8\n"
            "    tcp-request content reject unless network_allowed\n") in text


def test_routes_follow_weight_then_path_length_and_wildcards_match_subdomains() -> None:
    a = Service("/a", 0, 10001, Options(mode=Mode.HTTP, vhosts=("h.test",), paths=("/x",),
                                        backend_weight=1))
    b = Service("/b", 0, 10002, Options(mode=Mode.HTTP, vhosts=("h.test", "*.h.test"),
                                        paths=("/x/long",), backend_weight=1))
    c = Service("/c", 0, 10003, Options(mode=Mode.HTTP, vhosts=("h.test",), paths=("/",),
                                        backend_weight=5))
    text = _render(a, b, c)
    uses = [ln.split()[1] for ln in text.splitlines() if ln.strip().startswith("use_backend")]
    assert uses == ["c_10003", "b_10002", "a_10001"]
    assert "acl host_b_10002 hdr(host),field(1,:) -i -m end .h.test" in text


def test_hashing_balance_is_not_grown_at_runtime() -> None:
    for balance, dynamic in [("uri whole", False), ("url_param u", False),
                             ("hdr(host)", False), ("leastconn", True), ("random(2)", True)]:
        assert BackendShape("x", _svc(balance=balance), 8).dynamic is dynamic


def test_operator_surface_in_the_config() -> None:
    settings = Settings(syslog_socket="/dev/log", app_id_port=9191,
                        daemon_address="127.0.0.1:9091")
    text = _render(_svc(mode=Mode.HTTP), settings=settings)
    assert "    log /dev/log local0\n" in text and "    log global\n" in text
    assert "    timeout tunnel 3600s\n" in text
    assert "    monitor-uri /_haproxy_health_check\n" in text
    assert "    server daemon 127.0.0.1:9091\n" in text
    assert "use_backend w_10001 if { req.hdr(x-marathon-app-id) -i /w }" in text
    plain = _render(_svc(mode=Mode.HTTP))
    assert "log " not in plain and "appid_in" not in plain and "servicerouter_daemon" not in plain


@pytest.mark.parametrize(("odd", "fine", "backend"), [
    # A laxer Marathon's id "/w\n" would have cut the routing rule in two (haproxy -c
    # fails, and the bisection runs).
    ("/w\n", "/ok", "ok_10002"),
    # The rule matches the header case-insensitively (as marathon-lb's): a laxer
    # Marathon's "/SHOP/web", another tenant's, sorts first and took every request for
    # "/shop/web". Marathon's own ids are lowercase.
    ("/SHOP/web", "/shop/web", "shop_web_10002"),
])
def test_an_odd_app_id_gets_no_app_id_route(odd: str, fine: str, backend: str) -> None:
    text = _render(Service(odd, 0, 10001, Options(mode=Mode.HTTP)),
                   Service(fine, 0, 10002, Options(mode=Mode.HTTP)),
                   settings=Settings(app_id_port=9191))
    assert f"x-marathon-app-id) -i {odd.strip()}" not in text
    assert f"use_backend {backend} if {{ req.hdr(x-marathon-app-id) -i {fine} }}" in text


def test_a_service_bound_to_loopback_is_not_reachable_by_app_id() -> None:
    """Bound to 127.0.0.1 (or ::1) to stay private: the app-id frontend binds every
    address, so routing to it there would publish it."""
    settings = Settings(app_id_port=9191)
    text = _render(Service("/private", 0, 10001, Options(mode=Mode.HTTP,
                                                         bind_address="127.0.0.1")),
                   Service("/private6", 0, 10003, Options(mode=Mode.HTTP, bind_address="::1")),
                   Service("/private4in6", 0, 10004, Options(mode=Mode.HTTP,
                                                             bind_address="::ffff:127.0.0.1")),
                   Service("/public", 0, 10002, Options(mode=Mode.HTTP,
                                                        bind_address="10.0.0.5")),
                   settings=settings)
    assert "-i /private" not in text
    assert "use_backend public_10002 if { req.hdr(x-marathon-app-id) -i /public }" in text


def test_health_check_server_keywords() -> None:
    text = _render(_svc(health_check=True, health_check_interval_ms=1000, health_check_fall=3,
                        health_check_port=8080, health_check_ssl=True,
                        health_check_timeout_ms=500, health_check_path="/h"))
    assert "    timeout check 500ms\n" in text and "    option httpchk GET /h\n" in text
    assert "server s1 10.0.0.1:31001 check inter 1000 fall 3 port 8080 check-ssl verify none" \
        in text


def test_ssl_certs_repeated_or_comma_separated() -> None:
    assert cli.split_certs(["/a.pem,/b.pem", "/c.pem", "/a.pem"]) == ("/a.pem", "/b.pem",
                                                                       "/c.pem")
    with pytest.raises(cli.CliError, match="--ssl-certs"):
        cli.split_certs(["/a.pem crt /etc/x"])


def test_ssl_certs_leave_room_on_the_bind_line_for_the_apps_crt_list() -> None:
    """30 files and the apps' crt-list make 65 words: the first app with a certificate
    would have failed every reload (HAProxy reads 64). Refused at start instead."""
    files = [f"/etc/ssl/{i}.pem" for i in range(30)]
    assert len(cli.split_certs(files[:29])) == 29
    with pytest.raises(cli.CliError, match=r"^--ssl-certs names 30 files: HAProxy 2.6 reads "
                       r"64 words of a line, room for 29 of them and the apps' crt-list"):
        cli.split_certs([",".join(files)])


@pytest.mark.parametrize(("value", "ok"), [("/dev/log", True), ("127.0.0.1:514", True),
                                           ("[::1]:514", True), ("/dev/log local0", False),
                                           ("syslog.example.com:514", False)])
def test_syslog_socket_grammar(value: str, ok: bool) -> None:
    if ok:
        assert cli.syslog_target(value) == value
    else:
        with pytest.raises(cli.CliError, match="--syslog-socket"):
            cli.syslog_target(value)


def test_snippet_names_come_from_the_templates_folder(tmp_path: Path) -> None:
    (tmp_path / "snippets").mkdir()
    for name in ("gzip.j2", "Bad Name.j2", "notes.txt", "cache-1.j2"):
        (tmp_path / "snippets" / name).write_text("")
    assert cli.snippet_names(str(tmp_path)) == ("cache-1", "gzip")
    assert cli.snippet_names(None) == ()


def test_new_flags_and_their_environment_variables() -> None:
    env = {"SERVICEROUTER_STRICT_MODE": "true", "SERVICEROUTER_SYSLOG_SOCKET": "/dev/log",
           "SERVICEROUTER_APP_ID_PORT": "9191", "SERVICEROUTER_SSL_CERTS": "/a.pem,/b.pem"}
    args = cli.build_parser(env).parse_args(["run", "--group", "*"])
    settings = cli.settings_from(args)
    assert settings.strict_mode and settings.syslog_socket == "/dev/log"
    assert settings.app_id_port == 9191 and settings.ssl_certs == ("/a.pem", "/b.pem")
    assert settings.groups == ("*",) and settings.daemon_address == "127.0.0.1:9091"


def test_marathon_lb_documented_examples_fixture() -> None:
    """tests/fixtures/apps_marathon_lb_docs.json: marathon-lb's documented label
    examples, rebuilt as apps, read the way its documentation says."""
    from servicerouter.marathon.parse import parse_apps
    from servicerouter.portassign import assign_all

    from .payloads import load

    result = parse_apps(load("apps_marathon_lb_docs.json"), "docs", resolve)
    assert not result.errors
    apps = {a.id: a for a in result.apps}
    ui = apps["/docs/marathon-ui"].services[0].options
    assert ui.vhosts == ("marathon.mesosphere.com", "marathon")
    assert (ui.paths, ui.path_ignore_case, ui.backend_weight) == (("/multiple", "/paths"), True, 1)
    assert (ui.mode, ui.health_check_fall, ui.health_check_timeout_ms) == (Mode.HTTP, 4, 20000)

    faces = apps["/docs/two-faces"]
    external = desired_state([faces], Settings(groups=("external",)))
    internal = desired_state([faces], Settings(groups=("internal",)))
    assert [d.service.port for d in external.values()] == [10501]
    assert [d.service.port for d in internal.values()] == [10502]

    private = apps["/docs/private"].services[0].options
    assert private.auth is not None and private.auth[:2] == ("Private Area", "admin")
    assert private.network_allowed == ("10.1.40.0/24", "10.1.55.43/32")
    assert private.hsts and private.sticky

    checked = apps["/docs/checked"]
    assert checked.services[0].options.health_check_port == 9001
    (assigned,), _ = assign_all([checked], Settings())
    assert all(10050 <= s.port <= 10100 and s.auto_port for s in assigned.services)

    warned = [w for w in result.warnings if w.startswith("app /docs/bluegreen")]
    assert not any("DEPLOYMENT" in w for w in warned)  # read by deployments.py
    # Its group "bluegreen" is /bluegreen, outside its folder /docs: not joined.
    with pytest.raises(DeploymentError, match="only apps of that folder may join it"):
        deployment_of(apps["/docs/bluegreen"])
    assert any("HAPROXY_0_BIND_OPTIONS" in w and "bind keywords" in w for w in warned)
    assert any("HAPROXY_0_FRONTEND_HEAD" in w and "raw HAProxy configuration" in w
               for w in warned)
