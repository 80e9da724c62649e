"""Which rows a reload would leave without an integration: a kind's, or one tenant's rows of a kind."""

from __future__ import annotations

from cloud_bridge.registry import Device
from cloud_bridge.reload_guard import Serving, dropped, gone, narrowed, stranded

EMAIL, SMS = "email.send", "sms.send"


def serving(vendor: set[str], **own: set[str]) -> Serving:
    return Serving(frozenset(vendor), {tenant: frozenset(kinds) for tenant, kinds in own.items()})


def test_a_kind_nobody_serves_any_more_is_gone() -> None:
    old, new = serving({EMAIL, SMS}), serving({EMAIL})
    assert gone(old, new) == [SMS]
    assert gone(serving(set(), acme={SMS}), serving(set())) == [SMS]
    assert gone(old, old) == []


def test_a_tenants_own_removed_without_a_vendor_integration_strands_its_rows() -> None:
    old, new = serving(set(), alpha={EMAIL}, zeta={EMAIL}), serving(set(), alpha={EMAIL})
    assert gone(old, new) == []
    assert narrowed(old, new) == [EMAIL]
    assert stranded(EMAIL, ["alpha", "zeta"], old, new) == ["zeta"]
    assert stranded(EMAIL, ["alpha"], old, new) == []


def test_the_vendors_removed_while_a_tenant_keeps_its_own_strands_the_others() -> None:
    old, new = serving({EMAIL}, alpha={EMAIL}), serving(set(), alpha={EMAIL})
    assert narrowed(old, new) == [EMAIL]
    assert stranded(EMAIL, ["alpha", "bravo", "carol"], old, new) == ["bravo", "carol"]


def test_falling_back_on_the_vendors_strands_nothing() -> None:
    old, new = serving({EMAIL}, zeta={EMAIL}), serving({EMAIL})
    assert narrowed(old, new) == []
    assert stranded(EMAIL, ["zeta"], old, new) == []


def test_rows_no_integration_served_before_are_not_the_reloads_doing() -> None:
    old, new = serving(set(), alpha={EMAIL}), serving(set(), alpha={EMAIL}, bravo={SMS})
    assert narrowed(old, new) == []
    assert stranded(EMAIL, ["alpha", "zeta"], old, new) == []


def device(tenant: str, n: int, *, revoked: bool = False) -> Device:
    return Device(f"dev-{tenant}-{n}", tenant, f"pump-{n}", "PEM", 1.0, 2.0 if revoked else None)


def test_a_tenant_dropped_with_devices_left_is_named_with_their_count() -> None:
    devices = [device("zeta", 1), device("zeta", 2), device("omega", 1, revoked=True), device("acme", 1)]
    assert dropped({"acme", "zeta", "omega", "empty"}, {"acme"}, devices) == {"zeta": 2}
    assert dropped({"acme", "zeta"}, {"acme", "zeta", "new"}, devices) == {}
