"""Every refusal is audited with its tenant, through a real bridge on SQLite and on PostgreSQL: a schema
violation, a policy refusal, a rate limit, an intent expired on arrival or too old, a batch of an unknown
wire version, a refused connect (bad token, revoked device); `cloud-bridge audit --tenant` finds them, and
usage counts the refused intents."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner

from cloud_bridge.audit import AuditEvent, AuditRecord
from cloud_bridge.cli import main
from cloud_bridge.usage import Dimension, UsageQuery, day_of
from tests.support.bridge import (
    TENANTS,
    Creds,
    Harness,
    counting,
    email,
    envelope,
    make_settings,
    refused_alone,
    running_bridge,
)
from tests.support.net import until
from tests.support.stores import BACKENDS, store_url_for

__all__ = ["counting"]  # fixture

POLICY = {**TENANTS["acme"]["policy"], "rate": {"email.send": {"per_hour": 1, "burst": 1}}}
OTHER = {"globex": {"policy": {"kinds": ["email.send"], "email_domains": ["example.com"]}}}


@pytest.fixture(params=BACKENDS)
async def bridge(
    request: pytest.FixtureRequest, tmp_path: Path, server_cert_files: dict[str, Path], counting: Any
) -> AsyncIterator[Harness]:
    with store_url_for(request.param, tmp_path) as url:
        settings = make_settings(tmp_path, server_cert_files, tenants={"acme": {"policy": POLICY}, **OTHER}, store=url)
        async for harness in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
            yield harness


async def audited(bridge: Harness, tenant: str, event: AuditEvent, code: str) -> AuditRecord:
    """Wait for the audit record of `tenant` with `event` and `code`, and return it."""
    found: list[AuditRecord] = []

    async def seen() -> bool:
        records = await bridge.bridge.ledger.audit(tenant=tenant)
        found[:] = [r for r in records if r.event is event and r.code == code]
        return bool(found)

    await until(seen, what=f"an audit record {event}/{code} of {tenant}")
    return found[0]


async def refused_ack(bridge: Harness, creds: Creds, batch: bytes, intent_id: str) -> str:
    """Send `batch` from the device and return the code of its `rejected`/`expired` ack of `intent_id`."""
    client = await bridge.connect(creds)
    try:
        client.publish("intents", batch)
        await until(lambda: intent_id in client.states(), what=f"the ack of {intent_id}")
        [ack] = [a for a in client.acks if a.id == intent_id]
    finally:
        await client.stop()
    assert str(ack.state) in ("rejected", "expired"), ack
    return ack.code


def batch(*items: dict[str, Any], version: int = 1) -> bytes:
    packed: bytes = msgpack.packb({"v": version, "items": list(items)}, use_bin_type=True)
    return packed


async def test_a_schema_violation_is_audited(bridge: Harness) -> None:
    creds = await bridge.enroll()
    bad = {**email("no-subject").to_wire(), "payload": {"to": ["ops@example.com"], "text": 5}}
    code = await refused_ack(bridge, creds, batch(bad), "no-subject")
    record = await audited(bridge, "acme", AuditEvent.REJECT, code)
    assert (record.device_id, record.intent_id, record.tenant) == (creds.device_id, "no-subject", "acme")
    # Nothing of it reached the ledger's rows: the audit record is all there is.
    assert await bridge.bridge.ledger.unconfirmed(creds.device_id) == []


async def test_a_refusal_that_quotes_a_nul_is_audited_and_the_rest_of_the_batch_goes_on(
    bridge: Harness, counting: Any
) -> None:
    # The schema's reason quotes the payload's key; PostgreSQL's text refuses NUL, and that failed the
    # admission of the whole batch on every resend. The reason is stored with the NUL written out.
    bad = {**email("nul-key").to_wire(), "payload": {**email("x").payload, "x\x00y": 1}}
    acks = await refused_alone(bridge, counting, [bad, email("after-nul").to_wire()], ["nul-key"], ["after-nul"])
    detail = acks["nul-key"].detail
    assert "\x00" not in detail and "x\\u0000y" in detail, detail
    record = await audited(bridge, "acme", AuditEvent.REJECT, "schema_violation")
    assert (record.intent_id, record.detail) == ("nul-key", detail)


async def test_a_policy_refusal_is_audited(bridge: Harness) -> None:
    creds = await bridge.enroll()
    outside = envelope("to-evil", "email.send", {"to": ["x@evil.example"], "subject": "s", "text": "t"})
    code = await refused_ack(bridge, creds, batch(outside.to_wire()), "to-evil")
    record = await audited(bridge, "acme", AuditEvent.REJECT, code)
    assert record.intent_id == "to-evil" and record.kind == "email.send" and code.startswith("policy")


async def test_a_rate_limit_refusal_is_audited(bridge: Harness) -> None:
    creds = await bridge.enroll()
    code = await refused_ack(bridge, creds, batch(email("first").to_wire(), email("second").to_wire()), "second")
    assert code == "rate_limited"
    record = await audited(bridge, "acme", AuditEvent.REJECT, "rate_limited")
    assert record.intent_id == "second"


async def test_expired_on_arrival_and_too_old_are_audited(bridge: Harness) -> None:
    creds = await bridge.enroll()
    now_ms = int(time.time() * 1000)
    late = {**email("late").to_wire(), "expires": now_ms - 1000}
    ancient = {**email("ancient").to_wire(), "created": now_ms - 200 * 86_400_000}
    assert await refused_ack(bridge, creds, batch(late, ancient), "ancient") == "too_old"
    assert (await audited(bridge, "acme", AuditEvent.EXPIRE, "expired")).intent_id == "late"
    assert (await audited(bridge, "acme", AuditEvent.REJECT, "too_old")).intent_id == "ancient"


async def test_a_batch_of_an_unknown_wire_version_is_audited(bridge: Harness) -> None:
    creds = await bridge.enroll()
    code = await refused_ack(bridge, creds, batch({"id": "from-the-future"}, version=99), "from-the-future")
    record = await audited(bridge, "acme", AuditEvent.REJECT, code)
    assert code == "unsupported_version" and record.intent_id == "from-the-future"


async def test_refused_connects_are_audited_for_the_devices_tenant(bridge: Harness) -> None:
    creds = await bridge.enroll(tenant="globex", name="pump-1")
    client = await bridge.connect(creds, password="not-a-token")
    await client.stop()
    assert not client.accepted
    record = await audited(bridge, "globex", AuditEvent.REFUSE, "token_invalid")
    assert (record.device_id, record.intent_id) == (creds.device_id, "")
    assert "connect refused from 127.0.0.1" in record.detail
    bridge.bridge.registry.revoke(creds.device_id, time.time())
    client = await bridge.connect(creds)
    await client.stop()
    await audited(bridge, "globex", AuditEvent.REFUSE, "device_revoked")
    assert await bridge.bridge.ledger.audit(tenant="acme") == []


async def test_the_cli_filters_the_audit_by_tenant_and_usage_counts_refusals(bridge: Harness) -> None:
    acme = await bridge.enroll()
    globex = await bridge.enroll(tenant="globex", name="pump-1")
    outside = envelope("to-evil", "email.send", {"to": ["x@evil.example"], "subject": "s", "text": "t"})
    await refused_ack(bridge, acme, batch(outside.to_wire()), "to-evil")
    await refused_ack(bridge, globex, batch(email("late", subject="x").to_wire() | {"expires": 1}), "late")
    await audited(bridge, "globex", AuditEvent.EXPIRE, "expired")
    store = str(bridge.settings.store_url)
    data_dir = str(bridge.settings.data_dir)
    args = ["audit", "--tenant", "globex", "--json", "--store", store, "--data-dir", data_dir]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)  # the CLI runs its own event loop
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert {(r["tenant"], r["intent_id"], r["event"]) for r in records} == {("globex", "late", "expire")}
    today = day_of(time.time())
    rows = await bridge.bridge.ledger.usage(UsageQuery(today, today, group=(Dimension.TENANT,)))
    assert [(r.tenant, r.count, r.failures) for r in rows] == [("acme", 1, 1), ("globex", 1, 1)]
