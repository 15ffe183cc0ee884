"""The engine's gauges. Those that walk the layout, the slot table (80,000 slots at
10,000 apps) or the problems are computed when ``/metrics`` is read, not once per
apply step (per-step counting was most of the CPU at 100 replacements/s, issue #11).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from .layout import slot_counts
from .metrics import EXCLUDED_REASONS

if TYPE_CHECKING:
    from .engine import Engine


class Gauges:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._installed = False

    def update(self) -> None:
        """After each apply step; the first hooks every gauge up, read at scrape time."""
        e = self.engine
        if self._installed:
            return
        self._installed = True
        m = e.metrics
        # Read at scrape time: an app that came in while a long reload step runs is
        # counted at once, not when the step ends.
        m.apps.set_function(lambda: len(e.state.apps))
        m.haproxy_master_up.set_function(lambda: 0 if e.reloader.problem() else 1)
        m.services.set_function(lambda: len(e.layout) - self.spare_count())
        m.pool_spares.set_function(self.spare_count)
        m.endpoints.set_function(lambda: slot_counts(e.table)[0])
        m.slots.labels("used").set_function(lambda: slot_counts(e.table)[0])
        m.slots.labels("free").set_function(lambda: slot_counts(e.table)[1])
        for reason in EXCLUDED_REASONS:
            m.services_excluded.labels(reason).set_function(
                functools.partial(self.excluded_count, reason))

    def spare_count(self) -> int:
        """Spare backends of the range mode's pool (layout entries of no app)."""
        return sum(1 for shape in self.engine.layout.values() if not shape.app_id)

    def excluded_count(self, reason: str) -> int:
        """Services left out for ``reason`` (``invalid_app``: apps that do not parse)."""
        e = self.engine
        if reason == "invalid_app":
            return len(e.app_errors)
        return sum(1 for p in e.state.problem_list() if p.reason == reason)
