"""The engine's gauges. Those that walk the layout, the slot table (80,000 slots at
10,000 apps) or the problems are computed when ``/metrics`` is read, not once per
apply step (per-step counting was most of the CPU at 100 replacements/s, issue #11).
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from .layout import slot_counts
from .metrics import EXCLUDED_REASONS

if TYPE_CHECKING:
    from .engine import Engine

_T = TypeVar("_T")
SCRAPE = 0.5
"""Seconds at most that one computation serves gauges read outside ``/metrics`` (a
scrape there computes afresh, :meth:`Gauges.scrape`): prometheus-client asks each
gauge's function in turn, and three of them walked the 80,000 slots of 10,000 apps
(1.4 ms a walk, with the event loop held), each excluded reason the problems again."""


class _PerScrape(Generic[_T]):
    """``compute``, called once per scrape (or SCRAPE seconds, read otherwise)."""

    def __init__(self, gauges: Gauges, compute: Callable[[], _T]) -> None:
        self._gauges, self._compute = gauges, compute
        self._kept: tuple[int, float, _T] | None = None

    def __call__(self) -> _T:
        now, scrape = time.monotonic(), self._gauges.scrapes
        kept = self._kept
        if kept is None or kept[0] != scrape or now - kept[1] > SCRAPE:
            kept = self._kept = (scrape, now, self._compute())
        return kept[2]


class Gauges:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._installed = False
        self.scrapes = 0  # /metrics requests: each computes the gauges below once
        self._slots = _PerScrape(self, lambda: slot_counts(engine.table))
        self._reasons = _PerScrape(self, lambda: collections.Counter(
            p.reason for p in engine.state.problem_list()))

    def scrape(self) -> None:
        """A scrape begins: the gauges it reads are computed anew (once)."""
        self.scrapes += 1

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
        m.endpoints.set_function(lambda: self._slots()[0])
        m.slots.labels("used").set_function(lambda: self._slots()[0])
        m.slots.labels("free").set_function(lambda: self._slots()[1])
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
        return self._reasons()[reason]
