"""What the engine does before a reload so one service cannot fail it for everyone.

- Every frontend address the running HAProxy does not have yet is bound once
  (:func:`~servicerouter.hostfacts.bind_problem`): a service whose address
  cannot be bound is left out instead of failing the reload (and pausing every
  frontend while HAProxy tries).
- A certificate file of a routed service that changed on disk since it was read
  (a rotation) is read again, and its apps judged again: HAProxy loads the file at
  the reload, and its names may be another owner's hosts now.
- When ``haproxy -c`` rejects a candidate anyway, the services it blames
  (:mod:`~servicerouter.isolation`) are left out and the rest is validated again.

Both leave the service out through :meth:`ClusterState.exclude`, until the
app's definition of it changes; a bind failure is also retried at each full
resync (:meth:`ClusterState.replace_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from . import hostfacts, isolation, pool
from .admission import port_label
from .haproxy.render import hostport, render
from .layout import Layout, Settings, SlotTable
from .model import Problem, shown
from .state import ClusterState

if TYPE_CHECKING:
    from .reload import ConfigWriter

log = logging.getLogger("servicerouter.engine")
_BIND = re.compile(r"^\s*bind\s+(\S+)", re.MULTILINE)


class Guard:
    def __init__(self, state: ClusterState, writer: ConfigWriter, settings: Settings,
                 templates: Path | None) -> None:
        self.state = state
        self.writer = writer
        self.settings = settings
        self.templates = templates
        self._bound: set[str] | None = None  # frontend addresses in the config HAProxy has
        self.bind_problem = hostfacts.bind_problem  # the edge; unit tests replace it

    def served(self, text: str) -> None:
        """HAProxy now serves ``text``: its addresses are bound."""
        self._bound = set(_BIND.findall(text))

    async def recheck_certs(self) -> set[str]:
        """Read again the certificate files of routed services that changed on disk since
        admission read them (a stat each: a rotation between two full syncs), and judge
        their apps again, before HAProxy loads them: a file now naming another owner's
        host is left out, not presented. Returns the backends that changed. (haproxy -c
        on those only it can judge runs in a thread.)"""
        served = {c for d in self.state.desired.values() if (c := d.service.options.ssl_cert)}
        if not served:
            return set()
        stale = set()
        for label, fact in self.state.facts.certs.items():
            if fact.path not in served:
                continue
            try:
                info = os.stat(fact.path)
                stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
            except OSError:
                stamp = None
            if stamp != fact.stamp:
                stale.add(label)
        if not stale:
            return set()
        apps = [a for a in self.state.apps.values()
                if any(s.options.ssl_cert in stale for s in a.services)]
        survey = hostfacts.survey(apps, self.settings)
        facts = await asyncio.to_thread(survey.settle) if survey.asks_haproxy else \
            survey.settle()
        return self.state.set_facts(facts)

    def exclude_unbindable(self) -> set[str]:
        """Try to bind each frontend address the running HAProxy does not have yet; leave
        out the services whose address fails. Returns the backends that changed."""
        if self._bound is None:  # HAProxy may serve the file an earlier run left
            path = getattr(self.writer, "path", None)
            with contextlib.suppress(OSError, TypeError):
                # (not UTF-8, an old file's comment: its bind lines are ASCII all the same)
                text = Path(path).read_text(errors="replace")  # type: ignore[arg-type]
                self._bound = set(_BIND.findall(text))
        dirty: set[str] = set()
        for name, d in sorted(self.state.desired.items()):
            opts, svc = d.service.options, d.service
            address = hostport(opts.bind_address, svc.port)
            if address in (self._bound or ()):
                continue
            if pool.range_on(self.settings) and pool.own_frontend(svc, self.settings) is None:
                continue  # the range frontend binds it (checked at start), not the service
            problem = self.bind_problem(opts.bind_address, svc.port, self._bound or ())
            if problem is not None:
                app = self.state.app(svc.app_id)
                assert app is not None, svc.app_id  # its services are desired
                label = (f"HAPROXY_{svc.index}_BIND_ADDR" if opts.bind_address != "*"
                         else port_label(app, svc.index))
                dirty |= self.state.exclude(name, Problem(
                    svc.app_id, svc.index, "bind_failed", label, address,
                    f"{problem}; service left out until its definition changes or the next "
                    "full resync, others applied"))
        return dirty

    async def exclude_rejected(self, layout: Layout, table: SlotTable, text: str,
                               output: str, kept: Path | str, running: Layout) -> bool:
        """Find the services haproxy -c rejects and leave them out; False if none can be
        blamed: the config is rejected without them too, or every one is rejected (an
        operator's template or setting, not a tenant's value).

        A service HAProxy runs now with the same definition is not a suspect: when it
        is rejected all the same, the change is the operator's. Unless an alert names
        its own certificate file: that file changed under it (a rotation gone wrong),
        and only that service is at fault, not every reload of everyone."""
        blamed = isolation.culprits(output, text, layout)

        def own_cert_refused(name: str) -> bool:
            cert = layout[name].service.options.ssl_cert
            return bool(cert) and f"'{cert}'" in blamed.get(name, "")

        trusted = {n for n, shape in layout.items()
                   if n in running and running[n].service == shape.service
                   and not own_cert_refused(n)}
        suspects = [n for n in layout if n not in trusted]

        async def check(names: Collection[str]) -> tuple[bool, str]:
            part = {n: layout[n] for n in [*names, *trusted]}
            # In a thread, as the engine renders: the event loop applies churn meanwhile.
            candidate = await asyncio.to_thread(render, part, table, self.settings,
                                                self.templates)
            return await self.writer.validate(candidate)

        mapped = {n: a for n, a in blamed.items() if n not in trusted}
        bad = await isolation.rejected_services(suspects, mapped, check)
        if not bad or (len(bad) == len(suspects) > 1):
            return False
        # Changed by its owner (or gone) while haproxy -c judged the rendered definition:
        # exclude() would pin this verdict on the new one, keeping a fix out until its next
        # change. The candidate built again after this checks the new definition instead.
        changed = {n for n in bad if (d := self.state.desired.get(n)) is None
                   or d.service != layout[n].service}
        log.error("haproxy -c rejected the candidate config (kept at %s); leaving out the %d "
                  "services it blames, validating the rest%s", kept, len(bad) - len(changed),
                  f" ({len(changed)} more changed meanwhile: judged again)" if changed else "")
        for name, alert in sorted(bad.items()):
            if name in changed:
                continue
            svc = layout[name].service
            if own_cert_refused(name):  # name the file, which is what must be fixed
                self.state.exclude(name, Problem(
                    svc.app_id, svc.index, "haproxy_rejected", f"HAPROXY_{svc.index}_SSL_CERT",
                    str(svc.options.ssl_cert), f"is refused by haproxy -c "
                    f"({shown(_after_section(alert))}); service left out until the file "
                    "is replaced (seen at the next full sync) or its definition changes, "
                    "others applied"))
                continue
            self.state.exclude(name, Problem(
                svc.app_id, svc.index, "haproxy_rejected", f"backend {name}", shown(alert),
                "is what haproxy -c said about this service; service left out until its "
                "definition changes, others applied"))
        return True


def _after_section(alert: str) -> str:
    """What HAProxy says after ``... in section 'frontend' : `` (the alert if not found)."""
    at = alert.find(" : ", max(alert.find("' in section '"), 0))
    return alert[at + 3:] if at >= 0 else alert
