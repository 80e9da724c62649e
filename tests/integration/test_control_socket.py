"""The control socket against what `cloud-bridge reload` never sends: every line gets one JSON answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from cloud_bridge.control import ControlServer


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
