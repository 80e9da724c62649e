"""Shared fixtures: free loopback ports, required binaries, trustme certificates."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.net import free_port


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    """Collect after every test: a socket or client a test leaked warns (and fails) in that test, not a later one."""
    yield
    gc.collect()


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
