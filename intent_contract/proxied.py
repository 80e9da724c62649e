"""A connection that came through a TCP balancer, as the code above it sees it (`intent_contract.accept`).

`ClientTransport` is the connection's transport with the client's address, from the balancer's PROXY
header, as its `peername`: what aiohttp's `request.remote`, a stream's `get_extra_info("peername")` and so
every log line, limit and telemetry row read. Every other call goes to the transport itself.

`feed` hands the bytes read past the header (the start of the client's TLS handshake, when the balancer
sent both at once) to the protocol `loop.start_tls` has just put on the transport: it must run before that
protocol reads anything from the socket, so it is scheduled (`call_soon`) before `start_tls` is awaited,
whose own first steps (`connection_made`, `resume_reading`) are scheduled after it.
"""

from __future__ import annotations

import asyncio
from typing import Any


class ClientTransport(asyncio.Transport):
    """`transport`, whose peer is `peername` (the client's address and port behind the balancer)."""

    def __init__(self, transport: asyncio.Transport, peername: tuple[str, int]) -> None:
        super().__init__()
        self._transport = transport
        self._peername = peername

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._transport.writelines(list_of_data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()


def feed(transport: asyncio.BaseTransport, data: bytes) -> None:
    """Give `data` to `transport`'s protocol as if it had been read from the socket."""
    if transport.is_closing():
        return
    protocol = transport.get_protocol()
    if not isinstance(protocol, asyncio.BufferedProtocol):
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]
