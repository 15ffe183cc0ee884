"""Which services make ``haproxy -c`` reject a candidate config.

Admission should catch every value that cannot work; this is the net under it.
HAProxy's alerts name a file line (``parsing [haproxy.cfg:42]``) or a proxy
(``'server shop_web_10001/s1'``, ``Proxy 'shop_web_10001'``): each is mapped
back to the service whose frontend, backend or virtual-host rule it is in.
What the alerts do not pin down is found by bisection: validate halves of the
suspects until single services remain. Every validation is bounded
(``max_checks``), and nothing here does I/O but the ``check`` it is given.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Mapping

from .layout import Layout

_ALERT = re.compile(r"^.*?\[ALERT\]\s*(?:\(\d+\)\s*)?:\s*(?:config\s*:\s*)?")
# A line of a file: ``[haproxy.cfg:42]``, or of a file the config names (a crt-list, a
# map: ``parsing [/etc/haproxy.cfg.d/crt-….list:81]``), whose line numbers are not the
# config's. One tenant's crt-list line 81 blamed whichever service sat at config line 81.
_LINE = re.compile(r"\[([^\]\n]*):(\d+)\]")
_CONFIG_FILE = re.compile(r"Error\(s\) found in configuration file : (\S+)")
_PROXY = re.compile(r"(?:[Pp]roxy|backend|frontend|server) '([^'/\s]+)")
_SECTION = re.compile(r"^(frontend|backend|listen|defaults|global|peers|userlist|resolvers)"
                      r"\s*(\S*)")
_ROUTE = re.compile(r"\b(?:acl host_|use_backend |if host_)(\S+?)(?:_path)?(?:\s|$)")

# (services to check) -> (accepted, haproxy's output)
Check = Callable[[Collection[str]], Awaitable[tuple[bool, str]]]


def alerts(output: str) -> list[str]:
    """HAProxy's alert lines, without the noise around them."""
    return [_ALERT.sub("", line).strip() for line in output.splitlines()
            if "[ALERT]" in line and "Fatal errors" not in line
            and "Error(s) found" not in line]


def _sections(text: str) -> list[str]:
    """The section each line (1-based: index 1 is line 1) of ``text`` is in."""
    current, out = "", [""]
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(2) or m.group(1)
        out.append(current)
    return out


def culprits(output: str, text: str, layout: Layout) -> dict[str, str]:
    """Services the alerts in ``output`` point at: backend name -> its alert line."""
    lines = text.splitlines()
    section = _sections(text)
    certs = {s.service.options.ssl_cert: name for name, s in layout.items()
             if s.service.options.ssl_cert}
    found: dict[str, str] = {}
    config = _CONFIG_FILE.search(output)
    for alert in alerts(output):
        names: set[str] = set()
        refs = _LINE.findall(alert)
        # The config's own file: as HAProxy names it at the end, else the alert's first.
        own = config.group(1) if config else (refs[0][0] if refs else "")
        for file, line in refs:
            if file != own:
                continue
            n = int(line)
            if 0 < n < len(section):
                if section[n] in layout:
                    names.add(section[n])
                else:  # a shared virtual-host frontend: the rule names the backend
                    names |= {r for r in _ROUTE.findall(lines[n - 1]) if r in layout}
        names |= {p for p in _PROXY.findall(alert) if p in layout}
        names |= {name for cert, name in certs.items() if f"'{cert}'" in alert}
        for name in names:
            found.setdefault(name, alert)
    return found


async def bisect(suspects: list[str], output: str, check: Check, max_checks: int = 32
                 ) -> dict[str, str] | None:
    """Among ``suspects`` (rejected together with ``output``), the ones rejected on their
    own (name -> alert), found by validating halves. None when the budget runs out."""
    budget = [max_checks]
    found: dict[str, str] = {}

    def first_alert(out: str) -> str:
        return next(iter(alerts(out)), out.strip())

    async def search(group: list[str], output: str) -> bool:
        if len(group) == 1:
            found[group[0]] = first_alert(output)
            return True
        half = len(group) // 2
        any_bad = False
        for part in (group[:half], group[half:]):
            if budget[0] <= 0:
                return False
            budget[0] -= 1
            ok, out = await check(part)
            if not ok:
                any_bad = True
                if not await search(part, out):
                    return False
        if not any_bad:  # rejected only together: leave the whole group out
            found.update(dict.fromkeys(group, first_alert(output)))
        return True

    return found if await search(sorted(suspects), output) else None


async def rejected_services(names: Collection[str], mapped: Mapping[str, str], check: Check,
                            max_checks: int = 32) -> dict[str, str] | None:
    """Everything to leave out so that ``check`` accepts the rest: the services the
    alerts named (``mapped``), then whatever bisection finds among the others.
    None when the config without any service is rejected too (not a service's fault)
    or the budget runs out."""
    rest = sorted(n for n in names if n not in mapped)
    ok, out = await check(rest)
    if ok:
        return dict(mapped)
    base_ok, _ = await check([])
    if not base_ok:
        return None
    more = await bisect(rest, out, check, max_checks)
    if more is None:
        return None
    return {**mapped, **more}
