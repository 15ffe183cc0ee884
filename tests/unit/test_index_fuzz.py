"""The incremental indexes beside the state, checked together against what they stand for.

Each index has a differential test of its own (test_rangeindex, test_portassign,
test_owners, test_changelog, test_admission). This drives a whole Engine, with the fake
HAProxy edges of test_engine, through long seeded random runs of what a daemon meets:
apps created, redefined and deleted (vhosts, wildcards, paths, IP-per-task networking,
blue/green deployment groups, certificate files whose facts change, bind addresses),
task and health events, refetches, full syncs, reloads that work, fail or are
rejected, runtime commands that fail, reconciles, HAProxy's worker restarted, and
restarts of the daemon from its owners file with a takeover of the running HAProxy;
some of it while a reload validates or loads. After every operation each index is
compared with the computation from scratch it replaced:

- RangeIndex (range mode) with ``RangeIndex(settings, engine.layout)``, and every plan
  made with it with the plan made without it;
- the map files on disk with ``pool.map_files`` of the layout HAProxy runs, and
  HAProxy's runtime maps, once nothing is left to do, with the layout's;
- the owners file with ``Owners.to_json`` of the state's owners, once the engine says
  it wrote them;
- PortBook's answer for an app with ``assign_one`` over every other app;
- AppIndex with one built from the apps; the apps set_facts re-admits with the ones a
  pass over every definition finds; the shared certificate files with the facts';
- HostClaims' hosts-by-owner index with one built from the owners, and each claim
  table's by-app map with the inverse of its owners;
- ChangeLog's answers with a log that forgets nothing, and its readers all ended.

Each run is a function of its seed. To look into a failure: ``fuzz(settings, seed,
steps, tmp, monkeypatch)`` with logging on, and print each operation's name.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from servicerouter import changelog, hostfacts, owners, pool
from servicerouter import engine as engine_module
from servicerouter.admission import CertFact, Facts, domains_above
from servicerouter.appindex import AppIndex
from servicerouter.changelog import ChangeLog
from servicerouter.deployments import GROUP, STARTED_AT
from servicerouter.engine import Engine, EngineConfig
from servicerouter.haproxy.runtime import RuntimeUnavailable
from servicerouter.haproxy.runtime_parse import CommandResult, ServerState, Status
from servicerouter.layout import Layout, Settings
from servicerouter.marathon.client import FetchResult
from servicerouter.marathon.events import MarathonEvent
from servicerouter.marathon.parse import parse_app
from servicerouter.metrics import Metrics
from servicerouter.model import App
from servicerouter.planner import Plan, ReloadReason
from servicerouter.planner import plan as whole_plan
from servicerouter.portassign import assign_one
from servicerouter.rangeindex import RangeIndex
from servicerouter.takeover import take_over

from .test_engine import FakeReloader, FakeRuntime, FakeWriter

RANGE = Settings(stats_port=0, grace_ms=0, http_port=8080, https_port=0,
                 service_port_range=(20000, 20039), map_dir="/nonexistent/maps",
                 pool_spares=2, ip_per_task_ports=(20030, 20036), ssl_cert_dirs=("/certs",),
                 ssl_certs=("/certs/shared.pem",), vhost_policy="group")
PLAIN = Settings(stats_port=0, grace_ms=0, http_port=8080, https_port=0,
                 ip_per_task_ports=(10050, 10056), ssl_cert_dirs=("/certs",),
                 ssl_certs=("/certs/shared.pem",), vhost_policy="exclusive")
PORTS = {RANGE: [*range(20001, 20009), 20031, 20033, 30001],
         PLAIN: [*range(10001, 10009), 10051, 10053]}

IDS = ["/a/web", "/a/api", "/b/web", "/b/shop", "/c/x", "/d/ip1", "/d/ip2", "/d/ip3",
       "/shop/web-blue", "/shop/web-green", "/shop/web", "/web-blue", "/web-green", "/web"]
HOSTS = ["a.test", "A.test", "b.test", "shop.x.test", "api.x.test", "*.x.test", "c.y.test",
         "*.y.test", "*.test"]
CERTS = ["/certs/a.pem", "/certs/b.pem", "/certs/link-a.pem", "/certs/shared.pem",
         "/elsewhere/c.pem"]
CERT_NAMES = ["a.test", "b.test", "shop.x.test", "*.x.test", "c.y.test", "d.test"]
ADDRESSES = ["127.0.0.2", "10.9.9.9"]
VERSIONS = [f"2026-01-0{d}T00:00:00.000Z" for d in range(1, 6)]
SEEDS, STEPS = 4, 250  # ~5 s a settings on a quiet core


# --------------------------------------------------------------------- the world
@dataclass
class World:
    """Marathon's apps, the certificate files and addresses of the host, and HAProxy."""

    settings: Settings
    rng: random.Random
    owners_path: Path
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, tuple[str | None, int, tuple[str, ...]]] = field(default_factory=dict)
    addresses: dict[str, bool] = field(default_factory=dict)
    busy: set[int] = field(default_factory=set)  # ports another process binds
    tasks: int = 0
    engine: Engine | None = None
    failures: list[str] = field(default_factory=list)
    seen: collections.Counter[str] = field(default_factory=collections.Counter)  # coverage

    # -------------------------------------------------------------- apps
    def task(self, app_id: str, ip: bool, services: int, checked: bool) -> dict[str, Any]:
        self.tasks += 1
        n = self.tasks
        task: dict[str, Any] = {"id": f"{app_id.strip('/').replace('/', '_')}.{n}",
                                "host": "127.0.0.1", "state": "TASK_RUNNING",
                                "ports": [] if ip else [31000 + (n * 3 + k) % 3000
                                                        for k in range(services)]}
        if ip:
            task["ipAddresses"] = [{"ipAddress": f"10.1.{n // 200}.{n % 200 + 1}",
                                    "protocol": "IPv4"}]
        if checked:
            task["healthCheckResults"] = [{"alive": self.rng.random() < 0.8}]
        return task

    def define(self, app_id: str) -> dict[str, Any]:
        """A random definition of ``app_id``, keeping its tasks (a deploy of new ones now
        and then)."""
        rng, ports = self.rng, PORTS[self.settings]
        ip = app_id.startswith("/d/") or rng.random() < 0.1
        services = 1 if rng.random() < 0.7 else 2
        labels: dict[str, str] = {}
        numbers = [0 if ip and rng.random() < 0.7 else rng.choice(ports)
                   for _ in range(services)]
        before = self.apps.get(app_id)
        if before is not None and rng.random() < 0.6:  # most deploys keep the ports
            kept = [m.get("servicePort", m.get("port")) for m in _ports_of(before)
                    if isinstance(m, dict)]
            if kept and all(isinstance(p, int) for p in kept):
                ip, services, numbers = bool(before.get("networks")), len(kept), kept
        if services == 2 and numbers[0] == numbers[1] and numbers[0] and rng.random() < 0.8:
            numbers[1] = 0 if ip else numbers[0] + 100  # (else: fails to parse)
        for i in range(services):
            if rng.random() < 0.55:
                labels[f"HAPROXY_{i}_MODE"] = "http"
                if rng.random() < 0.85:
                    labels[f"HAPROXY_{i}_VHOST"] = ",".join(
                        rng.sample(HOSTS, rng.choice([1, 1, 1, 2])))
                if rng.random() < 0.25:
                    labels[f"HAPROXY_{i}_PATH"] = rng.choice(["/api", "/v2"])
                if i and "HAPROXY_0_VHOST" in labels and rng.random() < 0.4:
                    # one host, a path for each port (swapped at the next deploy, maybe)
                    labels["HAPROXY_1_VHOST"] = labels["HAPROXY_0_VHOST"]
                    paths = rng.sample(["/api", "/v2"], 2)
                    labels["HAPROXY_0_PATH"], labels["HAPROXY_1_PATH"] = paths
            if rng.random() < 0.15:
                labels[f"HAPROXY_{i}_SSL_CERT"] = rng.choice(CERTS)
            if rng.random() < 0.06:
                labels[f"HAPROXY_{i}_BIND_ADDR"] = rng.choice(ADDRESSES)
            roll = rng.random()
            if roll < 0.04:
                labels[f"HAPROXY_{i}_BALANCE"] = "first"  # this HAProxy refuses it
            elif roll < 0.15:
                labels[f"HAPROXY_{i}_BALANCE"] = "leastconn"
            if rng.random() < 0.03:
                labels[f"HAPROXY_{i}_PORT"] = "notaport"  # a service's own problem
        if app_id == "/b/shop" and rng.random() < 0.8:  # one host, a path for each port
            services = 2
            if numbers[1:] in ([], [numbers[0]]):
                numbers = [numbers[0], 0 if ip else numbers[0] + 100]
            labels.update({"HAPROXY_0_MODE": "http", "HAPROXY_1_MODE": "http",
                           "HAPROXY_0_VHOST": "shop.y.test", "HAPROXY_1_VHOST": "shop.y.test"})
            labels["HAPROXY_0_PATH"], labels["HAPROXY_1_PATH"] = rng.sample(["/api", "/v2"], 2)
        member = app_id.endswith(("-blue", "-green"))
        if member and rng.random() < 0.6:
            group = "shop/web" if app_id.startswith("/shop/") else "web"
            if rng.random() < 0.08:
                group = "other/web" if app_id.startswith("/shop/") else "a/web"  # refused
            labels[GROUP] = group
            labels[STARTED_AT] = rng.choice(["2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z"])
            labels["HAPROXY_0_PORT"] = str(ports[0] if rng.random() < 0.9 else ports[1])
        elif not member and rng.random() < 0.03:
            labels[GROUP] = rng.choice(["a/web", "web", "b/web"])  # another's id, or a group
            labels[STARTED_AT] = "2026-03-01T10:00:00Z"
        checked = rng.random() < 0.2
        raw: dict[str, Any] = {"id": app_id, "version": rng.choice(VERSIONS),
                               "labels": labels}
        if ip:
            raw["networks"] = [{"mode": "container"}]
            raw["container"] = {"portMappings": [
                {"containerPort": 8080 + i, "servicePort": p} for i, p in enumerate(numbers)]}
        else:
            raw["portDefinitions"] = [{"port": p} for p in numbers]
        if checked:
            raw["healthChecks"] = [{"protocol": "HTTP", "path": "/"}]
        keep = before is not None and rng.random() < 0.7 \
            and bool(before.get("networks")) == ip and len(_ports_of(before)) == services
        raw["tasks"] = [dict(t) for t in before["tasks"]] if keep and before else [
            self.task(app_id, ip, services, checked) for _ in range(rng.randrange(0, 3))]
        for t in raw["tasks"]:
            if checked and "healthCheckResults" not in t:
                t["healthCheckResults"] = [{"alive": True}]
        if rng.random() < 0.02:
            raw["portDefinitions" if not ip else "container"] = "broken"  # does not parse
        return raw

    def tweak(self, app_id: str) -> dict[str, Any]:
        """A small deploy of ``app_id``: one of its labels changed, or its version only."""
        rng = self.rng
        raw = copy.deepcopy(self.apps[app_id])
        labels = raw["labels"]
        raw["version"] = rng.choice(VERSIONS)
        roll = rng.random()
        if roll < 0.3 and "HAPROXY_1_PATH" in labels and "HAPROXY_0_PATH" in labels:
            labels["HAPROXY_0_PATH"], labels["HAPROXY_1_PATH"] = \
                labels["HAPROXY_1_PATH"], labels["HAPROXY_0_PATH"]  # the ports swap paths
        elif roll < 0.5:
            label = f"HAPROXY_{rng.randrange(2)}_VHOST"
            if label in labels and rng.random() < 0.5:
                del labels[label]
            else:
                labels[label] = rng.choice(HOSTS)
                labels[label.replace("VHOST", "MODE")] = "http"
        elif roll < 0.65:
            label = f"HAPROXY_{rng.randrange(2)}_SSL_CERT"
            if label in labels and rng.random() < 0.5:
                del labels[label]
            else:
                labels[label] = rng.choice(CERTS)
        elif roll < 0.8:
            labels["HAPROXY_0_BALANCE"] = rng.choice(["leastconn", "roundrobin", "first"])
        elif roll < 0.9 and GROUP in labels:
            del labels[GROUP]  # leaves its deployment group
        return raw

    # -------------------------------------------------------------- host facts
    def cert_fact(self, label: str) -> CertFact:
        if not label.startswith("/certs/"):
            return CertFact(None, "is not under an allowed certificate folder (/certs)")
        path = "/certs/a.pem" if label == "/certs/link-a.pem" else label
        problem, stamp, names = self.files.get(path, ("cannot be opened: No such file", 0, ()))
        if problem:
            return CertFact(None, problem, (stamp, 1))
        return CertFact(path, None, (stamp, 1), path in self.settings.ssl_certs, names)

    def new_file(self, path: str) -> None:
        rng = self.rng
        stamp = self.files.get(path, (None, 0, ()))[1] + 1
        if rng.random() < 0.15:
            self.files[path] = ("holds no private key", stamp, ())
        else:
            self.files[path] = (None, stamp, tuple(sorted(rng.sample(
                CERT_NAMES, rng.choice([0, 1, 1, 2])))))

    def gather(self, apps: Any, settings: Settings) -> Facts:
        """hostfacts.gather, from this world's files and addresses."""
        certs: dict[str, CertFact] = {}
        addresses: dict[str, bool] = {}
        for app in apps:
            for svc in app.services:
                opts = svc.options
                if opts.ssl_cert is not None and opts.ssl_cert not in certs:
                    certs[opts.ssl_cert] = self.cert_fact(opts.ssl_cert)
                if opts.bind_address != "*":
                    addresses[opts.bind_address] = self.addresses.get(opts.bind_address, False)
        return Facts(certs, addresses)

    def bind_problem(self, address: str, port: int, haproxy_has: Iterable[str] = ()
                     ) -> str | None:
        return "cannot be bound: Address already in use" if port in self.busy else None


def _ports_of(raw: dict[str, Any]) -> list[Any]:
    if isinstance(raw.get("container"), dict):
        return list(raw["container"]["portMappings"])
    defs = raw.get("portDefinitions")
    return list(defs) if isinstance(defs, list) else []


class Marathon:
    def __init__(self, world: World) -> None:
        self.world = world

    async def get_apps(self) -> FetchResult:
        answer = copy.deepcopy(list(self.world.apps.values()))  # Marathon's state now
        await self.on_the_way()
        return FetchResult({"apps": answer}, "http://marathon", 0.0, 0)

    async def get_app(self, app_id: str) -> dict[str, Any] | None:
        raw = copy.deepcopy(self.world.apps.get(app_id))
        await self.on_the_way()
        return raw

    async def on_the_way(self) -> None:
        """The answer takes a while: what else is in flight goes on meanwhile."""
        for _ in range(self.world.rng.choice([0, 0, 1, 3])):
            await asyncio.sleep(0)


# --------------------------------------------------------------------- HAProxy
def _map_entries(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key, value)
    return out


class Runtime(FakeRuntime):
    """FakeRuntime (servers as the engine's slot table says, or as frozen at a restart)
    with HAProxy's runtime maps: loaded from the files at a reload, changed by commands."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.maps: dict[str, dict[str, str]] = {}
        self.frozen: list[ServerState] | None = None
        self.lie = False  # the next read of the servers finds a slot empty

    def load(self, files: dict[str, str]) -> None:
        settings = self.world.settings
        self.maps = {pool.map_path(settings, name): _map_entries(text)
                     for name, text in files.items() if name != pool.SPARES_FILE}

    async def execute(self, commands: list[str]) -> list[CommandResult]:
        if self.fail_next == "down":
            self.fail_next = None
            raise RuntimeUnavailable("cannot connect to /x.sock", address="/x.sock")
        if self.fail_next == "error":
            self.fail_next = None
            self.sent.append(list(commands))
            return [CommandResult(c, Status.ERROR, "No such server.") for c in commands]
        for c in commands:
            words = c.split()
            if words[1:2] == ["map"] and words[0] in ("add", "set"):
                self.maps.setdefault(words[2], {})
                if words[0] == "set" or words[3] not in self.maps[words[2]]:
                    self.maps[words[2]][words[3]] = words[4]
            elif words[:2] == ["del", "map"]:
                self.maps.get(words[2], {}).pop(words[3], None)
        self.sent.append(list(commands))
        return [CommandResult(c, Status.OK, "") for c in commands]

    async def show_servers_state(self, backend: str | None = None) -> list[ServerState]:
        servers = list(self.frozen) if self.frozen is not None \
            else await super().show_servers_state(backend)
        if self.lie and servers:
            self.lie = False
            i = self.world.rng.randrange(len(servers))
            servers[i] = replace(servers[i], addr="127.0.0.1", port=1, admin_state=0x05)
        return servers

    async def query(self, command: str) -> str:
        path = command.split()[-1]
        return "".join(f"0x1 {k} {v}\n" for k, v in sorted(self.maps.get(path, {}).items()))


class Writer(FakeWriter):
    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.maps: dict[str, str] = {}
        self.fail_write = False
        self.during: list[Callable[[], None]] = []  # what happens while HAProxy loads

    async def validate(self, text: str) -> tuple[bool, str]:
        self.validated += 1
        await self.world_turns()
        if "balance first" in text:
            line = text[:text.index("balance first")].count("\n") + 1
            return False, (f"[ALERT]    (1) : config : parsing [/x.cfg:{line}] : 'balance' "
                           "unknown algorithm 'first'")
        return self.valid, "" if self.valid else \
            "[ALERT]    (1) : config : parsing [/x.cfg:1] : unknown keyword"

    async def world_turns(self) -> None:
        while self.during:
            self.world.seen["while a reload runs"] += 1
            self.during.pop()()
            for _ in range(3):
                await asyncio.sleep(0)

    def write(self, text: str) -> None:
        if self.fail_write:
            raise OSError(28, "No space left on device")
        super().write(text)

    def write_maps(self, directory: str, files: dict[str, str]) -> None:
        self.maps.update(files)

    def read_map_file(self, directory: str, name: str) -> str | None:
        return self.maps.get(name)


class Reloader(FakeReloader):
    def __init__(self, world: World, writer: Writer) -> None:
        super().__init__()
        self.world = world
        self.writer = writer
        self.runtime: Runtime | None = None

    async def reload(self) -> None:
        await self.writer.world_turns()  # while HAProxy loads
        if self.fail:
            raise RuntimeError("master CLI: reload not confirmed")
        self.reloads += 1
        assert self.runtime is not None
        self.runtime.load(self.writer.maps)  # the new worker reads the files


# --------------------------------------------------------------------- checks
class CheckedChangeLog(ChangeLog):
    """ChangeLog whose answers are compared with a log that forgets nothing but at
    clear(), as it was before it forgot what no reader needs."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.whole: dict[str, int] = {}
        self.failures = world.failures
        self.seen = world.seen

    def record(self, names: Any) -> None:
        names = list(names)
        super().record(names)
        self.whole.update(dict.fromkeys(names, self.seq))

    def changed_since(self, name: str, seq: int) -> bool:
        got = super().changed_since(name, seq)
        self.seen["changed since"] += 1
        if got != (self.whole.get(name, 0) > seq):
            self.failures.append(f"changelog: changed_since({name!r}, {seq}) is {got}")
        return got

    def since(self, seq: int) -> set[str]:
        got = super().since(seq)
        if len(self._at) < len(self.whole):
            self.seen["changes since, some forgotten"] += 1
        want = {n for n, at in self.whole.items() if at > seq}
        if got != want:
            self.failures.append(f"changelog: since({seq}) lacks {sorted(want - got)}")
        return got

    def clear(self) -> None:
        super().clear()
        self.whole = {}


def difference(got: Any, want: Any) -> str:
    """What differs between two values, briefly."""
    if isinstance(got, dict) and isinstance(want, dict):
        return "; ".join(f"{k!r}: {difference(got.get(k), want.get(k))}"
                         for k in sorted(got.keys() | want.keys(), key=repr)
                         if got.get(k) != want.get(k))
    if isinstance(got, str) and isinstance(want, str) and got.startswith("{"):
        try:
            return difference(json.loads(got), json.loads(want))
        except ValueError:
            pass
    if isinstance(got, str) and isinstance(want, str) and "\n" in got + want:
        a, b = set(got.splitlines()), set(want.splitlines())
        return f"only in the first {sorted(a - b)[:6]}, only in the second {sorted(b - a)[:6]}"
    text = f"{got!r} != {want!r}"
    return text if len(text) < 300 else text[:300] + "..."


def fields_of(p: Plan) -> dict[str, object]:
    return {"commands": p.commands, "slots": p.slots, "grown": p.grown, "reload": p.reload,
            "layout": p.layout, "why": p.why, "errors": {k: str(v) for k, v in p.errors.items()}}


def index_answers(index: RangeIndex, layout: Layout) -> tuple[object, ...]:
    options = {s.service.options for s in layout.values()}
    return (index.map_files(), index.hosts, index.ports_map(),
            {o: [s.name for s in index.spares(o)] for o in options})


def compare_index(world: World, index: RangeIndex, layout: Layout, where: str) -> None:
    fresh = RangeIndex(world.settings, layout)
    if index_answers(index, layout) != index_answers(fresh, layout):
        world.failures.append(f"{where}: RangeIndex differs from one built from the layout")


def checked_plan(world: World) -> Callable[..., Plan]:
    def plan(layout: Layout, table: Any, desired: Any, dirty: set[str], settings: Settings,
             index: RangeIndex | None = None) -> Plan:
        whole = whole_plan(layout, table, desired, dirty, settings)
        if index is None:
            return whole
        compare_index(world, index, layout, "before a plan")
        indexed = whole_plan(layout, table, desired, dirty, settings, index)
        world.seen["plans with the RangeIndex"] += 1
        world.seen["of which change the host map"] += any(
            " map " in c and pool.HOSTS_MAP in c for c in indexed.commands)
        if fields_of(indexed) != fields_of(whole):
            world.failures.append(f"the plan of {sorted(dirty)} with the RangeIndex differs "
                                  "from the plan without: "
                                  f"{difference(fields_of(indexed), fields_of(whole))}")
        compare_index(world, index, layout, "after a plan")
        return indexed
    return plan


def check_set_facts(world: World, engine: Engine) -> None:
    """Each set_facts re-admits the apps a pass over every definition finds, in order."""
    state = engine.state
    real = state.set_facts

    def set_facts(facts: Facts) -> set[str]:
        certs, addresses = state._cert_facts, state._address_facts
        changed_certs = {k for k, v in facts.certs.items() if certs.get(k) != v}
        changed_addrs = {k for k, v in facts.addresses.items() if addresses.get(k) != v}

        def names(app: App) -> bool:
            return any(s.options.ssl_cert in changed_certs
                       or s.options.bind_address in changed_addrs for s in app.services)

        old = [a.id for a in state._groups.definitions() if names(a)]
        new = [a.id for a in state._groups.definitions_of(
            state._index.naming(changed_certs, changed_addrs), state._index.order)
            if names(a)]
        world.seen["apps re-admitted for their facts"] += len(new)
        if old != new:
            world.failures.append(f"set_facts re-admits {new}, a pass over every app {old}")
        return real(facts)

    state.set_facts = set_facts  # type: ignore[method-assign]


def check(world: World, where: str) -> None:
    engine = world.engine
    assert engine is not None
    state, settings = engine.state, world.settings
    fail = world.failures.append
    # AppIndex: the apps' order, and who names which file and address.
    index = state._index
    if sorted(index.order, key=index.order.__getitem__) != list(state.apps):
        fail(f"{where}: AppIndex.order is not the apps' order")
    fresh = AppIndex()
    for app in state.apps.values():
        fresh.update(None, app)
    if (fresh.certs, fresh.addresses) != (index.certs, index.addresses):
        fail(f"{where}: AppIndex differs from one built from the apps")
    shared = {f.path for f in state._cert_facts.values() if f.shared and f.path}
    if state._ownership._shared_certs != shared:
        fail(f"{where}: shared certificate files {state._ownership._shared_certs} != {shared}")
    # HostClaims: the held hosts under each domain, by owner.
    claims = state._ownership._hosts
    under: dict[str, dict[str, set[str]]] = {}
    for host, (key, _) in claims.owner.items():
        if claims.holders.get(host):
            for domain in domains_above(host):
                under.setdefault(domain, {}).setdefault(key, set()).add(host)
    if under != claims.under:
        fail(f"{where}: HostClaims.under {claims.under} != {under}")
    # The inverse maps kept beside each claim table.
    ownership = state._ownership
    tables: dict[str, tuple[Mapping[str, set[Any]], Mapping[Any, set[str]]]] = {
        "ports": (ownership._ports_of, {p: {a} for p, a in ownership._port_owner.items()}),
        "hosts": (claims.hosts_of, claims.holders),
        "certificate files": (ownership._certs.held_by, ownership._certs.holders)}
    for kind, (of_app, of_thing) in tables.items():
        inverse: dict[str, set[Any]] = {}
        for thing, apps in of_thing.items():
            for a in apps:
                inverse.setdefault(a, set()).add(thing)
        if {a: set(things) for a, things in of_app.items() if things} != inverse:
            fail(f"{where}: who holds which of the {kind} is not the inverse of its owners")
    routes = [r for rs in claims.routes_of.values() for r in rs]
    if sorted(routes) != sorted(claims.route_owner):
        fail(f"{where}: the routes of the apps are not the routes routed")
    if {n for names in state._backends.values() for n in names} != set(state.desired):
        fail(f"{where}: the apps' backends are not the desired ones")
    groups = state._groups
    inside: collections.Counter[str] = collections.Counter()
    for app_id in state.apps:
        inside.update(f"/{'/'.join(app_id.strip('/').split('/')[:i])}"
                      for i in range(1, app_id.strip("/").count("/") + 1))
    if dict(inside) != groups._inside:
        fail(f"{where}: live apps under each folder {groups._inside} != {dict(inside)}")
    # PortBook: an app's IP-per-task ports as assign_one over every other app.
    rng = world.rng
    for app_id in rng.sample(IDS, 2):
        raw = world.apps.get(app_id) or world.define(app_id)
        try:
            app = parse_app(raw, engine.resolve)[0]
        except ValueError:
            continue
        want = assign_one(app, [a for i, a in state.apps.items() if i != app.id], settings,
                          state.held_ports())
        got = state.assign_ports(app)
        world.seen["IP-per-task assignments moving others"] += bool(got[1])
        if got != want:
            fail(f"{where}: PortBook assigns {app_id} {got}, assign_one {want}")
    # RangeIndex.
    if engine.range_index is not None:
        compare_index(world, engine.range_index, engine.layout, where)
    # What the engine says it wrote, on disk.
    writer = engine.writer
    assert isinstance(writer, Writer)
    if pool.range_on(settings) and engine.running_config is not None \
            and not engine.reload_pipeline.loading:
        want_maps = pool.map_files(engine.layout, settings)
        if writer.maps != want_maps:
            fail(f"{where}: map files differ from the running layout's: "
                 f"{difference(writer.maps, want_maps)}")
    if pool.range_on(settings) and engine.running_config is not None and not engine.pending \
            and not engine.dirty and not engine.reconciler.wanted \
            and engine.reconciler.running is None:  # nothing left to do (nor to repair)
        runtime = engine.runtime
        assert isinstance(runtime, Runtime)
        want_entries = {pool.map_path(settings, name): entries
                        for name, entries in pool.used_maps(engine.layout, settings).items()}
        have = {path: runtime.maps.get(path, {}) for path in want_entries}
        if have != want_entries:
            fail(f"{where}: HAProxy's maps differ from the layout's: "
                 f"{difference(have, want_entries)}")
    if engine._owners_saved == state.owners_version:
        text = world.owners_path.read_text() if world.owners_path.exists() \
            else owners.Owners(groups=set()).to_json()
        if text != state.owners().to_json():
            fail(f"{where}: the owners file is not the state's owners (file, state): "
                 f"{difference(text, state.owners().to_json())}")
    if engine.reconciler.running is None and not engine.reload_pipeline.loading \
            and engine.changes._readers:
        fail(f"{where}: ChangeLog readers never ended: {engine.changes._readers}")


# --------------------------------------------------------------------- the run
def new_engine(world: World, writer: Writer, reloader: Reloader) -> Engine:
    config = EngineConfig(settings=world.settings, min_reload_interval=0.0,
                          owners_file=world.owners_path, allow_empty_marathon=True,
                          tenant_reload_interval=0.0)
    runtime = Runtime(world)
    engine = Engine(config, Marathon(world), runtime, writer, reloader,  # type: ignore[arg-type]
                    Metrics(), lambda host: host)
    runtime.engine = engine
    reloader.runtime = runtime
    engine.changes = CheckedChangeLog(world)
    engine.guard.bind_problem = world.bind_problem
    engine._refetches.debounce = 0
    check_set_facts(world, engine)
    world.engine = engine
    return engine


async def boot(world: World, engine: Engine) -> None:
    """Engine.run up to its loops: the owners file, the first full sync, a takeover."""
    engine.restore_owners()
    assert await engine.intake.full_sync()
    check(world, "first sync")
    if await take_over(engine):
        world.seen["takeovers"] += 1
    else:
        engine.request_reload(ReloadReason.STARTUP)
    runtime = engine.runtime
    assert isinstance(runtime, Runtime)
    runtime.frozen = None
    await settle(engine)
    check(world, "taken over")
    await engine.step()


async def settle(engine: Engine) -> None:
    """Let what the engine spawned (refetches, full syncs, reads of HAProxy) finish."""
    for _ in range(50):
        tasks = [t for t in engine._tasks if not t.done()]
        if not tasks:
            return
        await asyncio.wait(tasks, timeout=10)
    raise AssertionError(f"the engine's tasks do not finish: {engine._tasks}")


def event(kind: str, **data: Any) -> MarathonEvent:
    return MarathonEvent(kind, data, 0.0)


async def restart(world: World) -> Engine:
    """The daemon restarts; HAProxy runs on, as it was."""
    old = world.engine
    assert old is not None
    await settle(old)
    for t in old._tasks:
        t.cancel()
    servers = await old.runtime.show_servers_state()
    old_runtime = old.runtime
    assert isinstance(old_runtime, Runtime)
    writer, reloader = old.writer, old.reloader
    assert isinstance(writer, Writer) and isinstance(reloader, Reloader)
    rng = world.rng
    for _ in range(rng.choice([0, 1, 2, 3])):  # while it is down: unseen deploys, deletes
        app_id = rng.choice(IDS)
        if app_id in world.apps and rng.random() < 0.5:
            del world.apps[app_id]
        else:
            world.apps[app_id] = world.tweak(app_id) if app_id in world.apps \
                else world.define(app_id)
    engine = new_engine(world, writer, reloader)
    runtime = engine.runtime
    assert isinstance(runtime, Runtime)
    runtime.maps, runtime.frozen = old_runtime.maps, servers
    await boot(world, engine)
    return engine


def mid_operation(world: World) -> Callable[[], None]:
    """Something that happens while a reload validates or loads: an event, a refetch."""
    rng = world.rng

    def run() -> None:
        engine = world.engine
        assert engine is not None
        roll = rng.random()
        if roll < 0.5:
            task_event(world, engine)
        elif roll < 0.8:
            app_id = rng.choice(IDS)
            world.apps[app_id] = world.define(app_id)
            engine.spawn(engine.intake.refetch_app(app_id))
        elif roll < 0.9:
            app_id = rng.choice(IDS)
            if world.apps.pop(app_id, None) is not None:
                engine.on_event(event("app_terminated_event", appId=app_id))
        else:
            engine.request_full_sync()
    return run


def task_event(world: World, engine: Engine) -> None:
    rng = world.rng
    if not world.apps:
        return
    app_id = rng.choice(sorted(world.apps))
    raw = world.apps[app_id]
    tasks = raw["tasks"]
    if not isinstance(tasks, list):
        return
    ip = bool(raw.get("networks"))
    roll = rng.random()
    if roll < 0.45 or not tasks:
        checked = bool(raw.get("healthChecks"))
        task = world.task(app_id, ip, max(len(_ports_of(raw)), 1), checked)
        tasks.append(task)
        engine.on_event(event("status_update_event", appId=app_id, taskId=task["id"],
                              taskStatus="TASK_RUNNING", host=task["host"],
                              ports=task["ports"], ipAddresses=task.get("ipAddresses", []),
                              version=raw["version"]))
    elif roll < 0.85:
        task = tasks.pop(rng.randrange(len(tasks)))
        engine.on_event(event("status_update_event", appId=app_id, taskId=task["id"],
                              taskStatus=rng.choice(["TASK_KILLED", "TASK_FAILED"]),
                              host=task["host"], ports=task["ports"],
                              ipAddresses=task.get("ipAddresses", [])))
    else:
        task = rng.choice(tasks)
        alive = rng.random() < 0.6
        if "healthCheckResults" in task:
            task["healthCheckResults"] = [{"alive": alive}]
        engine.on_event(event("health_status_changed_event", appId=app_id,
                              taskId=task["id"], instanceId=task["id"], alive=alive))


async def operation(world: World) -> str:
    """One random thing that happens to a daemon; returns its name."""
    engine = world.engine
    assert engine is not None
    rng = world.rng
    runtime, writer, reloader = engine.runtime, engine.writer, engine.reloader
    assert isinstance(runtime, Runtime) and isinstance(writer, Writer) \
        and isinstance(reloader, Reloader)
    roll = rng.random()
    if roll < 0.20:  # a deploy, or a new app: its api_post_event refetches it, or not
        app_id = rng.choice(IDS)
        world.apps[app_id] = world.tweak(app_id) if app_id in world.apps \
            and rng.random() < 0.5 else world.define(app_id)
        if rng.random() < 0.75:
            await engine.intake.refetch_app(app_id)
            return f"deploy {app_id}, refetched"
        return f"deploy {app_id}"
    if roll < 0.27:
        app_id = rng.choice(IDS)
        if world.apps.pop(app_id, None) is None:
            return "delete nothing"
        how = rng.random()
        if how < 0.4:
            await engine.intake.refetch_app(app_id)
        elif how < 0.8:
            engine.on_event(event("app_terminated_event", appId=app_id))
        return f"delete {app_id}"
    if roll < 0.40:
        for _ in range(rng.randrange(1, 4)):
            task_event(world, engine)
        return "task events"
    if roll < 0.45:
        assert await engine.intake.full_sync()
        return "full sync"
    if roll < 0.50:  # events, refetches and a full sync in flight at once
        for _ in range(rng.randrange(2, 7)):
            what = rng.random()
            app_id = rng.choice(IDS)
            if what < 0.35:
                world.apps[app_id] = world.tweak(app_id) if app_id in world.apps \
                    and rng.random() < 0.5 else world.define(app_id)
                engine.on_event(event("api_post_event", appDefinition={"id": app_id}))
            elif what < 0.45:
                engine.request_full_sync()
            elif what < 0.7:
                task_event(world, engine)
            elif what < 0.8:
                if world.apps.pop(app_id, None) is not None:
                    engine.on_event(event("app_terminated_event", appId=app_id)
                                    if rng.random() < 0.5 else
                                    event("api_post_event", appDefinition={"id": app_id}))
            else:
                await asyncio.sleep(0)
        return "burst"
    if roll < 0.58:
        what = rng.random()
        if what < 0.6:  # a certificate file replaced: seen at a full sync, a reload, or
            # a refetch of an app naming it
            named = [a for a in world.apps.values()
                     if any(k.endswith("_SSL_CERT") for k in a["labels"])]
            raw = rng.choice(named) if named else None
            labels = [v for k, v in raw["labels"].items() if k.endswith("_SSL_CERT")] \
                if raw else ["/certs/a.pem"]
            label = rng.choice(labels)
            world.new_file("/certs/a.pem" if label == "/certs/link-a.pem" else label)
            if raw is not None and rng.random() < 0.4:
                await engine.intake.refetch_app(raw["id"])
        elif what < 0.8:
            address = rng.choice(ADDRESSES)
            world.addresses[address] = not world.addresses.get(address, False)
        else:
            port = rng.choice(PORTS[world.settings])
            world.busy ^= {port}
        return "host facts change"
    if roll < 0.90:  # the apply loop's step, reloading if it must; things go wrong
        writer.valid = rng.random() > 0.08
        writer.fail_write = rng.random() < 0.04
        reloader.fail = rng.random() < 0.06
        runtime.fail_next = rng.choice([None] * 12 + ["error", "down"])
        runtime.lie = rng.random() < 0.3
        if rng.random() < 0.25:
            writer.during.append(mid_operation(world))
        if rng.random() < 0.1:
            engine.request_reload()
        if rng.random() < 0.3:
            engine.request_reconcile()
        if rng.random() < 0.8:
            engine.reload_pipeline.next_at = 0.0  # any backoff over
        await engine.step()
        writer.during.clear()
        writer.valid, writer.fail_write, reloader.fail = True, False, False
        runtime.fail_next = None
        return "step"
    if roll < 0.93:  # HAProxy's worker restarted by its master: it reads the files
        runtime.pid += 1
        runtime.load(writer.maps)
        await engine.reconciler.check_worker()
        return "worker restarted"
    await restart(world)
    return "restart"


async def fuzz(settings: Settings, seed: int, steps: int, tmp: Path,
               monkeypatch: pytest.MonkeyPatch) -> World:
    """``steps`` random operations from ``seed``, each index checked after each one."""
    rng = random.Random(seed)
    world = World(settings, rng, tmp / f"{seed}.owners.json")
    monkeypatch.setattr(engine_module, "plan", checked_plan(world))
    monkeypatch.setattr(hostfacts, "gather", world.gather)
    for app_id in rng.sample(IDS, 6):
        world.apps[app_id] = world.define(app_id)
    for path in ("/certs/a.pem", "/certs/b.pem", "/certs/shared.pem"):
        world.new_file(path)
    writer = Writer(world)
    engine = new_engine(world, writer, Reloader(world, writer))
    await boot(world, engine)
    done: list[str] = []
    for step in range(steps):
        name = await operation(world)
        world.seen[name.split(" /")[0]] += 1
        assert world.engine is not None
        await settle(world.engine)
        check(world, f"seed {seed} step {step} ({name})")
        done.append(name)
        if world.failures:
            raise AssertionError("\n".join([*world.failures[:5], f"after: {done[-8:]}"]))
    return world


@pytest.mark.parametrize("settings", [RANGE, PLAIN], ids=["range", "plain"])
async def test_the_indexes_answer_as_their_computations_from_scratch(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """See the module's docstring. A failure names the seed, the step and what differs;
    the last operations before it are listed."""
    monkeypatch.setattr(changelog, "KEEP_AT_LEAST", 4)  # forgetting at work
    seen: collections.Counter[str] = collections.Counter()
    for seed in range(SEEDS):
        seen += (await fuzz(settings, seed, STEPS, tmp_path, monkeypatch)).seen
    # What was compared (so that a change of the runs cannot leave them comparing little).
    assert min(seen["step"], seen["deploy"], seen["full sync"], seen["task events"],
               seen["burst"], seen["restart"], seen["takeovers"]) >= 10, seen
    assert min(seen["while a reload runs"], seen["changes since, some forgotten"],
               seen["changed since"], seen["apps re-admitted for their facts"]) >= 5, seen
    if pool.range_on(settings):
        assert seen["plans with the RangeIndex"] >= 200, seen
        assert seen["of which change the host map"] >= 10, seen
    else:
        assert seen["IP-per-task assignments moving others"] >= 5, seen
