"""Raw WebSocket for protocol tests: an upgrade and frames written by hand (what a good client never sends)."""

from __future__ import annotations

import os
import ssl
import struct

BINARY = 0x2


def frame(opcode: int, payload: bytes, *, declared: int | None = None) -> bytes:
    """A masked frame (a client's) carrying `payload`; `declared` claims another length in its header."""
    size = len(payload) if declared is None else declared
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", size)
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade(sock: ssl.SSLSocket, protocols: str = "mqtt") -> bytes:
    """Send an upgrade request offering `protocols` on `sock`; the answer's head (b"" if closed first)."""
    sock.sendall(
        b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: " + protocols.encode() + b"\r\n\r\n"
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)  # a byte at a time: nothing after the head is read here
        if not chunk:
            return b""
        answer += chunk
    return answer[:-4]
