"""http.request through a real bridge: URL and method refused at admission, before any token is spent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from intent_contract.codec import Envelope
from tests.support.bridge import TENANTS, Harness, envelope, make_settings, running_bridge, until
from tests.support.http_api import ENV, Recorder, api, config

__all__ = ["api"]  # fixture

POLICY = {**TENANTS["acme"]["policy"], "rate": {"http.request": {"per_hour": 1, "burst": 1}}}


async def http_bridge(
    tmp_path: Path, server_cert_files: dict[str, Path], api: Recorder, tenant: dict[str, Any]
) -> AsyncIterator[Harness]:
    """A bridge that builds its http integration from config, as `cloud-bridge run` does."""
    integrations = {"http": config(api.port, server_cert_files["ca"])}
    settings = make_settings(tmp_path, server_cert_files, tenants={"acme": tenant}, integrations=integrations, env=ENV)
    async for harness in running_bridge(settings, server_cert_files["ca"], None):
        yield harness


@pytest.fixture
async def bridge(tmp_path: Path, server_cert_files: dict[str, Path], api: Recorder) -> AsyncIterator[Harness]:
    async for harness in http_bridge(tmp_path, server_cert_files, api, {"policy": POLICY}):
        yield harness


@pytest.fixture
async def narrowed(tmp_path: Path, server_cert_files: dict[str, Path], api: Recorder) -> AsyncIterator[Harness]:
    reader = {"policy": {"http_scope": {"crm": {"methods": ["GET"]}}}}
    async for harness in http_bridge(
        tmp_path, server_cert_files, api, {"policy": POLICY, "devices": {"reader": reader}}
    ):
        yield harness


def http_request(intent_id: str, **payload: Any) -> Envelope:
    return envelope(intent_id, "http.request", {"credential": "crm", "method": "GET", **payload})


async def test_url_and_method_violations_are_rejected_at_admission(bridge: Harness, api: Recorder) -> None:
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        client.send(
            [
                http_request("h-1", path="/..;/admin"),
                http_request("h-2", path="/x", method="DELETE"),
                http_request("h-3", url="https://example.com/v1/x"),
                http_request("h-4", path="/contacts"),  # the one good request gets the one rate token
            ]
        )
        await until(lambda: "delivered" in client.states().get("h-4", []), what="the good request delivered")
        by_id = {a.id: a for a in client.acks}
        assert [(by_id[i].state, by_id[i].code) for i in ("h-1", "h-2", "h-3")] == [
            ("rejected", "policy_url"),
            ("rejected", "policy_method"),
            ("rejected", "policy_url"),
        ]
        assert [r["path"] for r in api.requests] == ["/v1/contacts"]
    finally:
        await client.stop()


async def test_a_device_narrows_its_tenants_methods(narrowed: Harness, api: Recorder) -> None:
    creds = await narrowed.enroll(name="reader")
    client = await narrowed.connect(creds)
    try:
        client.send([http_request("r-1", path="/x", method="POST", json={"a": 1}), http_request("r-2", path="/y")])
        await until(lambda: "delivered" in client.states().get("r-2", []), what="the GET delivered")
        (refused,) = [a for a in client.acks if a.id == "r-1"]
        assert (refused.state, refused.code) == ("rejected", "policy_method")
        assert [r["method"] for r in api.requests] == ["GET"]
    finally:
        await client.stop()
