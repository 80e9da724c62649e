"""Serving an aiohttp application on HOST:PORT, with TLS (the device-facing listeners) or without."""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from cloud_bridge.errors import ConfigError
from cloud_bridge.settings import HostPort


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS server context for the listeners (TLS 1.2+)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}", code="tls_config") from exc
    return context


class HttpServer:
    """Runs the app on HOST:PORT, with TLS when given a context."""

    def __init__(self, app: web.Application, bind: HostPort, context: ssl.SSLContext | None, flag: str) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._bind = bind
        self._context = context
        self._flag = flag

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind.host, self._bind.port, ssl_context=self._context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            detail = f"{self._flag} {self._bind}: {exc.strerror or exc}"
            raise ConfigError(detail, code="listen_failed") from exc

    async def stop(self) -> None:
        await self._runner.cleanup()
