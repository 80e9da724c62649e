"""Shared fixtures: free loopback ports, required binaries, trustme certificates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trustme

from tests.helpers import free_port


def require_binary(name: str) -> str:
    """Path of `name`; skips the test without it, or fails under CI (OUTBOX_REQUIRE_SERVICES=1)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        message = f"{name} is not installed (apt-get install mosquitto mosquitto-clients)"
        if os.environ.get("OUTBOX_REQUIRE_SERVICES") == "1":
            pytest.fail(message + "; OUTBOX_REQUIRE_SERVICES=1 turns this skip into a failure")
        pytest.skip(message)
    return path


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA file and a server certificate/key for 127.0.0.1 and localhost."""
    directory = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(files["cert"]), append=True)
    cert.private_key_pem.write_to_path(str(files["key"]))
    return files
