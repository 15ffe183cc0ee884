"""The engine's in-memory desired state: apps, and the backends they yield.

No I/O and no time. Every mutation returns the backend names it may have
changed ("dirty"), so the planner looks only at those: the cost of an event
grows with the app it touches, not with the cluster.

Who holds which port, host and certificate file is kept by :mod:`.ownership`, and
blue/green deployment groups by :mod:`.deployment_groups`; the state says when each
app claims, and when what it lets go is offered to the apps waiting for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace

from .admission import CertFact, Facts, check_service
from .appindex import AppIndex
from .deployment_groups import DeploymentGroups, group_in_labels
from .deployments import folder
from .layout import DesiredService, Settings, desired_services, selected, service_problem
from .model import (
    App,
    Endpoint,
    Health,
    Problem,
    Service,
    Task,
    edit_endpoints,
    endpoint_ports_valid,
    endpoint_state,
    endpoints,
    task_endpoint,
)
from .owners import Owners
from .ownership import Freed, Ownership
from .portassign import PortBook

log = logging.getLogger("servicerouter.state")

# Admission outcomes decided by an app's tasks rather than its definition.
TASK_REASONS = frozenset({"task_port", "too_many_servers"})


class ClusterState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.apps: dict[str, App] = {}
        self.desired: dict[str, DesiredService] = {}
        # Host facts, merged as they come (set_facts); the dicts are the facts' own.
        self._cert_facts: dict[str, CertFact] = {}
        self._address_facts: dict[str, bool] = {}
        self.facts = Facts(self._cert_facts, self._address_facts)
        self._shared: dict[str, int] = {}  # file of --ssl-certs -> cert labels resolving to it
        self._index = AppIndex()  # the apps' order, and who names which cert and address
        self._backends: dict[str, tuple[str, ...]] = {}  # app id -> backend names
        # The apps' share of an IP-per-task port assignment, kept as apps come and go.
        self._ports = PortBook()
        # Who holds which service port, virtual host and certificate file, who waits.
        self._ownership = Ownership(settings, self._claim_order, self._ports.held_changed)
        # backend -> (service as rendered, problem): left out after HAProxy refused it;
        # let back in when the app's definition of that service changes.
        self.excluded: dict[str, tuple[Service, Problem]] = {}
        # app id -> its services left out (or capped), and why: shown in /status
        self.problems: dict[str, tuple[Problem, ...]] = {}
        self._retrying: set[Problem] = set()  # bind failures a full sync is trying again
        # Blue/green: who is in which HAPROXY_DEPLOYMENT_GROUP, routed as what.
        self._groups = DeploymentGroups(self.apps)
        # What a _refresh(wake=False) let go, offered to the apps waiting for it later.
        self._deferred: Freed = (set(), set(), set())
        # Live apps whose id a deployment group held and let go with a _refresh(wake=False):
        # they claim after the apps waiting for what it held (_hand_over).
        self._handed: set[str] = set()
        self._prior_groups: set[str] | None = None  # restore_owners: the groups before
        # app id -> its services left out for a problem of their own definition, as last
        # admitted (backend name -> service): they keep holding their port, hosts and
        # certificate file meanwhile (_held_back).
        self._holding: dict[str, dict[str, DesiredService]] = {}

    def _admit(self, app: App) -> tuple[dict[str, DesiredService], list[Problem]]:
        """One app's services as admitted: checked, owned, not excluded by HAProxy."""
        new = desired_services(app, self.settings)
        problems = list(app.problems)
        for service in app.services:  # labels that cannot be honoured: fail closed
            refusal = service_problem(service, self.settings) \
                if selected(service, self.settings) else None
            if refusal:
                problems.append(Problem(app.id, service.index, "label_refused",
                                        f"HAPROXY_{service.index}_*", "", refusal))
        notes: list[Problem] = []  # of services admitted, but limited
        for name, d in list(new.items()):
            admitted, found = check_service(app, d, self.settings, self.facts)
            if admitted is None:
                problems += found
                del new[name]
            else:
                notes += found
                new[name] = admitted
        # Services left out for a problem of their own: what they held is kept.
        left_out = {p.index for p in problems} - {d.service.index for d in new.values()} \
            if problems else set()  # (most apps)
        held_back = self._held_back(app, new, left_out)
        if held_back:
            indices = {d.service.index for d in held_back.values()}
            claiming = {**new, **held_back}
            problems += [p for p in self._ownership.claim(app, claiming, bool(left_out))
                         if p.index not in indices]
            new = {n: d for n, d in claiming.items() if n not in held_back}
            self._holding[app.id] = {n: d for n, d in claiming.items() if n in held_back}
        else:
            self._holding.pop(app.id, None)
            problems += self._ownership.claim(app, new, bool(left_out))
        if notes:  # a service then refused a port, host or file: its limits are moot
            kept = {d.service.index for d in new.values()}
            problems += [p for p in notes if p.index in kept]
        for name, d in list(new.items()):
            held = self.excluded.get(name)
            if held is None:
                continue
            if held[0] == d.service:
                del new[name]
                problems.append(held[1])
            else:
                del self.excluded[name]  # a new definition: HAProxy gets to judge it again
        return new, problems

    def _held_back(self, app: App, new: dict[str, DesiredService], wanted: set[int]
                   ) -> dict[str, DesiredService]:
        """The app's services that were admitted before and are left out now for a problem
        of their own definition (a label that does not parse, a certificate file away in
        a rotation, a task port; ``wanted``, their indices): as they were last admitted,
        to keep holding their port, hosts and certificate file, unrouted. Letting them go
        handed them to an app of another tenant waiting for them (a typo in
        HAPROXY_0_BALANCE gave it shop.example.com), which then kept them once the typo
        was fixed. (After a restart nothing was admitted before: the owners file's claims
        are kept instead, :meth:`~.ownership.Ownership.claim` ``keep_prior``.)"""
        if not wanted:
            return {}
        before = self._last_admitted(app.id)
        return {n: d for n, d in before.items() if d.service.index in wanted and n not in new}

    def _report(self, app_id: str, problems: list[Problem]) -> None:
        """Keep an app's problems for /status; log only the ones that are new."""
        if not problems and app_id not in self.problems:
            return  # none before, none now (most apps)
        before = set(self.problems.pop(app_id, ()))
        for p in problems:
            if p not in before and p not in self._retrying:
                log.log(logging.WARNING if p.reason == "too_many_servers" else logging.ERROR,
                        "%s", p)
        if problems:
            self.problems[app_id] = tuple(dict.fromkeys(problems))

    def _refresh(self, app_id: str, wake: bool = True) -> set[str]:
        """Recompute one app's desired services; return the names that changed. Without
        ``wake`` what it lets go is added to ``_deferred``, for :meth:`_wake` later."""
        old = set(self._backends.get(app_id, ()))
        app = self._groups.routed(app_id)  # self.app(app_id), one call less per app
        if app:
            new, problems = self._admit(app)
            if app is not self.apps.get(app_id):  # a group's: a live app it shadows
                problems += self._groups.id_problems(app_id)
        else:  # gone, routed as its deployment group, or refused
            new, problems = {}, self._groups.problems(app_id)
            if self._groups.refused(app_id):
                self._hold_refused(app_id)
            else:
                self._ownership.release(app_id)
                self._holding.pop(app_id, None)
            for name in old:
                self.excluded.pop(name, None)
        self._report(app_id, problems)
        freed_ports, freed_hosts, freed_certs = self._ownership.freed
        dirty = {n for n in old if n not in new} if old else set()
        for n in dirty:
            self.desired.pop(n, None)
        for n, d in new.items():
            if self.desired.get(n) != d:
                self.desired[n] = d
                dirty.add(n)
        if new:
            self._backends[app_id] = tuple(new)
        else:
            self._backends.pop(app_id, None)
        # A port or host let go: the apps refused it may have it now.
        if not freed_ports and not freed_hosts and not freed_certs:  # nothing let go
            return dirty  # (most apps of a sync)
        if not wake:
            ports, hosts, certs = self._deferred
            ports |= freed_ports
            hosts |= freed_hosts
            certs |= freed_certs
            return dirty
        return dirty | self._wake(app_id, freed_ports, freed_hosts, freed_certs)

    def _hold_refused(self, app_id: str) -> None:
        """An app left out whole for a deployment label of its own (a group of another
        folder, a start time that is not one): like a service left out for its own
        problem (:meth:`_held_back`), it keeps holding what it held (its services as last
        admitted, or what the owners file gave it back at a restart), unrouted, until
        it is fixed, deleted or lets go on purpose. Letting go handed its port, hosts and
        certificate file to an app of another tenant waiting for them."""
        held = self._last_admitted(app_id)
        self._ownership.claim(self.apps[app_id], held, keep_prior=True)  # drops any not
        if held:  # its any more (not expected: nobody takes what it holds)
            self._holding[app_id] = held
        else:
            self._holding.pop(app_id, None)

    def _last_admitted(self, app_id: str) -> dict[str, DesiredService]:
        """What ``app_id`` claims now: its services routed, and the ones it holds."""
        held = {n: d for n in self._backends.get(app_id, ()) if (d := self.desired.get(n))}
        held.update(self._holding.get(app_id, {}))
        return held

    def _wake(self, app_id: str, freed_ports: set[int], freed_hosts: set[str],
              freed_certs: set[str]) -> set[str]:
        """The apps refused what was let go: they may have it now."""
        dirty: set[str] = set()
        waiters = self._ownership.waiters(freed_ports, freed_hosts, freed_certs)
        for waiter in sorted(waiters - {app_id}, key=self._claim_order):
            if self.app(waiter) is not None:
                dirty |= self._refresh(waiter)
        return dirty

    def _claim_order(self, app_id: str) -> tuple[str, str]:
        """Who claims first when several apps are new at once: the oldest definition."""
        app = self.app(app_id)
        return (app.version if app else "", app_id)

    def exclude(self, name: str, problem: Problem) -> set[str]:
        """Leave out a backend HAProxy refused, until its definition changes."""
        d = self.desired.get(name)
        if d is None:
            return set()
        self.excluded[name] = (d.service, problem)
        dirty = self._refresh(d.service.app_id)
        self._retrying.discard(problem)
        return dirty

    def set_facts(self, facts: Facts) -> set[str]:
        """New host facts (merged over the old); re-admit the apps whose facts changed.

        Merged in place, and the apps naming a changed fact found by :class:`~.appindex.
        AppIndex`: a refetch of one app copied and compared every fact and read every
        app's services (~5 ms at 10,000 apps naming certificate files)."""
        certs, addresses = self._cert_facts, self._address_facts
        changed_certs = {k for k, v in facts.certs.items() if certs.get(k) != v}
        changed_addrs = {k for k, v in facts.addresses.items() if addresses.get(k) != v}
        shared = self._shared
        was = set(shared) if changed_certs else shared.keys()
        for label in changed_certs:
            for fact, step in ((certs.get(label), -1), (facts.certs[label], 1)):
                if fact is not None and fact.shared and fact.path:
                    if count := shared.get(fact.path, 0) + step:
                        shared[fact.path] = count
                    else:
                        del shared[fact.path]
            certs[label] = facts.certs[label]
        for address in changed_addrs:
            addresses[address] = facts.addresses[address]
        if was != shared.keys():  # the files anyone may name (--ssl-certs) changed
            self._ownership.share_certs(set(shared))
        if not changed_certs and not changed_addrs:
            return set()
        dirty: set[str] = set()
        for app in self._groups.definitions_of(self._index.naming(changed_certs, changed_addrs),
                                               self._index.order):
            if any(s.options.ssl_cert in changed_certs or s.options.bind_address in changed_addrs
                   for s in app.services):
                # A certificate file replaced: what HAProxy refused may load now.
                for name in [n for n, (svc, _) in self.excluded.items() if svc.app_id == app.id]:
                    del self.excluded[name]
                dirty |= self._refresh(app.id)
        return dirty

    def problem_list(self) -> list[Problem]:
        return [p for problems in self.problems.values() for p in problems]

    def app(self, app_id: str) -> App | None:
        """The app routed under ``app_id``: a Marathon app, or the app a deployment group
        is routed as; None for a member of a group (routed as the group), a refused one,
        or an unknown id."""
        return self._groups.routed(app_id)

    def deployment(self, group: str) -> tuple[list[str], str] | None:
        """A deployment group's members, oldest deploy first, and the one whose
        definition is routed; None if ``group`` is not a deployment group."""
        return self._groups.deployment(group)

    def set_app(self, app: App) -> set[str]:
        before = self.apps.get(app.id)
        if before is None:
            self._groups.count_inside(app.id, 1)
        self._ports.update(before, app)
        self._index.update(before, app)
        self.apps[app.id] = app
        return self._regroup(app.id)

    def remove_app(self, app_id: str) -> set[str]:
        if (before := self.apps.pop(app_id, None)) is None:
            # Unknown, or never parsed since a restart: what the owners file handed it
            # back (replace_all's ``keep``) it lets go now.
            return self._refresh(app_id) if app_id in self._ownership.unclaimed_prior() \
                else set()
        self._ports.update(before, None)
        self._index.update(before, None)
        self._groups.count_inside(app_id, -1)
        return self._regroup(app_id)

    def assign_ports(self, app: App) -> tuple[App, list[App], list[str]]:
        """:func:`~.portassign.assign_one` of ``app`` (re)defined among the apps here, with
        the ports held now: ``app``'s IP-per-task ports, the apps whose ports it moved,
        and warnings. Worked out from what changed since the last one
        (:class:`~.portassign.PortBook`), not from every app."""
        # (Before the first full sync the held ports are the owners file's too: read whole.)
        held_of = self._ownership.ports_of if self.apps else None
        return self._ports.assign(app, self.apps, self._index.order, self.settings,
                                  self.held_ports(), held_of)

    def _regroup(self, app_id: str, judge_claimants: bool = True) -> set[str]:
        """After ``app_id`` changed or left: its deployment group membership (judged by
        :meth:`~.deployment_groups.DeploymentGroups.rejudge`), then the app itself and
        every group it left or joined, refreshed; then the apps naming ``app_id`` as
        their group, judged again (once: whether an app may join depends on its labels
        and those of the app with the group's id only, never on another app's
        membership, so apps naming each other cannot recurse without end)."""
        if not self._groups.concerns(app_id, judge_claimants):
            return self._refresh(app_id)  # no group before or now (a full sync: most apps)
        joined, touched = self._groups.rejudge(app_id)
        # What the app lets go as it joins a group, the group claims before the apps
        # waiting for it (an older app of another tenant) may; what a group it left lets
        # go, the app claims first: its ports, hosts and certificates are handed over.
        self._deferred, self._handed = (set(), set(), set()), set()
        if joined is not None:
            dirty = self._refresh(app_id, wake=False)
            for group in [joined, *sorted(touched - {joined})]:
                dirty |= self._refresh_group(group)
        else:
            dirty = set()
            # The last member of a group refused for a deployment label of its own (a
            # typo): it holds what the group held, as the one app the group was routed
            # as. (Not one refused because a live app has the group's id: that app
            # keeps its id's names, test_a_live_app_with_the_groups_id_keeps_it.)
            inherit = {n: d for group in touched if self._groups.refused(app_id)
                       and not self._groups.blocked(app_id)
                       and not self._groups.has_members(group)
                       for n, d in self._last_admitted(group).items()}
            for group in sorted(touched):
                dirty |= self._refresh_group(group, wake=False)
            if inherit:
                self._holding[app_id] = {**inherit, **self._holding.get(app_id, {})}
            dirty |= self._refresh(app_id)
        dirty |= self._wake(app_id, *self._deferred)
        for handed in sorted(self._handed):  # after the apps waiting for what it held
            dirty |= self._refresh(handed)
        self._deferred, self._handed = (set(), set(), set()), set()
        if judge_claimants:
            for other in sorted(self._groups.claimants_to_judge(app_id)):
                dirty |= self._regroup(other, judge_claimants=False)
        return dirty

    def _refresh_group(self, group: str, wake: bool = True) -> set[str]:
        """Route a deployment group's members again as one app
        (:meth:`~.deployment_groups.DeploymentGroups.remerge`)."""
        shadowed = self._groups.shadowed(group)
        members = self._groups.remerge(group)
        for member in members:  # which member's definition is routed
            self._report(member, self._groups.member_problems(member))  # may have changed
        if shadowed and not members:
            return self._hand_over(group, wake)
        return self._refresh(group, wake)

    def _hand_over(self, app_id: str, wake: bool) -> set[str]:
        """A deployment group at the root is gone; the live app that waited for its id
        (:meth:`~.deployment_groups.DeploymentGroups.shadowed`) has it now, and what the
        group held by the first-come rules: let go, offered to the apps waiting for it,
        and only then claimed by the app. (Its owner key is the group's: claiming at
        once, it took them all past the apps that had waited longer.) Without ``wake``
        the offer and the claim are left to :meth:`_regroup`, after its own claims."""
        self._ownership.release(app_id)
        self._holding.pop(app_id, None)
        if not wake:
            for into, freed in zip(self._deferred, self._ownership.freed, strict=True):
                into |= freed  # type: ignore[operator]
            self._handed.add(app_id)
            return set()
        dirty = self._wake(app_id, *self._ownership.freed)
        return dirty | self._refresh(app_id)

    def replace_all(self, apps: Iterable[App], keep: Iterable[str] = ()) -> set[str]:
        """A full sync: ``apps`` is all of Marathon, except the ids in ``keep``
        (apps that failed to parse this time), which keep their last good state."""
        # New apps claim ports and hosts oldest definition first, not in payload order.
        fresh = {a.id: a for a in sorted(apps, key=lambda a: (a.version, a.id))}
        keep = set(keep)
        if self._ownership.restoring():
            # Who owned what before this process is handed back at the first sync only
            # (later, the claims in memory are the newer truth), to the apps still in
            # Marathon and to the deployment groups that can form (a group is routed as
            # one app; a refused label would hold a departed app's ports with no one to
            # let them go).
            # (An app in ``keep`` is in Marathon too: its JSON did not parse this time.)
            alive = None if self.apps else \
                {*fresh, *keep, *(g for app in fresh.values() if (g := group_in_labels(app)))}
            self._ownership.seed(alive)
            if alive is not None and self._prior_groups is not None:
                fresh = self._first_holders(fresh, self._prior_groups)
        self._prior_groups = None
        dirty: set[str] = set()
        # A frontend address that failed to bind gets another try at each full sync
        # (reported again only if it changed: the engine re-excludes it before reloading).
        for name, (svc, problem) in list(self.excluded.items()):
            if problem.reason == "bind_failed":
                del self.excluded[name]
                self._retrying.add(problem)
                if self.app(svc.app_id) is not None:  # a Marathon app, or a group's
                    dirty |= self._refresh(svc.app_id)
        for app_id in list(self.apps):
            if app_id not in fresh and app_id not in keep:
                dirty |= self.remove_app(app_id)
        for app in fresh.values():
            held = self.apps.get(app.id)
            if held is not app and held != app:  # `is`: reused by the parse (parsecache)
                dirty |= self.set_app(app)
        # What the owners file handed back to an id that has claimed nothing since, and
        # is neither in Marathon nor one that did not parse (``keep``): let go. (An app
        # that never parsed since the restart, now deleted; a group that did not form.)
        for app_id in sorted(self._ownership.unclaimed_prior() - fresh.keys() - keep
                             - self.apps.keys()):
            dirty |= self._refresh(app_id)
        # Apps gone since they were refused something wait for it no more (_wake passes
        # them by): kept, each one deleted stayed in memory until that was let go.
        self._ownership.forget_waiters(lambda a: a in self.apps or self.app(a) is not None)
        return dirty

    @staticmethod
    def _first_holders(fresh: dict[str, App], groups: set[str]) -> dict[str, App]:
        """``fresh`` in the order it is set at the first full sync after a restart, where
        a deployment group at the root and a live app with its id are both new: the one
        that held the id before (a group among the owners file's ``groups``, or else the
        app) comes first, so it holds it again (first come, :meth:`~.deployment_groups.
        DeploymentGroups.rejudge`), whichever definition is older."""
        named = {g for a in fresh.values()
                 if (g := group_in_labels(a)) in fresh and folder(g) == "/"}
        if not named:
            return fresh  # (most clusters)

        def later(app: App) -> bool:
            group = group_in_labels(app)
            return (app.id in named and app.id in groups) \
                or (group in named and group not in groups)
        return dict(sorted(fresh.items(), key=lambda kv: later(kv[1])))  # stable

    @property
    def owners_version(self) -> int:
        """Bumped whenever a port, host or certificate file changes owner (owners.py)."""
        return self._ownership.version + self._groups.version

    def owners(self) -> Owners:
        """Who owns each service port, virtual host and certificate file now, and the ids
        routed as deployment groups (owners.py)."""
        return replace(self._ownership.owners(), groups=self._groups.groups())

    def held_ports(self) -> Mapping[int, str]:
        """Port → the app holding it, as the next claims will see it (before the first
        full sync, who held it before this process): portassign keeps those ports."""
        return self._ownership.held_ports(with_prior=not self.apps)

    def routed_apps(self) -> int:
        """Apps routed now; before the first full sync, the apps that held a service port
        before this process (owners.py): what an answer listing no apps would take away."""
        return len(self.apps) or len(set(self.held_ports().values()))

    def restore_owners(self, owners: Owners) -> None:
        """Who owned ports and hosts before this process: at the first full sync they
        are theirs again if they still claim them, whatever their definitions' age; so
        is a group's id, or a live app's, at the root (:meth:`replace_all`)."""
        self._ownership.restore(owners)
        self._prior_groups = owners.groups

    def update_task(self, task: Task) -> set[str]:
        """Add or replace one task of a known app (the event fast path)."""
        app = self.apps.get(task.app_id)
        if app is None:
            return set()
        tasks, previous = list(app.tasks), None
        for i, t in enumerate(tasks):
            if t.id == task.id:
                previous, tasks[i] = t, task
                break
        else:
            tasks.append(task)
        # Only this task changed: its endpoints are edited, not all rebuilt (unless
        # its id is there twice, which Marathon never sends: then they are rebuilt).
        one = (task.id, task, previous is None) \
            if previous is None or sum(t.id == task.id for t in tasks) == 1 else None
        changed = app.with_tasks(tuple(tasks))
        check = self.settings.health_check
        if endpoint_state(task, app.has_health_checks, check) is None and (
                previous is None
                or endpoint_state(previous, app.has_health_checks, check) is None) \
                and not self._groups.group_of(app.id):  # a member's old tasks count in the drain
            self.apps[app.id] = changed  # routed neither before nor now (staging,
            return set()  # starting, unhealthy): no endpoint can change
        return self._retask(changed, one)

    def remove_task(self, app_id: str, task_id: str) -> set[str]:
        app = self.apps.get(app_id)
        if app is None or all(t.id != task_id for t in app.tasks):
            return set()
        return self._retask(app.with_tasks(tuple(t for t in app.tasks if t.id != task_id)),
                            (task_id, None, False))

    def _retask(self, app: App, one: tuple[str, Task | None, bool] | None = None
                ) -> set[str]:
        """Another set of tasks for a known app, its definition unchanged (every task
        event): its admission, claims and exclusions stand, so only the endpoints of
        its admitted services are computed again, not the whole admission of
        :meth:`_refresh` (a fifth of the daemon's CPU under churn). Where tasks decide
        admission (a task port outside 1-65535, served or health-checked; the server cap),
        the full refresh runs.

        ``one`` = (task id, the task now or None if removed, appended at the end): only
        that task changed, so each service's endpoints are edited in place of being
        rebuilt from every task (:func:`~.model.edit_endpoints`; the same tuple)."""
        self.apps[app.id] = app
        if (group := self._groups.group_of(app.id)) is not None:  # which old tasks
            return self._refresh_group(group)  # drain depends on every member
        if self._groups.refused(app.id) or self._groups.shadowed(app.id):
            return set()  # left out: its tasks route nothing (the group's id, its services)
        if any(p.reason in TASK_REASONS for p in self.problems.get(app.id, ())):
            return self._refresh(app.id)
        cap, check = self.settings.max_servers_per_backend, self.settings.health_check
        changed: dict[str, DesiredService] = {}
        for name in self._backends.get(app.id, ()):
            d = self.desired.get(name)
            if d is None:  # not expected; the full refresh decides it again
                return self._refresh(app.id)
            eps: tuple[Endpoint, ...] | None = None
            if one is not None:
                task_id, task, appended = one
                new = (task_endpoint(task, d.service, app.has_health_checks, check)
                       if task is not None else None)
                if new is not None and not endpoint_ports_valid(new):
                    return self._refresh(app.id)
                eps = edit_endpoints(d.endpoints, task_id, new, appended)
            if eps is None:
                eps = endpoints(app, d.service, check)
                for e in eps:
                    if not endpoint_ports_valid(e):
                        return self._refresh(app.id)
            if cap and len(eps) > cap:
                return self._refresh(app.id)
            if eps != d.endpoints:
                changed[name] = DesiredService(d.service, eps, d.presents)
        self.desired.update(changed)
        return set(changed)

    def task(self, app_id: str, task_id: str) -> Task | None:
        app = self.apps.get(app_id)
        return next((t for t in app.tasks if t.id == task_id), None) if app else None

    def set_health(self, app_id: str, instance_id: str, healthy: bool) -> set[str]:
        """Apply a health event to every task of the instance."""
        app = self.apps.get(app_id)
        if app is None:
            return set()
        health = Health.HEALTHY if healthy else Health.UNHEALTHY
        prefix = instance_id + "."
        tasks = tuple(replace(t, health=health)
                      if (t.id == instance_id or t.id.startswith(prefix)) else t
                      for t in app.tasks)
        if tasks == app.tasks:
            return set()
        return self._retask(app.with_tasks(tasks))

    @property
    def endpoint_count(self) -> int:
        return sum(len(d.endpoints) for d in self.desired.values())
