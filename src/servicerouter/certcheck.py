"""Whether HAProxy can load a certificate file: OpenSSL's loader first, then ``haproxy -c``.

OpenSSL's own loader (Python's ssl, ~1 ms) judges first: a key of another certificate or
one too weak is refused in words that say what to do. A file it cannot load otherwise (a
corrupt block, a key it cannot read) is not always one HAProxy refuses (HAProxy 2.6 stops
reading the chain at a broken block and keeps the rest), and a file it loads is not
always one HAProxy takes (an ``.ocsp`` whose certificate's issuer HAProxy cannot find):
those are :class:`Pending`, and :func:`judge` asks ``haproxy -c`` about all of one
gather's at once, on one config naming each file on a line of its own.

What HAProxy 2.6 reads beside a certificate file (``ssl-load-extra-files``, "all" by
default), as its source and ``haproxy -c`` show:

- ``.sctl``: parsed; one it cannot parse fails the file (and one it can makes 2.6.12's
  ``haproxy -c`` die at exit, with no verdict: the file fails closed);
- ``.ocsp``: read, its content only ever warned about ("Content will be ignored"); the
  file fails if it cannot be read (a folder) or if the certificate's issuer is not found,
  in the chain or in a ``.issuer``;
- ``.issuer``: read only with an ``.ocsp`` beside it; it must then be a PEM certificate
  that issued the file's (else the file fails);
- ``.key``: read only when the file holds no private key HAProxy can read;
- one of those it opens that is a named pipe (or a device) it waits on forever: such a
  file is refused here, without asking.

So a ``.issuer`` alone asks nothing, and an ``.ocsp`` is part of the question by what
it is (a file, a folder, who may read it), not by its content: rewriting the OCSP
responses (daily, with OCSP stapling) asks nothing again.

Verdicts are kept per version of the file and of the files beside it: each full sync
gathers every file apps name. When ``haproxy -c`` cannot give one (not run, timed out,
died), the file fails closed (it is left out, with why) and is asked again next time.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import re
import signal
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# What OpenSSL says of a file HAProxy then refuses to load, failing ``haproxy -c`` for the
# whole candidate (Python's ssl runs the same checks, at OpenSSL's default security level
# 2, HAProxy's on Debian and Ubuntu).
_KEY_MISMATCH = frozenset({"KEY_VALUES_MISMATCH",  # a key of the certificate's type
                           "NO_CERTIFICATE_ASSIGNED"})  # of another type (EC for RSA)
_TOO_WEAK = frozenset({"EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK"})
# Files HAProxy 2.6 may load beside a certificate: see the module's docstring.
SIDECARS = (".ocsp", ".sctl", ".issuer")
_ASKING = (".ocsp", ".sctl")  # beside a file OpenSSL loads, only HAProxy can judge these
_ALSO_READ = (".key",)  # part of the question when it is asked, never a reason to ask
CHECK_TIMEOUT = 15.0  # seconds for `haproxy -c` on one certificate (~40 ms)
PER_FILE_TIMEOUT = 0.05  # and for each file more (1,000 files: ~1.2 s)
BATCH_FILES = 1000  # files per `haproxy -c` (~60 MB of memory for 1,000)
MAX_CHECKS = 64  # `haproxy -c` runs for one gather; the files left fail closed
_ALERT = re.compile(r"\[ALERT\][^\n]*?in section '[^']*' : *([^\n]+)")
# An ALERT about one line of the config: that line's file. (Not "too many fatal errors
# (50), stopping now", which names the line where HAProxy stopped reading.)
_BLAME = re.compile(r"\[ALERT\][^\n]*? parsing \[[^\]\n]*:(\d+)\] : '[^'\n]*' in section "
                    r"'[^'\n]*' : *([^\n]+)")
_HEAD = ("frontend servicerouter_certificate_check", "    mode tcp")
Version = tuple[int, int, int]  # inode, mtime (ns), size
# A file beside a certificate as the question's key: its suffix and its version, or for
# an ``.ocsp`` what decides whether HAProxy can read it (type, mode, owner).
Beside = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Pending:
    """A certificate file only ``haproxy -c`` can judge, and why (for a file it cannot
    judge either)."""

    path: str
    version: Version
    beside: Beside
    why: str  # "OpenSSL cannot load it (...)", "HAProxy also loads x.ocsp"

    def key(self, haproxy_bin: str) -> tuple[object, ...]:
        return self.path, self.version, self.beside, haproxy_bin


def first_look(path: str, version: Version, haproxy_bin: str) -> str | Pending | None:
    """Why HAProxy would refuse to load the certificate file ``path``, None when it
    loads it, or the :class:`Pending` question for ``haproxy -c`` (see :func:`judge`)
    when only HAProxy can tell and its verdict on this version is not known yet."""
    verdict, said = _openssl_verdict(path, version)
    if verdict == "refused":
        return said
    beside = _beside(path)
    suffixes = {suffix for suffix, _ in beside}
    opened = [path + p for p in (*_ASKING, ".issuer")
              if p in suffixes and (p != ".issuer" or ".ocsp" in suffixes)]
    for p in opened:
        if _blocks(p):
            return (f"has {p} beside it, which is not a regular file (a pipe, a socket or "
                    "a device): HAProxy would wait on it while loading the certificate "
                    "(haproxy -c and the reload hang there); it must be a file")
    if verdict == "loads" and not suffixes & set(_ASKING):
        return None
    if verdict == "unsure":
        why = f"OpenSSL cannot load it ({said})"
    else:
        why = "HAProxy also loads " + ", ".join(path + suffix for suffix, _ in beside
                                                 if suffix in SIDECARS)
    pending = Pending(path, version, beside, why)
    known, refused = _VERDICTS.get(pending.key(haproxy_bin))
    return refused if known else pending


def judge(pending: Iterable[Pending], haproxy_bin: str) -> dict[str, str | None]:
    """Why HAProxy refuses each pending file (by path), or None when it loads it.

    One ``haproxy -c`` for all of them (up to :data:`BATCH_FILES` a run), each file on a
    ``bind`` line of its own: an ALERT names its config line, so its file. HAProxy stops
    checking after a fatal error (after 50 while parsing), so the files no ALERT named are
    asked again without the refused ones, until a run passes. A run that fails naming no
    line (it died, timed out) is split in halves, down to a file alone, judged as before.
    At most :data:`MAX_CHECKS` runs: the files left, like those ``haproxy -c`` cannot
    judge, fail closed, and are asked again next time. Blocks (~1.2 s for 1,000 files):
    call it off the event loop."""
    todo = {p.path: p for p in pending}
    said = _ask(list(todo), haproxy_bin)
    out: dict[str, str | None] = {}
    for path, p in todo.items():
        verdict = said[path]
        if isinstance(verdict, _Unasked):
            out[path] = f"cannot be checked: {p.why}, and {verdict}"
        else:
            _VERDICTS.put(p.key(haproxy_bin), verdict)
            out[path] = verdict
    return out


@functools.lru_cache(maxsize=4096)
def _openssl_verdict(path: str, version: Version) -> tuple[str, str]:
    """("loads", ""), ("refused", why HAProxy refuses it too) or ("unsure", what OpenSSL
    said): see the module's docstring."""
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


def _beside(path: str) -> Beside:
    """The files HAProxy may read beside ``path`` that exist, as the question's key. (As
    HAProxy looks for them, with ``stat``: a dangling symlink is no file there.)"""
    out: list[tuple[str, tuple[int, ...]]] = []
    for suffix in (*SIDECARS, *_ALSO_READ):
        with contextlib.suppress(OSError):
            info = os.stat(path + suffix)
            if suffix == ".ocsp":  # read, its content never fatal: whether it can be read
                out.append((suffix, (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                                     info.st_uid, info.st_gid)))
            else:
                out.append((suffix, (info.st_ino, info.st_mtime_ns, info.st_size)))
    return tuple(out)


def _blocks(path: str) -> bool:
    """Whether opening ``path`` to read it may wait forever (a named pipe, a device)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


class _Unasked(Exception):
    """``haproxy -c`` gave no verdict on a file (not run, timed out, died): not kept."""


class _TimedOut(_Unasked):
    """One file of the batch may hang it: the others are asked without it."""


class _Verdicts:
    """HAProxy's verdicts by question (:meth:`Pending.key`), the newest 4,096: gathers
    may run in several threads at once."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._data: collections.OrderedDict[tuple[object, ...], str | None] = \
            collections.OrderedDict()

    def get(self, key: tuple[object, ...]) -> tuple[bool, str | None]:
        """(whether it is known, the verdict)"""
        with self._lock:
            if key not in self._data:
                return False, None
            self._data.move_to_end(key)
            return True, self._data[key]

    def put(self, key: tuple[object, ...], verdict: str | None) -> None:
        with self._lock:
            self._data[key] = verdict
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_VERDICTS = _Verdicts()


def _ask(paths: Sequence[str], haproxy_bin: str) -> dict[str, str | _Unasked | None]:
    """HAProxy's verdict on each of ``paths``: see :func:`judge`."""
    verdicts: dict[str, str | _Unasked | None] = {}
    # A path a config line cannot hold (a newline) is asked alone: it cannot shift the
    # other files' lines.
    alone = [p for p in paths if "\n" in p or "\r" in p]
    rest = [p for p in paths if p not in alone]
    batches = [[p] for p in alone] + [rest[i:i + BATCH_FILES]
                                      for i in range(0, len(rest), BATCH_FILES)]
    checks = 0
    while batches:
        batch = batches.pop()
        if checks >= MAX_CHECKS:
            for path in batch:
                verdicts[path] = _Unasked(f"{haproxy_bin} -c was not run for it ({checks} "
                                          "checks of certificate files already: asked "
                                          "again next time)")
            continue
        checks += 1
        try:
            returncode, output = _run(batch, haproxy_bin)
        except _Unasked as exc:
            if isinstance(exc, _TimedOut) and len(batch) > 1:
                batches += [batch[len(batch) // 2:], batch[:len(batch) // 2]]
            else:
                verdicts.update(dict.fromkeys(batch, exc))
            continue
        if returncode == 0:
            verdicts.update(dict.fromkeys(batch))
        elif len(batch) == 1:
            verdicts[batch[0]] = _alone(output, returncode, haproxy_bin)
        else:
            blamed = _blamed(output, batch)
            verdicts.update({path: _refusal(alert) for path, alert in blamed.items()})
            if blamed:
                if left := [p for p in batch if p not in blamed]:
                    batches.append(left)
            else:  # no line named: halves, until a file alone answers
                batches += [batch[len(batch) // 2:], batch[:len(batch) // 2]]
    return verdicts


def _run(batch: Sequence[str], haproxy_bin: str) -> tuple[int, str]:
    """``haproxy -c`` on a config loading each file of ``batch`` on a line of its own
    (line 3 onwards): its exit status and output."""
    from .haproxy.children import CHECK_NICE, pdeathsig

    config = "\n".join([*_HEAD, *(f"    bind 127.0.0.1:1 ssl crt {p}" for p in batch)])
    timeout = CHECK_TIMEOUT + PER_FILE_TIMEOUT * len(batch)
    try:  # its own session: no terminal for a passphrase prompt; killed at the timeout.
        # (In a worker thread too: the parent-death signal follows the thread that forked,
        # and that thread waits here until the check is over.)
        proc = subprocess.Popen([haproxy_bin, "-c", "-f", "/dev/stdin"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=pdeathsig(signal.SIGKILL, CHECK_NICE))
    except OSError as exc:
        raise _Unasked(f"{haproxy_bin} -c cannot run: {exc.strerror or exc}") from None
    try:
        output, _ = proc.communicate((config + "\n").encode(), timeout=timeout)
    except BaseException as exc:  # the timeout, or a stop: its whole session goes (a
        with contextlib.suppress(ProcessLookupError):  # --haproxy-bin wrapper's HAProxy
            os.killpg(proc.pid, signal.SIGKILL)  # child too, which outlived it)
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise _TimedOut(f"{haproxy_bin} -c timed out after {timeout:.0f}s") from None
        raise
    return proc.returncode, output.decode("utf-8", "replace")


def _blamed(output: str, batch: Sequence[str]) -> dict[str, str]:
    """The files of ``batch`` an ALERT names by their config line, with its words (the
    first for each file)."""
    blamed: dict[str, str] = {}
    first = len(_HEAD) + 1
    for m in _BLAME.finditer(output):
        index = int(m.group(1)) - first
        if 0 <= index < len(batch):
            blamed.setdefault(batch[index], m.group(2).strip())
    return blamed


def _alone(output: str, returncode: int, haproxy_bin: str) -> str | _Unasked | None:
    """The verdict of a failed ``haproxy -c`` on one file."""
    said = _ALERT.search(output)
    if said is None:
        if "ALERT" not in output:  # killed, or not haproxy at all: no verdict on the file
            return _Unasked(f"{haproxy_bin} -c failed without a verdict (exit status "
                            f"{returncode})")
        alert = output.strip().splitlines()[-1]
    else:
        alert = said.group(1).strip()
    return _refusal(alert)


def _refusal(alert: str) -> str:
    return (f"is a file HAProxy cannot load (haproxy -c: {alert[:300]}); it must hold the "
            "certificate, its private key and any chain as PEM blocks HAProxy can read")
