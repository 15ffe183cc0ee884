"""The grammar of each ``HAPROXY_*`` label value. Pure.

App owners write labels; the operator runs HAProxy. So every value is read
through a strict grammar here before it can reach ``haproxy.cfg``: a parser
returns a normalised value made only of characters that cannot end a
keyword, a line or an argument, or raises :class:`LabelError` naming the
label and the value. Nothing a label holds can add configuration.
"""

from __future__ import annotations

import ipaddress
import itertools
import re

from .model import Mode, shown

# marathon-lb reads "true", "t", "yes", "y" (any case) as true and anything else
# as false. We accept those and the usual "1"/"on", and refuse anything that is
# neither true nor false instead of guessing.
TRUE_VALUES = frozenset({"true", "t", "yes", "y", "1", "on"})
FALSE_VALUES = frozenset({"false", "f", "no", "n", "0", "off"})

BALANCE_ALGORITHMS = ("roundrobin", "static-rr", "leastconn", "first", "source", "random")
_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?:\*\.)?{_HOST_LABEL}(?:\.{_HOST_LABEL})*$")
_GROUP = re.compile(r"^(?:\*|[A-Za-z0-9_.-]{1,64})$")
_PATH = re.compile(r"^/[A-Za-z0-9._~%/-]{0,255}$")
# A PATH prefix (path_beg, a literal match): also RFC 3986's other path characters,
# which stay one word in an ACL (no quotes, backslash, `#`, `$`, braces or space; no
# `;` either, the runtime API's command separator).
_PATH_PREFIX = re.compile(r"^/[A-Za-z0-9._~%/!&()*+,=:@-]{0,255}$")
# A health check's request target (path and query): RFC 3986 characters that stay one
# word in `option httpchk GET <uri>` (no quotes, backslash, `#`, `$` or space).
CHECK_PATH = re.compile(r"^/[A-Za-z0-9._~%/!&()*+,=:@?-]{0,1023}$")
_FILE_PATH = re.compile(r"^/[A-Za-z0-9._/-]{1,1023}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")
# AUTH's realm is printed inside double quotes, its user as one word of a userlist: the
# characters that stay themselves there (no quote, backslash, '$' or '%'). marathon-lb
# took any: e-mail addresses as user names and "Team (ops)" realms were common.
_REALM = re.compile(r"^[A-Za-z0-9 ._@+(),/-]{1,64}$")
_AUTH_USER = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")
# Modular crypt format only (MD5 $1$, SHA-256 $5$, SHA-512 $6$, bcrypt $2a/b/y$,
# yescrypt $y$): these cannot be mistaken for a plain-text password. Old 13-character
# DES hashes can, so they are refused too.
_CRYPT = re.compile(r"^\$(?:1|5|6|2[aby]|y)\$[A-Za-z0-9./$=,]{8,200}$")
_SNIPPET = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# HAProxy hashes the password a client sends with the label's algorithm and cost on every
# request, inside the worker thread every tenant's connections share: a hash of
# $6$rounds=50000000$ took 28 s there, and HAProxy's watchdog killed the whole process
# (every tenant's service) 3 s after one request with credentials. Costs are bounded to
# ~20 ms a request on a 2-core test machine (the defaults of openssl passwd -6 and of
# mkpasswd's yescrypt: 2 and 23 ms).
MAX_SHA_CRYPT_ROUNDS = 50_000
MAX_BCRYPT_COST = 8
_SHA_ROUNDS = re.compile(r"^\$[56]\$rounds=([0-9]{1,12})\$")
_BCRYPT_COST = re.compile(r"^\$2[aby]\$([0-9]{2})\$")
_YESCRYPT_PARAMS = re.compile(r"^\$y\$j[./0-9]T\$")  # at most mkpasswd's default cost


class LabelError(ValueError):
    """A label value that cannot be used; the message names label and value."""

    def __init__(self, label: str, value: str, problem: str) -> None:
        self.label = label
        self.value = value
        self.problem = problem
        super().__init__(f"label {label}={shown(value)!r} {problem}")  # a value may be huge


def parse_bool(label: str, value: str) -> bool:
    v = value.strip().lower()
    if v in TRUE_VALUES:
        return True
    if v in FALSE_VALUES:
        return False
    raise LabelError(label, value, "is not a boolean (true/t/yes/y/1 or false/f/no/n/0)")


def parse_port(label: str, value: str) -> int:
    v = value.strip()
    if not (v.isascii() and v.isdigit() and len(v.lstrip("0")) <= 5) or not 1 <= int(v) <= 65535:
        raise LabelError(label, value, "is not a port (1-65535)")
    return int(v)


def parse_index(label: str, value: str) -> int:
    v = value.strip()
    if not (v.isascii() and v.isdigit() and len(v.lstrip("0")) <= 4) or int(v) > 1000:
        raise LabelError(label, value, "is not a port index (0-1000)")
    return int(v)


def parse_weight(label: str, value: str) -> int:
    v = value.strip()
    digits = v[1:] if v[:1] == "-" else v
    if not (digits.isascii() and digits.isdigit() and len(digits.lstrip("0")) <= 7) \
            or abs(int(v)) > 1_000_000:
        raise LabelError(label, value, "is not a whole number between -1000000 and 1000000")
    return int(v)


def parse_groups(label: str, value: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in value.split(",") if g.strip())
    for g in groups:
        if not _GROUP.match(g):
            raise LabelError(label, value, "is not a comma-separated list of group names "
                             "(or '*')")
    return groups


# One VHOST label's names, and the DNS labels of one name. The daemon indexes every
# domain a name lies under (for wildcard ownership): a 1 MB VHOST of 4,000 names of
# 120 labels each cost it 204 MB and 2.4 s, and 40,000 '*.' names at the head of the
# route order made HAProxy's shared frontend 3x slower for every tenant's host.
MAX_VHOSTS = 1000
MAX_HOST_LABELS = 16
_VHOST_NAME = re.compile(r"[^,\s]+")


def parse_vhosts(label: str, value: str) -> tuple[str, ...]:
    # Commas, as marathon-lb documents; whitespace too: marathon-lb put the value into
    # its ACL as it was, where HAProxy read "a.com b.com" (and "a.com, b.com") as names.
    # Taken one at a time, so a value of any size is never split whole.
    names = (m.group().lower() for m in _VHOST_NAME.finditer(value))
    hosts = tuple(itertools.islice(names, MAX_VHOSTS + 1))
    if len(hosts) > MAX_VHOSTS:
        count = len(hosts) + sum(1 for _ in names)
        raise LabelError(label, value, f"names {count} hosts; at most {MAX_VHOSTS}")
    if not hosts:
        raise LabelError(label, value, "names no host")
    for h in hosts:
        if len(h) > 253 or not _HOSTNAME.match(h):
            raise LabelError(label, value, f"has {shown(h)!r}, which is not a host name "
                             "(letters, digits, '-', '_', optionally starting with '*.')")
        deep = too_deep(h)
        if deep:
            raise LabelError(label, value, f"has {shown(h)!r}, {deep}")
    return hosts


def too_deep(host: str) -> str | None:
    """Why ``host`` has too many DNS labels to be claimed (a VHOST's name, a
    certificate's), or None."""
    if host.count(".") < MAX_HOST_LABELS:
        return None
    return f"a host name of {host.count('.') + 1} labels; at most {MAX_HOST_LABELS}"


def parse_bind_address(label: str, value: str) -> str:
    v = value.strip()
    if v == "*":
        return v
    if "%" in v:  # an IPv6 zone may hold any text, newlines included
        raise LabelError(label, value, "is not an IP address or '*' (no IPv6 zone)")
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        raise LabelError(label, value, "is not an IP address or '*'") from None
    if ip.version == 6 and (ip.is_link_local or ip.is_multicast):
        # bind() of these fails with EINVAL without a scope id, on every host: HAProxy
        # could never start the listener, and admission (which asks the host by binding)
        # took EINVAL for an address it has.
        raise LabelError(label, value, "is an IPv6 link-local or multicast address, which "
                         "HAProxy binds only with an interface zone (refused): bind '*' or "
                         "'::', or an address of the host's interfaces")
    # ::ffff:127.0.0.1 binds (and is) 127.0.0.1: one spelling, so that the checks of
    # what an address does (loopback, another service's bind) see what HAProxy binds.
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def _chars(pattern: re.Pattern[str]) -> str:
    """The character class a path pattern allows, as its error message shows it."""
    return pattern.pattern[2:pattern.pattern.index("]") + 1]


def parse_path(label: str, value: str, pattern: re.Pattern[str] = _PATH) -> str:
    v = value.strip()
    if not pattern.match(v) or "/../" in f"{v}/":
        raise LabelError(label, value, f"is not an absolute path of {_chars(pattern)}")
    return v


def parse_paths(label: str, value: str) -> tuple[tuple[str, ...], bool]:
    """marathon-lb's PATH: space-separated prefixes, optionally led by ``-i``
    (case-insensitive match), as HAProxy's ``path_beg`` takes them."""
    words = value.split()
    ignore_case = bool(words) and words[0] == "-i"
    paths = words[1:] if ignore_case else words
    if not paths or len(paths) > 32:
        raise LabelError(label, value, "is not 1 to 32 space-separated paths, optionally "
                         "after -i")
    for p in paths:
        if not _PATH_PREFIX.match(p) or "/../" in f"{p}/":
            raise LabelError(label, value, f"has {shown(p)!r}, which is not an absolute path of "
                             f"{_chars(_PATH_PREFIX)}")
    return tuple(dict.fromkeys(paths)), ignore_case


def parse_file_path(label: str, value: str) -> str:
    return parse_path(label, value, _FILE_PATH)


def parse_mode(label: str, value: str) -> Mode:
    v = value.strip().lower()
    if v not in ("tcp", "http"):
        raise LabelError(label, value, "is not one of tcp, http")
    return Mode(v)


def parse_balance(label: str, value: str) -> str:
    """An algorithm with the arguments marathon-lb apps use, normalised:
    ``uri`` (``whole``, ``len N``, ``depth N``), ``url_param NAME``,
    ``hdr(NAME)``, ``rdp-cookie[(NAME)]``, ``random[(N)]`` and the plain ones."""
    words = value.strip().split()
    if not words:
        raise LabelError(label, value, "names no balance algorithm")
    algo, args = words[0].lower(), words[1:]
    if algo in BALANCE_ALGORITHMS and not args:
        return algo
    if algo == "uri" and _uri_args(args):
        return " ".join(["uri", *args])
    if algo == "url_param" and len(args) == 1 and _TOKEN.match(args[0]):
        return f"url_param {args[0]}"
    m = re.fullmatch(r"(hdr|rdp-cookie|random)\(([^()]*)\)", words[0])
    if m and (not args or (m.group(1) == "hdr" and args == ["use_domain_only"])):
        name = m.group(2)
        ok = {"hdr": _HEADER, "rdp-cookie": _TOKEN, "random": re.compile(r"^[1-9][0-9]?$")}
        if ok[m.group(1)].match(name):
            return " ".join([f"{m.group(1)}({name.lower() if m.group(1) == 'hdr' else name})",
                             *args])
    if algo == "rdp-cookie" and not args:
        return algo
    raise LabelError(label, value, f"is not a balance algorithm HAProxy takes from a label "
                     f"({', '.join(BALANCE_ALGORITHMS)}, uri [whole|len N|depth N], "
                     "url_param NAME, hdr(NAME), rdp-cookie[(NAME)], random(N))")


def _uri_args(args: list[str]) -> bool:
    i = 0
    while i < len(args):
        if args[i] == "whole":
            i += 1
        elif args[i] in ("len", "depth") and i + 1 < len(args) and args[i + 1].isascii() \
                and args[i + 1].isdigit() and len(args[i + 1].lstrip("0")) <= 4 \
                and 0 < int(args[i + 1]) < 10000:
            i += 2
        else:
            return False
    return True


def parse_auth(label: str, value: str) -> tuple[str, str, str]:
    """``realm:user:crypt-hash`` (marathon-lb's format). The password must be a
    modular-crypt hash (``openssl passwd -6``); a plain-text password is refused."""
    parts = value.strip().split(":")
    if len(parts) != 3:
        raise LabelError(label, value.split(":")[0] + ":...", "is not realm:user:crypt-hash")
    realm, user, secret = (p.strip() for p in parts)
    shown = f"{realm}:{user}:..."  # never repeat a secret in a log line
    if not _REALM.match(realm):
        raise LabelError(label, shown, "has a realm that is not 1-64 of [A-Za-z0-9 ._@+(),/-]")
    if not _AUTH_USER.match(user):
        raise LabelError(label, shown, "has a user name that is not 1-64 of "
                                       "[A-Za-z0-9_.@+-]")
    if not _CRYPT.match(secret):
        raise LabelError(label, shown, "has a password that is not a crypt hash ($1$, $5$, "
                         "$6$, $2b$ or $y$, e.g. from `openssl passwd -6`); plain-text "
                         "passwords are refused")
    costly = _crypt_cost(secret)
    if costly:
        raise LabelError(label, shown, f"has a password hash of {costly}: HAProxy would "
                         "compute it for every request with credentials, in a thread every "
                         "tenant's connections share (a hash of 28 s had its watchdog kill "
                         "HAProxy for everyone); use `openssl passwd -6` (5,000 rounds), "
                         f"at most rounds={MAX_SHA_CRYPT_ROUNDS}, bcrypt cost "
                         f"{MAX_BCRYPT_COST} or yescrypt's default cost")
    return realm, user, secret


def _crypt_cost(secret: str) -> str | None:
    """What makes a crypt hash too slow for HAProxy to check per request, or None."""
    if secret.startswith(("$5$", "$6$")) and secret[3:10] == "rounds=":
        m = _SHA_ROUNDS.match(secret)
        if m is None or int(m.group(1)) > MAX_SHA_CRYPT_ROUNDS:
            return f"rounds={m.group(1) if m else '?'} (at most {MAX_SHA_CRYPT_ROUNDS:,})"
    elif secret.startswith("$2"):
        m = _BCRYPT_COST.match(secret)
        if m is None or int(m.group(1)) > MAX_BCRYPT_COST:
            return f"bcrypt cost {m.group(1) if m else '?'} (at most {MAX_BCRYPT_COST})"
    elif secret.startswith("$y$") and not _YESCRYPT_PARAMS.match(secret):
        return f"yescrypt parameters {secret.split('$')[2]!r} (at most the default j9T)"
    return None


def parse_networks(label: str, value: str) -> tuple[str, ...]:
    """IP addresses or CIDR ranges, space- (marathon-lb) or comma-separated."""
    words = value.replace(",", " ").split()
    if not words or len(words) > 256:
        raise LabelError(label, value, "is not 1 to 256 IP addresses or CIDR ranges")
    out = []
    for w in words:
        if "%" in w:
            raise LabelError(label, value, f"has {shown(w)!r}, which is not an IP address or range")
        try:
            out.append(str(ipaddress.ip_network(w, strict=False)))
        except ValueError:
            raise LabelError(label, value, f"has {shown(w)!r}, which is not an IP address or "
                             "CIDR range") from None
    return tuple(dict.fromkeys(out))


def parse_snippet_name(label: str, value: str) -> str:
    v = value.strip()
    if not _SNIPPET.match(v):
        raise LabelError(label, value, "is not a snippet name ([a-z0-9_-], up to 64)")
    return v
