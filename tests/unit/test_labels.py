"""HAPROXY_* labels → Options: parsing, validation, and that nothing can inject config."""

from __future__ import annotations

import pytest

from servicerouter.labels import LabelError, parse_labels
from servicerouter.model import Mode, Options


def _opts(labels: dict[str, str], index: int = 0, ports: int = 2) -> Options:
    return parse_labels(labels, ports).for_index(index).options


@pytest.mark.parametrize(
    ("labels", "field", "expected"),
    [
        ({}, "enabled", None),
        ({"HAPROXY_0_ENABLED": "false"}, "enabled", False),
        ({"HAPROXY_0_ENABLED": " No "}, "enabled", False),
        ({"HAPROXY_0_ENABLED": "TRUE"}, "enabled", True),
        ({"HAPROXY_GROUP": "external"}, "groups", ("external",)),
        ({"HAPROXY_GROUP": "a, b,,c"}, "groups", ("a", "b", "c")),
        ({"HAPROXY_GROUP": "a", "HAPROXY_0_GROUP": "b"}, "groups", ("b",)),
        ({"HAPROXY_0_MODE": "HTTP"}, "mode", Mode.HTTP),
        ({"HAPROXY_0_MODE": "tcp"}, "mode", Mode.TCP),
        ({"HAPROXY_0_BALANCE": "leastconn"}, "balance", "leastconn"),
        ({"HAPROXY_0_BALANCE": "Static-RR"}, "balance", "static-rr"),
        ({"HAPROXY_0_BIND_ADDR": "10.0.0.1"}, "bind_address", "10.0.0.1"),
        ({"HAPROXY_0_BIND_ADDR": "*"}, "bind_address", "*"),
        ({"HAPROXY_0_BIND_ADDR": "::1"}, "bind_address", "::1"),
        ({"HAPROXY_0_BIND_ADDR": "0:0::1"}, "bind_address", "::1"),
        # IPv4-mapped: the IPv4 address it binds (loopback stays loopback: render._loopback)
        ({"HAPROXY_0_BIND_ADDR": "::ffff:127.0.0.1"}, "bind_address", "127.0.0.1"),
        ({"HAPROXY_0_VHOST": "Shop.Example.com, www.example.com"}, "vhosts",
         ("shop.example.com", "www.example.com")),
        ({"HAPROXY_0_PATH": "/api/v1"}, "paths", ("/api/v1",)),
        ({"HAPROXY_0_PATH": "-i /a /b"}, "paths", ("/a", "/b")),
        ({"HAPROXY_0_PATH": "-i /a /b"}, "path_ignore_case", True),
        ({"HAPROXY_0_PATH": "/a"}, "backend_weight", 1),
        ({"HAPROXY_0_PATH": "/a", "HAPROXY_0_BACKEND_WEIGHT": "5"}, "backend_weight", 5),
        ({"HAPROXY_0_BACKEND_WEIGHT": "-3"}, "backend_weight", -3),
        ({"HAPROXY_0_STICKY": "t"}, "sticky", True),
        ({"HAPROXY_0_STICKY": "Y"}, "sticky", True),
        ({"HAPROXY_0_STICKY": "f"}, "sticky", False),
        ({"HAPROXY_GROUP": "*"}, "groups", ("*",)),
        ({"HAPROXY_0_VHOST": "my_app.example.com"}, "vhosts", ("my_app.example.com",)),
        ({"HAPROXY_0_VHOST": "*.Example.com"}, "vhosts", ("*.example.com",)),
        ({"HAPROXY_0_BALANCE": "uri"}, "balance", "uri"),
        ({"HAPROXY_0_BALANCE": "uri whole depth 3"}, "balance", "uri whole depth 3"),
        ({"HAPROXY_0_BALANCE": "url_param userid"}, "balance", "url_param userid"),
        ({"HAPROXY_0_BALANCE": "hdr(Host)"}, "balance", "hdr(host)"),
        ({"HAPROXY_0_BALANCE": "hdr(host) use_domain_only"}, "balance",
         "hdr(host) use_domain_only"),
        ({"HAPROXY_0_USE_HSTS": "true"}, "hsts", True),
        ({"HAPROXY_0_AUTH": "My Realm:bob:$6$abcdefgh$XyZ./12345678"}, "auth",
         ("My Realm", "bob", "$6$abcdefgh$XyZ./12345678")),
        ({"HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "10.1.40.0/24 10.1.55.43"},
         "network_allowed", ("10.1.40.0/24", "10.1.55.43/32")),
        ({"HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "10.1.40.7/24,::1"},
         "network_allowed", ("10.1.40.0/24", "::1/128")),
        ({"HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1"}, "health_check_port_index", 1),
        ({"HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH": "/p"}, "proxypass_path", "/p"),
        ({"HAPROXY_0_HTTP_BACKEND_REVPROXY_PATH": "/r"}, "revproxy_path", "/r"),
        ({"HAPROXY_0_HTTP_BACKEND_REDIR": "/home", "HAPROXY_0_VHOST": "a.example.com"},
         "redir_path", "/home"),
        ({"HAPROXY_0_SNIPPET": "compress"}, "snippet", "compress"),
        ({"HAPROXY_0_STICKY": "yes"}, "sticky", True),
        ({"HAPROXY_0_REDIRECT_TO_HTTPS": "1"}, "redirect_to_https", True),
        ({"HAPROXY_0_SSL_CERT": "/etc/ssl/shop.pem"}, "ssl_cert", "/etc/ssl/shop.pem"),
    ],
)
def test_label_sets_option(labels, field, expected) -> None:
    assert getattr(_opts(labels), field) == expected


@pytest.mark.parametrize(
    ("labels", "port"),
    [({}, None), ({"HAPROXY_0_PORT": "10001"}, 10001), ({"HAPROXY_0_PORT": " 80 "}, 80),
     ({"HAPROXY_0_PORT": "65535"}, 65535)],
)
def test_port_label(labels, port) -> None:
    assert parse_labels(labels, 1).for_index(0).port == port


def test_labels_apply_to_their_index_only() -> None:
    parsed = parse_labels({"HAPROXY_GROUP": "g", "HAPROXY_1_MODE": "http",
                           "HAPROXY_1_PORT": "10002"}, 2)
    assert parsed.for_index(0).options == Options(groups=("g",))
    assert parsed.for_index(0).port is None
    assert parsed.for_index(1).options == Options(groups=("g",), mode=Mode.HTTP)
    assert parsed.for_index(1).explicit == {"MODE", "PORT"}
    assert parsed.for_index(1).port == 10002


@pytest.mark.parametrize(
    "labels",
    [{"HAPROXY_0_VHOST": "a.example.com"}, {"HAPROXY_0_REDIRECT_TO_HTTPS": "true"},
     {"HAPROXY_0_AUTH": "r:u:$6$abcdefgh$abcdefgh"},
     {"HAPROXY_0_VHOST": "a.example.com", "HAPROXY_0_STICKY": "true"}],
)
def test_http_features_imply_http_mode(labels) -> None:
    assert _opts(labels).mode is Mode.HTTP


@pytest.mark.parametrize(
    "labels",
    [{"HAPROXY_0_PATH": "/a"}, {"HAPROXY_0_STICKY": "true"}, {"HAPROXY_0_USE_HSTS": "true"},
     {"HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH": "/p"},
     {"HAPROXY_0_HTTP_BACKEND_REVPROXY_PATH": "/p"}],
)
def test_other_http_labels_leave_the_port_tcp_as_marathon_lb(labels) -> None:
    # marathon-lb made a port HTTP for a VHOST only (or an HTTP health check, decided
    # later in parse_app, which also drops these from a port that stays TCP).
    assert _opts(labels).mode is Mode.TCP


def test_an_explicit_tcp_mode_wins_over_http_features() -> None:
    """MODE=tcp says the port speaks TCP (a database, TLS passthrough): STICKY or a VHOST
    turned it into HTTP, and its clients got 400s. The HTTP labels are ignored, said so,
    and claim nothing (a vhost of a TCP port is not taken from anyone)."""
    parsed = parse_labels({"HAPROXY_0_MODE": "tcp", "HAPROXY_0_STICKY": "true",
                           "HAPROXY_0_VHOST": "db.example.com",
                           "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "10.0.0.0/8"}, 1)
    opts = parsed.for_index(0).options
    assert opts.mode is Mode.TCP and not opts.sticky and opts.vhosts == ()
    assert opts.network_allowed == ("10.0.0.0/8",)  # TCP can enforce this one
    assert parsed.warnings == ("labels HAPROXY_0_VHOST, HAPROXY_0_STICKY need HTTP mode, "
                               "but HAPROXY_0_MODE is tcp; ignored",)
    one = parse_labels({"HAPROXY_0_MODE": "tcp", "HAPROXY_0_USE_HSTS": "true"}, 1)
    assert one.warnings == ("label HAPROXY_0_USE_HSTS needs HTTP mode, but HAPROXY_0_MODE "
                            "is tcp; ignored",)
    assert _opts({"HAPROXY_0_MODE": "http", "HAPROXY_0_STICKY": "t"}).sticky


BAD_VALUES = ["a\nb", "a;b", "a b", "a#b", 'a"b', "a'b", "a\rb", "a\tb", "a\\b", "a\x00b"]
WHITESPACE_VALUES = ("a b", "a\tb", "a\nb", "a\rb")
INJECTION_LABELS = ["HAPROXY_0_VHOST", "HAPROXY_0_PATH", "HAPROXY_0_SSL_CERT",
                    "HAPROXY_0_BIND_ADDR", "HAPROXY_0_BALANCE", "HAPROXY_0_GROUP",
                    "HAPROXY_GROUP", "HAPROXY_0_MODE", "HAPROXY_0_PORT", "HAPROXY_0_ENABLED",
                    "HAPROXY_0_STICKY", "HAPROXY_0_REDIRECT_TO_HTTPS", "HAPROXY_0_USE_HSTS",
                    "HAPROXY_0_BACKEND_WEIGHT", "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL",
                    "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX",
                    "HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH", "HAPROXY_0_HTTP_BACKEND_REVPROXY_PATH",
                    "HAPROXY_0_HTTP_BACKEND_REDIR", "HAPROXY_0_SNIPPET"]
# A plausible good value per label, so the bad character is the only problem.
BASE = {"HAPROXY_0_VHOST": "shop.example.com", "HAPROXY_0_PATH": "/shop",
        "HAPROXY_0_SSL_CERT": "/etc/ssl/shop.pem", "HAPROXY_0_BIND_ADDR": "10.0.0.1",
        "HAPROXY_0_BALANCE": "roundrobin", "HAPROXY_0_GROUP": "external",
        "HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "http", "HAPROXY_0_PORT": "10001",
        "HAPROXY_0_ENABLED": "true", "HAPROXY_0_STICKY": "true",
        "HAPROXY_0_REDIRECT_TO_HTTPS": "true", "HAPROXY_0_USE_HSTS": "true",
        "HAPROXY_0_BACKEND_WEIGHT": "10", "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "10.0.0.0/8",
        "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1",
        "HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH": "/api",
        "HAPROXY_0_HTTP_BACKEND_REVPROXY_PATH": "/api",
        "HAPROXY_0_HTTP_BACKEND_REDIR": "/home", "HAPROXY_0_SNIPPET": "gzip"}


def _injections() -> list[tuple[str, str]]:
    out = []
    for label in INJECTION_LABELS:
        good = BASE[label]
        for bad in BAD_VALUES:
            if label == "HAPROXY_0_VHOST" and bad in WHITESPACE_VALUES:
                continue  # whitespace separates host names there (each one is checked)
            out.append((label, bad.replace("a", good, 1).replace("b", good[-1])))
        # a whole extra config line after a valid value
        out.append((label, f"{good}\n    server evil 1.2.3.4:80"))
        if label != "HAPROXY_0_VHOST":  # there: the names "if" and "true"
            out.append((label, f"{good} if TRUE"))
    out += [
        ("HAPROXY_0_BIND_ADDR", "fe80::1%eth0\n    mode http"),  # IPv6 zone carrying text
        ("HAPROXY_0_BIND_ADDR", "fe80::1%x y"),
        ("HAPROXY_0_BIND_ADDR", "fe80::1%eth0"),
        ("HAPROXY_0_BIND_ADDR", "10.0.0.1:80"),
        ("HAPROXY_0_BIND_ADDR", "localhost"),
        ("HAPROXY_0_PATH", "shop"),
        ("HAPROXY_0_PATH", "/a/../../etc"),
        ("HAPROXY_0_PATH", "/a{b}"),
        ("HAPROXY_0_SSL_CERT", "relative.pem"),
        ("HAPROXY_0_SSL_CERT", "/etc/ssl/../shadow"),
        ("HAPROXY_0_SSL_CERT", "/etc/ssl/a%20b.pem"),
        ("HAPROXY_0_VHOST", "a.*.example.com"),
        ("HAPROXY_0_VHOST", "*example.com"),
        ("HAPROXY_0_VHOST", "*"),
        ("HAPROXY_0_VHOST", "-bad.example.com"),
        ("HAPROXY_0_VHOST", "a..b"),
        ("HAPROXY_0_VHOST", " , "),
        ("HAPROXY_0_VHOST", "x" * 64 + ".com"),
        ("HAPROXY_0_BALANCE", "uri len"),
        ("HAPROXY_0_BALANCE", "url_param"),
        ("HAPROXY_0_BALANCE", "url_param a b"),
        ("HAPROXY_0_BALANCE", "hdr(a b)"),
        ("HAPROXY_0_BALANCE", "hdr(host) if TRUE"),
        ("HAPROXY_0_BALANCE", "roundrobin leastconn"),
        ("HAPROXY_0_PATH", "-i"),
        ("HAPROXY_0_PATH", "/a -i"),
        ("HAPROXY_0_BACKEND_WEIGHT", "1.5"),
        ("HAPROXY_0_BACKEND_WEIGHT", "9999999999"),
        ("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "10.0.0.0/33"),
        ("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "any"),
        ("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "10.0.0.1 if TRUE"),
        ("HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX", "-1"),
        ("HAPROXY_0_SNIPPET", "../etc/passwd"),
        ("HAPROXY_0_SNIPPET", "Gzip"),
        ("HAPROXY_GROUP", "a*"),
        ("HAPROXY_0_GROUP", "g" * 65),
        ("HAPROXY_0_PORT", "0"),
        ("HAPROXY_0_PORT", "65536"),
        ("HAPROXY_0_PORT", "-1"),
        ("HAPROXY_0_PORT", "http"),
        ("HAPROXY_0_PORT", "\u00b2"),  # str.isdigit() says yes, int() says no
        ("HAPROXY_0_PORT", "\uff11\uff10\uff10\uff10"),  # fullwidth digits
        ("HAPROXY_0_MODE", "health"),
        ("HAPROXY_0_ENABLED", "maybe"),
        ("HAPROXY_0_STICKY", "tru"),
    ]
    return out


@pytest.mark.parametrize(("label", "value"), _injections())
def test_bad_value_is_rejected_naming_label_and_value(label: str, value: str) -> None:
    with pytest.raises(LabelError) as info:
        parse_labels({label: value}, 1)
    assert info.value.label == label
    assert info.value.value == value
    assert label in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(("label", "value"), [(k, v) for k, v in BASE.items()])
def test_plausible_values_are_accepted(label: str, value: str) -> None:
    # (a root redirect needs a vhost: the label is about / of those)
    with_vhost = {"HAPROXY_0_VHOST": "a.example.com"} if label.endswith("_REDIR") else {}
    parsed = parse_labels({label: value, **with_vhost}, 1)
    assert not parsed.warnings, parsed.warnings  # taken, not ignored with a warning


@pytest.mark.parametrize(
    "label",
    ["HAPROXY_0_FRONTEND_HEAD", "HAPROXY_0_BACKEND_HEAD", "HAPROXY_0_BACKEND_SERVER_OPTIONS",
     "HAPROXY_0_HTTP_FRONTEND_ACL", "HAPROXY_DEPLOYMENT_FOO", "HAPROXY_0_BIND_OPTIONS",
     "HAPROXY_0_port"],
)
def test_unsupported_label_warns_and_is_ignored(label: str) -> None:
    raw = "frontend evil\n  bind :1\n  mode http"
    parsed = parse_labels({label: raw, "HAPROXY_0_MODE": "http"}, 1)
    assert len(parsed.warnings) == 1
    assert label in parsed.warnings[0]
    assert "supported" in parsed.warnings[0] or "knows" in parsed.warnings[0]
    assert parsed.for_index(0).options == Options(mode=Mode.HTTP)
    assert parsed.for_index(0).port is None


def test_label_for_an_index_the_app_lacks_warns() -> None:
    parsed = parse_labels({"HAPROXY_2_MODE": "http"}, 2)
    assert len(parsed.warnings) == 1
    assert "HAPROXY_2_MODE" in parsed.warnings[0]
    assert all(parsed.for_index(i).options == Options() for i in range(2))


@pytest.mark.parametrize("labels", [None, {}, {"VIP_0": "/x:80", "DCOS_SERVICE_NAME": "x"}])
def test_no_haproxy_labels(labels) -> None:
    parsed = parse_labels(labels, 1)
    assert parsed.warnings == ()
    assert parsed.for_index(0).options == Options()


def test_non_string_value_is_rejected() -> None:
    with pytest.raises(LabelError, match="HAPROXY_0_PORT"):
        parse_labels({"HAPROXY_0_PORT": 10001}, 1)  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("label", "reason"),
    [("HAPROXY_0_FRONTEND_HEAD", "raw HAProxy configuration"),
     ("HAPROXY_0_BACKEND_SERVER_OPTIONS", "raw HAProxy configuration"),
     ("HAPROXY_0_BIND_OPTIONS", "raw HAProxy bind keywords"),
     ("HAPROXY_DEPLOYMENT_FOO", "not a label servicerouter or marathon-lb knows"),
     ("HAPROXY_0_NO_SUCH", "not a label servicerouter or marathon-lb knows")],
)
def test_unsupported_label_gets_its_real_reason(label: str, reason: str) -> None:
    (warning,) = parse_labels({label: "x"}, 1).warnings
    assert reason in warning
    assert "cannot carry HAProxy configuration" not in warning or "raw" in reason


@pytest.mark.parametrize("password", ["secret", "hunter2hunter2", "abcdefghijklm",
                                      "$6$short", "$9$abcdefgh$abc"])
def test_auth_refuses_plain_text_passwords_without_repeating_them(password: str) -> None:
    with pytest.raises(LabelError) as info:
        parse_labels({"HAPROXY_0_AUTH": f"realm:bob:{password}"}, 1)
    assert "plain-text passwords are refused" in str(info.value)
    assert password not in str(info.value)


@pytest.mark.parametrize("value", ["realm:bob", "a:b:c:d", "re\"alm:bob:$6$abcdefgh$x",
                                   "realm:b ob:$6$abcdefgh$x", "re$alm:bob:$6$abcdefgh$x",
                                   "re\\alm:bob:$6$abcdefgh$x", "realm:b\"ob:$6$abcdefgh$x",
                                   "re%alm:bob:$6$abcdefgh$x", "realm:b#ob:$6$abcdefgh$x"])
def test_auth_grammar(value: str) -> None:
    with pytest.raises(LabelError, match="HAPROXY_0_AUTH"):
        parse_labels({"HAPROXY_0_AUTH": value}, 1)


def test_auth_makes_the_port_http_unless_mode_says_tcp() -> None:
    auth = "r:u:$6$abcdefgh$abcdefgh"
    assert _opts({"HAPROXY_0_AUTH": auth}).mode is Mode.HTTP
    parsed = parse_labels({"HAPROXY_0_AUTH": auth, "HAPROXY_0_MODE": "tcp"}, 1).for_index(0)
    assert parsed.options.mode is Mode.TCP and "MODE" in parsed.explicit


def test_label_table_rows_are_unique_and_complete() -> None:
    from servicerouter.labels import LABELS, SUPPORTED

    names = [(s.scope, s.name) for s in LABELS]
    assert len(names) == len(set(names))
    for spec in LABELS:
        assert spec.meaning and spec.difference
        if spec.status == SUPPORTED:
            assert spec.parse is not None and spec.example, spec.name
            assert spec.field is None or spec.field in Options.__dataclass_fields__


def test_a_number_too_long_for_int_is_a_label_error_naming_the_label() -> None:
    # int() refuses more than 4,300 digits with its own ValueError, which named no label
    # and cost the whole app instead of its one port.
    from servicerouter.labels import LABELS

    for spec in LABELS:
        if spec.scope == "port" and spec.parse is not None:
            label = spec.label.replace("{n}", "0")
            parsed = parse_labels({label: "9" * 5000}, 1, per_service_errors=True)
            assert set(parsed.errors) <= {0}, label
    parsed = parse_labels({"HAPROXY_0_PORT": "9" * 5000}, 1, per_service_errors=True)
    assert parsed.errors[0].label == "HAPROXY_0_PORT"
    assert parse_labels({"HAPROXY_0_PORT": "000080"}, 1).for_index(0).port == 80


@pytest.mark.parametrize("label", ["HAPROXY_0_VHOST", "HAPROXY_0_PATH", "HAPROXY_GROUP",
                                   "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL"])
def test_a_huge_bad_value_is_cut_in_the_error(label: str) -> None:
    """A megabyte label would otherwise be repeated whole in every log line and /status."""
    value = "/ok " + "x#" * 500_000
    with pytest.raises(LabelError) as info:
        parse_labels({label: value}, 1)
    assert len(str(info.value)) < 1000 and label in str(info.value)


def test_junk_labels_cost_a_few_short_warnings_not_the_app() -> None:
    labels = {f"HAPROXY_{i}_NOPE_{'X' * 5000}": "1" for i in range(100)}
    labels["HAPROXY_" + "9" * 5000 + "_PORT"] = "1"  # int() refuses 4,300 digits
    labels["HAPROXY_0_PORT"] = "10001"
    parsed = parse_labels(labels, 1, per_service_errors=True)
    assert parsed.for_index(0).port == 10001
    assert len(parsed.warnings) == 21 and "81 more label warnings" in parsed.warnings[-1]
    assert all(len(w) < 500 for w in parsed.warnings)


def test_path_takes_the_path_characters_path_beg_does() -> None:
    """marathon-lb printed PATH as is: '/v1:batch' or '/users/@me' worked there and left
    the port out here. Characters that could end the word or the line stay refused."""
    assert _opts({"HAPROXY_0_PATH": "-i /v1:batch /users/@me /a,b=(c)!*+"}).paths == (
        "/v1:batch", "/users/@me", "/a,b=(c)!*+")
    for bad in ("/a;b", "/a{b}", "/a'b", "/a$b"):
        with pytest.raises(LabelError, match="not an absolute path of"):
            parse_labels({"HAPROXY_0_PATH": bad}, 1)


def test_a_root_redirect_without_a_vhost_is_said_to_do_nothing() -> None:
    parsed = parse_labels({"HAPROXY_0_HTTP_BACKEND_REDIR": "/home"}, 1)
    assert parsed.warnings == ("label HAPROXY_0_HTTP_BACKEND_REDIR redirects / of the "
                               "service's vhosts, and HAPROXY_0_VHOST names none; ignored",)
    opts = parsed.for_index(0).options  # ignored: it does not make the port HTTP either
    assert opts.redir_path is None and opts.mode is Mode.TCP
    assert not parse_labels({"HAPROXY_0_HTTP_BACKEND_REDIR": "/home",
                             "HAPROXY_0_VHOST": "a.example.com"}, 1).warnings


@pytest.mark.parametrize(
    ("label", "field", "expected"),
    [("HAPROXY_0_VHOST", "vhosts", ()), ("HAPROXY_0_PATH", "paths", ()),
     ("HAPROXY_0_SSL_CERT", "ssl_cert", None), ("HAPROXY_0_BIND_ADDR", "bind_address", "*"),
     ("HAPROXY_0_BALANCE", "balance", "roundrobin"), ("HAPROXY_0_STICKY", "sticky", False),
     ("HAPROXY_0_REDIRECT_TO_HTTPS", "redirect_to_https", False),
     ("HAPROXY_0_USE_HSTS", "hsts", False),
     ("HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH", "proxypass_path", None),
     ("HAPROXY_0_HTTP_BACKEND_REVPROXY_PATH", "revproxy_path", None),
     ("HAPROXY_0_HTTP_BACKEND_REDIR", "redir_path", None),
     ("HAPROXY_0_ENABLED", "enabled", False)],
)
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_value_reads_as_marathon_lb_reads_it(label: str, field: str, expected: object,
                                                       empty: str) -> None:
    # marathon-lb served the port as if these labels were absent (an empty ENABLED: not
    # exposed); refusing the value took the whole port away on migration.
    parsed = parse_labels({label: empty}, 1, per_service_errors=True)
    assert not parsed.errors
    assert getattr(parsed.for_index(0).options, field) == expected
    assert parsed.for_index(0).options.mode is Mode.TCP  # an empty VHOST is no HTTP feature
    (warning,) = parsed.warnings
    assert label in warning and "empty" in warning


@pytest.mark.parametrize("label", ["HAPROXY_0_PORT", "HAPROXY_0_MODE", "HAPROXY_0_AUTH",
                                   "HAPROXY_0_BACKEND_WEIGHT",
                                   "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL",
                                   "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX",
                                   "HAPROXY_0_SNIPPET"])
def test_an_empty_value_marathon_lb_could_not_use_is_still_an_error(label: str) -> None:
    # Empty PORT, MODE, AUTH, BACKEND_WEIGHT, HEALTHCHECK_PORT_INDEX broke marathon-lb's
    # whole config; an empty network ACL (open there) fails closed here.
    parsed = parse_labels({label: ""}, 1, per_service_errors=True)
    assert parsed.errors[0].label == label


@pytest.mark.parametrize("value", ["a.example.com b.example.com",
                                   "a.example.com, b.example.com",
                                   "A.example.com\tb.example.com\n",
                                   " a.example.com ,, b.example.com "])
def test_vhosts_are_separated_by_commas_or_whitespace_as_marathon_lb_read_them(
        value: str) -> None:
    # marathon-lb put the value into `hdr(host) -i <value>`, where HAProxy took each
    # word as a name: "a.com b.com" routed both.
    assert _opts({"HAPROXY_0_VHOST": value}).vhosts == ("a.example.com", "b.example.com")


@pytest.mark.parametrize("name", ["HTTPS_FRONTEND_AUTH_ACL_ONLY",
                                  "HTTPS_FRONTEND_AUTH_REQUEST_ONLY",
                                  "HTTPS_FRONTEND_ROUTING_ONLY_WITH_PATH_AND_AUTH"])
@pytest.mark.parametrize("allow_templates", [False, True])
def test_templates_marathon_lb_documented_but_never_read_are_named_for_what_they_are(
        name: str, allow_templates: bool) -> None:
    # marathon-lb's Longhelp lists these as per-app labels; its code never read them.
    # An app carrying one was told the label was unknown to marathon-lb.
    label = f"HAPROXY_0_{name}"
    parsed = parse_labels({label: "  acl auth_x http_auth(user_x)\n"}, 1, allow_templates)
    (warning,) = parsed.warnings
    assert label in warning and "never read it from labels" in warning
    assert "knows" not in warning
    assert parsed.for_index(0).options == Options()


def test_a_vhost_label_holds_at_most_1000_names_of_16_labels() -> None:
    # The daemon indexes every domain a name lies under: 4,000 names of 120 labels in one
    # 1 MB VHOST cost it 204 MB and 2.4 s; 40,000 '*.' names first in the route order made
    # the shared frontend 3x slower for every tenant's host. Port 0 is left out, port 1 not.
    deep = ".".join(["a"] * 15)
    ok = {"HAPROXY_0_VHOST": ",".join(f"{deep}.h{i}" for i in range(1000))}
    assert len(parse_labels(ok, 1).for_index(0).options.vhosts) == 1000
    for value, why in [
            (",".join(f"h{i}.example.com" for i in range(1001)), "names 1001 hosts; at most 1000"),
            (f"shop.{deep}.example.com", "a host name of 18 labels; at most 16"),
            (f"*.{deep}.com", "a host name of 17 labels; at most 16")]:
        parsed = parse_labels({"HAPROXY_0_VHOST": value, "HAPROXY_1_VHOST": "shop.example.com"},
                              2, per_service_errors=True)
        error = parsed.errors[0]
        assert error.label == "HAPROXY_0_VHOST" and why in str(error), str(error)
        assert parsed.for_index(1).options.vhosts == ("shop.example.com",)


@pytest.mark.parametrize(("secret", "ok"), [
    ("$6$abcdefgh$" + "x" * 86, True),  # openssl passwd -6: 5,000 rounds
    ("$6$rounds=50000$abcdefgh$" + "x" * 86, True),
    ("$6$rounds=50001$abcdefgh$" + "x" * 86, False),
    ("$6$rounds=50000000$abcdefgh$" + "x" * 86, False),  # 28 s: the watchdog's kill
    ("$5$rounds=999999999$abcdefgh$" + "x" * 43, False),
    ("$6$rounds=$abcdefgh$" + "x" * 86, False),
    ("$2b$08$" + "x" * 53, True),
    ("$2b$10$" + "x" * 53, False),
    ("$2y$31$" + "x" * 53, False),
    ("$2b$xx$" + "x" * 53, False),
    ("$y$j9T$abcdefghijklmnop$" + "x" * 43, True),  # mkpasswd's default
    ("$y$jFT$abcdefghijklmnop$" + "x" * 43, False),  # 5 s
    ("$1$abcdefgh$" + "x" * 22, True),
])
def test_auth_refuses_a_hash_too_slow_to_check_per_request(secret: str, ok: bool) -> None:
    # HAProxy hashes what a client sends on every request, in a thread every tenant
    # shares: one request to a service whose hash took 28 s had HAProxy's watchdog kill
    # the process, and every tenant's service with it.
    parsed = parse_labels({"HAPROXY_0_AUTH": f"r:alice:{secret}"}, 1, per_service_errors=True)
    assert (0 not in parsed.errors) is ok, parsed.errors
    if not ok:
        error = str(parsed.errors[0])
        assert "HAPROXY_0_AUTH='r:alice:...'" in error and "every request" in error
        assert secret[8:] not in error  # the hash is not repeated


@pytest.mark.parametrize("value", ["fe80::1", "FE80::abcd:1", "febf::1", "ff02::1", "ff0e::1"])
def test_a_bind_address_no_socket_can_bind_without_a_zone_is_refused(value: str) -> None:
    """An IPv6 link-local or multicast address binds only with an interface zone, which a
    label cannot carry: HAProxy failed to start its listeners ("cannot bind socket
    (Invalid argument)"), and admission took it for an address of the host (binding it
    fails with EINVAL, not EADDRNOTAVAIL): only the daemon's bind check just before a
    reload kept it out, and `sync` runs none."""
    with pytest.raises(LabelError) as err:
        parse_labels({"HAPROXY_0_BIND_ADDR": value}, 1)
    assert str(err.value) == (
        f"label HAPROXY_0_BIND_ADDR={value!r} is an IPv6 link-local or multicast address, "
        "which HAProxy binds only with an interface zone (refused): bind '*' or '::', or "
        "an address of the host's interfaces")
    # Those around it still parse: site-local, global, and IPv4 link-local.
    for ok in ("fec0::1", "fd00::1", "169.254.1.1", "::"):
        assert parse_labels({"HAPROXY_0_BIND_ADDR": ok}, 1).for_index(0).options \
            .bind_address == ok
