"""A retry the store cannot record at first (a full disk, a real tmpfs): the executor over a real SqliteLedger and
the real http.request integration against a local HTTPS API that answers 503 with Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cloud_bridge.audit import AuditEvent
from cloud_bridge.errors import TransientError
from cloud_bridge.executor import Executor
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.ledger import entry_from_row
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import Envelope
from tests.support.disk import fill, small_disk
from tests.support.http_api import ENV, config, serve
from tests.support.stores import admit

DEV = DeviceRef("dev-1", "acme", "boiler-7")


class BusyApi:
    """Answers every request 503 with `Retry-After: 3600`, each once `release` is set."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.release = asyncio.Event()
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.keys.append(request.headers["Idempotency-Key"])
        await self.release.wait()
        return web.Response(status=503, headers={"Retry-After": "3600"})


@pytest.fixture
async def api(server_cert_files: dict[str, Path]) -> AsyncIterator[BusyApi]:
    busy = BusyApi()
    runner = await serve(busy, server_cert_files["cert"], server_cert_files["key"])
    yield busy
    busy.release.set()
    await runner.cleanup()


class RefusedReschedules:
    """Counts the ledger's reschedules the store refused (the real ledger's, on the real disk)."""

    def __init__(self, ledger: SqliteLedger) -> None:
        self.count = 0
        self._reschedule = ledger.reschedule
        ledger.reschedule = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._reschedule(*args, **kwargs)
        except TransientError:
            self.count += 1
            raise


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_retry_the_full_disk_refused_is_recorded_once_space_returns(
    api: BusyApi, server_cert_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A result the store fails to record is recorded again until it takes it, but a retry was not: it was logged
    with a traceback and dropped. The row stayed running, its lease ran out, and it was claimed again at once
    (audited `lease_expired`, a try that "may have reached the provider"), the provider's Retry-After of an hour
    lost: the bridge called a provider that had asked for an hour's rest again within a minute."""
    caplog.set_level(logging.WARNING)
    http = HttpIntegration.from_config(config(api.port, server_cert_files["ca"]), ENV)
    with small_disk(tmp_path / "disk") as disk:
        ledger = SqliteLedger(disk / "ledger.db")
        await ledger.open()
        refused = RefusedReschedules(ledger)
        executor = Executor(ledger, {"http.request": http}, on_final=lambda _d, _a: _none(), rand=lambda: 1.0)
        try:
            now = time.time()
            payload = {"credential": "crm", "method": "POST", "path": "/valves/3/close"}
            envelope = Envelope("i-1", "hvac-ui", "http.request", int(now * 1000), None, 1, payload)
            await admit(ledger, DEV, [envelope], lambda _: Decision(True), now)
            running = asyncio.create_task(executor.run_due())
            await until(lambda: len(api.keys) == 1)  # the call is under way
            filler = await asyncio.to_thread(fill, disk)
            try:
                api.release.set()
                await until(lambda: refused.count >= 1)
            finally:
                filler.unlink()
            await running
            history = await ledger.audit("dev-1")
        finally:
            await http.aclose()
            await ledger.close()
        with contextlib.closing(sqlite3.connect(disk / "ledger.db")) as conn:
            conn.row_factory = sqlite3.Row
            row = entry_from_row(conn.execute("SELECT * FROM intents").fetchone())
    assert api.keys == ["dev-1:i-1:1"]
    assert row.state is EntryState.QUEUED, row
    assert (row.code, row.tries) == ("http_503", 0)  # a 503 saying when is the provider's, no try (provider_pause)
    assert row.next_run >= now + 3600  # the provider's Retry-After kept
    assert [(r.event, r.code) for r in history] == [(AuditEvent.ACCEPT, ""), (AuditEvent.RETRY, "http_503")]
    ours = [r for r in caplog.records if r.name.startswith("cloud_bridge")]
    assert [r.getMessage() for r in ours if r.exc_info] == []  # a full disk is no bug: no traceback


async def _none() -> None:
    return None
