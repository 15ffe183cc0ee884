"""Every fixture, rendered under several settings, passes the real ``haproxy -c``.

``haproxy -c`` only parses and checks the configuration: it binds nothing and
sends no traffic, so the fixtures' non-loopback addresses are safe here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from servicerouter.haproxy.render import render
from servicerouter.layout import Settings, build_layout, desired_state
from servicerouter.marathon.parse import parse_apps
from servicerouter.model import App, Mode, Options, Service, Task

from ..unit.payloads import APP_FIXTURES, load, resolve

HAPROXY = shutil.which("haproxy")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not on PATH (CI installs it)"),
]


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A self-signed certificate and its key in one PEM, as HAProxy's ``crt`` wants."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=test",
         "-days", "1", "-keyout", str(d / "k"), "-out", str(d / "c")],
        check=True, capture_output=True, timeout=30,
    )
    path = d / "test.pem"
    path.write_bytes((d / "c").read_bytes() + (d / "k").read_bytes())
    return str(path)


def haproxy_check(text: str, tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    proc = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, f"haproxy -c failed:\n{proc.stdout}{proc.stderr}\n---\n{text}"


def render_apps(apps: list[App], settings: Settings) -> str:
    layout, table = build_layout(desired_state(apps, settings), {}, settings)
    return render(layout, table, settings)


def fixture_apps(name: str) -> list[App]:
    return parse_apps(load(name), name, resolve).apps


def settings_variants(tmp_path: Path, pem: str) -> dict[str, Settings]:
    base = Settings(socket_path=str(tmp_path / "admin.sock"))
    return {
        "default": base,
        "certs": replace(base, ssl_certs=(pem,)),
        "stats-off": replace(base, stats_port=0),
        "http-off": replace(base, http_port=0, ssl_certs=(pem,)),
        "no-health-check": replace(base, health_check=False, maxconn=2000,
                                   hard_stop_after="10s"),
        "group-external": replace(base, groups=("external",)),
        "operator": replace(base, ssl_certs=(pem,), syslog_socket="127.0.0.1:514",
                            app_id_port=9191, daemon_address="127.0.0.1:9091",
                            groups=("*",), https_port=8443),
    }


VARIANTS = ["default", "certs", "stats-off", "http-off", "no-health-check", "group-external",
            "operator"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", APP_FIXTURES)
def test_fixture_renders_a_valid_config(name: str, variant: str, tmp_path: Path,
                                        pem: str) -> None:
    settings = settings_variants(tmp_path, pem)[variant]
    haproxy_check(render_apps(fixture_apps(name), settings), tmp_path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_fixtures_together(variant: str, tmp_path: Path, pem: str) -> None:
    apps = [a for name in APP_FIXTURES for a in fixture_apps(name)]
    settings = settings_variants(tmp_path, pem)[variant]
    haproxy_check(render_apps(apps, settings), tmp_path)


def _app(app_id: str, port: int, options: Options, ips: tuple[str, ...] = ("10.0.0.1",),
         state: str = "TASK_RUNNING") -> App:
    tasks = tuple(Task(f"{app_id.strip('/')}.t{i}", app_id, ip, (31000 + i,), state)
                  for i, ip in enumerate(ips))
    return App(app_id, services=(Service(app_id, 0, port, options),), tasks=tasks)


def every_option_apps(pem: str) -> list[App]:
    http = Mode.HTTP
    return [
        _app("/vh/plain", 10001, Options(mode=http, vhosts=("a.example.com",))),
        _app("/vh/path", 10002, Options(mode=http, vhosts=("a.example.com", "b.example.com"),
                                         paths=("/api/v2", "/v1:b@tch!&(x)*+,="),
                                         redirect_to_https=True)),
        _app("/vh/sticky", 10003, Options(mode=http, vhosts=("s.example.com",), sticky=True,
                                           balance="leastconn")),
        _app("/vh/cert", 10004, Options(mode=http, vhosts=("c.example.com",), ssl_cert=pem)),
        _app("/tcp/ssl", 10005, Options(ssl_cert=pem, bind_address="127.0.0.1")),
        _app("/tcp/v6", 10006, Options(bind_address="::1", balance="source"),
             ips=("fd00::1", "fd00::2")),
        _app("/tcp/static", 10007, Options(balance="static-rr", health_check=True,
                                           health_check_interval_ms=500)),
        _app("/http/check", 10008, Options(mode=http, balance="random", health_check=True,
                                           health_check_path="/health%20z?ready=1&deep=(db,cache):@!*+")),
        _app("/tcp/first", 10009, Options(balance="first"), state="TASK_KILLING"),
        _app("/odd/na_me_/x y", 10010, Options()),
        # marathon-lb's labels
        _app("/mlb/auth", 10011, Options(
            mode=http, vhosts=("a.example.com", "*.a.example.com", "my_host.example.com"),
            paths=("/x", "/y"), path_ignore_case=True, backend_weight=5,
            auth=("Some Realm", "bob", "$6$abcdefgh$0123456789abcdef"),
            network_allowed=("10.0.0.0/8", "fd00::/8"), hsts=True, proxypass_path="/x",
            revproxy_path="/x", redir_path="/x/home", balance="hdr(host) use_domain_only")),
        # '%' starts a log-format variable in a redirect or a header replacement.
        _app("/mlb/percent", 10014, Options(
            mode=http, vhosts=("p.example.com",), redir_path="/home%20page%H",
            revproxy_path="/a%2Fb%ci", proxypass_path="/strip%20me")),
        _app("/mlb/tcp-acl", 10012, Options(network_allowed=("127.0.0.0/8",),
                                            balance="uri whole depth 2")),
        _app("/mlb/checks", 10013, Options(
            mode=http, balance="url_param id", health_check=True, health_check_path="/h",
            health_check_interval_ms=1000, health_check_timeout_ms=500, health_check_fall=4,
            health_check_port=8080, health_check_ssl=True)),
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_option_together(variant: str, tmp_path: Path, pem: str) -> None:
    settings = settings_variants(tmp_path, pem)[variant]
    haproxy_check(render_apps(every_option_apps(pem), settings), tmp_path)


def test_the_check_itself_rejects_a_broken_config(tmp_path: Path) -> None:
    """Guard: haproxy -c must fail on nonsense, or the tests above prove nothing."""
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("frontend x\n    bind *:1\n    no_such_keyword 1\n")
    proc = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, timeout=30)
    assert proc.returncode != 0


def test_a_location_rewrite_over_a_thousand_long_vhosts_is_valid(tmp_path: Path) -> None:
    """HTTP_BACKEND_REVPROXY_PATH with a full VHOST (1,000 names, MAX_VHOSTS) of long
    names: as one regex of the names, PCRE2 refused it ("regular expression is too
    large") and took the whole candidate with it until the service was found."""
    from servicerouter.label_values import MAX_VHOSTS
    vhosts = tuple(f"{'*.' if i % 2 else ''}h{i:04d}-{'x' * 40}.corp.example.com"
                   for i in range(MAX_VHOSTS))
    apps = [_app("/big/rev", 10000, Options(mode=Mode.HTTP, vhosts=vhosts, revproxy_path="/r"))]
    haproxy_check(render_apps(apps, Settings(socket_path=str(tmp_path / "admin.sock"))),
                  tmp_path)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _broken(pem: bytes, block: int, how: str) -> bytes:
    """``pem`` with its ``block``-th PEM block (from 0; -1 the last) broken: ``base64``
    (a character base64 has not), ``der`` (valid base64 of bytes that are not the DER it
    should be) or ``truncated`` (its first line only)."""
    starts = [m.start() for m in re.finditer(rb"-----BEGIN ", pem)]
    body = pem.index(b"\n", starts[block]) + 1
    end = pem.index(b"-----END ", body)
    if how == "base64":
        return pem[:body + 9] + b"!!" + pem[body + 11:]
    if how == "der":
        return pem[:body] + b"AAAA" + pem[body + 4:]
    return pem[:body] + pem[body:body + 64] + b"\n" + pem[end:]


def test_admission_refuses_exactly_the_certificate_files_haproxy_refuses(tmp_path: Path
                                                                         ) -> None:
    """hostfacts.check_cert's verdict on a file is haproxy -c's. A file HAProxy refuses
    failed the whole candidate, for every tenant, until isolation found the service: a
    key of another certificate, a weak key or chain, and every file HAProxy cannot parse
    (garbage, empty, a key alone, DER, a corrupt block, a broken .ocsp beside it). The
    bundles it takes (a chain, the key first, EC, DH parameters, a TRUSTED CERTIFICATE,
    text between the blocks, and the odd files HAProxy 2.6 loads though OpenSSL's own
    loader refuses them: a corrupt block after the chain) are admitted."""
    from servicerouter import hostfacts

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    d = tmp_path / "made"
    d.mkdir()

    def self_signed(name: str, *args: str) -> tuple[bytes, bytes]:
        _openssl("req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=shop.example.com",
                 *args, "-keyout", str(d / f"{name}.k"), "-out", str(d / f"{name}.c"))
        return (d / f"{name}.c").read_bytes(), (d / f"{name}.k").read_bytes()

    def signed(name: str, ca: str, *args: str) -> tuple[bytes, bytes]:
        """A leaf for leaf.example.com signed by the CA ``ca`` (its .c and .k in d)."""
        _openssl("req", "-new", "-nodes", "-newkey", "rsa:2048", "-subj",
                 "/CN=leaf.example.com", "-keyout", str(d / f"{name}.k"), "-out",
                 str(d / f"{name}.csr"))
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca}.c"),
                 "-CAkey", str(d / f"{ca}.k"), "-days", "1", "-set_serial", "2", *args,
                 "-out", str(d / f"{name}.c"))
        return (d / f"{name}.c").read_bytes(), (d / f"{name}.k").read_bytes()

    rsa, rsa_key = self_signed("rsa", "-newkey", "rsa:2048")
    ec, ec_key = self_signed("ec", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
    weak = b"".join(self_signed("weak", "-newkey", "rsa:1024"))
    ca, _ = self_signed("ca", "-newkey", "rsa:2048")
    leaf, leaf_key = signed("leaf", "ca")
    self_signed("sha1ca", "-newkey", "rsa:2048", "-sha1")
    sha1_leaf, sha1_leaf_key = signed("sha1leaf", "sha1ca", "-sha1")
    # A good leaf whose chain holds a CA of 1,024 bits ("unable to load chain certificate").
    weak_leaf, weak_leaf_key = signed("weakleaf", "weak")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-out", str(d / "ecp.k"))
    _openssl("req", "-x509", "-new", "-days", "1", "-subj", "/CN=shop.example.com", "-key",
             str(d / "ecp.k"), "-out", str(d / "ecp.c"))
    _openssl("dhparam", "-dsaparam", "-out", str(d / "dh"), "2048")
    _openssl("x509", "-in", str(d / "rsa.c"), "-outform", "DER", "-out", str(d / "rsa.der"))
    _openssl("x509", "-in", str(d / "rsa.c"), "-trustout", "-out", str(d / "rsa.trusted"))
    _openssl("rsa", "-in", str(d / "rsa.k"), "-traditional", "-out", str(d / "rsa1.k"))
    good, chain = rsa + rsa_key, leaf + leaf_key + ca
    accepted = {
        "rsa2048": good, "key-first": rsa_key + rsa, "ec": ec + ec_key,
        "ec-parameters-block": (d / "ecp.c").read_bytes() + (d / "ecp.k").read_bytes(),
        "chain": chain, "chain-key-last": leaf + ca + leaf_key,
        "dh-params": good + (d / "dh").read_bytes(),
        "dh-params-first": (d / "dh").read_bytes() + good,
        "pkcs1-key": rsa + (d / "rsa1.k").read_bytes(),
        "trusted-certificate": (d / "rsa.trusted").read_bytes() + rsa_key,
        "crlf": good.replace(b"\n", b"\r\n"),
        "text-between": b"subject=CN = shop.example.com\n" + rsa + b"Bag Attributes\n"
                        + rsa_key + b"trailer\n",
        # HAProxy 2.6 stops reading the chain at a block whose base64 is broken and
        # keeps what it read (OpenSSL's own loader, Python's, refuses these).
        "chain-then-bad-base64": _broken(chain, -1, "base64"),
        "then-unknown-block-bad-base64": good + b"-----BEGIN FOO-----\n!!!!\n-----END FOO-----\n",
        "then-unterminated-block": good + b"-----BEGIN CERTIFICATE-----\nMIIB\n",
    }
    refused = {
        "rsa-with-ec-key": rsa + ec_key, "ec-with-rsa-key": ec + rsa_key, "rsa1024": weak,
        "weak-chain": weak_leaf + weak_leaf_key + (d / "weak.c").read_bytes(),
        "sha1-chain": sha1_leaf + sha1_leaf_key + (d / "sha1ca.c").read_bytes(),
        "garbage": bytes(range(256)) * 8, "empty": b"",
        "garbage-in-markers": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE"
                              b"-----\n-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY"
                              b"-----\n",
        "key-only": rsa_key, "certificate-only": rsa, "der": (d / "rsa.der").read_bytes(),
        "chain-bad-der": _broken(chain, -1, "der"),
        "chain-truncated": _broken(chain, -1, "truncated"),
        "chain-cert-bad-der-before-key": leaf + _broken(ca, 0, "der") + leaf_key,
        "certificate-bad-der": _broken(good, 0, "der"),
        "certificate-bad-base64": _broken(good, 0, "base64"),
        "key-bad-der": _broken(good, 1, "der"),
        "key-bad-base64": _broken(good, 1, "base64"),
        "ocsp-beside": good, "sctl-beside": good,  # a .ocsp / .sctl next to it, broken
    }
    # Files HAProxy reads beside a certificate (None: a folder there). With OCSP
    # stapling a response sits beside each file: its content is only ever warned about
    # ("Content will be ignored"), but the certificate's issuer must be found, in the
    # chain or in a .issuer (read only with an .ocsp, and then it must be the issuer).
    (d / "index").write_text("V\t301231000000Z\t\t02\tunknown\t/CN=leaf.example.com\n")
    _openssl("ocsp", "-issuer", str(d / "ca.c"), "-cert", str(d / "leaf.c"), "-no_nonce",
             "-reqout", str(d / "req"))
    _openssl("ocsp", "-index", str(d / "index"), "-rsigner", str(d / "ca.c"), "-rkey",
             str(d / "ca.k"), "-CA", str(d / "ca.c"), "-reqin", str(d / "req"), "-respout",
             str(d / "leaf.ocsp"), "-ndays", "1")
    ocsp, leaf_alone = (d / "leaf.ocsp").read_bytes(), leaf + leaf_key
    broken = b"not what HAProxy reads\n"
    beside: dict[str, dict[str, bytes | None]] = {
        "ocsp-beside": {".ocsp": broken}, "sctl-beside": {".sctl": broken},
        "chain-ocsp": {".ocsp": ocsp}, "chain-ocsp-broken": {".ocsp": broken},
        "chain-ocsp-empty": {".ocsp": b""}, "leaf-ocsp-issuer": {".ocsp": ocsp, ".issuer": ca},
        "issuer-alone-broken": {".issuer": broken}, "key-beside-broken": {".key": broken},
        "leaf-ocsp-no-issuer": {".ocsp": ocsp},
        "chain-ocsp-issuer-broken": {".ocsp": ocsp, ".issuer": broken},
        "chain-ocsp-issuer-not-its-issuer": {".ocsp": ocsp, ".issuer": leaf},
        "chain-ocsp-folder": {".ocsp": None},
        # HAProxy 2.6.12's haproxy -c dies at exit (a double free) after a valid config
        # with a .sctl it parses: no verdict, the file fails closed (one HAProxy that
        # does not die takes it).
        "sctl-parsed": {".sctl": b"\x00\x06\x00\x04abcd"},
    }
    accepted.update({"chain-ocsp": chain, "chain-ocsp-broken": chain,
                     "chain-ocsp-empty": chain, "leaf-ocsp-issuer": leaf_alone,
                     "issuer-alone-broken": good, "key-beside-broken": good})
    refused.update({"leaf-ocsp-no-issuer": leaf_alone, "chain-ocsp-issuer-broken": chain,
                    "chain-ocsp-issuer-not-its-issuer": chain, "chain-ocsp-folder": chain})
    either = {"sctl-parsed": good}
    folder = tmp_path / "certs"
    folder.mkdir()
    alone: dict[str, hostfacts.CertFact] = {}
    for i, (name, data) in enumerate({**accepted, **refused, **either}.items()):
        path = folder / f"{name}.pem"
        path.write_bytes(data)
        for suffix, content in beside.get(name, {}).items():
            if content is None:
                Path(f"{path}{suffix}").mkdir()
            else:
                Path(f"{path}{suffix}").write_bytes(content)
        fact = alone[name] = hostfacts.check_cert(str(path), [str(folder)], [])
        cfg = tmp_path / f"{name}.cfg"
        cfg.write_text(f"frontend f\n    mode tcp\n    bind 127.0.0.1:{10000 + i} ssl crt "
                       f"{path}\n")
        proc = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True,
                              text=True, timeout=30)
        admitted = fact.path is not None
        assert admitted == (proc.returncode == 0), (name, fact, proc.stdout + proc.stderr)
        if name not in either:
            assert admitted == (name in accepted), (name, fact)
        if not admitted:  # says what is wrong with the file, in a sentence
            assert fact.problem and len(fact.problem) < 500, (name, fact)
    # All of them at once, as a sync gathers them (a haproxy -c for all, and again for
    # those after the first it refuses): the same verdicts, in the same words. (Another
    # name for haproxy: the verdicts above are not known under it.)
    alias = tmp_path / "haproxy"
    alias.symlink_to(str(HAPROXY))
    settings = Settings(http_port=0, https_port=0, ssl_cert_dirs=(str(folder),),
                        haproxy_bin=str(alias))
    apps = [_app(f"/m/{i}", 10000 + i, Options(ssl_cert=str(folder / f"{name}.pem")))
            for i, name in enumerate(alone)]
    together = hostfacts.gather(apps, settings).certs
    for name, fact in alone.items():
        batched = together[str(folder / f"{name}.pem")]
        assert (batched.path, str(batched.problem).replace(str(alias), "haproxy")) == \
            (fact.path, str(fact.problem)), name
    # A folder, which HAProxy's crt would take as a folder of certificates.
    assert hostfacts.check_cert(str(folder), [str(tmp_path)], []).problem == \
        "is not a regular file"
