"""Reload tokens per tenant (reloadbudget.py): a tenant's burst, its refill, who is
held and who rides along."""

from __future__ import annotations

from servicerouter.layout import BackendShape, DesiredService
from servicerouter.model import Options, Service
from servicerouter.reloadbudget import ReloadBudget, tenant, tenants_of


def test_a_tenant_is_the_top_level_group() -> None:
    assert tenant("/shop/web/api") == "/shop"
    assert tenant("/web") == "/web"


def test_a_burst_then_one_reload_per_interval() -> None:
    budget = ReloadBudget(interval=30.0, burst=3)
    now = 1000.0
    for _ in range(3):
        assert budget.ready_at({"/shop"}, now) == now
        budget.spend({"/shop"}, now)
    assert budget.ready_at({"/shop"}, now) == now + 30.0  # the 4th waits for a token
    assert budget.ready_at({"/shop"}, now + 10) == now + 30.0
    assert budget.ready_at({"/shop"}, now + 30) == now + 30  # one came back
    budget.spend({"/shop"}, now + 30)
    assert budget.ready_at({"/shop"}, now + 31) == now + 60
    assert budget.ready_at({"/blog"}, now) == now  # another tenant is not held


def test_a_reload_goes_when_any_tenant_wanting_it_has_a_token() -> None:
    budget = ReloadBudget(interval=30.0, burst=1)
    budget.spend({"/flap"}, 0.0)
    assert budget.ready_at({"/flap"}, 1.0) == 30.0
    assert budget.ready_at({"/flap", "/shop"}, 1.0) == 1.0  # /shop's new app: now
    budget.spend({"/flap", "/shop"}, 1.0)  # /flap rides along, owing nothing
    assert budget.tokens("/flap", 1.0) == 1.0 / 30.0
    assert budget.tokens("/shop", 1.0) == 0.0


def test_nobodys_reloads_and_no_budget_are_never_held() -> None:
    budget = ReloadBudget(interval=30.0, burst=1)
    budget.spend({"/a"}, 0.0)
    assert budget.ready_at(None, 0.0) == 0.0
    off = ReloadBudget(interval=0.0, burst=1)
    off.spend({"/a"}, 0.0)
    assert off.ready_at({"/a"}, 0.0) == 0.0


def test_full_buckets_are_forgotten() -> None:
    budget = ReloadBudget(interval=1.0, burst=2)
    for i in range(100):
        budget.spend({f"/t{i}"}, float(i))
    budget.spend({"/last"}, 1000.0)
    assert set(budget._spent) == {"/last"}


def _desired(app_id: str, port: int) -> DesiredService:
    return DesiredService(Service(app_id, 0, port, Options()), ())


def test_what_a_pending_reload_is_charged_to() -> None:
    desired = {"shop_web_10001": _desired("/shop/web", 10001),
               "blog_10002": _desired("/blog", 10002)}
    gone = BackendShape("old_10003", Service("/shop/old", 0, 10003, Options()), 4)
    spare = BackendShape("_pool_1", Service("", 0, 0, Options()), 4)  # range mode
    layout = {"old_10003": gone, "_pool_1": spare}
    assert tenants_of({"shop_web_10001": "new_app", "old_10003": "removed_app",
                       "blog_10002": "options_changed"}, desired, layout) == {"/shop", "/blog"}
    for pending in ({"*": "resync"}, {"shop_web_10001": "runtime_error"},
                    {"shop_web_10001": "new_app", "x": "manual"},
                    {"nobody_1": "new_app"}, {"_pool_1": "pool_exhausted"}, {}):
        assert tenants_of(pending, desired, layout) is None
