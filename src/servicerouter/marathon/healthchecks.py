"""A Marathon health check mirrored in HAProxy, as marathon-lb does; a value HAProxy
cannot take leaves that service out. Pure."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from ..label_values import CHECK_PATH
from ..labels import LabelError, parse_path
from ..model import Mode, Options, shown
from .fields import get

_CHECK_PROTOCOLS = ("HTTP", "MESOS_HTTP", "HTTPS", "MESOS_HTTPS", "TCP", "MESOS_TCP")

# HAProxy keeps timers in signed 32-bit milliseconds: "inter" above 2147483647 ms is
# refused by haproxy -c (and Infinity/NaN have no millisecond value at all).
MAX_INTERVAL_SECONDS = 2147483  # whole seconds: 2147483000 ms fits, 2147484 s does not
MIN_INTERVAL_MS = 100  # HAProxy checks one server at most 10 times a second


class BadHealthCheck(Exception):
    """A health check value HAProxy cannot take: that service is left out."""

    def __init__(self, where: str, value: object, expected: str) -> None:
        self.where, self.value, self.expected = where, value, expected
        super().__init__(where)


def _check_number(hc: Any, key: str, where: str, default: float, low: float, high: float) -> float:
    """A finite number in [low, high] from a health check, or ``default`` if absent."""
    value = get(hc, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise BadHealthCheck(where, value, f"a number from {low:g} to {high:g} that HAProxy "
                                            "accepts")
    return float(value)


class Checks:
    """An app's Marathon health checks, read once for all its port indices.

    marathon-lb's choice for a port index is the first check with an explicit ``port``,
    or whose ``portIndex`` is that index. Scanning the list again for every index cost
    (ports x checks): an app with 20,000 port definitions took 7 s of the daemon's CPU
    to parse, every other app waiting. One pass here keeps, per index, where its first
    usable check is; :meth:`pick` answers from that."""

    __slots__ = ("checks", "error", "first_any", "first_at", "protocols", "skipped_any",
                 "skipped_at")

    def __init__(self, health_checks: list[Any]) -> None:
        self.checks = health_checks
        self.error: tuple[int, BadHealthCheck] | None = None  # the first invalid check
        self.first_any: int | None = None  # the first usable check with an explicit port
        self.first_at: dict[int, int] = {}  # port index -> its first usable check
        self.skipped_any: int | None = None  # the same, for checks HAProxy cannot run
        self.skipped_at: dict[int, int] = {}
        self.protocols: dict[int, str] = {}
        for i, hc in enumerate(health_checks):
            where = f"healthChecks[{i}]"
            port_index = get(hc, "portIndex", 0)
            if isinstance(port_index, bool) or not isinstance(port_index, int) \
                    or not 0 <= port_index <= 1000:
                self.error = (i, BadHealthCheck(f"{where}.portIndex", port_index,
                                                "a port index"))
                break
            port = get(hc, "port")
            if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                     or not 1 <= port <= 65535):
                self.error = (i, BadHealthCheck(f"{where}.port", port, "a port (1-65535)"))
                break
            protocol = self.protocols[i] = str(get(hc, "protocol", "HTTP"))
            usable = protocol != "COMMAND" and protocol in _CHECK_PROTOCOLS
            if port is not None:
                if usable and self.first_any is None:
                    self.first_any = i
                elif not usable and self.skipped_any is None:
                    self.skipped_any = i
            else:
                (self.first_at if usable else self.skipped_at).setdefault(port_index, i)

    def pick(self, index: int) -> tuple[int, Any, str] | str | None:
        """marathon-lb's choice for a port index: (position, check, protocol). COMMAND
        checks and protocols HAProxy cannot run are passed over (they name no port):
        when only such a check applies, what it is is returned instead; None when none
        applies. An invalid check met before the choice raises :class:`BadHealthCheck`."""
        found = [i for i in (self.first_any, self.first_at.get(index)) if i is not None]
        chosen = min(found) if found else None
        if self.error is not None and (chosen is None or self.error[0] < chosen):
            raise self.error[1]
        if chosen is not None:
            return chosen, self.checks[chosen], self.protocols[chosen]
        skipped = [i for i in (self.skipped_any, self.skipped_at.get(index)) if i is not None]
        if not skipped:
            return None
        first = min(skipped)
        return f"healthChecks[{first}] is a {self.protocols[first]} check"


def with_health_check(options: Options, checks: Checks, index: int,
                      app_id: str, container_ports: list[int], explicit: frozenset[str],
                      warnings: list[str]) -> Options:
    """Mirror the app's Marathon health check for this port index in HAProxy.

    As marathon-lb: the first check with an explicit ``port``, or whose
    ``portIndex`` is this index; failing that, with the label
    ``HAPROXY_{n}_BACKEND_HEALTHCHECK_PORT_INDEX``, the check of that port index (run
    against each task's port there). HTTP and MESOS_HTTP checks of a task's own port
    make the service HTTP (unless a MODE label says otherwise); HTTPS checks are sent
    over TLS (``check-ssl verify none``) without changing the mode; COMMAND checks
    cannot be run by HAProxy and only get a warning when no other check applies. A
    value HAProxy cannot take (a non-finite or too long interval, a port outside
    1-65535) raises :class:`BadHealthCheck`.
    """
    picked = checks.pick(index)
    borrowed = options.health_check_port_index
    own = True  # a check of this port's own index: it says what the port speaks
    if not isinstance(picked, tuple) and borrowed is not None and borrowed != index:
        other = checks.pick(borrowed)  # marathon-lb #198: the health port's check
        if isinstance(other, tuple):
            picked, own = other, False
    if not isinstance(picked, tuple):
        if picked is not None:
            warnings.append(f"app {app_id}: {picked}, which HAProxy cannot run; service "
                            f"port index {index} is not health-checked by HAProxy (Marathon's "
                            "results still decide routing)")
        return options
    i, hc, protocol = picked
    where = f"healthChecks[{i}]"
    port = get(hc, "port")
    interval = _check_number(hc, "intervalSeconds", f"{where}.intervalSeconds", 2, 0,
                             MAX_INTERVAL_SECONDS)
    timeout = _check_number(hc, "timeoutSeconds", f"{where}.timeoutSeconds", 20, 0,
                            MAX_INTERVAL_SECONDS)
    failures = _check_number(hc, "maxConsecutiveFailures", f"{where}.maxConsecutiveFailures",
                             3, 0, 1000)
    change: dict[str, Any] = {
        "health_check": True,
        # Marathon's interval is whole seconds; a fraction (the simulator's) is kept,
        # but not below MIN_INTERVAL_MS: 1 ms checks on every slot of an app would
        # load HAProxy for every tenant.
        "health_check_interval_ms": max(int((interval or 2) * 1000), MIN_INTERVAL_MS),
        "health_check_timeout_ms": max(int(timeout * 1000), 1) if timeout else None,
        "health_check_fall": int(failures) + 1,  # as marathon-lb
        "health_check_port": port,
        "health_check_ssl": protocol in ("HTTPS", "MESOS_HTTPS"),
    }
    if protocol in ("HTTP", "MESOS_HTTP", "HTTPS", "MESOS_HTTPS"):
        try:
            change["health_check_path"] = parse_path(f"{where}.path",
                                                     str(get(hc, "path", "/")), CHECK_PATH)
        except LabelError:  # never another URL: / may answer 404 where the path is fine
            warnings.append(f"app {app_id}: {where}.path {shown(get(hc, 'path'))} is not "
                            "an absolute path and query HAProxy can send; HAProxy only "
                            "checks that the port accepts connections")
    if protocol in ("HTTP", "MESOS_HTTP") and "MODE" not in explicit and port is None \
            and own:
        # A check of this very port: it speaks HTTP. (A check on an explicit port, or
        # one borrowed from the health port, says nothing about this port's protocol:
        # a TCP port would answer its clients 400. httpchk works in TCP mode too.)
        change["mode"] = Mode.HTTP
    index_label = options.health_check_port_index
    if index_label is not None and port is None and container_ports:
        # IP-per-task: the container port is the same for every task. Otherwise
        # each task's own port at that index is checked (model.endpoints).
        if index_label < len(container_ports) and container_ports[index_label]:
            change["health_check_port"] = container_ports[index_label]
        else:
            warnings.append(
                f"app {app_id}: label HAPROXY_{index}_BACKEND_HEALTHCHECK_PORT_INDEX="
                f"{index_label} names no container port; the traffic port is checked")
    return replace(options, **change)
