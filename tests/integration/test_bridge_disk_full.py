"""A SQLite bridge whose disk fills under it: nothing acked is lost, nothing runs twice, and it recovers by
itself once space returns (a real tmpfs, filled; tests/support/disk.py)."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

from cloud_bridge.errors import TransientError
from cloud_bridge.ledger import Ledger
from tests.support.bridge import HeldIntegration, email, make_settings, running_bridge, until
from tests.support.disk import fill, small_disk


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
