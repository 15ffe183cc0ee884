"""Blue/green deployment groups as the state keeps them: which Marathon apps are routed
together as one app, which are refused, and what each group is routed as.

The rules are :mod:`.deployments` (pure); this is their bookkeeping, kept incrementally
beside :class:`~.state.ClusterState`, which owns it and the Marathon apps it reads. No
I/O, no time, and nothing of ports, hosts or certificates: the state refreshes and
claims for the ids this says are routed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from .deployments import (
    GROUP,
    REASON,
    Deployment,
    DeploymentError,
    age,
    deployment_of,
    merge,
)
from .deployments import folder as folder_of
from .model import App, Problem


def group_in_labels(app: App) -> str | None:
    """The deployment group ``app``'s labels validly name (it joins it unless it is
    another app's id), or None."""
    try:
        deployment = deployment_of(app)
    except DeploymentError:
        return None
    return deployment.group if deployment else None


def _folders(app_id: str) -> Iterator[str]:
    """The Marathon groups above an app: "/a", "/a/b" for "/a/b/c"."""
    path = "/" + app_id.strip("/")
    i = path.find("/", 1)
    while i > 0:
        yield path[:i]
        i = path.find("/", i + 1)


class DeploymentGroups:
    """Who is in which deployment group, who is refused, and each group's merge.

    ``apps`` is the state's own dict of Marathon apps, read here and never written. As
    an app comes, changes or goes the state calls :meth:`count_inside` (came or went),
    then :meth:`concerns`; if it does, :meth:`rejudge`, :meth:`remerge` of the groups
    touched and :meth:`claimants_to_judge`. The rest answers questions."""

    def __init__(self, apps: Mapping[str, App]) -> None:
        self._apps = apps
        # App id -> its deployment group, group -> its members and the app they are
        # routed as; apps whose labels were refused.
        self._group_of: dict[str, str] = {}
        self._members: dict[str, dict[str, Deployment]] = {}
        self._merged: dict[str, App] = {}
        self._deploy_problem: dict[str, Problem] = {}
        # Group -> the apps refused only because its id or folder is a live app's (judged
        # again as that changes), and app -> that group: looked up, never scanned.
        self._blocked: dict[str, set[str]] = {}
        self._blocked_on: dict[str, str] = {}
        self._inside: dict[str, int] = {}  # folder ("/shop") -> live apps under it
        self._formed: dict[str, int] = {}  # group -> when it formed (_merged's order)
        self._forming = 0
        self.version = 0  # bumped as a group is formed or forgotten (owners.py keeps them)

    def routed(self, app_id: str) -> App | None:
        """The app routed under ``app_id``: a Marathon app, or the app a deployment group
        is routed as; None for a member of a group (routed as the group), a refused one,
        or an unknown id."""
        if app_id in self._merged:
            return self._merged[app_id]
        if app_id in self._group_of or app_id in self._deploy_problem:
            return None
        return self._apps.get(app_id)

    def group_of(self, app_id: str) -> str | None:
        """The deployment group ``app_id`` is a member of, or None."""
        return self._group_of.get(app_id)

    def has_members(self, group: str) -> bool:
        """Whether any app is a member of ``group`` now (after :meth:`rejudge`)."""
        return bool(self._members.get(group))

    def blocked(self, app_id: str) -> bool:
        """Whether ``app_id`` is refused only because its group is a live app's id or a
        Marathon group of live apps (judged again as those change)."""
        return app_id in self._blocked_on

    def refused(self, app_id: str) -> bool:
        """Whether ``app_id``'s deployment labels were refused (the app is left out)."""
        return app_id in self._deploy_problem

    def shadowed(self, app_id: str) -> bool:
        """Whether ``app_id`` is a live app left out because a deployment group at the
        root was routed under its id before it came (first come: it waits for the id)."""
        return app_id in self._merged and app_id in self._apps \
            and app_id not in self._group_of

    def id_problems(self, app_id: str) -> list[Problem]:
        """The problem of a live app :meth:`shadowed` by a group routed under its id,
        shown under that id beside the group's own; none for any other id."""
        if not self.shadowed(app_id):
            return []
        members = ", ".join(sorted(self._members[app_id]))
        return [Problem(app_id, -1, REASON, "id", app_id, (
            f"is the id of blue/green deployment group {app_id[1:]} ({members}), routed "
            "under it before this app came; the app is left out until the group is gone"))]

    def groups(self) -> set[str]:
        """The ids routed as deployment groups now (kept in the owners file: at a
        restart, a group that held its id keeps it from a live app with that id)."""
        return set(self._merged)

    def problems(self, app_id: str) -> list[Problem]:
        """The problems of an app not routed under its own id: its refused label, or as
        a member its own (:meth:`member_problems`); none for a departed app."""
        refused = self._deploy_problem.get(app_id)
        return [refused] if refused else self.member_problems(app_id)

    def definitions(self) -> list[App]:
        """What may be routed: each group's merge, then every Marathon app in no group
        (the refused ones too)."""
        return [*self._merged.values(),
                *(a for a in self._apps.values() if a.id not in self._group_of)]

    def definitions_of(self, app_ids: Iterable[str], order: Mapping[str, int]
                       ) -> list[App]:
        """The :meth:`definitions` that are those of ``app_ids`` (Marathon apps; ``order``:
        id -> its place in the apps): each one's own, or a member's group's merge; in the
        order of :meth:`definitions`, without a pass over every app."""
        groups, apps = set(), set()
        for app_id in app_ids:
            if (group := self._group_of.get(app_id)) is not None:
                if group in self._merged:
                    groups.add(group)
            elif app_id in self._apps:
                apps.add(app_id)
        return [*(self._merged[g] for g in sorted(groups, key=self._formed.__getitem__)),
                *(self._apps[a] for a in sorted(apps, key=order.__getitem__))]

    def deployment(self, group: str) -> tuple[list[str], str] | None:
        """A deployment group's members, oldest deploy first, and the one whose
        definition is routed; None if ``group`` is not a deployment group."""
        merged, members = self._merged.get(group), self._members.get(group)
        if merged is None or not members:
            return None
        order = sorted(members, key=lambda m: age((self._apps[m], members[m])))
        routed = next((m for m in order if self._apps[m].labels is merged.labels), order[0])
        return order, routed

    def count_inside(self, app_id: str, step: int) -> None:
        """An app came (``step`` 1) or went (-1): the live apps under each folder above it."""
        inside = self._inside
        for folder in _folders(app_id):
            if count := inside.get(folder, 0) + step:
                inside[folder] = count
            else:
                del inside[folder]

    def concerns(self, app_id: str, judge_claimants: bool = True) -> bool:
        """Whether a change of ``app_id`` may change a group: it names one now, was a
        member or refused, or (``judge_claimants``) it or a folder above it is named.
        False for an app with no group before or now (a full sync: most apps)."""
        app = self._apps.get(app_id)
        if (app is not None and GROUP in app.labels) or app_id in self._group_of \
                or app_id in self._deploy_problem or app_id in self._blocked_on:
            return True
        if not judge_claimants:
            return False
        # Whether an app may name app_id, or a folder above it, as its group (inline:
        # every app of a full sync asks).
        m, b = self._members, self._blocked
        if not m and not b:
            return False
        return app_id in m or app_id in b or any(f in m or f in b for f in _folders(app_id))

    def rejudge(self, app_id: str) -> tuple[str | None, set[str]]:
        """After ``app_id`` changed or left: its deployment group membership judged
        again. Returns the group it is in now (None: none, or refused) and every group
        it left or joined, which the caller refreshes (:meth:`remerge`)."""
        app = self._apps.get(app_id)
        before = self._group_of.pop(app_id, None)
        self._deploy_problem.pop(app_id, None)
        if (blocked_on := self._blocked_on.pop(app_id, None)) is not None:
            self._blocked[blocked_on].discard(app_id)
            if not self._blocked[blocked_on]:
                del self._blocked[blocked_on]
        touched = {before} if before else set()
        if before:
            del self._members[before][app_id]
        if app is not None:
            try:
                deployment = deployment_of(app)
            except DeploymentError as exc:
                deployment, self._deploy_problem[app_id] = None, exc.problem(app_id)
            if deployment is not None:
                owner = self._apps.get(deployment.group)
                if owner is not None and owner.id != app_id \
                        and group_in_labels(owner) != deployment.group \
                        and not (deployment.group in self._merged
                                 and folder_of(deployment.group) == "/"):
                    # Routed as that app's id, the pair would take its names and ports.
                    # (At the root, where the app is another tenant, only if it had the
                    # id first: a group routed before it came keeps it, and the app
                    # waits, shadowed. In a folder the app is the group's own tenant's,
                    # and its id is its own to take back.)
                    self._deploy_problem[app_id] = DeploymentError(
                        "HAPROXY_DEPLOYMENT_GROUP", app.labels["HAPROXY_DEPLOYMENT_GROUP"],
                        f"is the id of app {owner.id}, which is not in the group; the app "
                        "is left out").problem(app_id)
                elif deployment.group in self._inside:
                    # A Marathon group: at the root (shop, the folder of /shop/web), routed
                    # as /shop the pair would own that tenant's hosts and certificates.
                    self._deploy_problem[app_id] = DeploymentError(
                        "HAPROXY_DEPLOYMENT_GROUP", app.labels["HAPROXY_DEPLOYMENT_GROUP"],
                        "is a Marathon group with live apps in it, not an app id; the app "
                        "is left out").problem(app_id)
                if app_id in self._deploy_problem:
                    self._blocked_on[app_id] = deployment.group
                    self._blocked.setdefault(deployment.group, set()).add(app_id)
                else:
                    self._group_of[app_id] = deployment.group
                    self._members.setdefault(deployment.group, {})[app_id] = deployment
                    touched.add(deployment.group)
        return self._group_of.get(app_id), touched

    def claimants_to_judge(self, app_id: str) -> set[str]:
        """The other apps to judge again after :meth:`rejudge` of ``app_id``: an app
        named as a group came, went, joined or left it, or the first app in a folder
        came or the last went."""
        alone = int(app_id in self._apps)
        named = self._claimants(app_id).union(*(
            self._claimants(folder) for folder in _folders(app_id)
            if self._inside.get(folder, 0) == alone))
        return named - {app_id}

    def _claimants(self, group: str) -> set[str]:
        """The apps that name ``group`` in their labels: members, and the ones refused
        because of another app (a refused label stays refused, whatever others do)."""
        return set(self._members.get(group, ())) | self._blocked.get(group, set())

    def remerge(self, group: str) -> list[str]:
        """A deployment group's members merged again as the one app it is routed as
        (:func:`~.deployments.merge`), or forgotten if it has none. Returns its members:
        which member's definition is routed, so their problems, may have changed."""
        members = self._members.get(group)
        if members:
            ids = sorted(members)
            if group not in self._merged:
                self.version += 1
                self._formed[group] = self._forming
                self._forming += 1
            self._merged[group] = merge(group, [self._apps[i] for i in ids],
                                        [members[i] for i in ids])
            return ids
        self._members.pop(group, None)
        if self._merged.pop(group, None) is not None:
            self.version += 1
            del self._formed[group]
        return []

    def member_problems(self, app_id: str) -> list[Problem]:
        """A group member's own problems (a label that does not parse), shown under its
        id while another member's definition is routed: the deploy is told before its
        definition takes over. The routed definition's show under the group's id."""
        group = self._group_of.get(app_id)
        merged = self._merged.get(group) if group else None
        app = self._apps.get(app_id)
        if app is None or merged is None or merged.labels is app.labels:
            return []
        return list(app.problems)
