"""The UTF-8 check of an MQTT 5 packet's strings, made before the `mqtt5` codec reads it. Pure.

`mqtt5` (0.8.0) does not check that a string is UTF-8: it hands the bytes to Python, whose decode error
pyo3 prints (a traceback) before it panics, and Rust's panic hook prints the panic too, both straight to
stderr, past the log's format. An app that sent such a string wrote nine lines of traceback and panic into
the outbox's log for each packet (43 such blocks in 600 fuzzed connections), however the panic was then
handled. Here every string field of the packets a client sends (CONNECT, PUBLISH, the QoS acks, SUBSCRIBE,
UNSUBSCRIBE, DISCONNECT, AUTH) is walked in the order the codec reads it, and the first that is not UTF-8
is a MalformedPacketError that names the field. Anything else wrong with the packet's layout ends the
walk quietly: the codec says what is wrong with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

from intent_contract.errors import MalformedPacketError

_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
# Property identifiers [MQTT 5, 2.2.2.2] and how their values are written; a string's name for the error.
_PROPERTIES: Final = {
    0x01: (_BYTE, ""), 0x02: (_U32, ""), 0x03: (_STRING, "content type"), 0x08: (_STRING, "response topic"),
    0x09: (_BINARY, ""), 0x0B: (_VARINT, ""), 0x11: (_U32, ""), 0x12: (_STRING, "assigned client id"),
    0x13: (_U16, ""), 0x15: (_STRING, "authentication method"), 0x16: (_BINARY, ""), 0x17: (_BYTE, ""),
    0x18: (_U32, ""), 0x19: (_BYTE, ""), 0x1A: (_STRING, "response information"),
    0x1C: (_STRING, "server reference"), 0x1F: (_STRING, "reason string"), 0x21: (_U16, ""),
    0x22: (_U16, ""), 0x23: (_U16, ""), 0x24: (_BYTE, ""), 0x25: (_BYTE, ""), 0x26: (_PAIR, "user property"),
    0x27: (_U32, ""), 0x28: (_BYTE, ""), 0x29: (_BYTE, ""), 0x2A: (_BYTE, ""),
}  # fmt: skip
_FIXED = {_BYTE: 1, _U16: 2, _U32: 4}


class _LayoutError(Exception):
    """The packet's layout is wrong: the codec will say how."""


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int) -> bytes:
        if size > self.left:
            raise _LayoutError
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
        raise _LayoutError

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self, what: str) -> None:
        try:
            self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacketError(f"malformed MQTT 5 packet: its {what} is not UTF-8") from None

    def properties(self) -> None:
        # Not bounded by the packet's end first: the codec reads the properties a length says before it finds
        # that they run past the packet (and a string among them is read all the same).
        size = self.varint()
        end = self.pos + size
        while self.pos < end:
            found = _PROPERTIES.get(self.varint())
            if found is None:
                raise _LayoutError
            kind, what = found
            if kind in _FIXED:
                self.take(_FIXED[kind])
            elif kind == _VARINT:
                self.varint()
            elif kind == _BINARY:
                self.binary()
            else:
                self.string(what + (" name" if kind == _PAIR else ""))
                if kind == _PAIR:
                    self.string(what + " value")


def _connect(cursor: _Cursor, _first: int) -> None:
    cursor.string("protocol name")
    cursor.u8()  # the protocol level
    flags = cursor.u8()
    cursor.u16()  # keep alive
    cursor.properties()
    cursor.string("client id")
    if flags & 0x04:
        cursor.properties()
        cursor.string("will topic")
        cursor.binary()
    if flags & 0x80:
        cursor.string("user name")


def _publish(cursor: _Cursor, first: int) -> None:
    cursor.string("topic")
    if first & 0x06:
        cursor.u16()
    cursor.properties()


def _ack(cursor: _Cursor, _first: int) -> None:
    """PUBACK, PUBREC, PUBREL, PUBCOMP: a packet id, then maybe a reason code, then maybe properties."""
    cursor.u16()
    if cursor.left > 1:
        cursor.u8()
        cursor.properties()


def _reason(cursor: _Cursor, _first: int) -> None:
    """DISCONNECT and AUTH: maybe a reason code, then maybe properties."""
    if cursor.left > 1:
        cursor.u8()
        cursor.properties()


def _subscribe(cursor: _Cursor, _first: int) -> None:
    cursor.u16()
    cursor.properties()
    while cursor.left:
        cursor.string("topic filter")
        cursor.u8()


def _unsubscribe(cursor: _Cursor, _first: int) -> None:
    cursor.u16()
    cursor.properties()
    while cursor.left:
        cursor.string("topic filter")


_WALKS: Final[dict[int, Callable[[_Cursor, int], None]]] = {
    1: _connect, 3: _publish, 4: _ack, 5: _ack, 6: _ack, 7: _ack, 8: _subscribe, 10: _unsubscribe,
    14: _reason, 15: _reason,
}  # fmt: skip


def check_strings(first: int, body: bytes) -> None:
    """MalformedPacketError when a string of this MQTT 5 packet (its first byte and body) is not UTF-8."""
    if first >> 4 == 3 and len(body) > 2:
        # The usual intent: a PUBLISH without properties, whose one string is its topic (the walk took 4 us a
        # packet, more than the codec's read; this, under 1).
        end = 2 + int.from_bytes(body[:2], "big")
        at = end + (2 if first & 0x06 else 0)
        if at < len(body) and body[at] == 0:
            try:
                body[2:end].decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedPacketError("malformed MQTT 5 packet: its topic is not UTF-8") from None
            return
    walk = _WALKS.get(first >> 4)
    if walk is None:
        return
    with contextlib.suppress(_LayoutError):
        walk(_Cursor(body), first)
