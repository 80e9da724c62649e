"""HTTP/1.1 requests written byte for byte, for what a client library refuses to send (non-ASCII headers,
bodies that lie about their encoding): the bridge must answer them with a 4xx, not a 500."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

from tests.support.bridge import Harness

Header = tuple[str, bytes]


async def raw_request(
    harness: Harness, method: str, path: str, headers: Sequence[Header] = (), body: bytes = b""
) -> tuple[int, bytes]:
    """Send one request over verified TLS to the bridge's HTTPS endpoint; (status, whole response)."""
    port = harness.settings.http_listen.port
    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: 127.0.0.1:{port}".encode(), b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers]
    if body or method == "POST":
        lines.append(b"Content-Length: %d" % len(body))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=harness.client_ssl(), server_hostname="127.0.0.1"
    )
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):  # the server closed first (Connection: close)
            await writer.wait_closed()
    return int(response.split(b" ", 2)[1]), response


def origin(harness: Harness) -> Header:
    """Our own origin, as a browser sends it on a POST."""
    return ("Origin", harness.base_url.encode())
