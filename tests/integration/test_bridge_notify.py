"""notify through a real bridge whose Apprise provider is slow: the rest of the bridge keeps working."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import apprise
import pytest

from tests.support.bridge import TENANTS, envelope, make_settings, running_bridge, until
from tests.support.notify import HeldHook, held_hook

__all__ = ["held_hook"]  # fixtures


async def test_slow_notifications_do_not_stop_devices_connecting(
    tmp_path: Path, server_cert_files: dict[str, Path], held_hook: HeldHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Device authentication, enrollment and admission run on the loop's default thread pool. Apprise's
    # blocking calls ran there too: as many slow notifications as that pool has threads (2 here, 6 on two
    # cores) and no device could connect until Apprise gave up on them.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
    # Apprise's own deadline (a minute) would end the calls, and free those threads, before the test's: longer
    # than the test, so that only threads of the integration's own let the device in.
    monkeypatch.setattr(apprise.AppriseAsset, "_service_timeout", 3600.0)
    policy = {**TENANTS["acme"]["policy"], "kinds": ["notify"], "notify_targets": ["oncall"]}
    settings = make_settings(
        tmp_path,
        server_cert_files,
        tenants={"acme": {"policy": policy}},
        integrations={"notify": {"concurrency": 2, "targets": {"oncall": {"urls_env": "ONCALL_URLS"}}}},
        # rto: Apprise's read timeout, so that it waits for the held body rather than give up after 4 s
        env={"ONCALL_URLS": f"json://127.0.0.1:{held_hook.port}/hook?rto=300"},
    )
    async for harness in running_bridge(settings, server_cert_files["ca"], None):
        sender = await harness.connect(await harness.enroll(name="panel"))
        other = await harness.enroll(name="boiler")
        sender.send([envelope(f"n-{i}", "notify", {"target": "oncall", "body": "Boiler 3 hot"}) for i in range(2)])
        await until(lambda: held_hook.held == 2, what="both notifications held by the provider")

        assert await harness.connack(other) == 0  # accepted

        assert (held_hook.held, held_hook.answered) == (2, 0)  # while both were still held
        held_hook.release.set()
        await until(lambda s=sender: all("delivered" in s.states().get(i, []) for i in ("n-0", "n-1")),
                    what="both notifications delivered")  # fmt: skip
        await sender.stop()
