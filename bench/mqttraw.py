"""A minimal asyncio MQTT 3.1.1 client for load generation: QoS 0/1 publish, subscribe, PUBACK tracking.

The benchmarks drive every broker with this same client, so the client's own cost is equal for all
and small (no paho thread per client, no per-message callback machinery), which matters on a
2-core machine where the load generator competes with the broker under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Callable

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14


class MqttError(Exception):
    """The broker refused us or the connection broke."""


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int, pid: int = 0) -> bytes:
    body = mqtt_string(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return _packet(PUBLISH, qos << 1, body)


class MqttClient:
    """One connection. `publish` returns a future that completes on PUBACK (QoS 1)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._next_pid = 0
        self.on_message: Callable[[str, bytes], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        clean: bool = True,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        keepalive: int = 900,
        timeout: float = 60.0,
    ) -> MqttClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=tls, server_hostname=server_hostname if tls else None, limit=1 << 22
            ),
            timeout,
        )
        flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
        body = mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + mqtt_string(client_id)
        if username is not None:
            body += mqtt_string(username)
        if password is not None:
            body += mqtt_string(password)
        writer.write(_packet(CONNECT, 0, body))
        client = cls(reader, writer)
        ptype, _flags, payload = await asyncio.wait_for(client._read_packet(), timeout)
        if ptype != CONNACK or payload[1] != 0:
            writer.close()
            raise MqttError(f"CONNECT refused: packet {ptype} code {payload[1] if len(payload) > 1 else '?'}")
        client._task = asyncio.create_task(client._read_loop())
        return client

    async def _read_packet(self) -> tuple[int, int, bytes]:
        first = await self._reader.readexactly(1)
        length, shift = 0, 0
        while True:
            byte = (await self._reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        payload = await self._reader.readexactly(length) if length else b""
        return first[0] >> 4, first[0] & 0x0F, payload

    async def _read_loop(self) -> None:
        try:
            while True:
                ptype, flags, payload = await self._read_packet()
                if ptype in (PUBACK, SUBACK):
                    (pid,) = struct.unpack_from("!H", payload)
                    fut = self._pending.pop(pid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                elif ptype == PUBLISH:
                    qos = (flags >> 1) & 3
                    (tlen,) = struct.unpack_from("!H", payload)
                    topic = payload[2 : 2 + tlen].decode()
                    pos = 2 + tlen
                    if qos:
                        pid_bytes = payload[pos : pos + 2]
                        pos += 2
                        self._writer.write(_packet(PUBACK, 0, pid_bytes))
                    if self.on_message is not None:
                        self.on_message(topic, payload[pos:])
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.closed.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(MqttError("connection closed"))
            self._pending.clear()

    def _pid(self) -> int:
        while True:
            self._next_pid = self._next_pid % 65535 + 1
            if self._next_pid not in self._pending:
                return self._next_pid

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[None]:
        """Send a PUBLISH; the future completes when its PUBACK arrives (at once for QoS 0)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.closed.is_set():
            fut.set_exception(MqttError("connection closed"))
            return fut
        if qos == 0:
            self._writer.write(publish_packet(topic, payload, 0))
            fut.set_result(None)
            return fut
        pid = self._pid()
        self._pending[pid] = fut
        self._writer.write(publish_packet(topic, payload, qos, pid))
        return fut

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        pid = self._pid()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[pid] = fut
        self._writer.write(_packet(SUBSCRIBE, 2, struct.pack("!H", pid) + mqtt_string(topic) + bytes([qos])))
        await asyncio.wait_for(fut, 30)

    async def drain(self) -> None:
        await self._writer.drain()

    async def close(self) -> None:
        if not self.closed.is_set():
            try:
                self._writer.write(_packet(DISCONNECT, 0, b""))
                await self._writer.drain()
            except (ConnectionError, OSError):
                pass
        self._writer.close()
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self._writer.wait_closed()
