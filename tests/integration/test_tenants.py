"""Tenants against real parts, on SQLite and PostgreSQL: a tenant's devices send through the tenant's own SMTP
account and the others' through the vendor's, no credential crossing, also across a reload; and a tenant
flooding the vendor's provider cannot starve another tenant."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.config import load_config
from cloud_bridge.executor import Executor
from cloud_bridge.fair_share import Share, Shares
from cloud_bridge.integrations.smtp import SmtpIntegration
from cloud_bridge.node import Bridge
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.bridge import Harness, email, make_settings, until
from tests.support.smtp import SmtpAccount
from tests.support.stores import admit, opened, pg_database, store_url

__all__ = ["store_url"]  # fixture

VENDOR_PW, BRAVO_PW = "vendor-SECRET-71c0", "bravo-SECRET-2e9d"
ENV = {"VENDOR_PW": VENDOR_PW, "BRAVO_PW": BRAVO_PW}


def policy(sender: str) -> dict[str, Any]:
    return {"kinds": ["email.send"], "email_domains": ["example.com"], "email_from": sender}


def document(vendor: SmtpAccount, bravo: SmtpAccount | None, ca: Path) -> dict[str, Any]:
    own = {"integrations": {"smtp": bravo.section(ca, "BRAVO_PW")}} if bravo is not None else {}
    return {
        "bridge": {"retry_base": 0.05, "retry_cap": 0.2},
        "integrations": {"smtp": vendor.section(ca, "VENDOR_PW")},
        "tenants": {
            "acme": {"policy": policy("alerts@acme.example")},
            "bravo": {"policy": policy("alerts@bravo.example"), **own},
        },
    }


def last(states: dict[str, list[str]], intent_id: str) -> str:
    return states.get(intent_id, [""])[-1]


async def test_each_tenant_sends_through_its_own_account_and_reload_swaps_it(
    tmp_path: Path, server_cert_files: dict[str, Path], store_url: StoreUrl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ca = server_cert_files["ca"]
    vendor = SmtpAccount("vendor", VENDOR_PW).start(server_cert_files)
    bravo = SmtpAccount("bravo", BRAVO_PW).start(server_cert_files)
    settings = make_settings(tmp_path, server_cert_files, env=ENV, store=store_url)
    settings = dataclasses.replace(settings, config=load_config(document(vendor, bravo, ca), ENV))
    current = {"settings": settings}
    bridge = Bridge(settings, load=lambda: current["settings"])
    await bridge.start()
    try:
        harness = Harness(bridge, settings, ca)
        a = await harness.connect(await harness.enroll("acme", "boiler-1"))
        b = await harness.connect(await harness.enroll("bravo", "pump-1"))
        a.send([email("a-1", subject="acme 1")])
        b.send([email("b-1", subject="bravo 1")])
        await until(lambda: last(a.states(), "a-1") == last(b.states(), "b-1") == "delivered", what="both sent")
        assert vendor.subjects() == ["acme 1"]
        assert bravo.subjects() == ["bravo 1"]
        assert [m["From"] for _, _, m in bravo.messages] == ["alerts@bravo.example"]
        assert set(vendor.logins) == {("vendor", VENDOR_PW)}
        assert set(bravo.logins) == {("bravo", BRAVO_PW)}

        # A reload that takes bravo's own account away: its next email goes through the vendor's.
        current["settings"] = dataclasses.replace(settings, config=load_config(document(vendor, None, ca), ENV))
        await bridge.reload()
        assert "integrations email.send; tenants' own none" in caplog.text
        b.send([email("b-2", subject="bravo 2")])
        await until(lambda: last(b.states(), "b-2") == "delivered", what="bravo's second email")
        assert vendor.subjects() == ["acme 1", "bravo 2"]
        assert bravo.subjects() == ["bravo 1"]
        # And one that gives it back: bravo's devices are on their own account again, acme's are not.
        current["settings"] = settings
        await bridge.reload()
        assert "integrations email.send; tenants' own bravo: email.send" in caplog.text
        a.send([email("a-3", subject="acme 3")])
        b.send([email("b-3", subject="bravo 3")])
        await until(lambda: last(a.states(), "a-3") == last(b.states(), "b-3") == "delivered", what="after reload")
        assert vendor.subjects() == ["acme 1", "bravo 2", "acme 3"]
        assert bravo.subjects() == ["bravo 1", "bravo 3"]
        assert set(vendor.logins) == {("vendor", VENDOR_PW)}
        assert set(bravo.logins) == {("bravo", BRAVO_PW)}

        audit = await bridge.ledger.audit()
        seen = [caplog.text, repr(audit), repr(a.acks), repr(b.acks), repr(bridge.settings)]
        assert not any(pw in text for pw in (VENDOR_PW, BRAVO_PW) for text in seen)
        await a.stop()
        await b.stop()
    finally:
        await bridge.stop()
        vendor.stop()
        bravo.stop()


def batch(prefix: str, count: int) -> list[Envelope]:
    created = int(time.time() * 1000)
    payload = {"to": ["ops@example.com"], "text": "Boiler 3 hot"}
    return [
        Envelope(f"{prefix}-{n:05d}", "hvac-ui", "email.send", created, None, 1, {**payload, "subject": prefix})
        for n in range(count)
    ]


FLOOD, BURST, HEAD_START = 2000, 20, 40


@pytest.mark.parametrize("shares", [Shares(), Shares({"acme": Share(max_share=0.5)})], ids=["even", "capped"])
async def test_a_flooding_tenant_cannot_starve_another(
    store_url: StoreUrl, server_cert_files: dict[str, Path], shares: Shares
) -> None:
    """acme queues 2,000 emails to the vendor's provider (STARTTLS and AUTH per message), then bravo 20:
    all of bravo's end while acme has ended at most a few percent of its backlog."""
    vendor = SmtpAccount("vendor", VENDOR_PW).start(server_cert_files)
    section = vendor.section(server_cert_files["ca"], "VENDOR_PW", concurrency=4)
    smtp = SmtpIntegration.from_config(section, ENV)
    acme, bravo = DeviceRef("dev-acme", "acme", "boiler-1"), DeviceRef("dev-bravo", "bravo", "pump-1")
    ended: dict[str, list[str]] = {"acme": [], "bravo": []}

    async def on_final(device_id: str, ack: Ack) -> None:
        assert ack.state is AckState.DELIVERED, ack
        ended["acme" if device_id == acme.device_id else "bravo"].append(ack.id)

    def allowed(_: Envelope) -> Decision:
        return Decision(True, overrides={"from": "alerts@vendor.example"})

    try:
        async with opened(store_url) as store:
            flood = batch("acme", FLOOD)
            for start in range(0, FLOOD, 500):
                await admit(store.ledger, acme, flood[start : start + 500], allowed, time.time())
            executor = Executor(store.ledger, {"email.send": smtp}, on_final=on_final, shares=shares, owner="n")
            await executor.start()
            try:
                await until(lambda: len(ended["acme"]) >= HEAD_START, what="acme's backlog draining", timeout=60)
                await admit(store.ledger, bravo, batch("bravo", BURST), allowed, time.time())
                executor.wake()
                await until(lambda: len(ended["bravo"]) == BURST, what="all of bravo's emails", timeout=60)
                acme_done = len(ended["acme"])
            finally:
                await executor.stop()
        # Oldest first, bravo would have waited for all 2,000. With its fair share it had about half the
        # slots (with acme capped at half, all it asked for): acme ended little more than its head start.
        assert acme_done <= HEAD_START + 3 * BURST, acme_done
        assert acme_done < FLOOD * 0.06
        assert sorted(ended["bravo"]) == [e.id for e in batch("bravo", BURST)]
    finally:
        vendor.stop()


async def test_two_nodes_share_their_slots_fairly_too(server_cert_files: dict[str, Path]) -> None:
    """Two PostgreSQL nodes, each with its own executor (2 slots) on the vendor's account: acme's 1,000
    then bravo's 20; every node is fair on its own, so bravo's all end early, and no row runs twice."""
    vendor = SmtpAccount("vendor", VENDOR_PW).start(server_cert_files)
    section = vendor.section(server_cert_files["ca"], "VENDOR_PW", concurrency=2)
    acme, bravo = DeviceRef("dev-acme", "acme", "boiler-1"), DeviceRef("dev-bravo", "bravo", "pump-1")
    ended: dict[str, list[str]] = {"acme": [], "bravo": []}

    async def on_final(device_id: str, ack: Ack) -> None:
        assert ack.state is AckState.DELIVERED, ack
        ended["acme" if device_id == acme.device_id else "bravo"].append(ack.id)

    def allowed(_: Envelope) -> Decision:
        return Decision(True, overrides={"from": "alerts@vendor.example"})

    flood = 1000
    try:
        with pg_database() as url:
            async with contextlib.AsyncExitStack() as stack:
                stores = [await stack.enter_async_context(opened(url, node=n)) for n in ("node-a", "node-b")]
                batch_a = batch("acme", flood)
                for start in range(0, flood, 500):
                    await admit(stores[0].ledger, acme, batch_a[start : start + 500], allowed, time.time())
                executors = [
                    Executor(s.ledger, {"email.send": SmtpIntegration.from_config(section, ENV)}, on_final=on_final,
                             owner=name)
                    for s, name in zip(stores, ("node-a", "node-b"), strict=True)
                ]  # fmt: skip
                for executor in executors:
                    await executor.start()
                    stack.push_async_callback(executor.stop)
                await until(lambda: len(ended["acme"]) >= HEAD_START, what="acme's backlog draining", timeout=60)
                await admit(stores[1].ledger, bravo, batch("bravo", BURST), allowed, time.time())
                for executor in executors:
                    executor.wake()  # as the bridge_work signal does on the other node
                await until(lambda: len(ended["bravo"]) == BURST, what="all of bravo's emails", timeout=60)
                acme_done = len(ended["acme"])
        assert acme_done <= HEAD_START + 3 * BURST, acme_done
        delivered = vendor.subjects()
        assert len(delivered) == len(ended["acme"]) + len(ended["bravo"])  # nothing ran twice
    finally:
        vendor.stop()
