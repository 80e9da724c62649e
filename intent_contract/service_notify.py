"""Telling systemd that a service is ready, or stopping (`Type=notify`): one datagram to its notify socket.

Both programs ran as `Type=exec`, which systemd takes as started as soon as the program is exec'd: `systemctl
start` returned, and units ordered after it started, before the bridge or the outbox listened, and a
`systemctl reload cloud-bridge` right after a (re)start found no control socket and failed. The CLI reads
`NOTIFY_SOCKET` (systemd sets it; nothing else does) and passes it here; without one this does nothing.
"""

from __future__ import annotations

import socket

READY = "READY=1"
STOPPING = "STOPPING=1"


def notify(address: str | None, state: str) -> bool:
    """Send `state` to the notify socket at `address` (a path, or `@name` in the abstract namespace); False when
    there is none, or it cannot be reached (the service goes on either way)."""
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
