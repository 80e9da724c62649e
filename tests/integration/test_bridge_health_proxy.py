"""`cloud-bridge health` against a node that reads PROXY headers from the probe's own address.

Behind a balancer on the node's host, `[bridge] proxy_protocol_from` lists 127.0.0.1, and the node closes every
connection from there that does not start with a PROXY header, before TLS: docs/deploy.md's `cloud-bridge health
--url https://localhost:8443/healthz` then failed with the TLS library's words alone.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.support.bridge import CountingIntegration, counting, make_settings, running_bridge
from tests.support.stack import bridge_cli

__all__ = ["counting"]  # fixture

pytestmark = pytest.mark.timeout(60)


async def test_health_from_the_balancers_address_says_why_the_node_closed_it(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    """A balancer on the node's host: proxy_protocol_from lists 127.0.0.1, and `cloud-bridge health` from there
    said only `[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol`."""
    settings = make_settings(tmp_path, server_cert_files, bridge={"proxy_protocol_from": ["127.0.0.1"]})
    async for harness in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
        url = f"https://127.0.0.1:{settings.http_listen.port}/healthz"
        command = [*bridge_cli(), "health", "--url", url, "--ca", str(harness.ca_file)]
        result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "a node does so to an address in its [bridge] proxy_protocol_from that sends no PROXY header" in (
        result.stderr
    )
