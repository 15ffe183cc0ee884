"""Prometheus metrics. Names and labels are a contract: operators alert on them.

Totals only, never per-app labels: a cluster has thousands of apps.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from . import __version__
from .admission import REASONS as EXCLUDED_REASONS

RELOAD_REASONS = ("new_app", "removed_app", "options_changed", "capacity", "runtime_error",
                  "resync", "manual", "endpoints_changed", "startup",
                  "pool_exhausted", "own_frontend", "outside_pool", "vhost_acl", "plan_error")
RELOAD_STAGES = ("validate", "write", "reload", "confirm")
disable_created_metrics()  # *_created series only add noise to every scrape

# 0.5 ms to 10 s, about 2.5x per step.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Tally:
    """A counter bumped on the hot path (per event, per runtime command): plain integers,
    read by the registry at scrape time. prometheus_client's Counter takes a lock and
    checks its arguments on every ``inc`` (~1 us; several per event under churn); the
    daemon updates and scrapes from one thread, its event loop. Exposed exactly as a
    Counter of the same name and label would be (``<name>_total``, a child at 0 from
    its first ``labels()``)."""

    def __init__(self, name: str, documentation: str, label: str | None,
                 registry: CollectorRegistry) -> None:
        self.name, self._doc, self._label = name, documentation, label
        self.labelnames: tuple[str, ...] = (label,) if label else ()
        self.counts: dict[str, float] = {} if label else {"": 0.0}
        registry.register(self)

    def labels(self, value: str) -> _TallyChild:
        self.counts.setdefault(value, 0.0)
        return _TallyChild(self.counts, value)

    def inc(self, amount: float = 1.0) -> None:
        self.counts[""] += amount

    def add(self, counts: dict[str, int]) -> None:
        """Add several labels' counts at once."""
        mine = self.counts
        for value, n in counts.items():
            mine[value] = mine.get(value, 0.0) + n

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self._doc,
                                     labels=[self._label] if self._label else None)
        for value, n in list(self.counts.items()):
            family.add_metric([value] if self._label else [], n)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self._doc,
                                  labels=[self._label] if self._label else None)


class _TallyChild:
    __slots__ = ("_counts", "_value")

    def __init__(self, counts: dict[str, float], value: str) -> None:
        self._counts, self._value = counts, value

    def inc(self, amount: float = 1.0) -> None:
        self._counts[self._value] += amount


class Timings:
    """A histogram observed on the hot path (per event, per apply step), as :class:`Tally`
    is a counter: plain numbers read at scrape time, exposed exactly as prometheus_client's
    Histogram of the same name, buckets and label."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 label: str | None, registry: CollectorRegistry) -> None:
        self.name, self._doc, self._label = name, documentation, label
        self.labelnames: tuple[str, ...] = (label,) if label else ()
        self._bounds = (*sorted(buckets), math.inf)
        self._children: dict[str, _TimingsChild] = {}
        if not label:
            self._children[""] = _TimingsChild(self._bounds)
        registry.register(self)

    def labels(self, value: str) -> _TimingsChild:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = _TimingsChild(self._bounds)
        return child

    def observe(self, amount: float) -> None:
        self._children[""].observe(amount)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self._doc,
                                     labels=list(self.labelnames) or None)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for value, child in list(self._children.items()):
            acc, buckets = 0.0, []
            for bound, n in zip(self._bounds, child.counts, strict=True):
                acc += n
                buckets.append((floatToGoString(bound), acc))
            family.add_metric([value] if self._label else [], buckets, child.sum)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield self._family()


class _TimingsChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect.bisect_left(self._bounds, amount)] += 1


class Metrics:
    """Every metric servicerouter exports, in one registry (one per daemon)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.reloads = Counter("servicerouter_reloads", "HAProxy reloads, by reason.",
                               ["reason"], registry=r)
        self.reload_failures = Counter(
            "servicerouter_reload_failures", "Reloads that failed, by the stage that failed.",
            ["stage"], registry=r)
        self.reloads_held = Counter(
            "servicerouter_reloads_held",
            "Times a reload wanted only by tenants out of reload tokens was held "
            "(--tenant-reload-burst, --tenant-reload-interval).", registry=r)
        self.runtime_commands = Tally(
            "servicerouter_runtime_commands", "Runtime API commands sent, by command.",
            "command", r)
        self.runtime_batches = Tally(
            "servicerouter_runtime_batches", "Batches of runtime commands applied.", None, r)
        self.runtime_errors = Counter(
            "servicerouter_runtime_errors",
            "Runtime commands that failed or whose outcome is unknown.", registry=r)
        self.marathon_events = Tally(
            "servicerouter_marathon_events", "Marathon events received, by type.",
            "event_type", r)
        self.marathon_requests = Counter(
            "servicerouter_marathon_requests", "Requests to Marathon, by endpoint and outcome.",
            ["endpoint", "outcome"], registry=r)
        self.stream_reconnects = Counter(
            "servicerouter_marathon_stream_reconnects",
            "Times the event stream was (re)connected after a failure.", registry=r)
        self.event_to_apply = Timings(
            "servicerouter_event_to_apply_seconds",
            "From a Marathon event's arrival to HAProxy confirming the change.",
            LATENCY_BUCKETS, None, r)
        self.sync_duration = Timings(
            "servicerouter_sync_duration_seconds",
            "Time to bring HAProxy in line with Marathon (full: fetch+parse+plan+apply).",
            LATENCY_BUCKETS, "kind", r)
        self.reload_duration = Histogram(
            "servicerouter_reload_duration_seconds",
            "Render, validate, write and confirmed reload of HAProxy.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.apps = Gauge("servicerouter_apps", "Marathon apps known.", registry=r)
        self.services = Gauge("servicerouter_services", "Service ports routed.", registry=r)
        self.endpoints = Gauge("servicerouter_endpoints", "Endpoints in slots.", registry=r)
        self.pool_spares = Gauge("servicerouter_pool_spares",
                                 "Range mode: spare backends free for new apps.", registry=r)
        self.slots = Gauge("servicerouter_slots", "Server slots, used or free.", ["state"],
                           registry=r)
        self.marathon_up = Gauge(
            "servicerouter_marathon_up",
            "1 when the last request to Marathon succeeded and the event stream is live.",
            registry=r)
        self.stream_connected = Gauge(
            "servicerouter_marathon_stream_connected",
            "1 while the Marathon event stream is connected and live.", registry=r)
        self.haproxy_up = Gauge("servicerouter_haproxy_up",
                                "1 when HAProxy's admin socket answered last time.", registry=r)
        self.haproxy_master_up = Gauge(
            "servicerouter_haproxy_master_up",
            "0 while the HAProxy master the daemon started or adopted (--start-haproxy "
            "--keep-haproxy-on-exit) is alive but does not answer: no reload can happen. "
            "1 otherwise, and always 1 where the daemon does not watch such a master.", registry=r)
        self.haproxy_master_up.set(1)
        self.reload_failing = Gauge(
            "servicerouter_reload_failing",
            "1, at the stage that failed, while reloads fail and none has worked since: "
            "HAProxy serves an older config than the one wanted. 0 otherwise.",
            ["stage"], registry=r)
        self.last_sync = Gauge("servicerouter_last_successful_sync_timestamp_seconds",
                               "Unix time of the last successful full sync.", registry=r)
        self.services_excluded = Gauge(
            "servicerouter_services_excluded",
            "Services left out (or capped: too_many_servers), by reason; see /status problems.",
            ["reason"], registry=r)
        for reason in EXCLUDED_REASONS:
            self.services_excluded.labels(reason)
        self.build_info = Info("servicerouter_build", "servicerouter version.", registry=r)
        self.build_info.info({"version": __version__})
        for reason in RELOAD_REASONS:
            self.reloads.labels(reason)
        for stage in RELOAD_STAGES:
            self.reload_failures.labels(stage)
            self.reload_failing.labels(stage)
        for kind in ("full", "incremental"):
            self.sync_duration.labels(kind)
        self.incremental_duration = self.sync_duration.labels("incremental")

    def count_commands(self, commands: list[str]) -> None:
        """Count commands by verb (``set server addr`` → ``set_server_addr``)."""
        counts: dict[str, int] = {}
        for c in commands:
            words = c.split(None, 4)  # the verb is in the first four words
            verb = "_".join(words[:2] + ([words[3]] if words[:2] == ["set", "server"]
                                         and len(words) > 3 else []))
            counts[verb] = counts.get(verb, 0) + 1
        self.runtime_commands.add(counts)
