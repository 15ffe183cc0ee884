"""Who owns a port or a host survives a restart (owners.py): the claims of the first
full sync start from the owners kept on disk, not from the age of the definitions."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from servicerouter import owners
from servicerouter.engine import Engine, EngineConfig
from servicerouter.layout import Settings
from servicerouter.metrics import Metrics
from servicerouter.model import App, Mode, Options, Service, Task
from servicerouter.owners import Owners
from servicerouter.state import ClusterState

from .test_engine import Answers, FakeReloader, FakeRuntime, FakeWriter


def app(app_id: str, port: int, version: str, **opts: object) -> App:
    options = Options(**opts)  # type: ignore[arg-type]
    return App(id=app_id, version=version, services=(Service(app_id, 0, port, options),),
               tasks=(Task(f"{app_id.strip('/')}.1", app_id, "10.0.0.1", (31000,),
                           "TASK_RUNNING"),))


SHOP = ("shop.example.com",)
# The owner redeployed after the thief was refused: its definition is the newer one.
OWNER = app("/teama/web", 10001, "2026-03-01", vhosts=SHOP)
THIEF = app("/aaa/thief", 10002, "2026-02-01", vhosts=SHOP)
PORT_OWNER = app("/teamb/db", 10003, "2026-03-01")
PORT_THIEF = app("/aaa/db", 10003, "2026-02-01")


def running() -> ClusterState:
    """A daemon that saw the owners claim first, and the thieves refused."""
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(app("/teama/web", 10001, "2026-01-01", vhosts=SHOP))
    s.set_app(app("/teamb/db", 10003, "2026-01-01"))
    s.set_app(THIEF)
    s.set_app(PORT_THIEF)
    s.set_app(OWNER)  # redeployed
    s.set_app(PORT_OWNER)
    assert set(s.desired) == {"teama_web_10001", "teamb_db_10003"}
    return s


def restarted(kept: Owners | None) -> ClusterState:
    s = ClusterState(Settings(http_port=0, https_port=0))
    if kept is not None:
        s.restore_owners(Owners.from_json(kept.to_json()))  # through the file's format
    s.replace_all([THIEF, PORT_THIEF, OWNER, PORT_OWNER])
    return s


def test_without_the_owners_a_restart_hands_the_host_and_port_to_the_older_thieves() -> None:
    assert set(restarted(None).desired) == {"aaa_thief_10002", "aaa_db_10003"}


def test_a_restart_keeps_the_owners_and_refuses_the_thieves_again() -> None:
    s = restarted(running().owners())
    assert set(s.desired) == {"teama_web_10001", "teamb_db_10003"}
    assert [p.reason for p in s.problems["/aaa/thief"]] == ["vhost_taken"]
    assert [p.reason for p in s.problems["/aaa/db"]] == ["port_taken"]
    assert "app /teama/web claimed it first" in s.problems["/aaa/thief"][0].message


def test_an_owner_that_let_go_or_left_while_we_were_down_owns_nothing() -> None:
    kept = running().owners()
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.restore_owners(kept)
    # /teama/web dropped its vhost; /teamb/db was deleted: the waiting apps get them.
    s.replace_all([THIEF, PORT_THIEF, app("/teama/web", 10001, "2026-04-01")])
    assert set(s.desired) == {"aaa_thief_10002", "aaa_db_10003", "teama_web_10001"}
    assert s.problems == {}


def test_owners_under_another_vhost_policy_are_not_owners_now() -> None:
    kept = running().owners()  # --vhost-policy group: the owner key is /teama
    s = ClusterState(Settings(http_port=0, https_port=0, vhost_policy="exclusive"))
    s.restore_owners(kept)
    s.replace_all([THIEF, OWNER])  # exclusive: keys are app ids; the oldest claims first
    assert set(s.desired) == {"aaa_thief_10002"}


def test_only_the_first_full_sync_starts_from_the_kept_owners() -> None:
    s = running()
    version = s.owners_version
    s.restore_owners(Owners(ports={10001: "/nobody"}))
    s.replace_all([THIEF, PORT_THIEF, OWNER, PORT_OWNER])
    assert set(s.desired) == {"teama_web_10001", "teamb_db_10003"}
    assert s.owners_version == version  # nothing changed owner


def test_the_owners_file_round_trip_is_private(tmp_path: Path) -> None:
    path = owners.owners_path(tmp_path / "haproxy.cfg")
    assert path.name == "haproxy.cfg.owners.json"
    assert owners.load(path) is None  # none yet: no complaint
    kept = running().owners()
    assert owners.save(path, kept)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert owners.load(path) == kept


def test_an_owners_file_from_before_certificate_owners_still_loads() -> None:
    kept = Owners.from_json('{"version": 1, "ports": {"10001": "/a"}, "hosts": {}}')
    assert kept == Owners({10001: "/a"})


def test_who_routes_a_host_and_path_survives_a_restart() -> None:
    """Two apps of one group name one host and path: the first keeps it. Without it on
    disk, the older definition took it at a restart (the holder had redeployed since)."""
    holder = app("/shop/a", 10001, "2026-02-01", vhosts=("h.test",), paths=("/api",))
    older = app("/shop/b", 10002, "2026-01-01", vhosts=("h.test",), paths=("/api",))
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(holder)
    s.set_app(older)
    assert set(s.desired) == {"shop_a_10001"}
    kept = Owners.from_json(s.owners().to_json())
    assert kept.routes == {("h.test", "/api"): ("shop_a_10001", "/shop/a")}
    t = ClusterState(Settings(http_port=0, https_port=0))
    t.restore_owners(kept)
    t.replace_all([older, holder])
    assert set(t.desired) == {"shop_a_10001"}
    # The holder lets the path go (here, while we were down): the other app gets it.
    moved = app("/shop/a", 10001, "2026-03-01", vhosts=("h.test",), paths=("/v2",))
    u = ClusterState(Settings(http_port=0, https_port=0))
    u.restore_owners(kept)
    u.replace_all([older, moved])
    assert set(u.desired) == {"shop_a_10001", "shop_b_10002"}


def test_an_app_waiting_for_a_host_and_path_gets_it_when_the_holder_lets_go() -> None:
    """The holder still names the host (another path): the host was never let go, so the
    waiting app stayed refused until its own definition changed."""
    s = ClusterState(Settings(http_port=0, https_port=0))
    s.set_app(app("/shop/a", 10001, "2026-02-01", vhosts=("h.test",), paths=("/api",)))
    s.set_app(app("/shop/b", 10002, "2026-01-01", vhosts=("h.test",), paths=("/api",)))
    assert set(s.desired) == {"shop_a_10001"}
    s.set_app(app("/shop/a", 10001, "2026-03-01", vhosts=("h.test",), paths=("/v2",)))
    assert set(s.desired) == {"shop_a_10001", "shop_b_10002"}
    assert "/shop/b" not in s.problems


def test_an_owners_file_without_routes_still_loads() -> None:
    kept = Owners.from_json('{"version": 1, "ports": {}, "hosts": {}, "certs": {}}')
    assert kept.routes == {}
    assert Owners.from_json(Owners(routes={("h", ""): ("b", "/a"), ("h", "/x/y"): ("c", "/c")}
                                   ).to_json()).routes == {("h", ""): ("b", "/a"),
                                                           ("h", "/x/y"): ("c", "/c")}


def test_an_owners_file_without_groups_says_it_does_not_know_them() -> None:
    # None, not "no group": at the first sync after an upgrade, a group at the root and
    # a live app with its id are then ordered as every claim is, oldest definition first.
    assert Owners.from_json('{"version": 1, "ports": {}, "hosts": {}}').groups is None
    assert Owners.from_json(Owners().to_json()).groups == set()
    assert Owners.from_json(Owners(groups={"/web"}).to_json()).groups == {"/web"}


@pytest.mark.parametrize(("text", "error"), [
    ("{", "not JSON"),
    ('{"version": 9, "ports": {}, "hosts": {}}', "not a version 1 owners file"),
    ('{"version": 1, "ports": {"0": "/a"}, "hosts": {}}', "ports: '0': '/a' is not a port"),
    ('{"version": 1, "ports": {}, "hosts": {"h": "/a"}}',
     "hosts: 'h': '/a' is not [owner, app id]"),
    ('{"version": 1, "ports": {}, "hosts": {}, "certs": {"/c.pem": ["/a"]}}',
     "certs: '/c.pem': ['/a'] is not [owner, app id]"),
    ('{"version": 1, "ports": {}, "hosts": {}, "routes": {"/api": ["b", "/a"]}}',
     "routes: '/api': ['b', '/a'] is not [backend, app id]"),
    ('{"version": 1, "ports": {}, "hosts": {}, "routes": []}',
     "'ports', 'hosts', 'certs' and 'routes' must be objects"),
    ('{"version": 1, "ports": {}, "hosts": {}, "groups": ["web"]}',
     "'groups' must be a list of app ids, not ['web']"),
])
def test_a_broken_owners_file_is_reported_and_claims_start_over(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, error: str) -> None:
    path = tmp_path / "haproxy.cfg.owners.json"
    path.write_text(text)
    with caplog.at_level(logging.ERROR, logger="servicerouter.owners"):
        assert owners.load(path) is None
    assert f"owners file {path}: {error}" in caplog.text
    assert "claimed anew, oldest definition first" in caplog.text


def test_an_owners_file_nested_too_deep_is_reported_not_a_crash(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "haproxy.cfg.owners.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with caplog.at_level(logging.ERROR, logger="servicerouter.owners"):
        assert owners.load(path) is None  # was: RecursionError out of the daemon's start
    assert f"owners file {path}: maximum recursion depth" in caplog.text


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "huge"])
def test_an_owners_path_that_is_not_a_small_file_is_refused_unread(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """A FIFO blocked the daemon's start forever; /dev/zero filled its memory."""
    path = tmp_path / "haproxy.cfg.owners.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        monkeypatch.setattr(owners, "MAX_BYTES", 1000)
        path.write_text('{"version": 1, "ports": {}, "hosts": {}}' + " " * 2000)
    with caplog.at_level(logging.ERROR, logger="servicerouter.owners"):
        assert owners.load(path) is None
    assert f"owners file {path} unreadable" in caplog.text
    assert ("more than 1000" if kind == "huge" else "not a regular file") in caplog.text


def test_a_broken_owners_file_is_moved_aside_not_overwritten_by_the_next_save(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The broken file is the only record of who held what: an operator can repair it."""
    path = tmp_path / "haproxy.cfg.owners.json"
    path.write_bytes(b'{"version": 1, "ports": {"10001": "/teama/web"}, "hosts": {}\xff')
    with caplog.at_level(logging.ERROR, logger="servicerouter.owners"):
        assert owners.load(path) is None
    broken = tmp_path / "haproxy.cfg.owners.json.broken"
    assert f"owners file {path}: not UTF-8" in caplog.text
    assert f"moved to {broken}" in caplog.text
    assert owners.save(path, running().owners())
    assert b"/teama/web" in broken.read_bytes()  # still there after the save
    assert owners.load(path) == running().owners()


def test_an_owners_file_someone_loosened_is_made_private_again(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg.owners.json"
    assert owners.save(path, running().owners())
    path.chmod(0o644)
    assert owners.save(path, running().owners())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_daemons_owners_file_is_written_as_to_json_writes_it(tmp_path: Path) -> None:
    """OwnersFile (the daemon's writer, which keeps each entry's text from the save
    before unless it changed) writes what Owners.to_json does, save after save, as
    ports, hosts, certificate files, routes and groups come, change owner and go; and
    0600 like save()."""
    import random

    rng = random.Random(3)
    path = tmp_path / "haproxy.cfg.owners.json"
    writer = owners.OwnersFile(path)
    apps = ["/a/web", "/b/x", "/shöp/ü", '/q"uote', "/t/\\back"]
    hosts = ["a.example.com", "*.b.example.com", "ünï.example", "x.test", "y.test"]
    now = Owners(groups=set())
    for step in range(120):
        now = Owners(dict(now.ports), dict(now.hosts), dict(now.certs), dict(now.routes),
                     set(now.groups or ()))
        for _ in range(rng.randrange(1, 4)):
            kind = rng.randrange(5)
            gone = rng.random() < 0.3
            if kind == 0:
                port = rng.choice([80, 1000, 9999, 10000, 10001, 20000, 65535])
                now.ports.pop(port, None) if gone else now.ports.__setitem__(
                    port, rng.choice(apps))
            elif kind in (1, 2):
                into = now.hosts if kind == 1 else now.certs
                thing = rng.choice(hosts) if kind == 1 else f"/c/{rng.choice(hosts)}.pem"
                into.pop(thing, None) if gone else into.__setitem__(
                    thing, (rng.choice(apps)[:2], rng.choice(apps)))
            elif kind == 3:
                route = (rng.choice(hosts), rng.choice(["", "/api", "/api/v2"]))
                now.routes.pop(route, None) if gone else now.routes.__setitem__(
                    route, (f"b_{rng.randrange(9)}", rng.choice(apps)))
            else:
                group = rng.choice(apps)
                assert now.groups is not None
                now.groups.discard(group) if gone else now.groups.add(group)
        assert writer.save(now)
        assert path.read_text() == now.to_json(), step
        assert Owners.from_json(path.read_text()) == now
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def daemon(path: Path, *apps: dict[str, object]) -> Engine:
    """A daemon keeping its owners at ``path``, Marathon answering ``apps``."""
    runtime = FakeRuntime()
    engine = Engine(EngineConfig(settings=Settings(stats_port=0, grace_ms=0, http_port=0,
                                                   https_port=0),
                                 min_reload_interval=0.0, owners_file=path),
                    Answers(*apps), runtime, FakeWriter(), FakeReloader(),  # type: ignore[arg-type]
                    Metrics(), lambda host: host)
    runtime.engine = engine
    engine.guard.bind_problem = lambda address, port, own=(): None  # no real sockets here
    return engine


def marathon_app(app_id: str, port: int, version: str) -> dict[str, object]:
    return {"id": app_id, "version": version, "portDefinitions": [{"port": port}],
            "tasks": [{"id": f"{app_id[1:]}.1", "host": "127.0.0.1", "ports": [31000],
                       "state": "TASK_RUNNING"}]}


async def start(engine: Engine) -> None:
    """What Engine.run does before its loops: the owners file, the first full sync."""
    engine.restore_owners()
    assert await engine.intake.full_sync()
    await engine.step()


async def test_an_owner_gone_at_a_restart_is_gone_from_the_owners_file_too(
        tmp_path: Path) -> None:
    """The first full sync after a restart hands back what the owners file kept to the
    apps still in Marathon: one deleted while the daemon was down owns nothing. But the
    file was written only when an owner changed, so it still named that app, and at the
    next restart the app, created again, had its port back from a daemon that never saw
    it hold it, over an older definition (the oldest first, with no owner before)."""
    path = tmp_path / "haproxy.cfg.owners.json"
    web = marathon_app("/teama/web", 10001, "2026-01-01")
    await start(daemon(path, web, marathon_app("/teamb/db", 10003, "2026-03-01")))
    assert Owners.from_json(path.read_text()).ports == {10001: "/teama/web",
                                                        10003: "/teamb/db"}
    restarted = daemon(path, web)  # /teamb/db was deleted while it was down
    await start(restarted)
    assert path.read_text() == restarted.state.owners().to_json()
    again = daemon(path, web, marathon_app("/teamb/db", 10003, "2026-03-01"),
                   marathon_app("/aaa/db", 10003, "2026-02-01"))
    await start(again)
    assert set(again.state.desired) == {"teama_web_10001", "aaa_db_10003"}


async def test_the_owners_file_follows_the_ports_of_an_app_swapping_paths(
        tmp_path: Path) -> None:
    """Who routes a host and path is kept in the owners file by its backend. An app's
    two ports that swap their paths (/api moves to the other port) change no owner of a
    port, a host or a host and path, and the file, written when an owner changes, kept
    naming the old backends. A deploy that changes none of it writes nothing."""
    path = tmp_path / "haproxy.cfg.owners.json"
    engine = daemon(path)

    def shop(api: int, version: str = "2026-01-01") -> App:
        options = {port: Options(mode=Mode.HTTP, vhosts=("shop.example.com",),
                                 paths=("/api" if port == api else "/",))
                   for port in (10001, 10002)}
        return App("/shop/web", version, services=tuple(
            Service("/shop/web", i, port, options[port]) for i, port in enumerate(options)),
            tasks=(Task("shop.1", "/shop/web", "10.0.0.1", (31000, 31001), "TASK_RUNNING"),))

    engine.mark(engine.state.set_app(shop(api=10001)))
    await engine.step()
    engine.mark(engine.state.set_app(shop(api=10002)))
    await engine.step()
    assert Owners.from_json(path.read_text()).routes == {
        ("shop.example.com", "/api"): ("shop_web_10002", "/shop/web"),
        ("shop.example.com", "/"): ("shop_web_10001", "/shop/web")}
    saved = path.stat().st_mtime_ns
    path.unlink()
    engine.mark(engine.state.set_app(shop(api=10002, version="2026-02-01")))
    await engine.step()
    assert not path.exists(), saved  # not written again
