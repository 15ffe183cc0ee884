"""Marathon over TLS, against a real TLS server on loopback: verified by default
against the system's CAs (where an operator installs a private CA), by --marathon-ca
when given, never silently unverified."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from servicerouter.marathon.client import MarathonClient
from servicerouter.marathon.errors import MarathonError

pytestmark = pytest.mark.integration

APPS = {"apps": [{"id": "/tls/web", "instances": 0, "tasks": [], "labels": {}}]}


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and a certificate it signed for 127.0.0.1."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=servicerouter test CA", cwd=d)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
            cwd=d)
    return d


@pytest.fixture(scope="module")
def marathon(pki: Path) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(APPS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def fetch(url: str, verify: bool | str) -> list[str]:
    """The ids of the apps fetched from ``url``."""
    async def go() -> list[str]:
        async with MarathonClient([url], verify=verify, attempts=1, retry_total=1,
                                  request_timeout=20) as client:
            return [app["id"] for app in (await client.get_apps()).data["apps"]]
    return asyncio.run(go())


def test_an_unknown_ca_is_refused_by_default(marathon: str, pki: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "server.key"))  # no CA in it
    with pytest.raises(MarathonError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        fetch(marathon, True)


def test_a_ca_in_the_system_store_is_trusted(marathon: str, pki: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """certifi's bundle (what httpx uses alone) ignored a CA the operator installed."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))  # OpenSSL's default store
    assert fetch(marathon, True) == ["/tls/web"]


def test_marathon_ca_names_the_ca(marathon: str, pki: Path) -> None:
    assert fetch(marathon, str(pki / "ca.pem")) == ["/tls/web"]


def test_no_verify_tls_is_what_it_says(marathon: str) -> None:
    assert fetch(marathon, False) == ["/tls/web"]
