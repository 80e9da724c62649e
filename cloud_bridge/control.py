"""The running bridge's local control socket: `cloud-bridge reload` asks it to reload and hears the result.

A Unix socket in the data directory (`control.sock`, mode 0600): only the bridge's own user (and
root) can open it, and the bridge also checks the peer's uid (SO_PEERCRED) before it answers.
Chosen over a pid file and a signal because the caller gets the answer (applied, or refused and
why), and a stale pid file can never make it signal another process. One request a connection: a
JSON line `{"command": "reload"}` (size- and depth-bounded), answered by one JSON line; a line that is not
such a request is answered `{"ok": false, "error": ...}`, one over 4 KiB gets no answer. An answer may be
longer (a refused reload names every problem of the file) and is read up to MAX_ANSWER.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from cloud_bridge.errors import ConfigError, TransientError
from intent_contract import json_bounded
from intent_contract.errors import DecodeError

logger = logging.getLogger(__name__)

SOCKET_NAME: Final = "control.sock"
_MAX_LINE: Final = 4096
# The bridge's answer: a refused reload names every problem, and 120 of them (4.5 KB) made `cloud-bridge reload`
# crash on the request's 4 KiB limit ("chunk is longer than limit"), the problems unseen. The bridge clips its
# own error to fit (MAX_ERROR_CHARS).
# A caller's request line must come within this; a stop closes every connection still open. On Python 3.12 and
# later, Server.wait_closed waits for every connection: one client connected and silent (`nc -U control.sock`
# left open, a `cloud-bridge reload` suspended) held the node's stop until SIGKILL.
REQUEST_TIMEOUT_S: Final = 10.0
MAX_ANSWER: Final = 1 << 20
MAX_ERROR_CHARS: Final = 256 * 1024
_MAX_PATH: Final = 107  # sun_path, less its terminating NUL

Handler = Callable[[], Awaitable[dict[str, Any]]]


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def _peer_uid(sock: socket.socket | None) -> int | None:
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """Serves the control socket of one node; `handlers` map a command to what it does."""

    def __init__(self, data_dir: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = socket_path(data_dir)
        self._handlers = dict(handlers)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def callers(self) -> int:
        """Connections open now."""
        return len(self._open)

    async def start(self) -> bool:
        """Listen; False (and a warning) when the path is too long or another bridge answers on it."""
        if len(os.fsencode(self.path)) > _MAX_PATH:
            logger.warning("no control socket: %s is longer than a Unix socket path may be; use SIGHUP", self.path)
            return False
        if self.path.exists():
            if await _answers(self.path):
                logger.warning("no control socket: another bridge answers on %s (same --data-dir)", self.path)
                return False
            self.path.unlink()  # left by a bridge that did not stop cleanly
        old = os.umask(0o177)  # created 0600, not briefly wider
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=_MAX_LINE)
        finally:
            os.umask(old)
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._open:  # a reload under way carries on; its answer has nowhere to go
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            uid = _peer_uid(writer.get_extra_info("socket"))
            if uid is not None and uid not in (0, os.geteuid()):
                answer: dict[str, Any] = {"ok": False, "error": "not allowed"}
            else:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    line = await reader.readline()
                answer = await self._answer(line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError, TimeoutError):
            pass  # a caller that went away, sent too much or nothing in time gets nothing
        finally:
            self._open.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            # Bounded: 4,000 `[` in a line under _MAX_LINE made json.loads raise RecursionError, unanswered.
            document = json_bounded.loads(line, max_bytes=_MAX_LINE)
        except DecodeError as exc:
            return {"ok": False, "error": f'expected a JSON line {{"command": ...}}: {exc}'}
        command = document.get("command") if isinstance(document, dict) else None
        handler = self._handlers.get(command) if isinstance(command, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command; known: {', '.join(sorted(self._handlers))}"}
        return await handler()


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def request(data_dir: Path, command: str) -> dict[str, Any]:
    """Send `command` to the bridge running on `data_dir` and return its answer (the caller bounds the wait).

    ConfigError when no bridge answers there.
    """
    path = socket_path(data_dir)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_ANSWER)
    except OSError as exc:
        raise ConfigError(
            f"no bridge answers on {path} ({type(exc).__name__}): is `cloud-bridge run` running with this"
            " --data-dir? (or send it SIGHUP)"
        ) from None
    try:
        writer.write(json.dumps({"command": command}).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    except OSError as exc:
        raise TransientError(f"the bridge did not answer on {path}: {type(exc).__name__}") from None
    except ValueError:  # asyncio's "chunk is longer than limit"
        raise TransientError(f"the bridge's answer on {path} is longer than {MAX_ANSWER} bytes") from None
    finally:
        writer.close()
    try:
        answer = json.loads(line)
    except ValueError:
        raise TransientError(f"the bridge's answer on {path} is not JSON") from None
    if not isinstance(answer, dict):
        raise TransientError(f"the bridge's answer on {path} is not an object")
    return answer
