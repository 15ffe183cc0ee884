"""Facts about this host that admission needs: the edge where they are gathered.

- certificate files an app names (``HAPROXY_{n}_SSL_CERT``): under an
  operator-allowed folder once symlinks are resolved, a regular file, holding a
  certificate and a private key, that HAProxy can load (:mod:`certcheck`: one
  ``haproxy -c`` for all the files of a gather that need it, :class:`Survey`);
- bind addresses an app names (``HAPROXY_{n}_BIND_ADDR``): ones the host has,
  found by binding a socket to the address (port 0, closed at once);
- just before a reload, whether each new frontend address can be bound.

Only values apps actually name are looked at, so a sync touches a handful of files.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import socket
import stat
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import certcheck
from .admission import CertFact, Facts
from .certnames import cert_names
from .layout import Settings
from .model import App

MAX_CERT_BYTES = 1 << 20
# The labels OpenSSL's PEM_read_bio_X509_AUX, HAProxy's reader, takes as a certificate.
_CERT = re.compile(rb"-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----")
_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]+-----")
# PKCS#8 "ENCRYPTED PRIVATE KEY", or a legacy PEM key with "Proc-Type: 4,ENCRYPTED".
_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4,\s*ENCRYPTED")


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


@dataclass(frozen=True)
class _Unjudged:
    """A certificate file allowed but for HAProxy's verdict (:mod:`certcheck`), and the
    fact it is when HAProxy loads it."""

    pending: certcheck.Pending
    fact: CertFact


def check_cert(path: str, allowed_dirs: Iterable[str], allowed_files: Iterable[str],
               haproxy_bin: str = "haproxy") -> CertFact:
    """May HAProxy load ``path`` for an app? The file to load (symlinks resolved), or why not.

    Allowed: a file named in ``--ssl-certs``, or one under an ``--ssl-cert-dir`` both as
    written and once every symlink is resolved (a link may not lead out of the folder),
    and one HAProxy can load (:mod:`certcheck`): else ``haproxy -c`` would refuse every
    candidate naming it, for every tenant, until isolation found the service."""
    found = _examine(path, allowed_dirs, allowed_files, haproxy_bin)
    if isinstance(found, _Unjudged):
        return _settled(found, certcheck.judge([found.pending], haproxy_bin))
    return found


def _examine(path: str, allowed_dirs: Iterable[str], allowed_files: Iterable[str],
             haproxy_bin: str) -> CertFact | _Unjudged:
    """:func:`check_cert` but for a question only ``haproxy -c`` can answer."""
    lexical = os.path.normpath(path)
    real = os.path.realpath(path)
    allowed = shared = False
    for f in allowed_files:
        if lexical == os.path.normpath(f) and real == os.path.realpath(f):
            allowed = shared = True
    folders = [(os.path.normpath(d), os.path.realpath(d)) for d in allowed_dirs]
    for written, resolved in folders:
        if (_inside(lexical, written) or _inside(lexical, resolved)) and _inside(real, resolved):
            allowed = True
    if not allowed:
        if any(_inside(lexical, w) or _inside(lexical, r) for w, r in folders):
            return CertFact(None, f"resolves to {real}, outside the allowed certificate folders "
                                  "(a symlink may not lead out of them)")
        where = ", ".join(d for d, _ in folders) or "none: set --ssl-cert-dir"
        return CertFact(None, f"is not under an allowed certificate folder ({where})")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return CertFact(None, f"cannot be opened: {exc.strerror}")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return CertFact(None, "is not a regular file")
        if info.st_size > MAX_CERT_BYTES:
            return CertFact(None, f"is larger than {MAX_CERT_BYTES} bytes")
        data = os.read(fd, MAX_CERT_BYTES)
    except OSError as exc:
        return CertFact(None, f"cannot be read: {exc.strerror}")
    finally:
        os.close(fd)
    stamp = (info.st_mtime_ns, info.st_size)
    lacks = _lacks(data)
    if lacks:
        return CertFact(None, "does not hold both a certificate and a private key (PEM): "
                              f"{lacks}", stamp)
    if _ENCRYPTED.search(data):
        return CertFact(None, "holds an encrypted private key: HAProxy would ask for its "
                              "passphrase on a terminal (haproxy -c and the reload hang "
                              "there) or fail; the key must be unencrypted", stamp)
    refused = certcheck.first_look(real, (info.st_ino, *stamp), haproxy_bin)
    if isinstance(refused, certcheck.Pending):
        return _Unjudged(refused, CertFact(real, None, stamp, shared, cert_names(data)))
    if refused:
        return CertFact(None, refused, stamp)
    return CertFact(real, None, stamp, shared, cert_names(data))


def _settled(found: CertFact | _Unjudged, said: Mapping[str, str | None]) -> CertFact:
    """The fact, once HAProxy said (``said``, by file) what it needed to."""
    if not isinstance(found, _Unjudged):
        return found
    refused = said[found.pending.path]
    return found.fact if refused is None else CertFact(None, refused, found.fact.stamp)


def _lacks(data: bytes) -> str | None:
    """What a certificate file lacks before HAProxy can load it, found in its text."""
    if not data.strip():
        return "it is empty"
    if not _PEM.search(data):
        return ("it holds no PEM block at all (HAProxy reads PEM only: a DER or PKCS#12 "
                "file must be converted)")
    if not _CERT.search(data):
        return "it holds no certificate"
    if not _KEY.search(data):
        return "it holds no private key"
    return None


def host_has_address(address: str) -> bool:
    """Whether this host has ``address`` (binding a socket to it succeeds)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
    except OSError as exc:
        return exc.errno != errno.EADDRNOTAVAIL
    return True


def bind_problem(address: str, port: int, haproxy_has: Iterable[str] = ()) -> str | None:
    """Why HAProxy could not bind ``address:port`` now, or None when it can.

    Binds as HAProxy does (SO_REUSEADDR and SO_REUSEPORT), so a port HAProxy itself
    already listens on passes, and one held by any other process fails. A port the
    daemon may not bind (below 1024 without the right, which HAProxy may have) is
    judged by the sockets listening on it instead (``/proc/net/tcp``, ``tcp6``): HAProxy
    would fail to bind it too, and with it the reload of every app. There, the
    addresses of ``haproxy_has`` (HAProxy's own binds, as its config writes them:
    ``*:80``, ``10.0.0.1:80``, ``ipv6@::1:80``) are HAProxy's sockets, not another
    process's: it binds beside its own (SO_REUSEPORT), as the plain test above lets pass."""
    host = "" if address in ("*", "") else address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(AttributeError, OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            own = own_hosts(haproxy_has, port)
            held = [a for a in listening(port) if overlaps(host, a) and a not in own]
            if held:
                return (f"cannot be bound: another socket listens on {held[0]} port {port} "
                        "(a privileged port, checked in /proc/net/tcp)")
            return None  # free: HAProxy may run with rights the daemon lacks
        return f"cannot be bound: {exc.strerror or exc}"
    return None


def own_hosts(binds: Iterable[str], port: int) -> set[str]:
    """The hosts of the ``binds`` on ``port`` as ``/proc/net/tcp`` shows them. Pure.

    ``*:80`` is ``0.0.0.0`` (HAProxy's ``*`` is IPv4's any), ``ipv6@::1:80`` is ``::1``;
    a bind that is no address (a unix socket, an odd template's line) is skipped."""
    out: set[str] = set()
    for bind in binds:
        host, sep, text = bind.rpartition(":")
        if not sep or text != str(port):
            continue
        host = host.removeprefix("ipv4@").removeprefix("ipv6@").strip("[]")
        if host in ("*", ""):
            out.add("0.0.0.0")
            continue
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(host)
            out.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return out


def overlaps(host: str, other: str) -> bool:
    """Whether binding ``host`` ("" for any) conflicts with a listener on ``other``."""
    if host in ("", "0.0.0.0", "::") or other in ("0.0.0.0", "::"):
        return True
    ip = ipaddress.ip_address(host)
    return (getattr(ip, "ipv4_mapped", None) or ip) == ipaddress.ip_address(other)


def listening(port: int, proc: str = "/proc/net") -> list[str]:
    """The addresses of the TCP sockets listening on ``port`` in this network namespace."""
    out: list[str] = []
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            out += listeners(Path(proc, name).read_text(), port)
    return out


def listeners(text: str, port: int) -> list[str]:
    """The addresses listening on ``port`` in a ``/proc/net/tcp`` or ``tcp6`` table. Pure.

    Each address is printed as hex 32-bit words in the host's byte order."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A":  # TCP_LISTEN
            continue
        address, _, hex_port = fields[1].partition(":")
        try:
            if int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
        except ValueError:
            continue
        if len(raw) not in (4, 16):
            continue
        if sys.byteorder == "little":
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        ip = ipaddress.ip_address(raw)
        mapped = getattr(ip, "ipv4_mapped", None)
        out.append(str(mapped or ip))
    return out


@dataclass(frozen=True)
class Survey:
    """The facts for the values apps name, but for the certificate files only ``haproxy
    -c`` can judge (:meth:`settle` asks it: run that off the event loop)."""

    certs: Mapping[str, CertFact | _Unjudged]
    addresses: Mapping[str, bool]
    haproxy_bin: str

    @property
    def asks_haproxy(self) -> bool:
        """Whether :meth:`settle` runs ``haproxy -c`` (once for all, ~1.2 s at 1,000
        files); else it returns at once."""
        return any(isinstance(f, _Unjudged) for f in self.certs.values())

    def settle(self) -> Facts:
        """The facts, asking ``haproxy -c`` about the files that need it (blocking)."""
        pending = [f.pending for f in self.certs.values() if isinstance(f, _Unjudged)]
        said = certcheck.judge(pending, self.haproxy_bin) if pending else {}
        return Facts({label: _settled(f, said) for label, f in self.certs.items()},
                     dict(self.addresses))


def survey(apps: Iterable[App], settings: Settings) -> Survey:
    """Every certificate and bind address ``apps`` name, looked at here (~1 ms a new
    certificate file, nothing for one seen before), but for ``haproxy -c``."""
    certs: dict[str, CertFact | _Unjudged] = {}
    addresses: dict[str, bool] = {}
    for app in apps:
        for svc in app.services:
            opts = svc.options
            if opts.ssl_cert is not None and opts.ssl_cert not in certs:
                certs[opts.ssl_cert] = _examine(opts.ssl_cert, settings.ssl_cert_dirs,
                                                settings.ssl_certs, settings.haproxy_bin)
            if opts.bind_address != "*" and opts.bind_address not in addresses:
                addresses[opts.bind_address] = host_has_address(opts.bind_address)
    return Survey(certs, addresses, settings.haproxy_bin)


def gather(apps: Iterable[App], settings: Settings) -> Facts:
    """The facts for every certificate and bind address ``apps`` name. Blocks for as long
    as ``haproxy -c`` takes on the files only it can judge: see :class:`Survey`."""
    return survey(apps, settings).settle()
