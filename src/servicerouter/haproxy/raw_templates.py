"""marathon-lb's template labels (``HAPROXY_{n}_FRONTEND_HEAD``, ``_BACKEND_HEAD``,
``_HTTP_BACKEND_*`` …; only with ``--allow-label-templates``): their placeholders
filled in, and every line checked for what it would do beyond the app's own traffic.
Pure. A line that would is refused with :class:`TemplateError` naming the app, the
label and the line, which leaves only that app out (``label_templates.py``).
"""

from __future__ import annotations

import re
import string

from ..layout import BackendShape
from .addresses import hostport


class TemplateError(ValueError):
    """A template that cannot be loaded or rendered (a label here, or a Jinja2 file in
    render.py, which re-exports it); names the label, or the file and line."""


# marathon-lb inserted BACKEND_HTTP_OPTIONS as written (no str.format), so its own
# default and documented example hold single braces: `if { ssl_fc }`.
_UNFORMATTED = frozenset({"BACKEND_HTTP_OPTIONS"})


def raw_templates(shape: BackendShape) -> dict[str, str]:
    """An app's marathon-lb template labels (only with --allow-label-templates), with
    marathon-lb's placeholders filled in. Raises :class:`TemplateError` naming the label."""
    opts = shape.service.options
    values = {"backend": shape.name, "bindAddr": opts.bind_address,
              "servicePort": shape.service.port, "mode": opts.mode.value,
              "balance": opts.balance, "bindOptions": "",
              "sslCert": f" ssl crt {opts.ssl_cert}" if opts.ssl_cert else ""}
    out = {}
    for key, text in opts.raw_templates:
        try:
            if key in _UNFORMATTED:
                formatted = text
            else:
                # Plain placeholders only: no attribute or index lookups
                # ({backend.__class__}).
                fields = {f for _, f, _, _ in string.Formatter().parse(text)
                          if f is not None}
                if fields - values.keys():
                    raise KeyError(", ".join(sorted(fields - values.keys())))
                formatted = text.format(**values)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise TemplateError(f"app {shape.app_id}: label HAPROXY_{shape.service.index}_"
                                f"{key}: {type(exc).__name__}: {exc}") from None
        lines = [ln for ln in formatted.splitlines() if ln.strip()]
        head = {"FRONTEND_HEAD": f"frontend {shape.name}",
                "BACKEND_HEAD": f"backend {shape.name}"}.get(key)
        body = lines[1:] if head else lines
        if head and (not lines or " ".join(lines[0].split()) != head):
            raise TemplateError(f"app {shape.app_id}: label HAPROXY_{shape.service.index}_{key} "
                                f"must start with '{head}' (marathon-lb: '{head.split()[0]} "
                                "{backend}')")
        where = f"app {shape.app_id}: label HAPROXY_{shape.service.index}_{key}"
        for ln in body:
            words = _template_words(ln)
            if words is None:
                raise TemplateError(f"{where}: line {ln.strip()!r} uses a backslash escape "
                                    "or an environment variable, which a label may not")
            if not words:
                continue
            if words[0] in _SECTIONS or not ln[:1].isspace():
                raise TemplateError(f"{where} may only add indented lines to its own section")
            why = _template_line_problem(words, shape)
            if why:
                raise TemplateError(f"{where}: line {ln.strip()!r} {why}")
        out[key] = "\n".join(lines)
    return out


# Section keywords: a label template may not open a section other than its own.
_SECTIONS = frozenset({"global", "defaults", "frontend", "backend", "listen", "userlist",
                       "peers", "resolvers", "mailers", "program", "http-errors", "ring",
                       "cache", "fcgi-app", "namespace_list"})


# Keywords and words of a label template that reach past the app's own traffic: the
# stats page (with `stats admin`, every app's servers), server lines (the slots are
# servicerouter's; an extra server reaches this host's loopback), files HAProxy would
# read (another tenant's key, /etc/shadow as an error page), runtime maps and ACLs
# shared with other apps (the host map), HAProxy's environment.
_TEMPLATE_KEYWORDS = frozenset({"stats", "server", "errorfile", "filter", "use-service",
                                "server-state-file-name", "load-server-state-from-file",
                                # more servers, or every server's address and check
                                # port (default-server addr 127.0.0.1 port 9091)
                                "server-template", "default-server", "dispatch",
                                "external-check"})
# Health checks that connect elsewhere than the slot's task: `http-check connect addr
# 127.0.0.1 port 9091` had HAProxy call the daemon's /_mlb_signal/usr1 every second.
_CHECK_KEYWORDS = frozenset({"http-check", "tcp-check"})
_CHECK_TARGET = frozenset({"addr", "port"})
_TEMPLATE_WORDS = frozenset({"file", "lf-file", "crt", "crt-list", "ca-file", "crl-file",
                             "errorfile", "-f", "-M", "use-service"})
_TEMPLATE_CALLS = re.compile(r"(?:\b(?:map(?:_\w+)?|env|set-map|del-map|add-acl|del-acl"
                             r"|clear-map|clear-acl)\()|(?:^|[\s,])(?:set|del|add)-(?:map|acl)\b")


def _template_words(line: str) -> list[str] | None:
    """The words HAProxy reads from ``line``, quotes removed (``"stats"`` is ``stats``,
    and an indented ``"listen"`` opens a section); None when the line uses what this
    reading does not follow: a backslash escape (``s\\x74ats``) or, in double quotes, an
    environment variable (``"${SECRET}"``)."""
    words: list[str] = []
    word: list[str] | None = None  # None: between words ('' is a word: "")
    quote = ""
    for ch in line:
        if ch == "\\" or (quote == '"' and ch == "$"):
            return None
        if quote and ch == quote:
            quote = ""
        elif not quote and ch.isspace():
            if word is not None:
                words.append("".join(word))
            word = None
        else:
            word = [] if word is None else word
            if not quote and ch in "'\"":
                quote = ch
            else:
                word.append(ch)
    if word is not None:
        words.append("".join(word))
    return words


def _template_line_problem(words: list[str], shape: BackendShape) -> str | None:
    """Why one line of a label template would act beyond the app's own traffic, or None.

    ``bind`` may bind only the service's own address (as marathon-lb's default
    ``bind {bindAddr}:{servicePort}{sslCert}``: another port would take a share of
    whoever else binds it, SO_REUSEPORT); ``use_backend`` and ``default_backend`` may
    name only the app's own backend (not, say, an internal app bound to loopback)."""
    opts = shape.service.options
    if words[0] == "bind":
        own = {hostport(opts.bind_address, shape.service.port),
               f"{opts.bind_address}:{shape.service.port}"}
        tls = ["ssl", "crt", opts.ssl_cert] if opts.ssl_cert else []
        if words[1:2] and words[1] in own and words[2:] in ([], tls):
            return None
        return (f"may bind only the service's own address ({min(own)}"
                f"{' ssl crt ' + str(opts.ssl_cert) if opts.ssl_cert else ''})")
    if words[0] in ("use_backend", "default_backend") and words[1:2] != [shape.name]:
        return f"may route only to the app's own backend {shape.name}"
    if words[0] in _CHECK_KEYWORDS and "connect" in words[1:2] and _CHECK_TARGET & set(words):
        return ("may connect only to the task being checked (no addr or port), not to this "
                "host's own services")
    line = " ".join(words)
    bad = (words[0] if words[0] in _TEMPLATE_KEYWORDS else
           next((w for w in words if w in _TEMPLATE_WORDS), None))
    m = _TEMPLATE_CALLS.search(line)
    if bad is None and m is not None:
        bad = m.group(0).strip(" ,")
    if bad is not None:
        return (f"uses {bad!r}, which reaches beyond the app's own traffic (files, shared "
                "maps, the stats page, servers, the environment)")
    return None
