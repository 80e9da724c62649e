"""`edge-outbox enroll` names why TLS refused the bridge: wrong CA, wrong host name, expired."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from edge_outbox.enroll_client import enroll
from edge_outbox.errors import PermanentError
from edge_outbox.identity import load_identity
from tests.support.bridge import Harness, make_settings, running_bridge
from tests.support.http_api import Recorder, serve

PAST = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
Issue = Callable[[trustme.CA], trustme.LeafCert]
CERTS: dict[str, Issue] = {
    "wrong_host": lambda ca: ca.issue_cert("bridge.example"),
    "expired": lambda ca: ca.issue_cert("127.0.0.1", not_before=PAST, not_after=PAST + datetime.timedelta(days=1)),
}


@pytest.fixture(params=sorted(CERTS))
async def odd_bridge(request: pytest.FixtureRequest, tmp_path: Path, ca: trustme.CA) -> AsyncIterator[Harness]:
    """A bridge whose certificate comes from the pinned CA but is wrong in one other way."""
    leaf = CERTS[request.param](ca)
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    async for harness in running_bridge(make_settings(tmp_path / "bridge", files), files["ca"], {}):
        yield harness


EXPECTED = {
    "wrong_host": r"signed by the pinned CA .* but refused: IP address mismatch, certificate is not valid for "
    r"'127\.0\.0\.1'; give --bridge the host name",
    "expired": r"signed by the pinned CA .* but refused: certificate has expired",
}


async def test_the_real_reason_is_named(odd_bridge: Harness, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    kind = request.node.callspec.params["odd_bridge"]
    code = await asyncio.to_thread(odd_bridge.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    with pytest.raises(PermanentError, match=EXPECTED[kind]) as info:
        await asyncio.to_thread(enroll, tmp_path / "edge", odd_bridge.base_url, code, odd_bridge.ca_file)
    assert "not signed" not in str(info.value)
    assert load_identity(tmp_path / "edge") is None


async def test_a_deeply_nested_answer_is_a_clean_refusal(
    tmp_path: Path, ca: trustme.CA, server_cert_files: dict[str, Path]
) -> None:
    """A bridge (or something posing as one behind the pinned CA) answering 16,000 `[` does not crash enroll."""

    class Nested(Recorder):
        async def handle(self, request: web.Request) -> web.StreamResponse:
            return web.Response(status=201, body=b"[" * 16_000, content_type="application/json")

    nested = Nested()
    runner = await serve(nested, server_cert_files["cert"], server_cert_files["key"])
    try:
        with pytest.raises(PermanentError, match=r"not usable JSON: .*nested deeper"):
            await asyncio.to_thread(
                enroll, tmp_path / "edge", f"https://127.0.0.1:{nested.port}", "code", server_cert_files["ca"]
            )
    finally:
        await runner.cleanup()
    assert load_identity(tmp_path / "edge") is None
