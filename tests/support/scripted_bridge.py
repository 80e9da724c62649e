"""A scripted stand-in for the bridge's MQTT/TLS side, for faults the real bridge never makes: our own MQTT
codec (intent_contract.mqtt_packets) over TLS with the test certificates, on a free loopback port.

It accepts every CONNECT and SUBSCRIBE, PUBACKs what the device publishes, records the batches and
confirms it gets, answers each batch with what `on_batch` returns (acks messages' bodies), sends
`on_subscribe` after each SUBACK of the acks topic (as the bridge re-sends unconfirmed results), and drops
the connection on a confirms message, before its PUBACK, when `drop_on_confirms` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from intent_contract import mqtt_packets as p
from intent_contract.codec import decode_batch, read_confirms
from intent_contract.wire import ACKS, CONFIRMS, INTENTS, device_topic, split_device_topic
from tests.support.net import free_port


@dataclass
class ScriptedBridge:
    device_id: str
    on_batch: Callable[[list[str]], list[bytes]] = lambda _ids: []
    on_subscribe: list[bytes] = field(default_factory=list)
    drop_on_confirms: bool = False
    port: int = 0
    connects: int = 0
    batches: list[list[str]] = field(default_factory=list)
    confirms: list[list[str]] = field(default_factory=list)
    confirm_attempts: list[int | None] = field(default_factory=list)  # each confirms message's attempt
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self, cert: Path, key: Path) -> ScriptedBridge:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        self.port = free_port()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=context)
        return self

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        framer = p.Framer(1 << 24)
        out = _Outgoing(writer, device_topic(self.device_id, ACKS))
        try:
            while data := await reader.read(65536):
                for first, body in framer.feed(data):
                    if not self._handle(p.decode(first, body), writer, out):
                        return
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    def _handle(self, packet: p.Packet, writer: asyncio.StreamWriter, out: _Outgoing) -> bool:
        """Answer one packet; False to drop the connection."""
        if isinstance(packet, p.Connect):
            self.connects += 1
            writer.write(p.encode(p.Connack(False, 0)))
        elif isinstance(packet, p.Subscribe):
            writer.write(p.encode(p.Suback(packet.packet_id, tuple(1 for _ in packet.filters))))
            if any(f == out.topic for f, _qos in packet.filters):
                out.send(self.on_subscribe)
        elif isinstance(packet, p.Publish):
            leaf = (split_device_topic(packet.topic) or ("", ""))[1]
            if leaf == CONFIRMS:
                ids, attempt = read_confirms(packet.payload)
                self.confirms.append(ids)
                self.confirm_attempts.append(attempt)
                if self.drop_on_confirms:
                    return False
            if packet.qos:
                assert packet.packet_id is not None
                writer.write(p.encode_ack(p.Type.PUBACK, packet.packet_id))
            if leaf == INTENTS:
                ids = [e.id for e in decode_batch(packet.payload).envelopes]
                self.batches.append(ids)
                out.send(self.on_batch(ids))
        elif isinstance(packet, p.Bare) and packet.type is p.Type.PINGREQ:
            writer.write(p.encode(p.Bare(p.Type.PINGRESP)))
        elif isinstance(packet, p.Bare) and packet.type is p.Type.DISCONNECT:
            return False
        return True


class _Outgoing:
    """QoS 1 acks messages to the device on one connection (their PUBACKs are not awaited)."""

    def __init__(self, writer: asyncio.StreamWriter, topic: str) -> None:
        self.writer, self.topic = writer, topic
        self._next_id = 0

    def send(self, bodies: list[bytes]) -> None:
        for body in bodies:
            self._next_id = self._next_id % 65535 + 1
            with contextlib.suppress(ConnectionError):
                self.writer.write(p.encode_publish(self.topic, body, 1, self._next_id, retain=False, dup=False))
