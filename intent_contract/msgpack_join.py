"""msgpack of a map whose values hold large bytes, made without msgpack's growing buffer.

`msgpack.packb` writes into a buffer that grows as it goes and copies it into the result at the end: a
64 MiB bundle cost three to four times its size at that moment. `packb_joined` packs the small parts
with msgpack and joins them with the large bytes themselves, each framed by its bin header: one copy.
The result is byte for byte what `msgpack.packb(obj, use_bin_type=True)` gives (a unit test holds it).
"""

from __future__ import annotations

from typing import Any

import msgpack


def _bin_header(size: int) -> bytes:
    """The msgpack bin 8/16/32 header for `size` bytes (the spec's smallest, as msgpack's packer picks)."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    if size < 1 << 32:
        return b"\xc6" + size.to_bytes(4, "big")
    raise ValueError(f"{size} bytes is over msgpack's bin limit")


def packb_joined(obj: dict[str, Any]) -> bytes:
    """`msgpack.packb(obj, use_bin_type=True)` where bytes values and lists of bytes are joined, not copied
    through msgpack's buffer; other values are packed by msgpack."""
    packer = msgpack.Packer(use_bin_type=True)
    parts: list[bytes] = [packer.pack_map_header(len(obj))]
    for key, value in obj.items():
        parts.append(packer.pack(key))
        if isinstance(value, bytes):
            parts += (_bin_header(len(value)), value)
        elif isinstance(value, list) and all(isinstance(item, bytes) for item in value):
            parts.append(packer.pack_array_header(len(value)))
            for item in value:
                parts += (_bin_header(len(item)), item)
        else:
            parts.append(packer.pack(value))
    return b"".join(parts)
