"""A slow, late and flapping link on loopback: a TCP proxy on the test's own event loop.

Each direction carries at most `rate` bytes a second, and every byte arrives `delay_s` after it went out (a
rural cellular or satellite link: a few KB/s, a second or two each way). `cut_after` names, for the
connections in the order they come, how many bytes from the edge each may carry before the proxy drops it
(mid-frame, wherever that count falls); later connections are never cut. Pacing the bytes is this proxy's
job: tests wait for conditions, never for time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.support.net import free_port

CHUNK = 1024


@dataclass
class _Connection:
    writers: list[asyncio.StreamWriter]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def drop(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class SlowLink:
    def __init__(self, target_port: int, *, rate: int, delay_s: float, cut_after: Sequence[int] = ()) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.rate = rate
        self.delay_s = delay_s
        self.cut_after = list(cut_after)
        self.connections = 0  # connections accepted so far
        self.cuts = 0  # connections dropped by `cut_after`
        self.up_bytes = 0  # bytes carried from the edge to the bridge, in all
        self._server: asyncio.Server | None = None
        self._open: list[_Connection] = []

    async def __aenter__(self) -> SlowLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self._open:
            connection.drop()
            for task in connection.tasks:
                task.cancel()
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, edge_r: asyncio.StreamReader, edge_w: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            bridge_r, bridge_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            edge_w.transport.abort()
            return
        connection = _Connection([edge_w, bridge_w])
        self._open.append(connection)
        budget = self.cut_after[number] if number < len(self.cut_after) else None
        connection.tasks = [
            asyncio.create_task(self._carry(edge_r, bridge_w, connection, budget, up=True)),
            asyncio.create_task(self._carry(bridge_r, edge_w, connection, None, up=False)),
        ]

    async def _carry(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        budget: int | None,
        *,
        up: bool,
    ) -> None:
        """Read at `rate`, hand each chunk to the far side `delay_s` later; drop the connection past `budget`."""
        loop = asyncio.get_running_loop()
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(late, writer))
        carried = 0
        try:
            while True:
                data = await reader.read(CHUNK if budget is None else max(1, min(CHUNK, budget - carried)))
                if not data:
                    break
                await asyncio.sleep(len(data) / self.rate)  # the link's bandwidth
                carried += len(data)
                if up:
                    self.up_bytes += len(data)
                late.put_nowait((loop.time() + self.delay_s, data))
                if budget is not None and carried >= budget:
                    await late.join()
                    self.cuts += 1
                    connection.drop()
                    return
            await late.join()
            with contextlib.suppress(OSError):
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            connection.drop()
        finally:
            deliver.cancel()
            await asyncio.gather(deliver, return_exceptions=True)

    async def _deliver(self, late: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await late.get()
            await asyncio.sleep(max(0.0, due - loop.time()))  # the link's latency
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                pass
            late.task_done()
