"""A fast local HTTP/1.1 'provider' for http.request: answers every request 200 with keep-alive.

Run as `python -m bench.httpsink PORT [DELAY_MS]`; with a delay, each answer waits that long (a slow
provider). It prints the number of requests served when stopped.
"""

from __future__ import annotations

import asyncio
import signal
import sys

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class _Counter:
    served = 0
    delay = 0.0


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            if _Counter.delay:
                await asyncio.sleep(_Counter.delay)
            writer.write(_RESPONSE)
            _Counter.served += 1
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()
    print(f"served {_Counter.served}", flush=True)


if __name__ == "__main__":
    _Counter.delay = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0
    asyncio.run(main(int(sys.argv[1])))
