"""A SQLite bridge whose disk fills under it: nothing acked is lost, nothing runs twice, and it recovers by
itself once space returns (a real tmpfs, filled; tests/support/disk.py)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.errors import BridgeError, TransientError
from cloud_bridge.ledger import Ledger
from edge_outbox.enroll_client import enroll
from edge_outbox.errors import TransientError as EdgeTransientError
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from tests.support.bridge import (
    CountingIntegration,
    HeldIntegration,
    counting,
    email,
    make_settings,
    running_bridge,
    until,
)
from tests.support.disk import fill, small_disk

__all__ = ["counting"]  # fixtures


class RefusedFinishes:
    """Counts the ledger's finishes the store refused (the real ledger's, on the real disk)."""

    def __init__(self, ledger: Ledger) -> None:
        self.count = 0
        self._finish = ledger.finish
        ledger.finish = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._finish(*args, **kwargs)
        except TransientError:
            self.count += 1
            raise


class Refusals:
    """Counts the calls of `owner.name` (the real one, sync or async) that the store refused."""

    def __init__(self, owner: object, name: str) -> None:
        self.count = 0
        real = getattr(owner, name)

        def sync(*args: Any, **kwargs: Any) -> Any:
            try:
                return real(*args, **kwargs)
            except BridgeError:
                self.count += 1
                raise

        async def coro(*args: Any, **kwargs: Any) -> Any:
            try:
                return await real(*args, **kwargs)
            except BridgeError:
                self.count += 1
                raise

        setattr(owner, name, coro if asyncio.iscoroutinefunction(real) else sync)

    def reached(self, n: int) -> bool:
        return self.count >= n


async def test_a_full_disk_is_a_line_when_it_starts_and_one_when_it_ends_and_nothing_is_acked_meanwhile(
    tmp_path: Path,
    server_cert_files: dict[str, Path],
    counting: CountingIntegration,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a full disk the revocation watcher wrote two ERROR lines with their tracebacks at every poll (four a
    second by default), the executor one a second, the ledger's writer "transactions fail" then "commit again"
    at every read between two writes, and every refused batch of every device a line."""
    caplog.set_level(logging.WARNING)
    with small_disk(tmp_path / "disk") as disk:
        settings = make_settings(disk, server_cert_files)
        async for node in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
            client = await node.connect(await node.enroll())
            client.send([email("before")])
            await until(partial(lambda c: "delivered" in c.states().get("before", []), client), what="first")
            polls = Refusals(node.bridge.registry, "revocation_counter")
            registry = node.bridge.metrics.registry
            caplog.clear()
            filler = await asyncio.to_thread(fill, disk)
            try:
                for n in range(20):
                    client.send([email(f"full-{n}")])
                refused = partial(registry.get_sample_value, "bridge_batches_total", {"outcome": "error"})
                await until(partial(lambda r: (r() or 0) >= 20, refused), timeout=60, what="the batches refused")
                await until(partial(lambda r: r.reached(10), polls), timeout=60, what="revocation polls refused")
            finally:
                filler.unlink()
            acked = client.states()
            assert [i for i in acked if i.startswith("full-")] == [], acked
            client.send([email("room-again")])
            await until(partial(lambda c: "delivered" in c.states().get("room-again", []), client), timeout=60,
                        what="admitted and run again, without a restart")  # fmt: skip
            await client.stop()
    ours = [r for r in caplog.records if r.name.startswith(("cloud_bridge", "intent_contract"))]
    assert [r.getMessage() for r in ours if r.exc_info] == []  # a full disk is no bug: no traceback
    # Per kind of line: the template, or its first argument where the template starts with it ("%s: ...").
    kinds = [(r.args[0] if r.msg.startswith("%s:") and r.args else r.msg) for r in ours if r.levelno >= logging.ERROR]
    errors = collections.Counter(kinds)
    throttled = errors.pop("message not processed: %s%s", 0)
    assert 1 <= throttled <= 2, [r.getMessage() for r in ours]
    assert all(n == 1 for n in errors.values()), errors


async def test_a_result_the_full_disk_refused_is_recorded_once_space_returns_and_never_runs_again(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """The result of a call that ended on a full disk was tried 10 times (about 9 s), then dropped: the row
    stayed running, its lease ran out, and once space came back the executor claimed it again and the email
    went out a second time."""
    held = HeldIntegration()
    with small_disk(tmp_path / "disk") as disk:
        settings = make_settings(disk, server_cert_files, bridge={"lease": "3s"})
        async for node in running_bridge(settings, server_cert_files["ca"], {"email.send": held}):
            refused = RefusedFinishes(node.bridge.ledger)
            client = await node.connect(await node.enroll())
            client.send([email("once")])
            await until(lambda: len(held.calls) == 1, what="the provider call under way")
            filler = await asyncio.to_thread(fill, disk)
            try:
                held.release.set()
                # The 10 tries (about 9 s) the result used to get: past the 3 s lease too (renewals fail as well).
                await until(partial(lambda r: r.count >= 10, refused), timeout=60, what="the result refused")
            finally:
                filler.unlink()
            await until(partial(lambda c: "delivered" in c.states().get("once", []), client), timeout=60,
                        what="the result recorded and sent")  # fmt: skip
            assert len(held.calls) == 1, [job.attempt for job in held.calls]
            assert client.states()["once"] == ["accepted", "delivered"]
            await client.stop()


async def test_enrolling_and_asking_on_a_full_disk_is_503_and_the_same_code_enrolls_once_space_returns(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    """The device API answered a store that failed with 500 text/plain (and aiohttp's traceback at ERROR for each
    request): `edge-outbox enroll` said `the bridge refused enrollment (HTTP 500): Internal Server Error`."""
    with small_disk(tmp_path / "disk") as disk:
        settings = make_settings(disk, server_cert_files)
        async for node in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
            creds = await node.enroll()
            code = node.bridge.registry.create_code("acme", "boiler-8", 3600, time.time())
            site_code = node.bridge.registry.create_code("acme", "boiler-9", 3600, time.time())
            key = public_key_pem(generate_private_key_pem())
            filler = await asyncio.to_thread(fill, disk)
            site = tmp_path / "site"
            try:
                answers = [await node.enroll_request(code, key), (*await node.device_status(creds), {})]
                # The site's enroll said the bridge *refused* the code (a permanent error): it is told to try again
                with pytest.raises(EdgeTransientError, match=r"could not enroll now \(HTTP 503\).*run it again"):
                    await asyncio.to_thread(enroll, site, node.base_url, site_code, node.ca_file)
            finally:
                filler.unlink()
            for status, body, _ in answers:
                assert status == 503, body
                assert body["error"] == "store_unavailable"
                assert "try again later" in body["detail"]
                assert str(disk) not in str(body)  # why, never where
            assert answers[0][2]["Retry-After"] == "30"
            status, body = await node.post_enroll(code, key)  # the code was not spent
            assert status == 201, body
            assert (await node.device_status(creds))[0] == 200
            identity = await asyncio.to_thread(enroll, site, node.base_url, site_code, node.ca_file)  # run again
            assert identity.name == "boiler-9"
