"""The outbox's optional HTTP endpoint for supervisors: GET /metrics (Prometheus text) and GET /healthz.

Off by default; `edge-outbox run --metrics 127.0.0.1:9464` turns it on. It has no authentication and
no TLS, so it refuses to listen anywhere but on a loopback address: a site that wants it scraped
from elsewhere puts its own proxy or agent in front (docs/operations.md). Every value is read when
scraped, from the database (counts per state) and from the running parts (link, intake); nothing
here is kept in step by the code it observes, except the commit-time histogram.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_outbox.errors import ConfigError
from edge_outbox.health import problems
from edge_outbox.ops import Summary
from intent_contract.accept import GuardedListener, HeadDeadlines, within_deadlines
from intent_contract.accept_limits import ConnectionLimits
from intent_contract.server_log import ServerLog

log = logging.getLogger(__name__)

LINK_STATES = ("offline", "connecting", "connected", "revoked")
CONNECTIONS = ConnectionLimits(per_address=16, total=16)  # a scraper and a supervisor need a few
REQUEST_TIMEOUT_S = 10.0  # a request's head from the connection (or the last answer), then its answer
KEEPALIVE_TIMEOUT_S = 5.0  # an idle connection is closed before its head deadline would abort it
SHUTDOWN_TIMEOUT_S = 2.0  # a stop waits this long for answers still being written


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything a scrape reports, gathered just before it is written."""

    summary: Summary
    now_ms: int
    link_state: str | None  # None: not enrolled, or not forwarding
    link_since_ms: int | None
    sent: int
    acked: int
    intake_outcomes: dict[str, int]
    held: int
    held_total: int
    held_since_ms: int | None
    held_reason: str
    apps_connected: int
    revoked: bool = False  # the bridge said this device is revoked (stored: a receipt or the link)
    attach_down_since_ms: int | None = None  # attach mode: since when the broker connection is down (None: up)
    silent_s: float = 0.0  # since the housekeeping's last tick (edge_outbox.health.SILENT_AFTER_S)
    attach_fault: str = ""  # attach mode: what is wrong with a connection that is up (edge_outbox.attach)
    link_unanswered_since_ms: int | None = None  # edge_outbox.forward_wire.LinkSnapshot.unanswered_since


class _Collector(Collector):
    def __init__(self) -> None:
        self.observed: Observed | None = None

    def collect(self) -> Iterator[Metric]:
        seen = self.observed
        if seen is None:
            return
        intents = GaugeMetricFamily("edge_outbox_intents", "Intents in the outbox database, by state", labels=["state"])
        for state, count in seen.summary.counts.items():
            intents.add_metric([state], count)
        yield intents
        stored = GaugeMetricFamily("edge_outbox_intent_bytes", "Payload bytes stored, by state", labels=["state"])
        for state, size in seen.summary.bytes.items():
            stored.add_metric([state], size)
        yield stored
        oldest = seen.summary.oldest_pending_created
        age = (seen.now_ms - oldest) / 1000 if oldest else 0.0
        yield GaugeMetricFamily(
            "edge_outbox_oldest_pending_age_seconds", "Age of the oldest intent not yet final (0: none)", value=age
        )
        link = GaugeMetricFamily("edge_outbox_link_state", "1 for the bridge link's current state", labels=["state"])
        for state in LINK_STATES:
            link.add_metric([state], 1.0 if seen.link_state == state else 0.0)
        yield link
        yield CounterMetricFamily("edge_outbox_forwarded_intents", "Intents sent to the bridge", value=seen.sent)
        yield CounterMetricFamily("edge_outbox_bridge_acks", "Intents the bridge acknowledged", value=seen.acked)
        intake = CounterMetricFamily(
            "edge_outbox_intake", "Publishes to intake topics committed, by outcome", labels=["outcome"]
        )
        for outcome, count in sorted(seen.intake_outcomes.items()):
            intake.add_metric([outcome], count)
        yield intake
        yield CounterMetricFamily(
            "edge_outbox_intake_held", "Publishes whose acknowledgement had to wait (full disk or queue)",
            value=seen.held_total,
        )  # fmt: skip
        yield GaugeMetricFamily("edge_outbox_intake_waiting", "Publishes waiting to be stored now", value=seen.held)
        yield GaugeMetricFamily("edge_outbox_apps_connected", "Local MQTT connections", value=seen.apps_connected)
        down = seen.attach_down_since_ms
        yield GaugeMetricFamily(
            "edge_outbox_attach_down_seconds",
            "Attach mode: how long the connection to the site broker has been down (0: attached, or not attach mode)",
            value=0.0 if down is None else max(0.0, (seen.now_ms - down) / 1000),
        )


class Probe:
    """Serves /metrics and /healthz from what `observe()` gathers."""

    def __init__(self, host: str, port: int, observe: Callable[[], Awaitable[Observed]], max_offline_s: float) -> None:
        if not _loopback(host):
            raise ConfigError(f"--metrics {host}:{port}: the endpoint has no authentication; give a loopback address")
        self._host, self._port = host, port
        self._observe = observe
        self._max_offline_s = max_offline_s
        self.registry = CollectorRegistry()
        self._collector = _Collector()
        self.registry.register(self._collector)
        self.commit_seconds = Histogram(
            "edge_outbox_commit_duration_seconds",
            "Time of each SQLite group commit (the fsync included)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        heads = HeadDeadlines(REQUEST_TIMEOUT_S)
        app = web.Application(middlewares=[within_deadlines(heads, REQUEST_TIMEOUT_S)])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        # Any process on the host can reach this port: what one can hold is bounded (CONNECTIONS), a request
        # must come and be answered in time, an idle connection is closed, a malformed request is a line in
        # the log at most every 10 s, and a stop waits for no client. (It took every connection, held an idle
        # or unfinished one for ever, logged a traceback per bad request, and a client that did not read
        # held a stop for two minutes.)
        self._runner = web.AppRunner(
            app, access_log=None, logger=ServerLog(), keepalive_timeout=KEEPALIVE_TIMEOUT_S,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )  # fmt: skip
        await self._runner.setup()
        assert self._runner.server is not None
        listener = GuardedListener("metrics", heads.protocol_factory(self._runner.server), None, CONNECTIONS)
        try:
            self._server = await asyncio.get_running_loop().create_server(listener.protocol, self._host, self._port)
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"--metrics {self._host}:{self._port}: cannot listen: {exc.strerror}") from None
        log.info("metrics and health on http://%s:%d/metrics and /healthz", self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()

    async def _metrics(self, _request: web.Request) -> web.Response:
        self._collector.observed = await self._observe()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        seen = await self._observe()
        found = problems(
            link_state=seen.link_state,
            link_since_ms=seen.link_since_ms,
            intake_held_since_ms=seen.held_since_ms,
            intake_reason=seen.held_reason,
            now_ms=seen.now_ms,
            max_offline_s=self._max_offline_s,
            revoked=seen.revoked,
            attach_down_since_ms=seen.attach_down_since_ms,
            silent_s=seen.silent_s,
            attach_fault=seen.attach_fault,
            link_unanswered_since_ms=seen.link_unanswered_since_ms,
        )
        body = {"status": "ok" if not found else "unhealthy", "problems": found}
        return web.Response(status=200 if not found else 503, text=json.dumps(body), content_type="application/json")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def held_since_ms(held_since: float | None) -> int | None:
    return None if held_since is None else int(held_since * 1000)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
