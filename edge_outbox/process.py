"""`edge-outbox run` as a process: the signals it takes (SIGINT and SIGTERM stop it, SIGHUP reloads), systemd's
notifications, and the process's limits; edge_outbox.runner.Outbox is what runs."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from edge_outbox.reload import reload_at_each
from edge_outbox.runner import Outbox
from edge_outbox.settings import OutboxSettings
from intent_contract.loop_errors import AcceptErrors
from intent_contract.runtime import raise_descriptor_limit, tune_garbage_collector
from intent_contract.service_notify import READY, STOPPING, notify

log = logging.getLogger("edge_outbox.runner")  # its lines, as before they moved here


async def serve(
    settings: OutboxSettings,
    ready: Callable[[], Awaitable[None] | None] | None = None,
    notify_socket: str | None = None,
    config_changed: Callable[[], str | None] | None = None,
) -> None:
    """Run until SIGINT or SIGTERM, reloading at SIGHUP (`config_changed`: edge_outbox.reload); tells systemd at
    `notify_socket` (Type=notify) once it serves, and as it stops."""
    outbox = Outbox(settings)
    stop, hup = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before start(): the port opens inside it, and a SIGTERM from then on must stop us cleanly. A SIGHUP during
    # the start is held, and reloads once the outbox runs.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    AcceptErrors().install(loop)  # past the descriptor limit: a line per listener per 10 s, not 2,000 a second
    await outbox.start()
    log.info("file descriptors: up to %d", raise_descriptor_limit())  # a container's soft 1,024 was ours
    tune_garbage_collector()
    if ready is not None:
        result = ready()
        if result is not None:
            await result
    notify(notify_socket, READY)
    reloads = asyncio.create_task(reload_at_each(hup, outbox.reload, config_changed), name="reloads")
    await stop.wait()
    reloads.cancel()
    await asyncio.gather(reloads, return_exceptions=True)
    log.info("stopping")
    notify(notify_socket, STOPPING)
    await outbox.stop()
