"""Mesos-DNS mode's pure parts: names, flag values, which apps it can serve."""

from __future__ import annotations

import pytest

from servicerouter import mesosdns
from servicerouter.model import App, Service


@pytest.mark.parametrize(("app_id", "srv"), [
    ("/web", "_web._tcp.marathon.mesos"),
    ("/shop/web", "_web-shop._tcp.marathon.mesos"),
    ("/a/b/c", "_c-b-a._tcp.marathon.mesos"),
    ("/Shop/Web", "_web-shop._tcp.marathon.mesos"),
    ("/shop/web_v2", None),  # '_' is not in a DNS label
    ("/" + "x" * 64, None),
    ("/x\n/evil", None),  # "evil-x\n": a regex's $ matches before a final newline
])
def test_srv_record_is_mesos_dns_name_for_the_app(app_id: str, srv: str | None) -> None:
    assert mesosdns.srv_record(app_id, "marathon.mesos") == srv


@pytest.mark.parametrize(("value", "parsed"), [
    ("marathon.mesos", "marathon.mesos"), ("Marathon.Mesos.", "marathon.mesos"),
    ("mesos", "mesos")])
def test_domain(value: str, parsed: str) -> None:
    assert mesosdns.parse_domain(value) == parsed


@pytest.mark.parametrize("value", ["", "bad domain", "a..b", "-a.mesos", "a;b", "x\nglobal"])
def test_bad_domain_is_refused(value: str) -> None:
    with pytest.raises(mesosdns.MesosDNSError, match="--mesos-dns"):
        mesosdns.parse_domain(value)


@pytest.mark.parametrize(("value", "parsed"), [
    ("10.0.0.5:53", "10.0.0.5:53"), ("[::1]:5353", "[::1]:5353")])
def test_resolver(value: str, parsed: str) -> None:
    assert mesosdns.parse_resolver(value) == parsed


@pytest.mark.parametrize("value", ["10.0.0.5", "mesos-dns:53", "10.0.0.5:0", "10.0.0.5:70000",
                                   "10.0.0.5:53 resolve"])
def test_bad_resolver_is_refused(value: str) -> None:
    with pytest.raises(mesosdns.MesosDNSError, match="--dns-resolver"):
        mesosdns.parse_resolver(value)


def test_only_single_port_apps_with_dns_names_are_admitted() -> None:
    one = App("/shop/web", services=(Service("/shop/web", 0, 10000),))
    two = App("/shop/db", services=(Service("/shop/db", 0, 10001), Service("/shop/db", 1, 10002)))
    bad = App("/shop/web_v2", services=(Service("/shop/web_v2", 0, 10003),))
    kept, problems = mesosdns.admit([one, two, bad])
    assert kept == [one]
    assert len(problems) == 2
    assert problems[0].startswith("app /shop/db: Mesos-DNS mode: 2 service ports")
    assert problems[1].startswith("app /shop/web_v2: Mesos-DNS mode: the id does not make")


def test_apps_mesos_dns_names_alike_are_both_left_out() -> None:
    """/web-shop's tasks are listed under /shop/web's SRV record (and the other way
    round): routing either would send its clients to the other tenant's tasks too."""
    web = App("/shop/web", services=(Service("/shop/web", 0, 10000),))
    twin = App("/web-shop", services=(Service("/web-shop", 0, 10001),))
    other = App("/shop/api", services=(Service("/shop/api", 0, 10002),))
    kept, problems = mesosdns.admit([web, twin, other])
    assert kept == [other]
    assert problems == [
        "app /shop/web: Mesos-DNS mode: its Mesos-DNS name web-shop is also app /web-shop's: "
        "its SRV record _web-shop._tcp lists the tasks of both; app left out (rename one of "
        "them)",
        "app /web-shop: Mesos-DNS mode: its Mesos-DNS name web-shop is also app /shop/web's: "
        "its SRV record _web-shop._tcp lists the tasks of both; app left out (rename one of "
        "them)"]


def test_a_deployment_group_is_not_routed_by_mesos_dns() -> None:
    """Routed as /shop/web, a blue/green pair would read _web-shop._tcp, which lists
    neither member's tasks (and may list another app's)."""
    blue = App("/shop/web-blue", labels={"HAPROXY_DEPLOYMENT_GROUP": "shop/web"},
               services=(Service("/shop/web-blue", 0, 10000),))
    kept, problems = mesosdns.admit([blue])
    assert kept == [] and len(problems) == 1
    assert problems[0].startswith("app /shop/web-blue: Mesos-DNS mode: "
                                  "HAPROXY_DEPLOYMENT_GROUP is not supported")
