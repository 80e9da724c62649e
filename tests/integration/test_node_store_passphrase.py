"""A store URL carrying libpq's `sslpassword` (the passphrase of an encrypted client key, which libpq takes in the
connection string only): a node on real PostgreSQL reaches its store with it, and never prints it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from cloud_bridge.errors import NoStoreError
from cloud_bridge.store import open_store, require_made
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, email, node, until
from tests.support.stores import pg_url

__all__ = ["pg_url"]  # fixtures


async def test_the_nodes_start_line_names_the_store_without_its_passphrase(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl, caplog: pytest.LogCaptureFixture
) -> None:
    """The start line, `bridge node ... running: ..., store postgresql://...?sslpassword=...`, printed it whole."""
    caplog.set_level(logging.DEBUG)
    passphrase = f"S3CR3T-{os.urandom(8).hex()}"
    url = StoreUrl.parse(f"{pg_url}?sslmode=prefer&sslpassword={passphrase}")
    counting = CountingIntegration()
    async with node(tmp_path, server_cert_files, url, "node-a", counting) as bridge:
        creds = await bridge.enroll()
        client = await bridge.connect(creds)
        try:
            client.send([email("i-1")])
            await until(lambda: [job.intent_id for job in counting.calls] == ["i-1"])  # the store works
        finally:
            await client.stop()
    start = [r.getMessage() for r in caplog.records if "running" in r.getMessage() and r.name == "cloud_bridge.node"]
    assert len(start) == 1 and f"store {pg_url}?sslmode=prefer&sslpassword=***" in start[0]
    assert passphrase not in caplog.text


def test_an_operators_command_on_a_store_never_made_names_it_without_its_passphrase(pg_url: StoreUrl) -> None:
    passphrase = f"S3CR3T-{os.urandom(8).hex()}"
    store = open_store(StoreUrl.parse(f"{pg_url}?sslpassword={passphrase}"), node="cli", timeout=5)  # an empty database
    with pytest.raises(NoStoreError) as info:
        require_made(store)
    assert f"no bridge store at {pg_url}?sslpassword=***: check --data-dir" in str(info.value)
    assert passphrase not in str(info.value)
