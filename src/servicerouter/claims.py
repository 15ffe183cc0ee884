"""Certificate files, owned like virtual hosts: by the first claimer's owner. Pure.

Any app may name any file under an ``--ssl-cert-dir``. Without an owner, one
tenant could name another's certificate (``HAPROXY_0_SSL_CERT``) on its own
port: HAProxy would then present the other tenant's name, with its key, to
clients lured to ``https://shop.example.com:<that port>/``, and the browser
would send shop.example.com's cookies along. So a certificate file (its
resolved path) belongs to the owner (``--vhost-policy``: the top-level group,
or the app) of the first app that named it, for as long as an app of that
owner still names it; files the operator lists in ``--ssl-certs`` are shared.
The names in a file are claimed as hosts (:mod:`.hostclaims`): a copy of the file,
or another file for the same names, is refused there.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Claims:
    """Thing -> (owner key, first app that claimed it), and who holds it now."""

    owner: dict[str, tuple[str, str]] = field(default_factory=dict)
    holders: dict[str, set[str]] = field(default_factory=dict)
    held_by: dict[str, set[str]] = field(default_factory=dict)  # app id -> things
    waiting: dict[str, set[str]] = field(default_factory=dict)  # thing -> apps refused it
    version: int = 0  # bumped when an owner changes (kept on disk: owners.py)

    def update(self, app_id: str, key: str, wanted: set[str]
               ) -> tuple[dict[str, tuple[str, str]], set[str]]:
        """``app_id`` (of owner ``key``) now names ``wanted``: the things another owner
        holds (refused: thing -> that owner), and the things nobody holds any more."""
        refused: dict[str, tuple[str, str]] = {}
        now: set[str] = set()
        for thing in sorted(wanted):
            held = self.owner.get(thing)
            if held is not None and held[0] != key:
                self.waiting.setdefault(thing, set()).add(app_id)
                refused[thing] = held
            else:
                now.add(thing)
        freed = set()
        for thing in self.held_by.get(app_id, set()) - now:
            holders = self.holders.get(thing, set())
            holders.discard(app_id)
            if not holders:
                self.holders.pop(thing, None)
                self.owner.pop(thing, None)
                freed.add(thing)
                self.version += 1
            elif self.owner[thing][1] == app_id:  # the first claimer let go; its owner stays
                self.owner[thing] = (self.owner[thing][0], min(holders))
                self.version += 1
        for thing in now:
            if thing not in self.owner:
                self.owner[thing] = (key, app_id)
                self.version += 1
            self.holders.setdefault(thing, set()).add(app_id)
        if now:
            self.held_by[app_id] = now
        else:
            self.held_by.pop(app_id, None)
        return refused, freed

    def seed(self, thing: str, key: str, app_id: str) -> bool:
        """An owner kept from before a restart (owners.py): it holds ``thing`` again
        (False: someone already does)."""
        if thing in self.owner:
            return False
        self.owner[thing] = (key, app_id)
        self.holders[thing] = {app_id}
        self.held_by.setdefault(app_id, set()).add(thing)
        return True

    def waiters(self, freed: set[str]) -> set[str]:
        return {w for thing in freed for w in self.waiting.pop(thing, ())}
