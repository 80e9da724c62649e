"""aiohttp's server logger for every listener of ours (`AppRunner(..., logger=ServerLog())`).

A request aiohttp cannot parse is a line of its own at most once per `interval`, saying why and how many were
left out: aiohttp logs each at ERROR with its traceback (about 600 bytes), and a stranger sending malformed
requests grew the log by megabytes a second. What is not a bad request (a bug in a handler) keeps its traceback.

A body is a bad request too when aiohttp reads it only after the answer: it drains the body of a request whose
handler did not read it (GET /healthz, a 404, a 405), and a body that is not the Content-Encoding it claims
(deflate that is not deflate) raised RequestPayloadError there, which aiohttp logged as "Unhandled exception"
with three chained tracebacks (about 30 lines) for each such request from anyone, unthrottled.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

from intent_contract.logs import LogThrottle, left_out

_BODY_UNREAD = "Error reading a request's body after its answer"


def _bad_request(exc: object) -> HttpProcessingError | None:
    """The peer's error `exc` says (the parse error itself, or the one under a RequestPayloadError); None for
    anything else."""
    if isinstance(exc, HttpProcessingError):
        return exc
    if isinstance(exc, RequestPayloadError):
        cause = exc.__cause__
        return cause if isinstance(cause, HttpProcessingError) else HttpProcessingError(code=400, message=str(exc))
    return None


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger: bad requests a throttled line each, anything else with its traceback."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._throttle = LogThrottle(interval)

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: Any) -> None:
        bad = _bad_request(exc_info)
        if bad is None:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]
            return
        if bad is not exc_info:  # drained after the answer: aiohttp's words would be "Unhandled exception"
            msg, args = _BODY_UNREAD, ()
        not_logged = self._throttle.allow(time.monotonic())
        if not_logged is not None:
            reason = " ".join(str(bad.message).split())[:200]
            self.logger.warning(
                f"{msg}: %d %s%s", *args, bad.code, reason, left_out(not_logged),
                extra={"code": "bad_request", "not_logged": not_logged},
            )  # fmt: skip
