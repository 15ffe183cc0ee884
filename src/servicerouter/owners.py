"""Who owns each service port and virtual host, kept on disk next to the config.

Ownership is first come, first served (:class:`~servicerouter.ownership.Ownership`):
an app that names a port or a host another app holds waits until it is let go. Held
in memory only, that order would be lost at every restart of the daemon and at every
``servicerouter sync`` run: all apps would be new at once, and the oldest definition
would win, so an app refused a team's host could take it over by the owner's next
deploy and a restart. The owners are written here whenever they change and read back
before the first full sync, so whoever held a port or a host before still does.

The file is the daemon's own (0600). A missing, unreadable or malformed file is
reported and treated as empty: the claims then start over, oldest definition first. A
malformed one is moved to ``<file>.broken`` first, for an operator to read.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .haproxy.files import atomic_write
from .model import shown
from .sortedlines import SortedLines

log = logging.getLogger("servicerouter.owners")

VERSION = 1


@dataclass
class Owners:
    """Service port → app id; virtual host, and certificate file (claims.py) → (owner
    key, app that claimed it first); a host and path one service routes (``host`` plus
    the path, ``""`` for none) → (its backend, its app); the ids routed as blue/green
    deployment groups (None: a file written before they were kept): at the root, a group
    that held its id keeps it from a live app with that id, whichever is older."""

    ports: dict[int, str] = field(default_factory=dict)
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)
    certs: dict[str, tuple[str, str]] = field(default_factory=dict)
    routes: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    groups: set[str] | None = None

    def to_json(self) -> str:
        return json.dumps({"version": VERSION,
                           "ports": {str(p): a for p, a in sorted(self.ports.items())},
                           "hosts": {h: list(o) for h, o in sorted(self.hosts.items())},
                           "certs": {c: list(o) for c, o in sorted(self.certs.items())},
                           "routes": {h + p: list(o) for (h, p), o
                                      in sorted(self.routes.items())},
                           "groups": sorted(self.groups or ())},
                          indent=1)

    @classmethod
    def from_json(cls, text: str) -> Owners:
        """Raises ValueError naming what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} owners file")
        ports, hosts = data.get("ports"), data.get("hosts")
        certs = data.get("certs", {})  # absent in files written before certificates had owners
        routes = data.get("routes", {})  # and before routes (a host and path) had
        if not (isinstance(ports, dict) and isinstance(hosts, dict)
                and isinstance(certs, dict) and isinstance(routes, dict)):
            raise ValueError("'ports', 'hosts', 'certs' and 'routes' must be objects")
        groups = data.get("groups")  # absent before deployment groups were kept
        if groups is not None and not (isinstance(groups, list) and all(
                isinstance(g, str) and g.startswith("/") for g in groups)):
            raise ValueError(f"'groups' must be a list of app ids, not {shown(groups)}")
        out = cls(groups=None if groups is None else set(groups))
        for port, app in ports.items():
            if not (port.isdigit() and 1 <= int(port) <= 65535 and isinstance(app, str)):
                raise ValueError(f"ports: {port!r}: {app!r} is not a port and an app id")
            out.ports[int(port)] = app
        for kind, claims, into in (("hosts", hosts, out.hosts), ("certs", certs, out.certs)):
            for thing, owner in claims.items():
                if not (isinstance(owner, list) and len(owner) == 2
                        and all(isinstance(x, str) for x in owner)):
                    raise ValueError(f"{kind}: {thing!r}: {owner!r} is not [owner, app id]")
                into[thing] = (owner[0], owner[1])
        for route, holder in routes.items():
            host, slash, path = route.partition("/")
            if not (host and isinstance(holder, list) and len(holder) == 2
                    and all(isinstance(x, str) for x in holder)):
                raise ValueError(f"routes: {route!r}: {holder!r} is not [backend, app id]")
            out.routes[(host, slash + path)] = (holder[0], holder[1])
        return out


def owners_path(config: Path) -> Path:
    """Where the owners of the apps of ``config`` are kept: next to it."""
    return config.with_name(config.name + ".owners.json")


MAX_BYTES = 64 * 1024 * 1024
"""An owners file is ~100 bytes an app; past this it is not ours (and not read)."""


def _read(path: Path) -> bytes:
    """The file's bytes; OSError or ValueError naming what is wrong. A FIFO, a device
    (/dev/zero) or a huge file is refused before it is read: it would block or fill
    memory before the daemon starts."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_BYTES:
            raise ValueError(f"{info.st_size} bytes, more than {MAX_BYTES}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"more than {MAX_BYTES} bytes")
    return data


def load(path: Path) -> Owners | None:
    """The owners kept at ``path``; None (reported unless simply absent) if there are none."""
    try:
        data = _read(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: not a regular file, too big
        log.error("owners file %s unreadable (%s): ports and hosts are claimed anew, "
                  "oldest definition first", path, exc)
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        _set_aside(path, f"not UTF-8 ({exc})")
        return None
    try:
        return Owners.from_json(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        _set_aside(path, exc)
        return None


def _set_aside(path: Path, why: object) -> None:
    """A broken owners file is moved to ``<file>.broken``, not overwritten by the next
    save: it is the only record of who held what, for an operator to read or repair."""
    broken = path.with_name(path.name + ".broken")
    try:
        os.replace(path, broken)
    except OSError as exc:
        kept = f"left in place ({exc.strerror or exc})"
    else:
        kept = f"moved to {broken}"
    log.error("owners file %s: %s; %s; ports and hosts are claimed anew, oldest "
              "definition first", path, why, kept)


def save(path: Path, owners: Owners) -> bool:
    """Write ``owners`` to ``path`` (atomically, 0600 even if an operator loosened it);
    False (reported) if it failed."""
    return _write(path, owners.to_json())


def _write(path: Path, text: str) -> bool:
    try:
        atomic_write(path, text, mode=0o600)
    except OSError as exc:
        log.error("owners file %s not written (%s): after a restart, ports and hosts "
                  "would be claimed anew", path, exc)
        return False
    return True


class OwnersFile:
    """:func:`save` for a daemon, which writes its owners at every change: the text is
    :meth:`Owners.to_json`'s, each entry's line kept from the last save unless it
    changed. (A new app changes one port and a host of 10,000: the pass over every
    entry of ``to_json`` was 27 ms, at each app created or deleted at 10,000 apps.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = Owners(groups=set())
        self._sections: dict[str, SortedLines] = {name: SortedLines() for name in _SECTIONS}

    def save(self, owners: Owners) -> bool:
        """Write ``owners`` to the file; False (reported) if it failed."""
        last, self._last = self._last, owners
        for name, (entries, key, line) in _SECTIONS.items():
            new, old = entries(owners), entries(last)
            lines = self._sections[name]
            for thing in {k for k, _ in new.items() ^ old.items()}:
                lines.set(key(thing), line(thing, new[thing]) if thing in new else None)
        sections = ",\n".join(f" {json.dumps(name)}: {_section(lines, name == 'groups')}"
                               for name, lines in self._sections.items())
        return _write(self.path, f'{{\n "version": {VERSION},\n{sections}\n}}')


def _pair(owner: tuple[str, str]) -> str:
    return f"[\n   {json.dumps(owner[0])},\n   {json.dumps(owner[1])}\n  ]"


# Section of Owners.to_json -> (its entries in an Owners, the sort key of one, its line).
_SECTIONS: dict[str, tuple[Callable[[Owners], Mapping[Any, Any]], Callable[[Any], Any],
                           Callable[[Any, Any], str]]] = {
    "ports": (lambda o: o.ports, lambda port: port,
              lambda port, app: f"  {json.dumps(str(port))}: {json.dumps(app)}"),
    "hosts": (lambda o: o.hosts, lambda host: host,
              lambda host, owner: f"  {json.dumps(host)}: {_pair(owner)}"),
    "certs": (lambda o: o.certs, lambda cert: cert,
              lambda cert, owner: f"  {json.dumps(cert)}: {_pair(owner)}"),
    "routes": (lambda o: o.routes, lambda route: route,
               lambda route, owner: f"  {json.dumps(route[0] + route[1])}: {_pair(owner)}"),
    "groups": (lambda o: dict.fromkeys(o.groups or ()), lambda group: group,
               lambda group, _: f"  {json.dumps(group)}"),
}


def _section(lines: SortedLines, listed: bool) -> str:
    """One section's text: a JSON list (``listed``) or object of its lines."""
    if not lines:
        return "[]" if listed else "{}"
    body = lines.join(",\n")
    return f"[\n{body}\n ]" if listed else f"{{\n{body}\n }}"
