"""--allow-label-templates: marathon-lb's per-app template labels, kept inside the
app's own sections and validated app by app."""

from __future__ import annotations

import asyncio

import pytest

from servicerouter.haproxy.render import TemplateError
from servicerouter.label_templates import TemplateVetting, render_alone
from servicerouter.labels import parse_labels
from servicerouter.layout import Settings
from servicerouter.model import App, Mode, Options, Service, Task

HEAD = ("\nbackend {backend}\n  balance {balance}\n  mode {mode}\n"
        "  http-response set-header X-Raw 1\n")


def test_without_the_flag_template_labels_are_refused() -> None:
    parsed = parse_labels({"HAPROXY_0_BACKEND_HEAD": HEAD}, 1)
    assert parsed.for_index(0).options.raw_templates == ()
    assert "raw HAProxy configuration" in parsed.warnings[0]


def test_with_the_flag_own_section_templates_are_kept_and_shared_ones_refused() -> None:
    parsed = parse_labels({"HAPROXY_0_BACKEND_HEAD": HEAD,
                           "HAPROXY_0_HTTP_FRONTEND_ACL": "  acl x hdr(host) -i x"}, 1,
                          allow_templates=True)
    assert parsed.for_index(0).options.raw_templates == (("BACKEND_HEAD", HEAD),)
    assert "not supported even with --allow-label-templates" in parsed.warnings[0]


def _app(raw: tuple[tuple[str, str], ...]) -> App:
    svc = Service("/raw", 0, 10001, Options(mode=Mode.HTTP, raw_templates=raw))
    return App("/raw", services=(svc,),
               tasks=(Task("t1", "/raw", "10.0.0.1", (31001,), "TASK_RUNNING"),))


def test_placeholders_are_filled_as_marathon_lb_does() -> None:
    text = render_alone(_app((("BACKEND_HEAD", HEAD),)), Settings(), None)
    assert ("backend raw_10001\n  balance roundrobin\n  mode http\n"
            "  http-response set-header X-Raw 1\n") in text


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("BACKEND_HEAD", "  balance roundrobin", "must start with 'backend raw_10001'"),
     ("BACKEND_HEAD", "backend other_app\n  mode http", "must start with"),
     ("FRONTEND_HEAD", "frontend {backend}\nfrontend stolen\n  bind :80",
      "only add indented lines"),
     ("BACKEND_HTTP_OPTIONS", "  option forwardfor\nlisten evil\n  bind :1",
      "only add indented lines"),
     ("BACKEND_HEAD", "backend {backend}\n  acl x {{ ssl_fc }}\n  x {nope}", "KeyError"),
     ("BACKEND_HEAD", "backend {backend}\n  x {backend.__class__}", "KeyError")],
)
def test_templates_cannot_leave_their_own_section(key: str, value: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_alone(_app(((key, value),)), Settings(), None)


def test_vetting_leaves_out_only_the_broken_app_and_caches() -> None:
    calls: list[str] = []

    async def validate(text: str) -> tuple[bool, str]:
        calls.append(text)
        return "bogus" not in text, "[ALERT] unknown keyword 'bogus'"

    good = _app((("BACKEND_HEAD", HEAD),))
    bad = App("/bad", services=(Service("/bad", 0, 10002, Options(
        raw_templates=(("BACKEND_HEAD", "backend {backend}\n  bogus"),))),))
    plain = App("/plain", services=(Service("/plain", 0, 10003),))
    vetting = TemplateVetting(Settings(), None, validate)
    ok, broken = asyncio.run(vetting.vet([good, bad, plain]))
    assert [a.id for a in ok] == ["/raw", "/plain"]
    assert "unknown keyword 'bogus'" in broken["/bad"] and "app left out" in broken["/bad"]
    assert len(calls) == 2  # apps without template labels are not validated
    asyncio.run(vetting.vet([good, bad, plain]))
    assert len(calls) == 2  # unchanged apps are not validated again


OWN = "frontend {backend}\n  bind {bindAddr}:{servicePort}{sslCert}{bindOptions}\n"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("FRONTEND_HEAD", "frontend {backend}\n  bind *:80", "bind only the service's own"),
     ("FRONTEND_HEAD", OWN + "  bind 127.0.0.1:9090", "bind only the service's own"),
     ("FRONTEND_HEAD", "frontend {backend}\n  bind *:{servicePort} ssl crt /etc/other.pem",
      "bind only the service's own"),
     ("FRONTEND_HEAD", OWN + "  use_backend internal_10005 if TRUE", "own backend raw_10001"),
     ("FRONTEND_HEAD", OWN + "  default_backend internal_10005", "own backend raw_10001"),
     ("BACKEND_HEAD", "backend {backend}\n  stats enable\n  stats admin if TRUE", "'stats'"),
     ("BACKEND_HEAD", "backend {backend}\n  server extra 127.0.0.1:9091", "'server'"),
     ("BACKEND_HEAD", "backend {backend}\n  http-request return status 200 file /etc/shadow",
      "'file'"),
     ("BACKEND_HTTP_OPTIONS", "  errorfile 503 /etc/shadow", "'errorfile'"),
     ("BACKEND_HEAD", "backend {backend}\n  acl a src -f /etc/shadow", "'-f'"),
     ("BACKEND_HEAD", "backend {backend}\n  http-request set-map(/run/h.map) x.com raw_10001",
      "'set-map'"),
     ("BACKEND_HEAD", "backend {backend}\n  http-response set-header X %[str(a),map(/etc/x)]",
      "'map\\('"),
     ("BACKEND_HEAD", "backend {backend}\n  http-response set-header X %[env(HOME)]",
      "'env\\('"),
     ("BACKEND_HEAD", "backend {backend}\n  http-request use-service prometheus-exporter",
      "'use-service'"),
     # HAProxy reads quoted keywords, escapes and environment variables: so must the check.
     ("BACKEND_HEAD", "backend {backend}\n  \"stats\" enable", "'stats'"),
     ("BACKEND_HEAD", "backend {backend}\n  'ser'\"ver\" x 127.0.0.1:9091", "'server'"),
     ("BACKEND_HEAD", "backend {backend}\n  s\\x65rver x 127.0.0.1:9091", "backslash escape"),
     ("BACKEND_HEAD", "backend {backend}\n  http-response set-header X \"${{HOME}}\"",
      "environment variable"),
     ("BACKEND_HEAD", "backend {backend}\n  \"listen\" evil\n  bind :1",
      "only add indented lines"),
     ("BACKEND_HEAD", "backend {backend}\n  namespace_list\n  namespace x",
      "only add indented lines"),
     # Servers by another keyword, and checks sent elsewhere than the task: the daemon's
     # own API on loopback (/_mlb_signal/usr1 every second was a reload every second).
     ("BACKEND_HEAD", "backend {backend}\n  server-template x 1 127.0.0.1:9091\n"
      "  use-server x1 if TRUE", "'server-template'"),
     ("BACKEND_HEAD", "backend {backend}\n  default-server addr 127.0.0.1 port 9091",
      "'default-server'"),
     ("BACKEND_HEAD", "backend {backend}\n  dispatch 127.0.0.1:9091", "'dispatch'"),
     ("BACKEND_HEAD", "backend {backend}\n  option httpchk\n"
      "  http-check connect addr 127.0.0.1 port 9091", "connect only to the task"),
     ("BACKEND_HEAD", "backend {backend}\n  option tcp-check\n  tcp-check connect port 22",
      "connect only to the task"),
     ("BACKEND_HEAD", "backend {backend}\n  option external-check\n"
      "  external-check command /bin/true", "'external-check'")],
)
def test_templates_cannot_reach_past_their_own_traffic(key: str, value: str,
                                                       message: str) -> None:
    """Inside its own section a template could still bind another app's port, route to
    another app's backend, open the stats page, add servers, read files, or edit maps
    other apps are routed by; with --allow-label-templates each is refused."""
    with pytest.raises(TemplateError, match=message):
        render_alone(_app(((key, value),)), Settings(), None)


def test_marathon_lb_default_heads_still_render() -> None:
    svc = Service("/raw", 0, 10001, Options(
        mode=Mode.HTTP, ssl_cert="/etc/ssl/raw.pem", raw_templates=(
            ("BACKEND_HEAD", "\nbackend {backend}\n  balance {balance}\n  mode {mode}\n"),
            ("FRONTEND_HEAD", "\n" + OWN + "  mode {mode}\n"
             "  use_backend {backend} if {{ path_beg /file }}\n"))))
    text = render_alone(App("/raw", services=(svc,)), Settings(), None)
    assert "frontend raw_10001\n  bind *:10001 ssl crt /etc/ssl/raw.pem\n  mode http\n" in text


def test_health_check_templates_that_stay_on_the_task_render() -> None:
    """Checks the task's own port answers are kept: only a connect elsewhere is not."""
    svc = Service("/raw", 0, 10001, Options(mode=Mode.HTTP, raw_templates=(
        ("BACKEND_HEAD", "backend {backend}\n  balance {balance}\n  mode {mode}\n"
         "  option httpchk\n  http-check connect\n  http-check send meth GET uri /health\n"
         "  http-check expect status 200\n"),)))
    text = render_alone(App("/raw", services=(svc,)), Settings(), None)
    assert "  http-check connect\n  http-check send meth GET uri /health\n" in text


# marathon-lb's Longhelp: its default, and the example label that overrides it.
MLB_HTTP_OPTIONS = ("  option forwardfor\n  http-request set-header X-Forwarded-Port %[dst_port]\n"
                    "  http-request add-header X-Forwarded-Proto https if { ssl_fc }\n")


def test_backend_http_options_is_taken_as_written_as_marathon_lb_did() -> None:
    # marathon-lb never ran BACKEND_HTTP_OPTIONS through str.format: its documented
    # example (single braces) was refused with KeyError: ' ssl_fc ', leaving the app out.
    text = render_alone(_app((("BACKEND_HTTP_OPTIONS", MLB_HTTP_OPTIONS),)), Settings(), None)
    assert MLB_HTTP_OPTIONS in text
    # Placeholders mean nothing there, as in marathon-lb: printed as they are.
    text = render_alone(_app((("BACKEND_HTTP_OPTIONS",
                               "  http-response set-header X-App {backend}\n"),)),
                        Settings(), None)
    assert "  http-response set-header X-App {backend}\n" in text


def test_a_template_refusal_names_the_app_once() -> None:
    # Every caller prints "app ID: <message>"; the message also began with "app ID: ",
    # so the log read "app /bad: app /bad: label HAPROXY_0_BACKEND_HEAD: ...".
    async def validate(text: str) -> tuple[bool, str]:
        return True, ""

    bad = App("/bad", services=(Service("/bad", 0, 10002, Options(
        raw_templates=(("BACKEND_HEAD", "backend {backend}\n  x {nope}"),))),))
    _, broken = asyncio.run(TemplateVetting(Settings(), None, validate).vet([bad]))
    assert broken["/bad"].startswith("label HAPROXY_0_BACKEND_HEAD: KeyError"), broken
