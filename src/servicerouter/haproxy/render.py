"""Layout + slot table → ``haproxy.cfg``, through the Jinja2 templates. Pure.

The templates live in the top-level ``templates/`` folder (shipped inside the
wheel as ``servicerouter/templates``). ``--templates DIR`` puts an operator's
folder in front: any file found there replaces the built-in one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import itertools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .. import __version__, pool
from ..layout import BackendShape, Layout, Settings, SlotTable, grace_ms
from ..model import Endpoint, EndpointState, Options
from ..naming import slot_name
from .addresses import hostport
from .files import atomic_write, make_dirs
from .raw_templates import TemplateError, raw_templates

FREE_SLOT_ADDRESS = "127.0.0.1:1"
# HAProxy 2.6 reads at most 64 words of a config line and drops the rest with an alert
# (a fatal one: the ACL is then undefined). An app's long list (a hundred VHOSTs, 256
# NETWORK_ALLOWED ranges) goes on several lines declaring the same ACL, which HAProxy
# ORs, this many values a line.
ACL_VALUES = 48
# Files named on the HTTPS frontend's bind line: ``bind ADDR ssl`` and two words a file
# (``crt FILE``) fill those 64 words with 30. Past that the config is refused.
BIND_LINE_CERTS = 30
# The ACL a service's backend declares for its own vhosts (REDIRECT_TO_HTTPS,
# HTTP_BACKEND_REDIR; service.j2 declares it by this name).
VHOST_ACL = "service_vhost"


def builtin_templates() -> Path:
    """The packaged templates (wheel), or the repository's (editable install)."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "templates"
    if packaged.is_dir():
        return packaged
    return here.parent.parent / "templates"



def server_params(shape: BackendShape, slot: str) -> str:
    """Keywords every server of a backend carries (also used by ``add server``)."""
    opts = shape.service.options
    params = []
    if opts.health_check:
        params += ["check", "inter", str(opts.health_check_interval_ms)]
        if opts.health_check_fall:
            params += ["fall", str(opts.health_check_fall)]
        if opts.health_check_port:
            params += ["port", str(opts.health_check_port)]
        if opts.health_check_ssl:  # HTTPS checks, certificates not verified (as Marathon)
            params += ["check-ssl", "verify", "none"]
    if opts.sticky:
        params += ["cookie", slot]
    return "".join(f" {p}" for p in params)


@dataclass(frozen=True, slots=True)
class _Server:
    name: str
    address: str
    disabled: bool
    params: str


class _Loader(jinja2.FileSystemLoader):
    """Names the template that is not UTF-8: Jinja's own error names only the byte, and
    the file may be a snippet another template includes."""

    def get_source(self, environment: jinja2.Environment, template: str
                   ) -> tuple[str, str, Callable[[], bool]]:
        try:
            return super().get_source(environment, template)
        except UnicodeDecodeError as exc:
            path = next((p for d in self.searchpath if (p := Path(d, template)).is_file()),
                        template)
            raise TemplateError(f"template {path}: not UTF-8 ({exc.reason} at byte "
                                f"{exc.start}); save it as UTF-8") from None


@functools.lru_cache(maxsize=8)
def template_environment(template_dirs: tuple[str, ...]) -> jinja2.Environment:
    return jinja2.Environment(
        loader=_Loader(list(template_dirs)),
        autoescape=False,  # HAProxy config, not HTML; every value is validated first
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def _slot_lines(shape: BackendShape, slots: Sequence[Endpoint | None]
                ) -> list[tuple[str, str, bool, str]]:
    """(name, address, disabled, params) per slot. A free slot is disabled at
    127.0.0.1:1; a draining endpoint starts disabled and the post-reload reconcile
    sets it to drain (there is no config keyword for drain)."""
    out = []
    # Only sticky servers' parameters name the slot: compute the others once.
    shared = None if shape.service.options.sticky else server_params(shape, "")
    for i in range(shape.slots):
        name = slot_name(i + 1)
        held = slots[i] if i < len(slots) else None
        params = shared if shared is not None else server_params(shape, name)
        if held is None:
            out.append((name, FREE_SLOT_ADDRESS, True, params))
        else:
            extra = f" port {held.check_port}" if held.check_port else ""
            out.append((name, hostport(held.ip, held.port),
                        held.state is EndpointState.DRAIN, params + extra))
    return out


class _BackendView:
    """What templates see as ``b``. ``server_lines`` is what the built-in template
    prints (joined in Python: at 160,000 slots a Jinja loop costs ~0.3 s);
    ``servers`` is built only for a template that loops over it."""

    def __init__(self, shape: BackendShape, slots: Sequence[Endpoint | None],
                 https_port: int = 443, frontend: bool = True, http_port: int = 80) -> None:
        opts = shape.service.options
        self.name = shape.name
        self.frontend = frontend  # False: routed by the range frontend's port map, or a spare
        self.app_id = shape.app_id
        self.port = shape.service.port
        self.bind = opts.bind_address
        self.mode = opts.mode.value
        self.balance = opts.balance
        self.ssl_cert = opts.ssl_cert
        self.sticky = opts.sticky
        self.httpchk = opts.health_check_path if opts.health_check else None
        self.check_timeout_ms = opts.health_check_timeout_ms if opts.health_check else None
        self.http = opts.mode.value == "http"
        self.networks = acl_lines(opts.network_allowed)  # ACL_VALUES ranges a line
        self.auth = opts.auth  # (realm, user, crypt hash), all validated
        self.userlist = f"users_{shape.name}"
        self.redirect_location = _redirect_location(https_port) if opts.redirect_to_https \
            else None
        self.redirect_condition = _redirect_condition(opts, http_port) if opts.redirect_to_https \
            else None
        self.hsts = opts.hsts
        self.proxypass = _proxypass(opts.proxypass_path, opts.vhosts)
        self.revproxy = _revproxy(opts.revproxy_path, opts.vhosts)
        self.redir = _redir(opts.redir_path, opts.vhosts)
        # The ``service_vhost`` ACL's lines (flags and values), when a rule above uses it.
        self.vhost_acls = _vhost_acls(opts.vhosts) if (
            self.redir or (self.redirect_condition or "").endswith(VHOST_ACL)) else []
        self.snippet = opts.snippet
        raw = raw_templates(shape) if opts.raw_templates else {}
        self.frontend_head = raw.get("FRONTEND_HEAD")
        self.backend_head = raw.get("BACKEND_HEAD")
        self.http_options = raw.get("BACKEND_HTTP_OPTIONS")
        self.options = opts
        # The server lines are made when the template reads them, not kept: ~2 KB a
        # backend, 21 MB held through the render at 10,000 apps.
        self._shape, self._slot_endpoints = shape, slots

    @property
    def server_lines(self) -> str:
        return "\n".join(f"    server {n} {a}{' disabled' if d else ''}{p}"
                         for n, a, d, p in _slot_lines(self._shape, self._slot_endpoints))

    @functools.cached_property
    def servers(self) -> list[_Server]:
        return [_Server(*s) for s in _slot_lines(self._shape, self._slot_endpoints)]


def _redirect_location(https_port: int) -> str:
    """A 301 target keeping host (without its port), path and query."""
    port = "" if https_port in (0, 443) else f":{https_port}"
    return f"https://%[hdr(host),field(1,:)]{port}%[pathq]"


def _literal(text: str) -> str:
    """``text`` as itself in a log-format argument (a redirect location, a header
    replacement), where ``%`` starts a variable: ``/a%20b`` would not validate and
    ``/%H`` would print the load balancer's host name."""
    return text.replace("%", "%%")


def _regex_literal(text: str) -> str:
    """``text`` matched literally in a single-quoted HAProxy regex (validated chars only)."""
    return re.sub(r"([.~%-])", r"\\\1", text)


def acl_lines(values: Sequence[str], flags: str = "") -> list[str]:
    """The value part of each line of one ACL: ``flags`` then up to ACL_VALUES values."""
    return [" ".join((flags, *values[i:i + ACL_VALUES])).lstrip()
            for i in range(0, len(values), ACL_VALUES)]


def _vhost_acls(vhosts: Sequence[str]) -> list[str]:
    """``service_vhost``: the request's Host is one of ``vhosts`` (exact names, or under
    a ``*.`` wildcard), on whatever frontend it came."""
    return (acl_lines([h for h in vhosts if not h.startswith("*.")], "-i")
            + acl_lines([h[1:] for h in vhosts if h.startswith("*.")], "-i -m end"))


def _redirect_condition(opts: Options, http_port: int) -> str:
    """REDIRECT_TO_HTTPS: plain requests for the service's vhosts that came in on the
    shared HTTP port (``--http-port``), as marathon-lb's rule in its HTTP frontend
    (``if !{ ssl_fc } host_X``). The service's own port and the app-id frontend serve
    plain HTTP, as in marathon-lb: a load balancer that ends TLS in front of the
    service port sends plain requests with the vhost's Host, which a redirect would
    send round in a loop. The port, not the frontend's name, says where a request came
    in: an operator's template may rename the frontend, and no other frontend binds
    that port. With AUTH every plain request is redirected, on every frontend, so no
    credentials are asked over plain HTTP."""
    if opts.auth or not opts.vhosts:
        return "unless { ssl_fc }"
    return f"if !{{ ssl_fc }} {{ dst_port {http_port} }} {VHOST_ACL}"


def _redir(path: str | None, vhosts: Sequence[str]) -> dict[str, str] | None:
    """HTTP_BACKEND_REDIR: a request for / on one of the service's vhosts (by Host, on
    any frontend, as marathon-lb's ``is_domain is_root``) is sent to ``path``."""
    if not path or not vhosts:
        return None
    return {"location": _literal(path), "condition": f"{{ path / }} {VHOST_ACL}"}


def _proxypass(path: str | None, vhosts: Sequence[str]) -> dict[str, str] | None:
    if not path:
        return None
    host = next((h for h in vhosts if not h.startswith("*.")), None)
    prefix = _regex_literal(path.rstrip("/"))
    return {"host": host or "", "match": f"'^{prefix}(/(.*))?$'", "replace": "'/\\2'"}


def _revproxy(path: str | None, vhosts: Sequence[str]) -> dict[str, Any] | None:
    """Location headers pointing into the service (relative, or one of its vhosts, any
    port) get ``path`` in front of their path. The vhosts are an ACL on the Location's
    host (looked up as HAProxy looks up any host list), not alternatives of the rewrite's
    regex: a regex of all of them grew with every name, a 1,000-name VHOST of long names
    made it too large for PCRE2 (``haproxy -c``: "regular expression is too large")."""
    if not path:
        return None
    root = _literal(path.rstrip("/"))
    hosts = _vhost_acls(vhosts)
    return {"match": "'^(https?://[^/:]*(:[0-9]+)?)?/(.*)$'", "replace": f"'\\1{root}/\\3'",
            "hosts": hosts,
            "condition": "if { res.hdr(location) -m beg / }" + (
                " || revproxy_host" if hosts else "")}


def vhost_routes(layout: Layout) -> list[dict[str, Any]]:
    """One route per service with vhosts, in the order HAProxy must try them:
    larger HAPROXY_{n}_BACKEND_WEIGHT first (as marathon-lb), then the longer path
    (so /api/v2 wins over /api for the same host), then by name."""
    routes: list[dict[str, Any]] = []
    for shape in sorted(layout.values(), key=lambda s: s.name):
        opts = shape.service.options
        name = shape.name
        if opts.vhosts:
            routes.append({
                "acl": f"host_{name}", "backend": name,
                "hosts": [h for h in opts.vhosts if not h.startswith("*.")],
                "wildcards": [h[1:] for h in opts.vhosts if h.startswith("*.")],
                "paths": list(opts.paths), "path_flags": "-i " if opts.path_ignore_case else "",
                "weight": opts.backend_weight,
            })
    routes.sort(key=lambda r: (-r["weight"], -max((len(p) for p in r["paths"]), default=0),
                               r["backend"]))
    return routes


# Marathon's own ids are lowercase; the rule matches the header with -i (as marathon-lb),
# so a laxer Marathon's "/SHOP/web", sorting first, would take "/shop/web"'s requests.
_APP_ID = re.compile(r"^/[a-z0-9._/-]{1,255}$")


def _loopback(address: str) -> bool:
    """A service bound to loopback only (HAPROXY_{n}_BIND_ADDR=127.0.0.1) is private:
    the app-id frontend, bound on every address, must not reach it."""
    if address == "*":
        return False
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ::ffff:127.0.0.1 too


def app_id_routes(layout: Layout) -> list[dict[str, str]]:
    """For the X-Marathon-App-Id frontend: each app's first HTTP service (as marathon-lb)."""
    out: dict[str, str] = {}
    for name, shape in sorted(layout.items(), key=lambda kv: (kv[1].app_id,
                                                              kv[1].service.index)):
        # fullmatch: "$" also matches before a final newline, which would end the rule
        if shape.service.options.mode.value == "http" and _APP_ID.fullmatch(shape.app_id) \
                and not _loopback(shape.service.options.bind_address):
            out.setdefault(shape.app_id, name)
    return [{"app_id": a, "backend": b} for a, b in sorted(out.items())]


def _joined(pieces: Iterator[str], batch: int = 8192) -> str:
    """``"".join(pieces)`` a batch at a time. Jinja's ``render`` joins its generator
    whole: at 10,000 apps that is a list of ~500,000 small strings alive at once,
    28 MB on top of the 4.3 MB config (the daemon's peak RSS is at the render)."""
    chunks = []
    while batch_of := list(itertools.islice(pieces, batch)):
        chunks.append("".join(batch_of))
    return "".join(chunks)


def render(layout: Layout, table: SlotTable, settings: Settings,
           templates: str | Path | None = None, *, mode_templates: str | None = None,
           extra: dict[str, Any] | None = None) -> str:
    """The complete ``haproxy.cfg`` text. Raises :class:`TemplateError`.

    ``mode_templates`` (a folder under the built-in templates, e.g. ``mesosdns``)
    replaces built-in files by name for a rendering mode, below the operator's
    ``templates``; ``extra`` adds names to the templates' context."""
    if templates and not os.path.isdir(templates):  # Jinja would skip it silently
        raise TemplateError(f"--templates {templates}: no such directory (any more); not "
                            "rendered with the built-in templates instead of yours")
    mode = (str(builtin_templates() / mode_templates),) if mode_templates else ()
    dirs = ((str(templates),) if templates else ()) + mode + (str(builtin_templates()),)
    _, routes = pool.host_routes(layout, settings)
    ranged = pool.range_on(settings)
    tenants = tenant_certs(layout)
    crt_list = write_crt_list(settings.crt_list_dir, tenants,
                              filtered=settings.vhost_policy != "open") \
        if settings.crt_list_dir else None
    certs = list(dict.fromkeys([*settings.ssl_certs, *(() if crt_list else tenants)]))
    if settings.https_port and len(certs) + bool(crt_list) > BIND_LINE_CERTS:
        raise TemplateError(_too_many_certs(len(settings.ssl_certs),
                                            len(certs) - len(settings.ssl_certs),
                                            bool(crt_list)))
    context = {
        "version": __version__,
        "settings": settings,
        "backends": [_BackendView(layout[n], table.get(n, []), settings.https_port,
                                  not ranged or not (pool.map_routed(layout[n], settings)
                                                     or pool.is_spare(layout[n])),
                                  settings.http_port)
                     # By backend name: an app in a spare sits where the spare did.
                     for n in sorted(layout, key=lambda n: layout[n].name)],
        "vhost_routes": routes,
        # Range mode (pool.py): the port-range frontend and the host map.
        "service_range": {"bind": pool.range_bind(layout, settings),
                          "ports_map": pool.map_path(settings, pool.PORTS_MAP)} if ranged
        else None,
        "host_map": pool.map_path(settings, pool.HOSTS_MAP) if pool.host_map_used(settings)
        else None,
        "app_id_routes": app_id_routes(layout) if settings.app_id_port else [],
        "certs": certs,
        "crt_list": crt_list,
        "acl_values": ACL_VALUES,
        "hostport": hostport,
        "grace_ms": grace_ms(settings, len(layout)),
        **(extra or {}),
    }
    try:
        template = template_environment(dirs).get_template("haproxy.cfg.j2")
        return _joined(template.generate(context))
    except TemplateError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {exc.filename or exc.name}:{exc.lineno}: {exc.message}"
                            ) from None
    except Exception as exc:  # an operator's template can raise anything
        where = _template_location(exc) or f"templates in {' then '.join(dirs)}"
        raise TemplateError(f"{where}: {type(exc).__name__}: {exc}") from None


def tenant_certs(layout: Layout) -> dict[str, list[str]]:
    """The apps' certificates the shared HTTPS frontend loads (those of services with
    vhosts, admitted there: hostfacts), each with the vhosts of the services naming it."""
    out: dict[str, list[str]] = {}
    for s in layout.values():
        opts = s.service.options
        if opts.vhosts and opts.ssl_cert and opts.sni_cert:
            out.setdefault(opts.ssl_cert, []).extend(
                h for h in opts.vhosts if h not in out.get(opts.ssl_cert, ()))
    return out


CRT_LIST = re.compile(r"^crt-[0-9a-f]{16}\.list$")
# HAProxy 2.6 reads at most 65,535 characters and 2,048 words of a crt-list line, and
# refuses the list (the whole HTTPS frontend) otherwise: one tenant's certificate with a
# thousand long VHOST names did. A file's hosts go on as many lines as they need (a file
# may be listed on several lines, each with its own SNI filter).
CRT_LIST_LINE_CHARS = 60_000
CRT_LIST_LINE_HOSTS = 1_000


def _too_many_certs(operators: int, apps: int, crt_list: bool) -> str:
    """Why the HTTPS frontend's bind line cannot hold its files, and what to do."""
    parts = [f"--ssl-certs names {operators} file(s)"]
    if apps:
        parts.append(f"the apps' HAPROXY_{{n}}_SSL_CERT {apps} more (their crt-list is "
                     "only written with --output or by the daemon)")
    if crt_list:
        parts.append("the apps' crt-list 1 more")
    return (f"{', '.join(parts)}: HAProxy 2.6 reads 64 words of a line, room for "
            f"{BIND_LINE_CERTS} on the HTTPS frontend's bind line; name a folder in "
            "--ssl-certs instead of its files (HAProxy loads every file in it)")


def write_crt_list(folder: str, certs: dict[str, list[str]], filtered: bool = True
                   ) -> str | None:
    """The crt-list file holding ``certs`` in ``folder`` (written if it is not there yet),
    or None when there are none: the bind line stays short however many apps bring a
    certificate. ``filtered``: each is presented only for its services' vhosts
    (HAProxy's SNI filter), whatever names it holds (without: for its own names, as
    on a bind line; --vhost-policy open, one tenant). The name is the content's hash:
    a candidate never changes the file the running config reads; :func:`prune_crt_lists`
    removes the ones no config uses any more."""
    if not certs:
        return None
    text = "".join(line + "\n" for path, hosts in certs.items()
                   for line in (_crt_lines(path, hosts) if filtered else [path]))
    path = Path(folder) / f"crt-{hashlib.sha256(text.encode()).hexdigest()[:16]}.list"
    try:
        if not path.is_file() or path.read_bytes() != text.encode():
            make_dirs(path.parent)
            atomic_write(path, text)
    except OSError as exc:
        raise TemplateError(f"cannot write the HTTPS frontend's certificate list {path}: "
                            f"{exc.strerror or exc}") from None
    return str(path)


def _crt_lines(path: str, hosts: Sequence[str]) -> list[str]:
    """The crt-list lines presenting ``path`` for ``hosts``, each within HAProxy's limits."""
    lines, line, count = [], path, 0
    for host in hosts:
        if count and (count == CRT_LIST_LINE_HOSTS
                      or len(line) + 1 + len(host) > CRT_LIST_LINE_CHARS):
            lines.append(line)
            line, count = path, 0
        line, count = f"{line} {host}", count + 1
    lines.append(line)
    return lines


def prune_crt_lists(folder: str, *keep: str | None) -> None:
    """Remove the crt-list files in ``folder`` that none of the configs ``keep`` names
    (each a config's text); errors are ignored (a file left is harmless)."""
    if not folder:
        return
    named = {name for text in keep if text for name in re.findall(
        r"crt-list (\S+)", text)}
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if CRT_LIST.match(entry.name) and entry.path not in named:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _template_location(exc: BaseException) -> str | None:
    """``template FILE:LINE`` of the innermost template frame of a rendering error.

    Jinja rewrites tracebacks so that template code appears as frames whose
    file is the template's path and whose line is the template's line.
    """
    where = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            where = f"template {filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where
