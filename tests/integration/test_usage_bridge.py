"""Usage from real traffic through a real bridge, on SQLite and on PostgreSQL: `cloud-bridge usage` groups
what the executor finished and admission refused, with provider times measured around the integration."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloud_bridge.cli import main
from cloud_bridge.usage import day_of
from tests.support.bridge import CountingIntegration, Harness, counting, email, envelope, make_settings, running_bridge
from tests.support.net import until
from tests.support.stores import BACKENDS, store_url_for

__all__ = ["counting"]  # fixture


@pytest.fixture(params=BACKENDS)
async def bridge(
    request: pytest.FixtureRequest, tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> AsyncIterator[Harness]:
    with store_url_for(request.param, tmp_path) as url:
        settings = make_settings(tmp_path, server_cert_files, store=url)
        async for harness in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
            yield harness


async def usage_cli(bridge: Harness, *args: str) -> Any:
    store, data_dir = str(bridge.settings.store_url), str(bridge.settings.data_dir)
    argv = ["usage", "--store", store, "--data-dir", data_dir, *args]
    result = await asyncio.to_thread(CliRunner().invoke, main, argv)  # the CLI runs its own event loop
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


async def test_usage_counts_real_traffic_by_kind_device_and_day(bridge: Harness) -> None:
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    ids = ["a", "b", "c", "bad", "outside"]
    try:
        outside = envelope("outside", "email.send", {"to": ["x@evil.example"], "subject": "s", "text": "t"})
        client.send([email("a"), email("b"), email("c"), email("bad", subject="fail"), outside])
        final = {"delivered", "failed", "rejected"}
        await until(lambda: all(final & set(client.states().get(i, [])) for i in ids), what="every intent ended")
    finally:
        await client.stop()
    today = day_of(time.time())

    by_kind = await usage_cli(bridge, "--since", "1d", "--by", "kind", "--json")
    [row] = by_kind["rows"]
    assert (row["kind"], row["count"], row["failures"], row["delivered"], row["failed"], row["rejected"]) == (
        "email.send", 5, 2, 3, 1, 1,
    )  # fmt: skip
    times = row["provider_ms"]  # four provider calls, timed by the executor (the refused one made none)
    assert times["max"] is not None and 0 <= times["p50"] <= times["p95"] <= times["max"]

    by_device = await usage_cli(bridge, "--since", today, "--tenant", "acme", "--by", "device", "--json")
    assert [(r["tenant"], r["device_id"], r["count"]) for r in by_device["rows"]] == [("acme", creds.device_id, 5)]
    nothing = await usage_cli(bridge, "--since", "2020-01-01", "--until", "2020-01-31", "--json")
    assert nothing["rows"] == [] and nothing["total"]["count"] == 0

    table = await usage_cli(bridge, "--since", "7d", "--kind", "email.send")
    assert today in table and "intents" in table and " 5 " in f" {table} "


async def test_usage_refuses_a_bad_day_in_one_line(bridge: Harness) -> None:
    store, data_dir = str(bridge.settings.store_url), str(bridge.settings.data_dir)
    argv = ["usage", "--store", store, "--data-dir", data_dir, "--since", "last tuesday"]
    result = await asyncio.to_thread(CliRunner().invoke, main, argv)
    assert result.exit_code == 1
    assert "neither a day (YYYY-MM-DD) nor a duration" in result.output


async def test_an_intent_refused_for_its_schema_counts_in_usage_as_in_the_audit(bridge: Harness) -> None:
    """An email.send without a subject ends `rejected`/`schema_violation` at the bridge: audited, and
    counted in usage under its kind, so usage and the audit agree."""
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        client.send([email("ok"), envelope("broken", "email.send", {"to": ["ops@example.com"], "text": "t"})])
        final = {"delivered", "rejected"}
        await until(lambda: all(final & set(client.states().get(i, [])) for i in ("ok", "broken")), what="both ended")
    finally:
        await client.stop()
    records = await bridge.bridge.ledger.audit(creds.device_id)
    ends = [(r.intent_id, r.event, r.code) for r in records if r.event in {"deliver", "reject"}]
    assert sorted(ends) == [("broken", "reject", "schema_violation"), ("ok", "deliver", "")]
    by_kind = await usage_cli(bridge, "--since", "1d", "--by", "kind", "--json")
    assert [(r["kind"], r["count"], r["delivered"], r["rejected"]) for r in by_kind["rows"]] == [
        ("email.send", 2, 1, 1)
    ]
