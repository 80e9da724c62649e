"""Raw MQTT 3.1.1 for protocol tests: a client on a blocking socket built on the outbox's own codec,
and packets written by hand for what a well-behaved client never sends.

The client answers nothing by itself (no PUBACK unless asked), so a test can leave deliveries
unacknowledged, go silent past its keepalive, or declare a packet larger than it sends.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable

from bench.mqttraw import mqtt_string, remaining_length
from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import Type


class RawClient:
    def __init__(self, port: int, timeout: float = 10.0, *, ca_file: str | None = None) -> None:
        """Connected to 127.0.0.1:`port`; with `ca_file`, over TLS verified against it."""
        self.sock = (
            tls_connect(port, ca_file, timeout)
            if ca_file
            else socket.create_connection(("127.0.0.1", port), timeout=timeout)
        )
        self.framer = p.Framer(1 << 24)
        self._ready: list[p.Packet] = []
        self._next_id = 1

    def send(self, packet: p.Packet | bytes) -> None:
        self.sock.sendall(packet if isinstance(packet, bytes) else p.encode(packet))

    def receive(self, timeout: float = 10.0) -> p.Packet:
        """The next packet; raises TimeoutError, or ConnectionError when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while not self._ready:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet from the server")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no packet from the server") from None
            if not data:
                raise ConnectionError("the server closed the connection")
            self._ready.extend(p.decode(first, body) for first, body in self.framer.feed(data))
        return self._ready.pop(0)

    def closed_by_server(self, timeout: float = 10.0) -> bool:
        """True once the server closes the connection (other packets are read and dropped)."""
        try:
            while True:
                self.receive(timeout)
        except ConnectionError:
            return True

    def connect(self, client_id: str, *, clean: bool = True, keepalive: int = 60, will: p.Will | None = None,
                username: str | None = None, password: bytes | None = None) -> p.Connack:  # fmt: skip
        self.send(p.Connect("MQTT", 4, client_id, clean, keepalive, will, username, password))
        connack = self.receive()
        assert isinstance(connack, p.Connack), connack
        return connack

    def packet_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def subscribe(self, topic_filter: str, qos: int) -> tuple[int, ...]:
        self.send(p.Subscribe(self.packet_id(), ((topic_filter, qos),)))
        suback = self._wait_for(lambda packet: isinstance(packet, p.Suback), "SUBACK")
        assert isinstance(suback, p.Suback)
        return suback.codes

    def publish(self, topic: str, payload: bytes, qos: int = 0, *, retain: bool = False) -> None:
        """Publish and, for QoS 1/2, complete the exchange."""
        packet_id = self.packet_id() if qos else None
        self.send(p.Publish(topic, payload, qos, retain, False, packet_id))
        if qos == 1:
            self._expect(Type.PUBACK, packet_id)
        elif qos == 2:
            self._expect(Type.PUBREC, packet_id)
            self.send(p.PacketIdOnly(Type.PUBREL, packet_id or 0))
            self._expect(Type.PUBCOMP, packet_id)

    def _expect(self, kind: Type, packet_id: int | None) -> None:
        def answer(packet: p.Packet) -> bool:
            return isinstance(packet, p.PacketIdOnly) and packet.type is kind and packet.packet_id == packet_id

        self._wait_for(answer, f"{kind.name} for {packet_id}")

    def _wait_for(self, wanted: Callable[[p.Packet], bool], what: str) -> p.Packet:
        """The first packet `wanted` takes; those before it (a status, a retained message) are kept, in order."""
        other: list[p.Packet] = []
        try:
            while True:
                packet = self.receive()
                if wanted(packet):
                    return packet
                other.append(packet)
                if len(other) > 1000:
                    raise AssertionError(f"no {what}")
        finally:
            self._ready[:0] = other

    def messages(self, count: int, timeout: float = 10.0) -> list[p.Publish]:
        """The next `count` PUBLISH packets (without acknowledging them)."""
        out: list[p.Publish] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            packet = self.receive(max(0.01, deadline - time.monotonic()))
            if isinstance(packet, p.Publish):
                out.append(packet)
        return out

    def nothing_within(self, seconds: float) -> bool:
        try:
            packet = self.receive(seconds)
        except TimeoutError:
            return True
        self._ready.insert(0, packet)
        return False

    def close(self) -> None:
        self.sock.close()


def connect_packet(client_id: str, username: str, password: str, *, keepalive: int = 60) -> bytes:
    variable = mqtt_string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", keepalive)  # 3.1.1, clean, user+password
    payload = mqtt_string(client_id) + mqtt_string(username) + mqtt_string(password)
    return bytes([0x10]) + remaining_length(len(variable) + len(payload)) + variable + payload


def publish_header(topic: str, declared_body: int, packet_id: int = 1) -> bytes:
    """The start of a QoS 1 PUBLISH whose payload is declared `declared_body` bytes long."""
    variable = mqtt_string(topic) + struct.pack("!H", packet_id)
    return bytes([0x32]) + remaining_length(len(variable) + declared_body) + variable


def tls_connect(port: int, ca_file: str, timeout: float = 15.0) -> ssl.SSLSocket:
    """A verified TLS connection to 127.0.0.1:`port`; reads time out after `timeout` seconds."""
    context = ssl.create_default_context(cafile=ca_file)
    sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=timeout), server_hostname="127.0.0.1"
    )
    sock.settimeout(timeout)
    return sock


def read_until_closed(sock: ssl.SSLSocket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    received = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk
