"""Reloads per tenant: one tenant changing shapes cannot keep HAProxy reloading for
everyone. Pure.

A reload costs every tenant: at 10,000 apps HAProxy parses a 7 MB config (seconds of
CPU), the old worker lingers while its connections drain, and in HAProxy 2.6 nobody
accepts a connection for a moment at the switch-over (docs/benchmarks.md). One app
flapping its options, or a tenant creating and deleting apps in a loop, made that
happen once per ``--min-reload-interval``, all day.

A tenant is an app's top-level Marathon group (``/shop`` for ``/shop/web/api``; an
app at the root is its own), as for the owners of virtual hosts. Whoever may create
new top-level groups (or apps at the root) gets a budget for each: Marathon's own
permissions decide who may. A reload that only tenants' changes want (new or removed
apps, changed options, capacity, range-mode shapes, a backend whose runtime changes
could not be planned) spends one token of each of them that has one; a tenant holds
at most ``burst`` tokens and gets one back every ``interval`` seconds. When none of
the tenants that want a reload has a token, the reload waits for the first token to
come back. Whatever else reloads meanwhile (an operator's SIGHUP, a repair after a
reconcile, another tenant's new app) carries their changes along at no cost to them,
so a real rollout loses little: its later changes wait at most ``interval``. Reloads
that are nobody's doing (a repair, a runtime error, the first config, an operator's)
are never held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .admission import top_group as tenant
from .layout import DesiredService, Layout
from .planner import ReloadReason

log = logging.getLogger("servicerouter.engine")

# What a tenant's own definitions cause; every other reason is nobody's doing.
TENANT_REASONS = frozenset({
    ReloadReason.NEW_APP.value, ReloadReason.REMOVED_APP.value,
    ReloadReason.OPTIONS_CHANGED.value, ReloadReason.CAPACITY.value,
    ReloadReason.OWN_FRONTEND.value, ReloadReason.OUTSIDE_POOL.value,
    ReloadReason.POOL_EXHAUSTED.value, ReloadReason.VHOST_ACL.value,
    # A backend whose runtime changes could not be planned: what its app sent reached a
    # bug. Its tenant's doing as far as anyone can tell, so it cannot reload everyone at
    # will by sending it again.
    ReloadReason.PLAN_ERROR.value,
})


def tenants_of(pending: Mapping[str, str], desired: Mapping[str, DesiredService],
               layout: Layout) -> frozenset[str] | None:
    """The tenants whose changes want the pending reload, or None when anything in it
    is nobody's doing (a reload of everything, a runtime error, a backend of no app)."""
    found: set[str] = set()
    for name, reason in pending.items():
        if str(reason) not in TENANT_REASONS:
            return None
        if name in desired:
            found.add(tenant(desired[name].service.app_id))
        elif name in layout and layout[name].app_id:
            found.add(tenant(layout[name].app_id))
        else:
            return None
    return frozenset(found) if found else None


@dataclass
class ReloadBudget:
    """Token buckets, one per tenant that spent any (a full bucket is forgotten)."""

    interval: float  # seconds per token given back; 0: no budget at all
    burst: int = 10
    _spent: dict[str, tuple[float, float]] = field(default_factory=dict)  # tokens, at

    def tokens(self, who: str, now: float) -> float:
        held = self._spent.get(who)
        if held is None:
            return float(self.burst)
        tokens, at = held
        return min(float(self.burst), tokens + (now - at) / self.interval)

    def ready_at(self, tenants: Iterable[str] | None, now: float) -> float:
        """When a reload these tenants want may start: ``now`` if one of them holds a
        token (or the reload is nobody's doing), else when the first token returns."""
        if tenants is None or self.interval <= 0:
            return now
        waits = [(1.0 - self.tokens(t, now)) * self.interval for t in tenants]
        return now + max(0.0, min(waits, default=0.0))

    def spend(self, tenants: Iterable[str] | None, now: float) -> None:
        """A reload started: each of ``tenants`` holding a token spends one."""
        if tenants is None or self.interval <= 0:
            return
        for who in tenants:
            left = self.tokens(who, now)
            if left >= 1.0:
                self._spent[who] = (left - 1.0, now)
        for who in [w for w in self._spent if self.tokens(w, now) >= self.burst]:
            del self._spent[who]  # full again: as if never seen (memory stays bounded)


class ReloadGate:
    """The budget as the reload pipeline asks it: whose reload is pending, whether it
    may start, and a hold said once (log and ``on_hold``) per set of tenants held."""

    def __init__(self, budget: ReloadBudget, on_hold: Callable[[], None]) -> None:
        self.budget = budget
        self._on_hold = on_hold
        self._held: frozenset[str] | None = None

    def tenants(self, pending: Mapping[str, str], desired: Mapping[str, DesiredService],
                layout: Layout, serving: bool) -> frozenset[str] | None:
        """Whose tokens the pending reload spends (None: nobody's; so is the first
        config, before anything is ``serving``)."""
        if self.budget.interval <= 0 or not serving:
            return None
        return tenants_of(pending, desired, layout)

    def ready_at(self, tenants: frozenset[str] | None, now: float) -> float:
        at = self.budget.ready_at(tenants, now)
        if at <= now:
            self._held = None
        elif tenants != self._held:
            self._held = tenants
            self._on_hold()
            log.warning("reload held %.0fs: wanted only by %s, whose apps spent their "
                        "reloads (--tenant-reload-burst %d, one more every "
                        "--tenant-reload-interval %gs); any other reload carries their "
                        "changes sooner", at - now, ", ".join(sorted(tenants or ())),
                        self.budget.burst, self.budget.interval)
        return at
