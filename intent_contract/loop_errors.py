"""The event loop's own error reports, made fit for a long-running server's log.

When a listening socket's accept() fails for want of descriptors or memory (EMFILE: the process's
RLIMIT_NOFILE; ENFILE: the system's; ENOBUFS, ENOMEM), asyncio logs it through the loop's exception handler,
with a traceback, and tries again a second later. Its accept loop goes on after the error (CPython's
selector_events, up to its backlog of 100 tries per wake-up), so each wake-up wrote up to 100 tracebacks:
a bridge past its descriptor limit wrote about 2,000 lines a second. `AcceptErrors` writes one line per
listener at most every `interval` seconds, saying how many were left out, without a traceback (it is no bug:
the process needs a higher limit or fewer connections); every other report goes to the handler it replaced.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from typing import Any

from intent_contract.logs import LogThrottles, left_out

log = logging.getLogger(__name__)

ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_LOG_INTERVAL = 10.0  # seconds between one listener's lines


class AcceptErrors:
    """A loop exception handler: accept() failures for want of resources a line at a time, the rest passed on."""

    def __init__(self, interval: float = ACCEPT_LOG_INTERVAL) -> None:
        self._throttles = LogThrottles(interval)
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle `loop`'s reports from now on."""
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        sock = context.get("socket")
        if isinstance(exc, OSError) and exc.errno in ACCEPT_ERRNOS and sock is not None:
            try:
                host, port = sock.getsockname()[:2]
                where = f"{host}:{port}"
            except (OSError, ValueError, TypeError):
                where = "a listener"
            not_logged = self._throttles.allow(where, time.monotonic())
            if not_logged is not None:
                code = errno.errorcode.get(exc.errno, "accept").lower()
                log.error("%s cannot accept connections: %s; tried again every second, connections wait%s", where,
                          os.strerror(exc.errno or 0), left_out(not_logged),
                          extra={"code": code, "not_logged": not_logged})  # fmt: skip
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
