"""A service left out for a problem of its own keeps holding its port, hosts and
certificate file (``ClusterState._held_back``): a waiting app of another tenant does
not take them. Here the two ways round that: a refused deployment label (the whole app
is left out, not one service), and a restart of the daemon while the owner is broken
(nothing it held is in memory then: only the owners file says it held them)."""

from __future__ import annotations

from servicerouter.admission import CertFact, Facts
from servicerouter.layout import Settings
from servicerouter.marathon.parse import parse_app
from servicerouter.model import App
from servicerouter.owners import Owners
from servicerouter.state import ClusterState

SHOP = "shop.example.com"
CERT = "/certs/shop.pem"
FACTS = Facts({CERT: CertFact(CERT, names=(SHOP,))})


def marathon_app(app_id: str, port: int, version: str, **labels: str) -> App:
    raw = {"id": app_id, "version": version, "portDefinitions": [{"port": port}],
           "labels": labels,
           "tasks": [{"id": f"{app_id.strip('/').replace('/', '_')}.1", "appId": app_id,
                      "host": "10.0.0.1", "ports": [31000], "state": "TASK_RUNNING"}]}
    return parse_app(raw, lambda host: None)[0]


def owner(version: str = "2026-01-01", port: int = 10001, **labels: str) -> App:
    return marathon_app("/teama/web", port, version,
                        **{"HAPROXY_0_VHOST": SHOP, "HAPROXY_0_SSL_CERT": CERT, **labels})


# Older than the owner's redeploys: at a fresh sync they would claim first.
THIEVES = [marathon_app("/aaa/host", 10002, "2025-01-01", HAPROXY_0_VHOST=SHOP),
           marathon_app("/aaa/port", 10001, "2025-01-01"),
           marathon_app("/aaa/cert", 10003, "2025-01-01", HAPROXY_0_SSL_CERT=CERT)]
WAITING = {"/aaa/host": ["vhost_taken"], "/aaa/port": ["port_taken"],
           "/aaa/cert": ["ssl_cert"]}


def reasons(s: ClusterState, app_id: str) -> list[str]:
    return [p.reason for p in s.problems.get(app_id, ())]


def waiting(s: ClusterState) -> dict[str, list[str]]:
    return {a: reasons(s, a) for a in WAITING}


def state() -> ClusterState:
    s = ClusterState(Settings(http_port=80, https_port=443))
    s.set_facts(FACTS)
    return s


def running() -> ClusterState:
    """The owner routed, the thieves (older definitions) waiting for its names."""
    s = state()
    s.set_app(owner())
    for thief in THIEVES:
        s.set_app(thief)
    assert set(s.desired) == {"teama_web_10001"} and waiting(s) == WAITING
    return s


def test_a_refused_deployment_label_keeps_what_the_app_held() -> None:
    # A value of its own refused (a deployment group of another folder, a start time
    # that is not one): the whole app is left out, and it let go of its port, host and
    # certificate file; the apps of another tenant waiting for them took them.
    s = running()
    for bad in ({"HAPROXY_DEPLOYMENT_GROUP": "other/web"},
                {"HAPROXY_DEPLOYMENT_GROUP": "teama/web",
                 "HAPROXY_DEPLOYMENT_STARTED_AT": "yesterday"},
                {"HAPROXY_DEPLOYMENT_GROUP": "teama/web",
                 "HAPROXY_DEPLOYMENT_ALT_PORT": "100000"}):
        s.set_app(owner("2026-02-01", **bad))
        assert set(s.desired) == set() and reasons(s, "/teama/web") == ["deployment_group"]
        assert waiting(s) == WAITING, bad
        (p,) = s.problems["/aaa/host"]
        assert "belongs to group /teama" in p.message
        assert s.held_ports()[10001] == "/teama/web"
        # Fixed: routed again, with what it held.
        s.set_app(owner("2026-03-01"))
        assert set(s.desired) == {"teama_web_10001"} and "/teama/web" not in s.problems
        assert waiting(s) == WAITING
    # A full sync with the owner still refused keeps them too.
    s.set_app(owner("2026-04-01", HAPROXY_DEPLOYMENT_GROUP="other/web"))
    s.replace_all([*THIEVES, owner("2026-04-01", HAPROXY_DEPLOYMENT_GROUP="other/web")])
    assert set(s.desired) == set() and waiting(s) == WAITING
    # Deleted: it lets go, and the waiting apps get them.
    s.remove_app("/teama/web")
    assert set(s.desired) == {"aaa_host_10002", "aaa_port_10001", "aaa_cert_10003"}
    assert not s.problems


def test_a_refused_deployment_label_still_lets_go_what_the_app_dropped_on_purpose() -> None:
    # Refused while it no longer names the host: only what it still held is kept, and
    # it is kept as last admitted (the refused definition claims nothing new).
    s = running()
    s.set_app(owner("2026-02-01", HAPROXY_DEPLOYMENT_GROUP="other/web"))
    s.set_app(marathon_app("/teama/web", 10009, "2026-03-01"))  # drops host, cert, port
    assert set(s.desired) == {"teama_web_10009", "aaa_host_10002", "aaa_port_10001",
                              "aaa_cert_10003"}
    assert not s.problems


def test_a_sole_member_of_a_deployment_group_refused_keeps_the_groups_names() -> None:
    # zdd.py's apps always carry their group: the one app of /teama/web-group (routed as
    # the group) with a typo in a deployment label left the group empty, which let go
    # of everything the pair held.
    group = {"HAPROXY_DEPLOYMENT_GROUP": "teama/web"}
    s = state()
    blue = marathon_app("/teama/web-blue", 10001, "2026-01-01", HAPROXY_0_VHOST=SHOP,
                        HAPROXY_0_SSL_CERT=CERT, **group)
    s.set_app(blue)
    for thief in THIEVES:
        s.set_app(thief)
    assert set(s.desired) == {"teama_web_10001"} and waiting(s) == WAITING
    typo = marathon_app("/teama/web-blue", 10001, "2026-02-01", HAPROXY_0_VHOST=SHOP,
                        HAPROXY_0_SSL_CERT=CERT, HAPROXY_DEPLOYMENT_TARGET_INSTANCES="two",
                        **group)
    s.set_app(typo)
    assert set(s.desired) == set() and reasons(s, "/teama/web-blue") == ["deployment_group"]
    assert waiting(s) == WAITING and s.held_ports()[10001] == "/teama/web-blue"
    s.set_app(blue)  # fixed: the group is routed again, with its names
    assert set(s.desired) == {"teama_web_10001"} and waiting(s) == WAITING
    assert s.held_ports()[10001] == "/teama/web"
    s.set_app(typo)
    s.remove_app("/teama/web-blue")  # deleted while refused: the waiting apps get them
    assert set(s.desired) == {"aaa_host_10002", "aaa_port_10001", "aaa_cert_10003"}
    assert not s.problems


def restarted(kept: Owners, *apps: App) -> ClusterState:
    s = state()
    s.restore_owners(Owners.from_json(kept.to_json()))  # through the file's format
    s.replace_all([*THIEVES, *apps])
    return s


def test_a_restart_while_the_owner_is_broken_keeps_its_names() -> None:
    # Nothing the broken owner held is in memory after a restart: its service, left out
    # at the first sync, claimed none of what the owners file handed back, and the
    # older thieves took the port, host and certificate file.
    kept = running().owners()
    for broken in (owner("2026-02-01", HAPROXY_0_BALANCE="roundrobinn"),
                   owner("2026-02-01", HAPROXY_0_VHOST="shop..example.com"),
                   owner("2026-02-01", HAPROXY_DEPLOYMENT_GROUP="other/web")):
        s = restarted(kept, broken)
        assert set(s.desired) == set() and waiting(s) == WAITING, broken.labels
        assert s.held_ports()[10001] == "/teama/web"
        assert s.owners().hosts[SHOP] == ("/teama", "/teama/web")
        assert s.owners().certs[CERT] == ("/teama", "/teama/web")
        # Written back as they are: a second restart, still broken, keeps them too.
        again = restarted(s.owners(), broken)
        assert set(again.desired) == set() and waiting(again) == WAITING
        # Events while still broken keep them; fixed, it is routed with them.
        s.set_app(owner("2026-03-01", HAPROXY_0_BALANCE="leastconnn"))
        assert set(s.desired) == set() and waiting(s) == WAITING
        s.set_app(owner("2026-04-01"))
        assert set(s.desired) == {"teama_web_10001"} and waiting(s) == WAITING
        # From then on it holds what it is admitted with, as before the restart.
        s.set_app(marathon_app("/teama/web", 10001, "2026-05-01"))
        assert set(s.desired) == {"teama_web_10001", "aaa_host_10002", "aaa_cert_10003"}


def test_a_restart_while_the_owner_is_broken_and_then_deleted_lets_go() -> None:
    s = restarted(running().owners(), owner("2026-02-01", HAPROXY_0_BALANCE="roundrobinn"))
    assert waiting(s) == WAITING
    s.replace_all(THIEVES)  # the owner deleted
    assert set(s.desired) == {"aaa_host_10002", "aaa_port_10001", "aaa_cert_10003"}
    assert not s.problems


def test_a_restart_keeps_nothing_for_an_owner_admitted_without_it() -> None:
    # Admitted whole at the first sync, with another port and no host: what it held
    # before and names no more is let go (as without the restart).
    s = restarted(running().owners(), marathon_app("/teama/web", 10009, "2026-02-01"))
    assert set(s.desired) == {"teama_web_10009", "aaa_host_10002", "aaa_port_10001",
                              "aaa_cert_10003"}
    assert not s.problems


def test_a_restart_while_the_owners_app_does_not_parse_keeps_its_names() -> None:
    # An app whose JSON does not parse is kept out of a full sync's answer, named in
    # ``keep`` (it is in Marathon, with no last good state after a restart): the owners
    # file's claims went only to the apps in the answer, and the thieves took them.
    s = state()
    s.restore_owners(running().owners())
    s.replace_all(THIEVES, keep=["/teama/web"])
    assert set(s.desired) == set() and waiting(s) == WAITING
    assert s.held_ports()[10001] == "/teama/web"
    s.replace_all(THIEVES, keep=["/teama/web"])  # still broken at the next sync
    assert set(s.desired) == set() and waiting(s) == WAITING
    s.set_app(owner("2026-02-01"))  # fixed (a refetch): routed with them
    assert set(s.desired) == {"teama_web_10001"} and waiting(s) == WAITING


def test_a_never_parsed_owner_gone_from_marathon_lets_go() -> None:
    # Deleted while it never parsed: by the next full sync's answer, or by its event.
    for gone in ("sync", "event"):
        s = state()
        s.restore_owners(running().owners())
        s.replace_all(THIEVES, keep=["/teama/web"])
        assert waiting(s) == WAITING
        if gone == "sync":
            s.replace_all(THIEVES)
        else:
            s.remove_app("/teama/web")
        assert set(s.desired) == {"aaa_host_10002", "aaa_port_10001", "aaa_cert_10003"}, gone
        assert not s.problems, gone
        assert "/teama/web" not in s.held_ports().values(), gone
