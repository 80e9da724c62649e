"""The control socket against what `cloud-bridge reload` never sends: every line gets one JSON answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge import control
from cloud_bridge.control import ControlServer
from tests.support.net import until


async def ask(server: ControlServer, line: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    try:
        writer.write(line)
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        await writer.wait_closed()
    document = json.loads(answer)
    assert isinstance(document, dict), answer
    return document


async def test_a_deep_or_broken_line_is_answered_with_an_error(tmp_path: Path) -> None:
    unhandled: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unhandled.append(context))
    reloads: list[bool] = []

    async def reload() -> dict[str, Any]:
        reloads.append(True)
        return {"ok": True}

    server = ControlServer(tmp_path, {"reload": reload})
    assert await server.start()
    try:
        # 4,000 `[` (under the 4 KiB line limit) raised RecursionError in json.loads: no answer, a traceback.
        for line in (b"[" * 4000, b'{"a":' * 600, b"\xff", b"nope", b"[1, 2]", b"{}"):
            answer = await ask(server, line + b"\n")
            assert answer["ok"] is False and answer["error"], line[:20]
        assert reloads == []
        assert await ask(server, b'{"command": "reload"}\n') == {"ok": True}
    finally:
        await server.stop()
    assert reloads == [True]
    assert unhandled == []


async def test_a_silent_caller_is_closed_and_none_holds_a_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that connected and sent nothing was waited for without end; on Python 3.12 and later the node's stop
    (Server.wait_closed) then waited for it too, until SIGKILL."""

    async def reload() -> dict[str, Any]:
        return {"ok": True}

    monkeypatch.setattr(control, "REQUEST_TIMEOUT_S", 0.5)
    server = ControlServer(tmp_path, {"reload": reload})
    assert await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed at the deadline, unanswered
        writer.close()
        monkeypatch.setattr(control, "REQUEST_TIMEOUT_S", 3600.0)
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        await until(lambda: server.callers == 1, what="the silent caller taken")
    finally:
        await server.stop()
    assert await asyncio.wait_for(reader.read(), 30) == b""  # the stop closed it
    writer.close()
