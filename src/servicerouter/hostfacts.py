"""Facts about this host that admission needs: the edge where they are gathered.

- certificate files an app names (``HAPROXY_{n}_SSL_CERT``): under an
  operator-allowed folder once symlinks are resolved, a regular file, holding a
  certificate and a private key, that HAProxy can load (:func:`load_refused`);
- bind addresses an app names (``HAPROXY_{n}_BIND_ADDR``): ones the host has,
  found by binding a socket to the address (port 0, closed at once);
- just before a reload, whether each new frontend address can be bound.

Only values apps actually name are looked at, so a sync touches a handful of files.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

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
# What OpenSSL says of a file HAProxy then refuses to load, failing ``haproxy -c`` for the
# whole candidate (Python's ssl runs the same checks, at OpenSSL's default security level
# 2, HAProxy's on Debian and Ubuntu).
_KEY_MISMATCH = frozenset({"KEY_VALUES_MISMATCH",  # a key of the certificate's type
                           "NO_CERTIFICATE_ASSIGNED"})  # of another type (EC for RSA)
_TOO_WEAK = frozenset({"EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK"})
# Files HAProxy 2.6 loads beside a certificate (``ssl-load-extra-files``, "all" by
# default): one it cannot parse fails the certificate, whatever the file holds.
SIDECARS = (".ocsp", ".sctl", ".issuer")
CHECK_TIMEOUT = 15.0  # seconds for `haproxy -c` on one certificate (~40 ms)
_ALERT = re.compile(r"\[ALERT\][^\n]*?in section '[^']*' : *([^\n]+)")


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_cert(path: str, allowed_dirs: Iterable[str], allowed_files: Iterable[str],
               haproxy_bin: str = "haproxy") -> CertFact:
    """May HAProxy load ``path`` for an app? The file to load (symlinks resolved), or why not.

    Allowed: a file named in ``--ssl-certs``, or one under an ``--ssl-cert-dir`` both as
    written and once every symlink is resolved (a link may not lead out of the folder),
    and one HAProxy can load (:func:`load_refused`): else ``haproxy -c`` would refuse
    every candidate naming it, for every tenant, until isolation found the service."""
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
    refused = load_refused(real, (info.st_ino, *stamp), haproxy_bin)
    if refused:
        return CertFact(None, refused, stamp)
    return CertFact(real, None, stamp, shared, cert_names(data))


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


def load_refused(path: str, version: tuple[int, int, int], haproxy_bin: str) -> str | None:
    """Why HAProxy would refuse to load the certificate file ``path``, or None.

    OpenSSL's own loader (Python's ssl, ~1 ms) judges first: a key of another certificate
    or one too weak is refused in words that say what to do. A file it cannot load
    otherwise (a corrupt block, a key it cannot read) is not always one HAProxy refuses
    (HAProxy 2.6 stops reading the chain at a broken block and keeps the rest), and a
    file it loads is not always one HAProxy takes (a broken ``.ocsp`` beside it), so
    those ask ``haproxy -c`` itself, on a configuration naming only this file. Both
    verdicts are kept per ``version`` of the file (inode, mtime, size; and of the files
    beside it): each full sync gathers every file apps name. When ``haproxy -c`` cannot
    be asked, the file fails closed (it is left out, with why), and is asked again next
    time."""
    verdict, said = _openssl_verdict(path, version)
    if verdict == "refused":
        return said
    beside = _sidecars(path)
    if verdict == "loads" and not beside:
        return None
    try:
        return _haproxy_refuses(path, version, beside, haproxy_bin)
    except _Unasked as exc:
        why = f"OpenSSL cannot load it ({said})" if verdict == "unsure" else \
            f"HAProxy also loads {', '.join(p for p, _ in beside)}"
        return f"cannot be checked: {why}, and {exc}"


@functools.lru_cache(maxsize=4096)
def _openssl_verdict(path: str, version: tuple[int, int, int]) -> tuple[str, str]:
    """("loads", ""), ("refused", why HAProxy refuses it too) or ("unsure", what OpenSSL
    said): see :func:`load_refused`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:  # the password callback: an encrypted key never prompts on a terminal
        context.load_cert_chain(path, password=lambda: b"")
    except ssl.SSLError as exc:
        said = exc.reason.replace("_", " ").lower() if exc.reason else str(exc)
        if exc.reason in _KEY_MISMATCH:
            return "refused", (
                "holds a private key that is not the certificate's: HAProxy refuses the "
                "file (\"inconsistencies between private key and certificate\"); put the "
                "certificate's own key in it")
        if exc.reason in _TOO_WEAK:
            return "refused", (
                f"holds a key or signature OpenSSL's default security level refuses "
                f"({said}): HAProxy cannot load it; use an RSA key of at least 2,048 "
                "bits, or EC, signed with SHA-256 or better")
        return "unsure", said or "unreadable PEM"
    except OSError as exc:  # gone or unreadable since it was read
        return "unsure", exc.strerror or str(exc)
    return "loads", ""


def _sidecars(path: str) -> tuple[tuple[str, tuple[int, int, int]], ...]:
    """The files HAProxy loads beside ``path`` that exist, each with its version."""
    out = []
    for suffix in SIDECARS:
        with contextlib.suppress(OSError):
            info = os.stat(path + suffix)
            out.append((path + suffix, (info.st_ino, info.st_mtime_ns, info.st_size)))
    return tuple(out)


class _Unasked(Exception):
    """``haproxy -c`` could not give a verdict (not run, timed out): not cached."""


@functools.lru_cache(maxsize=1024)
def _haproxy_refuses(path: str, version: tuple[int, int, int],
                     beside: tuple[tuple[str, tuple[int, int, int]], ...],
                     haproxy_bin: str) -> str | None:
    """What ``haproxy -c`` says of a configuration loading ``path`` alone, or None when
    it takes it. ``version`` and ``beside`` are the cache key."""
    from .haproxy.children import CHECK_NICE, pdeathsig

    config = (f"frontend servicerouter_certificate_check\n    mode tcp\n"
              f"    bind 127.0.0.1:1 ssl crt {path}\n")
    try:  # its own session: no terminal for a passphrase prompt; killed at the timeout
        proc = subprocess.run([haproxy_bin, "-c", "-f", "/dev/stdin"], input=config.encode(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=CHECK_TIMEOUT, start_new_session=True,
                              preexec_fn=pdeathsig(signal.SIGKILL, CHECK_NICE))
    except subprocess.TimeoutExpired:
        raise _Unasked(f"{haproxy_bin} -c timed out after {CHECK_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise _Unasked(f"{haproxy_bin} -c cannot run: {exc.strerror or exc}") from None
    if proc.returncode == 0:
        return None
    output = proc.stdout.decode("utf-8", "replace")
    said = _ALERT.search(output)
    if said is None:
        if "ALERT" not in output:  # killed, or not haproxy at all: no verdict on the file
            raise _Unasked(f"{haproxy_bin} -c failed without a verdict (exit status "
                           f"{proc.returncode})")
        alert = output.strip().splitlines()[-1]
    else:
        alert = said.group(1).strip()
    return (f"is a file HAProxy cannot load (haproxy -c: {alert[:300]}); it must hold the "
            "certificate, its private key and any chain as PEM blocks HAProxy can read")


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


def gather(apps: Iterable[App], settings: Settings) -> Facts:
    """The facts for every certificate and bind address ``apps`` name."""
    certs: dict[str, CertFact] = {}
    addresses: dict[str, bool] = {}
    for app in apps:
        for svc in app.services:
            opts = svc.options
            if opts.ssl_cert is not None and opts.ssl_cert not in certs:
                certs[opts.ssl_cert] = check_cert(opts.ssl_cert, settings.ssl_cert_dirs,
                                                  settings.ssl_certs, settings.haproxy_bin)
            if opts.bind_address != "*" and opts.bind_address not in addresses:
                addresses[opts.bind_address] = host_has_address(opts.bind_address)
    return Facts(certs, addresses)
