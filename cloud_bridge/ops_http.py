"""What operators and their tools ask of a node: GET /healthz and GET /metrics.

/healthz answers 200 when the node's store answers a trivial query within HEALTH_TIMEOUT, else 503
with the reason; it is served on the HTTPS listener (load balancers, container health checks) and on
the metrics listener. /metrics (Prometheus text) is served only on the metrics listener
(`--metrics-listen`, plain HTTP, off by default): it is for the operator's scraper, not for the
internet the HTTPS listener faces (docs/operations.md). The gauges of state are read here, once per
scrape: the ledger's depth (one query), device counts, live sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud_bridge.errors import BridgeError, TransientError
from cloud_bridge.ledger import Ledger
from cloud_bridge.metrics import BridgeMetrics
from cloud_bridge.own_threads import own_thread
from cloud_bridge.registry import Registry
from intent_contract.logs import LogThrottle

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0  # a health check that waits longer than its caller is no answer
STOPPING = "the node is stopping"


def not_stored(paths: Collection[str] | None = None) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An `on_response_prepare` hook: every answer on `paths` (all when None), errors included, says `Cache-Control:
    no-store`. They said nothing, and a caching proxy that ignores Authorization could keep one device's
    `/v1/device` answer, with the bridge's `time` in it, and give it to every device, or a health check's 200."""

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        if paths is None or request.path in paths:
            response.headers.setdefault("Cache-Control", "no-store")

    return hook


class Ops:
    """The handlers of /healthz and /metrics of one node."""

    def __init__(
        self,
        metrics: BridgeMetrics,
        ledger: Ledger,
        registry: Registry,
        *,
        connected: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._ledger = ledger
        self._registry = registry
        self._connected = connected
        self._clock = clock
        self._log_failure = LogThrottle(interval=10.0)  # a balancer may ask every second
        # Set when the node starts to stop: it lets its devices go at once, and a balancer must send them to the
        # others, not back here (its MQTT port closed) while its running jobs get their grace.
        self.stopping = False

    async def store_problem(self) -> str | None:
        """None when the store answers now, else why not (no secret: our errors never carry one).

        The ledger, and the device registry: on SQLite a file of its own, opened for every call, which a full
        disk refuses while the ledger's open connection still reads, so every CONNECT and batch failed and
        /healthz said 200.
        """
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self._ledger.ping()
                try:
                    await own_thread(self._registry.revocation_counter)
                except BridgeError as exc:  # its detail names its file: why, not where (strangers read this)
                    raise TransientError(f"device registry: {exc.__cause__ or exc.code}") from None
        except TimeoutError:
            return f"store did not answer within {HEALTH_TIMEOUT:.0f} s"
        except BridgeError as exc:
            return f"store not reachable: {exc.detail}"[:300]
        except Exception as exc:  # noqa: BLE001 - whatever the driver raised, the answer is "unhealthy"
            return f"store not reachable: {type(exc).__name__}"
        return None

    async def healthz(self, _: web.Request) -> web.Response:
        if self.stopping:
            return web.json_response({"status": "stopping", "problems": [STOPPING]}, status=503)
        problem = await self.store_problem()
        if problem is None:
            return web.json_response({"status": "ok", "problems": []})
        if self._log_failure.allow(self._clock()) is not None:
            logger.warning("health check failed: %s", problem, extra={"code": "store_unreachable"})
        return web.json_response({"status": "unhealthy", "problems": [problem]}, status=503)

    async def metrics(self, _: web.Request) -> web.Response:
        metrics = self._metrics
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):  # both reads: a store that stops answering held the scrape
                depth = await self._ledger.depth()
                counts = await own_thread(self._registry.counts)
        except (TimeoutError, BridgeError):
            metrics.store_up.set(0)  # the ledger and device gauges keep their last values
        else:
            metrics.store_up.set(1)
            metrics.set_ledger(depth, self._clock())
            for status, value in counts.items():
                metrics.devices.labels(status).set(value)
        metrics.connected.set(self._connected())
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def app(self) -> web.Application:
        """The metrics listener's application: /metrics and /healthz."""
        app = web.Application(client_max_size=1024)
        app.on_response_prepare.append(not_stored())
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        return app
