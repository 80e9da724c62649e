"""Serving an aiohttp application on HOST:PORT, with TLS (the device-facing listeners) or without (metrics).

With TLS the port is one of the bridge's doors to the internet, and a stranger's connection is bounded
(`intent_contract.accept`): TLS only under the listener's `ConnectionLimits`, which here count every open connection;
a request's head within REQUEST_HEAD_TIMEOUT_S of the handshake or of the last response, and its body and
answer within REQUEST_TIMEOUT_S. aiohttp itself has no timeout on either. The plain metrics listener is held to
the same rules under METRICS_CONNECTIONS: it faces a private network, not no one, and took every connection
offered (800 idle ones held 800 descriptors of the node, which its devices' connections and its store need too).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from aiohttp import web

from cloud_bridge.errors import ConfigError
from cloud_bridge.settings import HostPort
from intent_contract.accept import ConnectionWatch, GuardedListener, HeadDeadlines, within_deadlines
from intent_contract.accept_limits import DEFAULT_CONNECTION_LIMITS, ConnectionLimits
from intent_contract.server_log import ServerLog

REQUEST_HEAD_TIMEOUT_S = 30.0  # from the TLS handshake, or the last response, to a request's whole head
REQUEST_TIMEOUT_S = 60.0  # from a request's head to its answer: its body read and the handler done
KEEPALIVE_TIMEOUT_S = 15.0  # aiohttp closes an idle connection first, before its head deadline aborts it
# A request's head: aiohttp's defaults (128 header lines of 8,190 bytes) let a connection that never finished its
# head hold about 2.5 MB of the bridge for REQUEST_HEAD_TIMEOUT_S, 1.2 GB for the connections a listener holds
# before authentication. Enrollment, health and a browser on the dashboard send a dozen or two lines; a line
# keeps aiohttp's length, for a browser's Cookie header (the bridge's host may share a domain's cookies).
HEAD_LINE_MAX = 8190  # bytes in the request line, and in one header line
HEAD_LINES_MAX = 32
# A stop waits this long for requests under way (aiohttp's default, 60 s, is longer than systemd's and compose's
# 30 s of grace: a stranger's request body sent slowly held the node's stop for 59 s, until SIGKILL).
SHUTDOWN_TIMEOUT_S = 2.0
METRICS_CONNECTIONS = ConnectionLimits(per_address=16, total=64)  # scrapers and health checks need a few


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
    """Runs the app on HOST:PORT; with a TLS context, under `limits` (`watch` hears how they hold)."""

    def __init__(
        self,
        app: web.Application,
        bind: HostPort,
        context: ssl.SSLContext | None,
        flag: str,
        *,
        name: str = "https",
        limits: ConnectionLimits = DEFAULT_CONNECTION_LIMITS,
        watch: ConnectionWatch | None = None,
    ) -> None:
        self._heads = HeadDeadlines(REQUEST_HEAD_TIMEOUT_S)
        app.middlewares.append(within_deadlines(self._heads, REQUEST_TIMEOUT_S))
        self._name = name  # the listener's name in log lines and metrics
        self._runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT_S, logger=ServerLog(),
            shutdown_timeout=SHUTDOWN_TIMEOUT_S, max_line_size=HEAD_LINE_MAX, max_field_size=HEAD_LINE_MAX,
            max_headers=HEAD_LINES_MAX,
        )  # fmt: skip
        self._bind = bind
        self._context = context
        self._flag = flag
        self._limits = limits
        self._watch = watch
        self._server: asyncio.AbstractServer | None = None
        self._listener: GuardedListener | None = None

    async def start(self) -> None:
        await self._runner.setup()
        host, port = self._bind.host, self._bind.port
        try:
            assert self._runner.server is not None
            factory = self._heads.protocol_factory(self._runner.server)
            self._listener = GuardedListener(self._name, factory, self._context, self._limits, watch=self._watch)
            self._server = await asyncio.get_running_loop().create_server(self._listener.protocol, host, port)
        except OSError as exc:
            await self._runner.cleanup()
            detail = f"{self._flag} {self._bind}: {exc.strerror or exc}"
            raise ConfigError(detail, code="listen_failed") from exc

    def use_tls(self, context: ssl.SSLContext) -> None:
        """Connections accepted from now on get this certificate and key (a reload read them again)."""
        if self._listener is not None and self._context is not None:  # a plain listener stays plain
            self._listener.context = context

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._listener is not None:
            await self._listener.aclose()
        await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()
