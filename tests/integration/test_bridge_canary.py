"""A canary secret (the http credential token, via env) reaches the provider and nowhere else.

Runs the real http.request integration against a local HTTPS server that counts requests, echoes
headers in its error bodies (as careless providers do), and checks the bearer token.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cloud_bridge.errors import ConfigError
from cloud_bridge.node import Bridge
from intent_contract.codec import Envelope
from tests.support.bridge import Harness, envelope, make_settings, until
from tests.support.net import free_port

CANARY = "canary-7f3a9c1e5b2d4f60-SECRET"


class Provider:
    """Counts requests per path; answers 200, 401 or 500 with the request headers echoed back."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            (request.path, request.headers.get("Authorization", ""), request.headers.get("Idempotency-Key", ""))
        )
        echoed = "; ".join(f"{k}: {v}" for k, v in request.headers.items())
        if request.path.endswith("/denied"):
            return web.Response(status=401, text=f"bad token in {echoed}", reason=f"Unauthorized {CANARY}")
        if request.path.endswith("/broken"):
            return web.Response(status=500, text=f"upstream error; you sent {echoed}")
        return web.json_response({"ok": True, "echo": echoed})

    def count(self, suffix: str) -> int:
        return sum(path.endswith(suffix) for path, _, _ in self.requests)


@pytest.fixture
async def provider(server_cert_files: dict[str, Path]) -> AsyncIterator[tuple[Provider, int]]:
    recorder = Provider()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert_files["cert"], server_cert_files["key"])
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield recorder, port
    finally:
        await runner.cleanup()


def _http_config(port: int, ca: Path, **token: str) -> dict[str, Any]:
    return {
        "http": {
            "allow_private_hosts": ["127.0.0.1"],
            "ca_file": str(ca),
            "credentials": {
                "crm": {
                    "base_urls": [f"https://127.0.0.1:{port}/v1/"],
                    "methods": ["POST"],
                    "auth": "bearer",
                    **(token or {"token_env": "CRM_TOKEN"}),
                }
            },
        }
    }


def _request(intent_id: str, path: str) -> Envelope:
    payload = {"credential": "crm", "method": "POST", "path": path, "json": {"n": 1}}
    return envelope(intent_id, "http.request", payload, app="crm-sync")


async def test_canary_secret_reaches_the_provider_and_nowhere_else(
    tmp_path: Path,
    server_cert_files: dict[str, Path],
    provider: tuple[Provider, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    recorder, port = provider
    settings = make_settings(
        tmp_path,
        server_cert_files,
        integrations=_http_config(port, server_cert_files["ca"]),
        env={"CRM_TOKEN": CANARY},
        bridge={"max_attempts": 2},
    )
    bridge = Bridge(settings)
    await bridge.start()
    harness = Harness(bridge, settings, server_cert_files["ca"])
    try:
        creds = await harness.enroll()
        client = await harness.connect(creds)
        batch = [_request("h-ok", "/ok"), _request("h-denied", "/denied"), _request("h-broken", "/broken")]
        client.send(batch)
        await until(
            lambda: (
                all(s[-1] in {"delivered", "failed"} for s in client.states().values()) and len(client.states()) == 3
            ),
            timeout=30,
            what="final results",
        )
        client.send(batch)  # a replay: acked again, never sent again
        await until(lambda: len(client.states()["h-ok"]) >= 3, what="duplicate acks")
        await client.stop()
        client = await harness.connect(creds)  # and after a reconnect
        client.send(batch)
        await until(lambda: len(client.states()) == 3, what="acks after reconnect")
        await client.stop()
        audit = await bridge.ledger.audit()
    finally:
        await bridge.stop()

    # The secret did its job: the provider saw it, once per execution, with a stable idempotency key.
    assert recorder.count("/ok") == 1
    assert recorder.count("/denied") == 2  # a 401 is the bridge's key, not the intent: retried
    assert recorder.count("/broken") == 2  # max_attempts = 2, both transient
    assert {auth for _, auth, _ in recorder.requests} == {f"Bearer {CANARY}"}
    by_state = {a.id: (a.state, a.code) for a in client.acks}
    assert by_state["h-ok"] == ("delivered", "")
    assert by_state["h-denied"][0] == "failed"
    assert by_state["h-broken"][0] == "failed"

    # ...and appears nowhere else.
    assert CANARY not in caplog.text
    for ack in client.acks:
        assert CANARY not in f"{ack.code} {ack.detail}"
    assert audit
    for record in audit:
        assert CANARY not in repr(record)
    files = [p for p in settings.data_dir.iterdir() if p.name.endswith((".db", "-wal", "-shm", "-journal"))]
    assert any(p.name == "ledger.db" for p in files)
    for path in files:
        assert CANARY.encode() not in path.read_bytes(), path.name
    assert CANARY not in repr(settings)


async def test_a_secret_written_in_the_config_is_refused_without_echoing_it(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    with pytest.raises(ConfigError) as info:  # when the config is read, before anything starts
        make_settings(
            tmp_path, server_cert_files, integrations=_http_config(free_port(), server_cert_files["ca"], token=CANARY)
        )
    assert CANARY not in str(info.value)
    assert CANARY not in repr(info.value)
