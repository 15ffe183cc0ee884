"""``HAPROXY_*`` labels into :class:`~servicerouter.model.Options`: one table.

Every label marathon-lb knows is one row of :data:`LABELS`: its name, scope
(the app, or one service port), the grammar of its value, the ``Options``
field it sets, what it means, an example and how it differs from
marathon-lb. The parser, the warnings and the README's label table all come
from this table (a test checks the README against it), so adding a label is
one row.

Labels are written by app owners, not by the operator running HAProxy, so
every value goes through a strict grammar (:mod:`label_values`) before it can
reach the rendered configuration. Labels that carried raw HAProxy
configuration in marathon-lb (``HAPROXY_0_FRONTEND_HEAD`` and friends) are
refused with that reason; operators customise through ``--templates`` and
named snippets, which an app selects with ``HAPROXY_{n}_SNIPPET``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import deployments as deploy
from .label_values import (
    BALANCE_ALGORITHMS,
    LabelError,
    parse_auth,
    parse_balance,
    parse_bind_address,
    parse_bool,
    parse_file_path,
    parse_groups,
    parse_index,
    parse_mode,
    parse_networks,
    parse_path,
    parse_paths,
    parse_port,
    parse_snippet_name,
    parse_vhosts,
    parse_weight,
)
from .model import Mode, Options, evolve, shown

__all__ = ["BALANCE_ALGORITHMS", "GROUP_LABEL", "LABELS", "AppLabels", "LabelError",
           "LabelSpec", "ServiceLabels", "parse_bool", "parse_labels", "parse_path",
           "parse_port", "tcp_without_http_labels"]

GROUP_LABEL = "HAPROXY_GROUP"
MAX_WARNINGS = 20  # per app
# At most 9 digits: int() refuses 4,300, which skipped the whole app.
_SERVICE_LABEL = re.compile(r"^HAPROXY_(\d{1,9})_([A-Z0-9_]+)$")

SUPPORTED = "supported"
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """One row of the label table."""

    name: str  # the part after HAPROXY_ (app scope) or HAPROXY_{n}_ (port scope)
    scope: str  # "app" or "port"
    meaning: str
    example: str = ""
    difference: str = "same as marathon-lb"
    field: str | None = None  # the Options field it sets (None: PORT, or unsupported)
    parse: Callable[[str, str], Any] | None = None
    status: str = SUPPORTED

    @property
    def label(self) -> str:
        return f"HAPROXY_{self.name}" if self.scope == "app" else f"HAPROXY_{{n}}_{self.name}"


def _paths(label: str, value: str) -> tuple[tuple[str, ...], bool]:
    return parse_paths(label, value)


_RAW = ("carries raw HAProxy configuration written by the app owner, which could change any "
        "app's routing; refused (operators write templates and named snippets, selected with "
        "HAPROXY_{n}_SNIPPET; with --allow-label-templates a trusted cluster may use "
        "FRONTEND_HEAD, BACKEND_HEAD and BACKEND_HTTP_OPTIONS, each app validated alone)")
_RAW_LABELS = (
    "FRONTEND_HEAD", "BACKEND_HEAD", "USERLIST_HEAD", "BACKEND_REDIRECT_HTTP_TO_HTTPS",
    "BACKEND_REDIRECT_HTTP_TO_HTTPS_WITH_PATH", "HTTP_FRONTEND_ACL", "MAP_HTTP_FRONTEND_ACL",
    "HTTP_FRONTEND_ACL_ONLY", "MAP_HTTP_FRONTEND_ACL_ONLY", "HTTP_FRONTEND_ROUTING_ONLY",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_AUTH", "HTTP_FRONTEND_ACL_WITH_AUTH",
    "HTTP_FRONTEND_ACL_WITH_PATH", "HTTP_FRONTEND_ACL_WITH_AUTH_AND_PATH",
    "HTTP_FRONTEND_ACL_ONLY_WITH_PATH", "HTTP_FRONTEND_ACL_ONLY_WITH_PATH_AND_AUTH",
    "HTTPS_FRONTEND_ACL_ONLY_WITH_PATH", "HTTP_FRONTEND_ROUTING_ONLY_WITH_PATH",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_PATH_AND_AUTH", "HTTP_FRONTEND_APPID_ACL",
    "MAP_HTTP_FRONTEND_APPID_ACL", "HTTPS_FRONTEND_ACL", "MAP_HTTPS_FRONTEND_ACL",
    "HTTPS_FRONTEND_ACL_WITH_AUTH", "HTTPS_FRONTEND_ACL_WITH_PATH",
    "HTTPS_FRONTEND_ACL_WITH_AUTH_AND_PATH", "BACKEND_HTTP_OPTIONS",
    "HTTP_BACKEND_PROXYPASS_GLUE", "HTTP_BACKEND_REVPROXY_GLUE", "BACKEND_HSTS_OPTIONS",
    "BACKEND_HTTP_HEALTHCHECK_OPTIONS", "BACKEND_TCP_HEALTHCHECK_OPTIONS",
    "BACKEND_STICKY_OPTIONS", "BACKEND_SERVER_OPTIONS", "BACKEND_SERVER_TCP_HEALTHCHECK_OPTIONS",
    "BACKEND_SERVER_HTTP_HEALTHCHECK_OPTIONS", "FRONTEND_BACKEND_GLUE",
    "HTTP_BACKEND_NETWORK_ALLOWED_ACL", "TCP_BACKEND_NETWORK_ALLOWED_ACL",
)
# Templates marathon-lb's Longhelp lists as overridable per app, which its code never
# read from labels (its config.py: "Missing function set label in app"). An app may
# still carry one: it is named for what it is, not as an unknown label.
_NEVER_READ_LABELS = ("HTTPS_FRONTEND_AUTH_ACL_ONLY", "HTTPS_FRONTEND_AUTH_REQUEST_ONLY",
                      "HTTPS_FRONTEND_ROUTING_ONLY_WITH_PATH_AND_AUTH")
_NEVER_READ = ("is listed as a per-app template in marathon-lb's docs, but marathon-lb never "
               "read it from labels (it had no effect there); it carries raw HAProxy "
               "configuration, so it is refused")
# With --allow-label-templates: the template labels that shape only the app's own
# frontend and backend (marathon-lb's placeholders: FRONTEND_HEAD {backend} {bindAddr}
# {servicePort} {mode} {sslCert} {bindOptions}; BACKEND_HEAD {backend} {balance} {mode}).
# The others write shared frontends or the per-slot server lines servicerouter manages
# at runtime, so they stay refused even then.
TEMPLATE_LABELS = ("FRONTEND_HEAD", "BACKEND_HEAD", "BACKEND_HTTP_OPTIONS")
_GROUP_DIFF = ("spaces around names are ignored (marathon-lb's 'internal, external' named "
               "' external', which --group external did not match: such an app is now "
               "exposed there); names are 1-64 of [A-Za-z0-9_.-] or '*'")
_DEPLOYMENT_FOLDER = ("only apps of the group's own folder join it (/shop/web-blue and "
                      "/shop/web-green in shop/web; at the root, where each app is a tenant, "
                      "only /web-blue and /web-green in web), so no tenant routes its tasks "
                      "into another's service; old tasks drain rather than go to maintenance")

LABELS: tuple[LabelSpec, ...] = (
    LabelSpec("GROUP", "app", "load-balancer groups that expose the app; '*' is a group name "
              "as in marathon-lb (an LB run with --group '*' exposes every app)",
              "external", _GROUP_DIFF, field="groups", parse=parse_groups),
    LabelSpec("DEPLOYMENT_GROUP", "app", "blue/green deployment (zdd.py): the apps with this "
              "group are routed as one app of this id, the oldest's definition with every "
              "member's tasks", "shop/web", _DEPLOYMENT_FOLDER, parse=deploy.parse_group),
    LabelSpec("DEPLOYMENT_STARTED_AT", "app", "zdd.py: when this app's deploy started; the "
              "earlier app of a group is the old one", "2024-05-01T12:00:00",
              "an ISO 8601 time; another value leaves the app out", parse=deploy.parse_time),
    LabelSpec("DEPLOYMENT_TARGET_INSTANCES", "app", "zdd.py: the instances of the pair in all; "
              "old tasks drain as new ones become healthy, down to it", "4",
              parse=deploy.parse_count),
    LabelSpec("DEPLOYMENT_NEW_INSTANCES", "app", "zdd.py: a traffic split between the old and "
              "new app; the app scaled last counts as the new one", "2",
              "'scaled last' is read from the app's version (Marathon's last change)",
              parse=deploy.parse_count),
    LabelSpec("DEPLOYMENT_ALT_PORT", "app", "zdd.py: the service port of the other colour",
              "10080", "checked to be a port; the pair is routed on the old app's ports",
              parse=deploy.parse_port),
    LabelSpec("DEPLOYMENT_COLOUR", "app", "zdd.py: blue or green", "blue",
              "read by zdd.py only", parse=deploy.parse_colour),
    LabelSpec("PORT", "port", "the port HAProxy binds for this service, instead of the "
              "service port", "10001", parse=parse_port),
    LabelSpec("ENABLED", "port", "expose this service port (needed under --strict-mode)",
              "true", "also accepts 1/on and false/f/no/n/0/off; other values are an error, "
              "not false", "enabled", parse_bool),
    LabelSpec("GROUP", "port", "groups of this service port; overrides HAPROXY_GROUP",
              "internal", _GROUP_DIFF, field="groups", parse=parse_groups),
    LabelSpec("MODE", "port", "tcp or http; VHOST or an HTTP health check imply http (as "
              "in marathon-lb), and so do AUTH and REDIRECT_TO_HTTPS",
              "http", "PATH, STICKY, USE_HSTS and the HTTP_BACKEND_* labels leave a port "
              "without them TCP and are ignored with a warning, as they did nothing there in "
              "marathon-lb; AUTH and REDIRECT_TO_HTTPS make it HTTP (honoured, or the port "
              "is not exposed; marathon-lb served it TCP without them); an explicit MODE=tcp "
              "wins: the HTTP labels are then ignored with a warning (AUTH leaves the port "
              "out); HTTPS checks do not make the port HTTP (its tasks speak TLS), they are "
              "sent with check-ssl",
              "mode", parse_mode),
    LabelSpec("BALANCE", "port", "load-balancing algorithm, with its arguments",
              "url_param userid", "only algorithms and arguments from a fixed grammar",
              "balance", parse_balance),
    LabelSpec("BIND_ADDR", "port", "address the service's frontend binds", "10.0.0.42",
              "an IP address or '*' only; no IPv6 link-local or multicast address (it "
              "binds only with an interface zone)", "bind_address", parse_bind_address),
    LabelSpec("VHOST", "port", "virtual hosts routed to this service on the shared HTTP and "
              "HTTPS frontends (SNI on HTTPS, Host as fallback)",
              "shop.example.com,*.shop.example.com", "'*.' wildcards match any subdomain; "
              "names are separated by commas or whitespace ('a.com b.com' routed both in "
              "marathon-lb, whose ACL took the value as it was); a Host header with a port "
              "(shop.example.com:80) matches too, where marathon-lb compared the whole header; "
              "SNI is matched in any case; at most 1,000 names of at most 16 labels each",
              "vhosts", parse_vhosts),
    LabelSpec("PATH", "port", "path prefixes (path_beg) routed on the service's vhosts; "
              "space-separated, '-i' first for case-insensitive",
              "-i /api /v2/api", "same as marathon-lb, for paths of [A-Za-z0-9._~%/!&()*+,=:@-]",
              "paths", _paths),
    LabelSpec("BACKEND_WEIGHT", "port", "orders routes that share a vhost: larger first "
              "(a PATH alone gives weight 1)", "10",
              "equal weights: the longer path first, then by name (marathon-lb kept app id order, "
              "so /api of /a took the requests for /api/v2 of /b)", "backend_weight",
              parse_weight),
    LabelSpec("STICKY", "port", "sticky sessions by cookie", "true",
              "cookie named SRVID, not mesosphere_server_id; marathon-lb also gave every server "
              "of a sticky service HAProxy's connect check, here only the app's health "
              "checks are (Marathon's task states decide the rest)", "sticky", parse_bool),
    LabelSpec("REDIRECT_TO_HTTPS", "port", "plain HTTP requests for the service's vhosts "
              "get a 301 to https://", "true", "as marathon-lb, on the shared HTTP frontend "
              "only: the service's own port and the app-id frontend serve plain HTTP; with "
              "AUTH, every plain request on every frontend is redirected (no credentials over "
              "plain HTTP); refused with an error (service not exposed) when no HTTPS "
              "frontend can serve the redirect", "redirect_to_https", parse_bool),
    LabelSpec("USE_HSTS", "port", "adds Strict-Transport-Security: max-age=15768000 to "
              "responses", "true", field="hsts", parse=parse_bool),
    LabelSpec("SSL_CERT", "port", "certificate (PEM) for the service's own frontend and the "
              "HTTPS frontend", "/etc/ssl/shop.pem", "an absolute path of plain characters, "
              "to a file (not a folder, which HAProxy's crt would also take and marathon-lb "
              "passed on) under --ssl-cert-dir; also offered on the shared HTTPS frontend "
              "(marathon-lb served it on the service's own port only, unless "
              "--group-https-by-vhost), and there only if every name in it is a host the "
              "service routes; its names are hosts the service claims, on its own port too, "
              "first come as a VHOST's, so a file naming another tenant's host (a copy of its "
              "certificate, a wildcard over it) or whose names cannot be read is refused "
              "(marathon-lb presented any file) (Multi-tenant safety)",
              "ssl_cert", parse_file_path),
    LabelSpec("AUTH", "port", "HTTP basic auth: realm:user:crypt-hash; others get 401",
              "shop:admin:$6$salt$hash", "the password must be a modular crypt hash ($1$, "
              "$5$, $6$, $2b$, $y$): plain-text passwords and 13-character DES hashes (which "
              "a plain password can look like) are refused; realms of letters, digits, space "
              "and ._@+(),/- and users of letters, digits and ._@+-; enforced on every "
              "frontend of the service, and a service whose auth cannot be enforced is not "
              "exposed; so are hashes too slow to check per request (over 50,000 SHA-crypt "
              "rounds, bcrypt cost over 8, yescrypt over its default)", "auth", parse_auth),
    LabelSpec("BACKEND_NETWORK_ALLOWED_ACL", "port", "client addresses or CIDR ranges "
              "allowed; others get 403 (HTTP) or are refused (TCP)", "10.1.40.0/24 10.1.55.43",
              "also comma-separated; every entry must be an address or range",
              "network_allowed", parse_networks),
    LabelSpec("BACKEND_HEALTHCHECK_PORT_INDEX", "port", "health-check the tasks on the "
              "port of this index (with that port's check when this one has none)", "1",
              "same as marathon-lb: each task's own port at that index (set per slot at "
              "runtime with check-port)",
              "health_check_port_index", parse_index),
    LabelSpec("HTTP_BACKEND_PROXYPASS_PATH", "port", "strips this prefix from request paths "
              "and sets Host to the first vhost", "/path/to/strip",
              "the first non-wildcard vhost, where marathon-lb printed the whole VHOST value; "
              "the prefix is stripped at a path segment's end and in its own case "
              "(marathon-lb's reqirep also made /pathx into /x, and /PATH/x into /x)",
              "proxypass_path", parse_path),
    LabelSpec("HTTP_BACKEND_REVPROXY_PATH", "port", "rewrites the path of Location response "
              "headers to start with this path", "/my/content",
              "keeps the rest of the Location (marathon-lb replaces the whole Location with "
              "this path); only relative Locations and the service's own vhosts",
              "revproxy_path", parse_path),
    LabelSpec("HTTP_BACKEND_REDIR", "port", "301 from / on the service's vhosts (by Host, on "
              "any frontend) to this path", "/my/content",
              "as marathon-lb, for each of the service's vhosts (marathon-lb compared the "
              "Host with the whole VHOST value, so with two names it never redirected); "
              "needs a VHOST",
              "redir_path", parse_path),
    LabelSpec("SNIPPET", "port", "an operator-written snippet (templates dir, "
              "snippets/NAME.j2) added to this service's backend", "compress",
              "new: replaces per-app template labels", "snippet", parse_snippet_name),
    LabelSpec("BIND_OPTIONS", "port", "raw bind keywords", "", "carries raw HAProxy bind "
              "keywords (ciphers, options) that apply to every listener; refused (set them "
              "in the operator's templates)", status=REFUSED),
    *(LabelSpec(n, "port", "a marathon-lb template override", "", _RAW, status=REFUSED)
      for n in _RAW_LABELS),
    *(LabelSpec(n, "port", "a template marathon-lb's docs list as a per-app label", "",
                _NEVER_READ, status=REFUSED) for n in _NEVER_READ_LABELS),
)
_APP = {s.name: s for s in LABELS if s.scope == "app"}
_DEFAULTS = Options()
_PORT = {s.name: s for s in LABELS if s.scope == "port"}


@dataclass(frozen=True, slots=True)
class ServiceLabels:
    """What the labels say about one service port index."""

    options: Options = field(default_factory=Options)
    port: int | None = None  # HAPROXY_{n}_PORT overrides the service port
    explicit: frozenset[str] = frozenset()  # label names (PORT, MODE, ...) that were set


@dataclass(frozen=True, slots=True)
class AppLabels:
    services: Mapping[int, ServiceLabels]
    warnings: tuple[str, ...] = ()
    # Service port index -> its first bad label value: that service is left out, the
    # app's other ports are not (a tenant's typo costs one port, not the whole app).
    errors: Mapping[int, LabelError] = field(default_factory=dict)

    def for_index(self, index: int) -> ServiceLabels:
        return self.services.get(index) or self.services.get(-1) or ServiceLabels()


class _Pending:
    """One service port index's labels as they are read: the options they change, built
    once at the end (an Options per label cost two ``replace`` calls a label, 0.45 s of
    a first full sync at 10,000 apps with four labels each: issue #11)."""

    __slots__ = ("base", "changes", "explicit", "port")

    def __init__(self, base: Options) -> None:
        self.base = base
        self.changes: dict[str, Any] = {}
        self.port: int | None = None
        self.explicit: set[str] = set()

    def get(self, name: str) -> Any:
        """An option's value as the labels read so far make it."""
        return self.changes[name] if name in self.changes else getattr(self.base, name)

    def apply(self, spec: LabelSpec, label: str, value: str) -> None:
        """Apply one per-service label; raises LabelError on a bad value (and changes
        nothing then)."""
        assert spec.parse is not None
        parsed = spec.parse(label, value)
        if spec.name == "PORT":
            self.port = parsed
        elif spec.name == "PATH":
            self.changes["paths"], self.changes["path_ignore_case"] = parsed
        else:
            self.changes[spec.field or ""] = parsed
        self.explicit.add(spec.name)

    def build(self) -> ServiceLabels:
        return ServiceLabels(evolve(self.base, **self.changes) if self.changes else self.base,
                             self.port, frozenset(self.explicit))


def _unsupported(label: str, spec: LabelSpec | None) -> str:
    label = shown(label)  # a tenant's label name may be as long as Marathon lets it be
    if spec is None:
        return f"label {label} is not a label servicerouter or marathon-lb knows; ignored"
    return f"label {label} is not supported: it {spec.difference}; ignored"


# Labels whose empty value marathon-lb served as if the label were absent (its string
# values are tested for truth; a boolean is true only for true/t/yes/y), with what the
# empty value reads as. Others stay errors: an empty PORT, MODE, AUTH or BACKEND_WEIGHT
# broke marathon-lb's whole config, and an empty BACKEND_NETWORK_ALLOWED_ACL, served
# open there, fails closed here (README: Label reference).
_EMPTY_AS_MARATHON_LB = {
    "VHOST": "no virtual host", "PATH": "no path", "SSL_CERT": "no certificate",
    "BIND_ADDR": "'*'", "BALANCE": "roundrobin",
    "HTTP_BACKEND_PROXYPASS_PATH": "unset", "HTTP_BACKEND_REVPROXY_PATH": "unset",
    "HTTP_BACKEND_REDIR": "unset", "STICKY": "false", "REDIRECT_TO_HTTPS": "false",
    "USE_HSTS": "false", "ENABLED": "false (the port is not exposed)",
}

# The labels that only mean something in HTTP mode, with the Options field each sets.
_HTTP_ONLY = (("VHOST", "vhosts"), ("PATH", "paths"), ("REDIRECT_TO_HTTPS", "redirect_to_https"),
              ("STICKY", "sticky"), ("USE_HSTS", "hsts"),
              ("HTTP_BACKEND_PROXYPASS_PATH", "proxypass_path"),
              ("HTTP_BACKEND_REVPROXY_PATH", "revproxy_path"),
              ("HTTP_BACKEND_REDIR", "redir_path"))
_HTTP_ONLY_OFF = {field: getattr(_DEFAULTS, field) for _, field in _HTTP_ONLY}
# Those that make a port without a MODE label HTTP. marathon-lb made it HTTP for a VHOST
# (or an HTTP health check) only, and left PATH, STICKY, USE_HSTS and the HTTP_BACKEND_*
# labels without effect on a TCP port: turning such a port (a database, TLS passthrough)
# into HTTP would answer its clients 400 after a migration. REDIRECT_TO_HTTPS (like AUTH)
# is an HTTPS promise: it is honoured or the port is not exposed, never served plain.
_MAKE_HTTP = frozenset({"VHOST", "REDIRECT_TO_HTTPS"})


def tcp_without_http_labels(options: Options, index: int) -> tuple[Options, str | None]:
    """A TCP service (no VHOST, MODE=http or HTTP health check made it HTTP) keeps the
    HTTP-only labels that did nothing on it in marathon-lb off, with a warning."""
    if options.mode is not Mode.TCP or options is _DEFAULTS:  # most ports of a full sync
        return options, None
    names = [n for n, f in _HTTP_ONLY if n not in _MAKE_HTTP and getattr(options, f)
             != getattr(_DEFAULTS, f)]
    if not names:
        return options, None
    off = {f: getattr(_DEFAULTS, f) for n, f in _HTTP_ONLY if n in names}
    if "PATH" in names:
        off["path_ignore_case"] = _DEFAULTS.path_ignore_case
    return evolve(options, **off), _needs_http(
        index, names, f"and service port index {index} is TCP (no VHOST, MODE=http or HTTP "
        "health check; marathon-lb kept it TCP too)")


def _needs_http(index: int, names: list[str], why: str) -> str:
    """The warning for HTTP-only labels ignored on a TCP port, ``why`` it is TCP."""
    many = len(names) > 1
    return (f"label{'s' if many else ''} {', '.join(f'HAPROXY_{index}_{n}' for n in names)} "
            f"{'need' if many else 'needs'} HTTP mode, {why}; ignored")


def parse_labels(labels: Mapping[str, object] | None, service_count: int,
                 allow_templates: bool = False, per_service_errors: bool = False) -> AppLabels:
    """Read an app's labels. Raises :class:`LabelError` for the first bad value; with
    ``per_service_errors``, a bad ``HAPROXY_{n}_*`` value is kept in ``errors`` for index
    n instead (a bad app-wide value, ``HAPROXY_GROUP``, still raises).

    ``HAPROXY_GROUP`` applies to every service; ``HAPROXY_{n}_*`` to index n.
    Labels for an index the app does not have, and unsupported ``HAPROXY_``
    labels, become warnings that say why. With ``allow_templates`` the raw
    template labels are kept (per index) for the operator's trusted cluster.
    """
    labels = labels or {}
    warnings: list[str] = []
    base = _DEFAULTS  # frozen: shared by every app (10,000 Options() cost 14 ms a sync)
    if GROUP_LABEL in labels:
        base = evolve(base, groups=parse_groups(GROUP_LABEL, str(labels[GROUP_LABEL])))

    per_index: dict[int, _Pending] = {-1: _Pending(base)}
    templates: dict[int, dict[str, str]] = {}
    errors: dict[int, LabelError] = {}
    for label in sorted(labels):
        if not label.startswith("HAPROXY_") or label == GROUP_LABEL:
            continue
        value = labels[label]
        m = _SERVICE_LABEL.match(label)
        if not isinstance(value, str):
            if m is None or not per_service_errors:
                raise LabelError(label, str(value), "is not a string")
            errors.setdefault(int(m.group(1)), LabelError(label, str(value), "is not a string"))
            continue
        if not m:
            spec = _APP.get(label.removeprefix("HAPROXY_"))
            if spec is None or spec.status != SUPPORTED:  # the supported ones, the
                warnings.append(_unsupported(label, spec))  # DEPLOYMENT_* labels, are
            continue  # read by deployments.py
        index, key = int(m.group(1)), m.group(2)
        spec = _PORT.get(key)
        if spec is not None and allow_templates and key in TEMPLATE_LABELS \
                and index < max(service_count, 1):
            templates.setdefault(index, {})[key] = value.replace("\r\n", "\n")
            continue
        if spec is not None and allow_templates and key in _RAW_LABELS:
            warnings.append(f"label {label} is not supported even with "
                            "--allow-label-templates (only "
                            f"{', '.join(TEMPLATE_LABELS)}): it writes shared frontends or "
                            "the server lines servicerouter manages at runtime; ignored")
            continue
        if spec is None or spec.status != SUPPORTED:
            warnings.append(_unsupported(label, spec))
            continue
        if index >= max(service_count, 1):
            warnings.append(f"label {shown(label)} names service port index {index}, which the app "
                            f"does not have ({service_count} ports); ignored")
            continue
        pending = per_index.get(index)
        if pending is None:
            pending = per_index[index] = _Pending(base)
        if not value.strip() and key in _EMPTY_AS_MARATHON_LB:
            # marathon-lb tests these values for truth ('' is false) or reads its
            # booleans as "is it true?": an empty one served the port as if the label
            # were absent (ENABLED: as false). Refusing it took the port away.
            if key == "ENABLED":
                pending.changes["enabled"] = False
                pending.explicit.add(key)
            warnings.append(f"label {shown(label)} is empty; read as "
                            f"{_EMPTY_AS_MARATHON_LB[key]}, as marathon-lb does")
            continue
        try:
            pending.apply(spec, label, value)
        except LabelError as exc:
            if not per_service_errors:
                raise
            errors.setdefault(index, exc)

    for index in templates:
        per_index.setdefault(index, _Pending(base))
    for index, sl in per_index.items():
        changes = sl.changes
        if not changes and index not in templates:
            continue  # the defaults (and groups): nothing below applies to them
        if sl.get("redir_path") and not sl.get("vhosts"):  # as marathon-lb: / of which host?
            warnings.append(f"label HAPROXY_{index}_HTTP_BACKEND_REDIR redirects / of the "
                            f"service's vhosts, and HAPROXY_{index}_VHOST names none; ignored")
            changes["redir_path"] = None
        http_only = [name for name, field in _HTTP_ONLY if sl.get(field)]
        tcp = sl.get("mode") is Mode.TCP
        if tcp and "MODE" in sl.explicit and http_only:
            # MODE=tcp says the port speaks TCP (a database, TLS passthrough): turned
            # into HTTP it would answer its clients 400. The HTTP features go instead.
            # (AUTH stays: parse refuses that service rather than serve it open.)
            warnings.append(_needs_http(index, http_only, f"but HAPROXY_{index}_MODE is tcp"))
            changes.update(_HTTP_ONLY_OFF)
        elif tcp and (any(n in _MAKE_HTTP for n in http_only)
                      or (sl.get("auth") and "MODE" not in sl.explicit)):
            # A virtual host is routed by HTTP, as in marathon-lb; a redirect and auth
            # are never served without (fail closed). The others leave the port TCP
            # unless an HTTP health check makes it HTTP (see tcp_without_http_labels).
            changes["mode"] = Mode.HTTP
        if templates.get(index):
            changes["raw_templates"] = tuple(sorted(templates[index].items()))
        if sl.get("paths") and sl.get("backend_weight") == 0:
            changes["backend_weight"] = 1  # as marathon-lb
    if len(warnings) > MAX_WARNINGS:  # each is logged once: a tenant cannot flood the log
        warnings[MAX_WARNINGS:] = [f"{len(warnings) - MAX_WARNINGS} more label warnings like "
                                   "these; not shown"]
    return AppLabels({i: sl.build() for i, sl in per_index.items()}, tuple(warnings), errors)


def markdown_table() -> str:
    """The README's label table, generated from :data:`LABELS` (a test keeps them equal).

    Raw template labels share one reason, so they share one row.
    """
    rows = ["| label | scope | meaning | example | difference from marathon-lb |",
            "|---|---|---|---|---|"]
    raw: list[str] = []
    for spec in LABELS:
        if spec.status == REFUSED and spec.name in _RAW_LABELS:
            raw.append(f"`{spec.label}`")
            continue
        example = f"`{spec.label.replace('{n}', '0')}={spec.example}`" if spec.example else ""
        rows.append(f"| `{spec.label}` | {spec.scope} | {spec.meaning} | {example} | "
                    f"{spec.difference} |")
    rows.append(f"| {', '.join(raw)} | port | marathon-lb template overrides | | {_RAW} |")
    return "\n".join(rows) + "\n"
