"""A node whose listen address is taken stops before it opens anything, with one line naming the flag."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cloud_bridge.errors import ConfigError
from cloud_bridge.listen_check import check_port_free
from cloud_bridge.node import Bridge
from cloud_bridge.settings import HostPort
from tests.support.bridge import make_settings
from tests.support.net import free_port


def listening(bind: HostPort) -> socket.socket:
    sock = socket.socket()
    sock.bind((bind.host, bind.port))
    sock.listen()
    return sock


def test_a_taken_address_is_refused_naming_the_flag_and_a_free_one_passes() -> None:
    bind = HostPort("127.0.0.1", free_port())
    check_port_free(bind, "--listen")
    with listening(bind), pytest.raises(ConfigError, match=f"^--listen 127.0.0.1:{bind.port}: ") as info:
        check_port_free(bind, "--listen")
    assert info.value.code == "listen_failed"
    check_port_free(bind, "--listen")  # the probe itself left nothing bound


@pytest.mark.parametrize("flag", ["--listen", "--http-listen", "--metrics-listen"])
async def test_a_bridge_with_a_taken_port_opens_no_store(
    tmp_path: Path, server_cert_files: dict[str, Path], flag: str
) -> None:
    settings = make_settings(tmp_path, server_cert_files)
    bind = {"--listen": settings.listen, "--http-listen": settings.http_listen}.get(flag, settings.metrics_listen)
    assert bind is not None
    bridge = Bridge(settings, integrations={})
    with listening(bind), pytest.raises(ConfigError, match=f"^{flag} 127.0.0.1:{bind.port}: "):
        await bridge.start()
    assert not (settings.data_dir / "ledger.db").exists()
