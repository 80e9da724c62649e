"""Before a node starts anything: each address it will listen on is free, or one line names the flag."""

from __future__ import annotations

import socket

from cloud_bridge.errors import ConfigError
from cloud_bridge.settings import HostPort


def check_port_free(bind: HostPort, flag: str) -> None:
    """Fail with a one-line message naming the flag when the address is taken (before any I/O starts)."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind.host, bind.port))
        except OSError as exc:
            raise ConfigError(f"{flag} {bind}: {exc.strerror or exc}", code="listen_failed") from exc
