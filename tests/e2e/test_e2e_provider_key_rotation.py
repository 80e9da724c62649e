"""Provider key rotation in the middle of a drain, with no device touched and nothing failed or lost.

A real bridge process and a real edge drain http.request intents to an HTTPS provider that accepts
only the old bearer token before its switch and only the new one after. Mid-drain, with requests in
flight (the provider holds them), the operator writes the new token file, the provider switches and
`cloud-bridge reload` makes the bridge use the new key for new jobs. Requests refused in between
(a 401 is the bridge's key, not the intent) are retried, and run with the new key.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.edge import Client, OutboxProcess
from tests.support.http_api import RotatingApi
from tests.support.net import free_port, wait_until
from tests.support.stack import APP, TENANT, BridgeProcess, bridge_cli

OLD, NEW = "old-token-1f0c9a", "new-token-77b2e4"
COUNT = 300
HELD_AFTER = 100


def config(api: RotatingApi, ca: Path, token_file: Path) -> str:
    return f"""
[bridge]
retry_base = 0.05
retry_cap = 0.5
max_attempts = 40

[integrations.http]
allow_private_hosts = ["127.0.0.1"]
ca_file = "{ca}"
concurrency = 8

[integrations.http.credentials.crm]
base_urls = ["https://127.0.0.1:{api.port}/v1/"]
methods = ["POST"]
token_file = "{token_file}"

[tenants.{TENANT}.policy]
kinds = ["http.request"]
http_credentials = ["crm"]
"""


@pytest.fixture
def api(server_cert_files: dict[str, Path]) -> Iterator[RotatingApi]:
    provider = RotatingApi(OLD, server_cert_files["cert"], server_cert_files["key"], hold_after=HELD_AFTER).start()
    yield provider
    provider.close()


@pytest.mark.timeout(300)
def test_rotating_the_provider_key_mid_drain_fails_and_loses_nothing(
    tmp_path: Path, server_cert_files: dict[str, Path], api: RotatingApi
) -> None:
    token_file = tmp_path / "crm-token"
    token_file.write_text(OLD + "\n")
    bridge = BridgeProcess(tmp_path, server_cert_files, config_text=config(api, server_cert_files["ca"], token_file))
    edge: OutboxProcess | None = None
    app: Client | None = None
    try:
        bridge.start()
        edge_dir = tmp_path / "edge"
        bridge.enroll(edge_dir)
        edge = OutboxProcess(edge_dir, free_port()).start()
        app = Client(edge.port, "rotation-app", inflight=200).connect()
        app.subscribe(f"outbox/{APP}/status/#")
        intent_ids = [f"rot-{n:04d}" for n in range(COUNT)]
        for intent_id in intent_ids:
            body = {"id": intent_id, "credential": "crm", "method": "POST", "path": f"/items/{intent_id}", "json": {}}
            app.publish(f"outbox/{APP}/http.request", body, name=intent_id)
        wait_until(lambda: set(intent_ids) <= app.acked, 60, interval=0.2, what="PUBACK of every intent")

        # Mid-drain: the old key has done part of the work, and requests are in flight at the provider.
        wait_until(lambda: api.held >= 1, 60, interval=0.05, what="requests held in flight at the provider")
        before = {i for i, token, status in api.requests() if status == 200}
        assert HELD_AFTER <= len(before) < COUNT
        token_file.write_text(NEW + "\n")
        api.switch(NEW)  # the provider takes only the new key from now on
        reload = subprocess.run(
            [*bridge_cli(), "reload", "--data-dir", str(bridge.data_dir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert reload.returncode == 0, reload.stderr
        assert "reloaded: config generation 2, integrations http.request" in reload.stdout
        # The certificate the reload took, trustme's (valid until its default end).
        assert "certificate localhost, 127.0.0.1 valid until 3000-01-01T00:00:00.000Z" in reload.stdout

        wait_until(
            lambda: all(app.status_of(i) and app.status_of(i)[-1] in {"delivered", "failed"} for i in intent_ids),
            120, interval=0.5, what="a final status for every intent",
        )  # fmt: skip
    finally:
        if app is not None:
            app.close()
        if edge is not None:
            edge.stop()
        bridge.stop()

    failed = [i for i in intent_ids if "delivered" not in app.status_of(i)]
    assert failed == [], f"{len(failed)} intents not delivered, e.g. {failed[:5]}"
    accepted = [(i, token) for i, token, status in api.requests() if status == 200]
    assert {i for i, _ in accepted} == set(intent_ids)  # nothing lost: each one reached the provider...
    assert len(accepted) == COUNT  # ...and was accepted once
    refused = [(i, token) for i, token, status in api.requests() if status == 401]
    assert refused, "the switch landed on requests in flight: some were refused, then retried"
    assert {token for _, token in refused} == {OLD}
    assert {token for i, token in accepted if i not in before} == {NEW}
    assert OLD not in bridge.log() and NEW not in bridge.log()
