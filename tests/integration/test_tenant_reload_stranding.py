"""A reload that takes a tenant's own integration away while that tenant's intents wait, with no vendor
integration of the kind to fall back on, is refused, though another tenant still brings its own (on
SQLite and PostgreSQL). It was applied, and the waiting intents ended failed/no_integration at once."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.audit import AuditEvent
from cloud_bridge.config import load_config
from cloud_bridge.errors import ConfigError
from cloud_bridge.node import Bridge
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import Harness, email, make_settings, until
from tests.support.smtp import SmtpAccount
from tests.support.stores import store_url

__all__ = ["store_url"]  # fixture

ENV = {"ALPHA_PW": "alpha-SECRET-1c4e", "ZETA_PW": "zeta-SECRET-93ab"}


def policy(sender: str) -> dict[str, Any]:
    return {"kinds": ["email.send"], "email_domains": ["example.com"], "email_from": sender}


def document(alpha: SmtpAccount | None, zeta: SmtpAccount | None, ca: Path) -> dict[str, Any]:
    """No vendor smtp: each tenant brings its own, when given."""

    def own(account: SmtpAccount | None, env: str) -> dict[str, Any]:
        return {} if account is None else {"integrations": {"smtp": account.section(ca, env)}}

    return {
        "bridge": {"retry_base": 600.0, "retry_cap": 600.0},  # a failed try waits in the queue
        "tenants": {
            "alpha": {"policy": policy("a@alpha.example"), **own(alpha, "ALPHA_PW")},
            "zeta": {"policy": policy("z@zeta.example"), **own(zeta, "ZETA_PW")},
        },
    }


async def test_a_reload_stranding_one_tenants_intents_is_refused(
    tmp_path: Path, server_cert_files: dict[str, Path], store_url: StoreUrl
) -> None:
    ca = server_cert_files["ca"]
    alpha = SmtpAccount("alpha", ENV["ALPHA_PW"]).start(server_cert_files)
    zeta = SmtpAccount("zeta", ENV["ZETA_PW"]).start(server_cert_files)
    zeta.stop()  # zeta's server is down: its email waits in the queue for a retry
    settings = make_settings(tmp_path, server_cert_files, env=ENV, store=store_url)
    settings = dataclasses.replace(settings, config=load_config(document(alpha, zeta, ca), ENV))
    current = {"settings": settings}
    bridge = Bridge(settings, load=lambda: current["settings"])
    await bridge.start()
    try:
        harness = Harness(bridge, settings, ca)
        z = await harness.connect(await harness.enroll("zeta", "pump-1"))
        z.send([email("z-1")])

        async def retried() -> bool:
            return any(r.event is AuditEvent.RETRY for r in await bridge.ledger.audit(tenant="zeta"))

        await until(retried, what="z-1 tried once and queued again")
        # zeta's own account taken away (a file cut off in [tenants.*]); alpha still brings its own.
        current["settings"] = dataclasses.replace(settings, config=load_config(document(alpha, None, ca), ENV))
        with pytest.raises(ConfigError, match=r"no integration would serve email\.send of tenant zeta \(intents"):
            await bridge.reload()
        assert bridge.generation == 1
        [row] = bridge.store.intents.find("z-1")
        assert row.state == "queued"
        assert z.states()["z-1"] == ["accepted"]
        # alpha's own taken away instead: alpha has nothing waiting, so that reload is applied.
        current["settings"] = dataclasses.replace(settings, config=load_config(document(None, zeta, ca), ENV))
        await bridge.reload()
        assert bridge.generation == 2
        await z.stop()
    finally:
        await bridge.stop()
        alpha.stop()


async def test_a_reload_dropping_a_tenant_with_devices_is_refused(
    tmp_path: Path, server_cert_files: dict[str, Path], store_url: StoreUrl
) -> None:
    """A file cut off before `[tenants.zeta]` (written in place while the reload read it) still parses: it was
    applied, and every intent zeta's devices sent from then on was rejected/policy_tenant, for good."""
    whole = {"acme": {"policy": policy("a@acme.example")}, "zeta": {"policy": policy("z@zeta.example")}}
    settings = make_settings(tmp_path, server_cert_files, tenants=whole, store=store_url)
    current = {"settings": settings}
    bridge = Bridge(settings, load=lambda: current["settings"])
    await bridge.start()
    try:
        harness = Harness(bridge, settings, server_cert_files["ca"])
        zeta = await harness.connect(await harness.enroll("zeta", "pump-1"))
        cut = settings.config.model_copy(update={"tenants": {"acme": settings.config.tenants["acme"]}})
        current["settings"] = dataclasses.replace(settings, config=cut)
        with pytest.raises(ConfigError, match=r"no \[tenants\.T\] table for zeta \(1 device\)"):
            await bridge.reload()
        assert bridge.generation == 1
        zeta.send([email("z-1")])
        await until(lambda: "accepted" in zeta.states().get("z-1", []), what="zeta's intent still admitted")
        # Once zeta's device is revoked (or zeta keeps a table), the tenant may go.
        bridge.registry.revoke(zeta.device_id, time.time())
        await bridge.reload()
        assert bridge.generation == 2
        await zeta.stop()
    finally:
        await bridge.stop()


async def test_a_start_without_a_table_for_an_enrolled_tenant_says_so(
    tmp_path: Path, server_cert_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A reload that drops zeta's table is refused; a node started on such a file (a restart after an edit, a
    copy of another site's config) ran without a word, and every intent of zeta's devices was rejected
    policy_tenant for good. The start logs the tenants and their device counts."""
    whole = {"acme": {"policy": policy("a@acme.example")}, "zeta": {"policy": policy("z@zeta.example")}}
    settings = make_settings(tmp_path, server_cert_files, tenants=whole)
    bridge = Bridge(settings)
    await bridge.start()
    try:
        harness = Harness(bridge, settings, server_cert_files["ca"])
        for name in ("pump-1", "pump-2"):
            await harness.enroll("zeta", name)
        await harness.enroll("acme", "boiler-7")
    finally:
        await bridge.stop()
    assert "tenant_without_policy" not in [getattr(r, "code", None) for r in caplog.records]
    caplog.set_level(logging.WARNING, logger="cloud_bridge.node")
    cut = settings.config.model_copy(update={"tenants": {"acme": settings.config.tenants["acme"]}})
    restarted = Bridge(dataclasses.replace(settings, config=cut))
    await restarted.start()
    await restarted.stop()
    [warning] = [r for r in caplog.records if getattr(r, "code", None) == "tenant_without_policy"]
    assert "no [tenants.T] table for: zeta (2 devices); every intent they send is rejected policy_tenant" in (
        warning.getMessage()
    )
