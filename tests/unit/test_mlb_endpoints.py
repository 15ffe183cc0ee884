"""marathon-lb's operator endpoints: what tenants' values can put in their answers."""

from __future__ import annotations

from servicerouter.layout import DesiredService, Settings, build_layout
from servicerouter.mlb_endpoints import app_map, vhost_map
from servicerouter.model import Mode, Options, Service
from servicerouter.naming import service_name

HTTP = Options(mode=Mode.HTTP)


def test_the_app_map_lists_only_the_app_id_routes_haproxy_has() -> None:
    """A laxer Marathon's id "/x\\n/shop/web" wrote a line of its own, "/shop/web <the
    tenant's backend>", as if /shop/web were routed there; and a loopback-only service
    is not on the app-id frontend either."""
    def svc(app_id: str, port: int, options: Options = HTTP) -> tuple[str, DesiredService]:
        return service_name(app_id, port), DesiredService(Service(app_id, 0, port, options), ())

    layout, _ = build_layout(dict([
        svc("/shop/web", 10001), svc("/x\n/shop/web", 10002), svc("/a b", 10003),
        svc("/private", 10004, Options(mode=Mode.HTTP, bind_address="127.0.0.1")),
        svc("/tcp", 10005, Options())]), {}, Settings())
    assert app_map(layout) == f"/shop/web {service_name('/shop/web', 10001)}\n"


def test_the_vhost_map_lists_each_host_of_each_backend() -> None:
    d = DesiredService(Service("/shop/web", 0, 10001, Options(mode=Mode.HTTP,
                                                              vhosts=("b.test", "a.test"))), ())
    layout, _ = build_layout({"shop_web_10001": d}, {}, Settings())
    assert vhost_map(layout) == "a.test shop_web_10001\nb.test shop_web_10001\n"
