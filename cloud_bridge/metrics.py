"""The bridge's Prometheus metrics: what an operator alerts on, in base units, counters ending in _total.

Counters and the latency histogram are fed as things happen; the gauges of state (ledger depth,
devices, connections, the store's reachability) are read once per scrape by `ops_http`, never per
message. Each bridge has a registry of its own, so several bridges can share a process (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_bridge.ledger import LedgerDepth
from intent_contract.codec import AckState

# Each labelled counter's values that are known in advance, exported at 0 from the start: a series that first
# appears at 1 is no increase to Prometheus (`increase()`, `rate()` need two samples), so an alert on the first
# refused reload, undecodable batch or shed connection since the node started never fired.
ENROLLMENT_RESULTS = ("enrolled", "repeated", "refused", "malformed", "limited", "unavailable")
BATCH_OUTCOMES = ("admitted", "undecodable", "dropped_busy", "unsupported_version", "error")
RELOAD_RESULTS = ("applied", "refused")
TOPIC_ACTIONS = ("publish", "subscribe")
SHED_LIMITS = ("address", "total")

# Provider calls take milliseconds (a local relay) to tens of seconds (a slow API up to its timeout).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Commits(Collector):
    """`bridge_store_commits_total`, read from the store's own count when scraped."""

    def __init__(self, commits: Callable[[], int]) -> None:
        self._commits = commits

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "bridge_store_commits", "Write transactions this node committed to its store (admissions, claims, results)"
        )
        family.add_metric([], self._commits())
        yield family


class BridgeMetrics:
    """Every metric family of one bridge, in a registry of its own."""

    def __init__(self, *, process: bool = False) -> None:
        self.registry = registry = CollectorRegistry()
        if process:  # the process's CPU, memory, file descriptors and Python version
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.enrollments = Counter(
            "bridge_enrollments",
            "Enrollment requests by result (enrolled, repeated, refused, malformed, limited, unavailable)",
            ["result"], registry=registry,
        )  # fmt: skip
        self.connects_refused = Counter(
            "bridge_connects_refused", "MQTT connects refused, by code", ["code"], registry=registry
        )
        self.connections_shed = Counter(
            "bridge_connections_shed",
            "Connections closed as accepted: the listener's limit (address, total) of those not yet authenticated",
            ["listener", "limit"], registry=registry,
        )  # fmt: skip
        self.pending_connections = Gauge(
            "bridge_connections_pending",
            "Connections not yet authenticated (in their TLS handshake or before their CONNECT; HTTPS: open)",
            ["listener"], registry=registry,
        )  # fmt: skip
        self.topics_refused = Counter(
            "bridge_topics_refused", "Publishes and subscriptions of devices outside their topics, by action",
            ["action"], registry=registry,
        )  # fmt: skip
        self.batches = Counter("bridge_batches", "Intent batches by outcome", ["outcome"], registry=registry)
        self.acks = Counter("bridge_acks", "Acks sent to devices, by state", ["state"], registry=registry)
        self.outcomes = Counter(
            "bridge_executions",
            "Executions of intents by integration (kind), outcome (delivered, failed, expired, retried) and code",
            ["kind", "outcome", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "bridge_provider_request_duration_seconds",
            "Time an integration took to run one intent (the provider's answer or error), by kind",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.reloads = Counter(
            "bridge_config_reloads", "Config reloads by result (applied, refused)", ["result"], registry=registry
        )
        self.devices = Gauge("bridge_devices", "Enrolled devices by status", ["status"], registry=registry)
        self.connected = Gauge(
            "bridge_connected_devices", "Devices with a live session on this node", registry=registry
        )
        self.ledger = Gauge(
            "bridge_ledger_intents",
            "Ledger rows not done with (queued, running, final but unconfirmed by the edge), by state and kind",
            ["state", "kind"],
            registry=registry,
        )
        self.oldest_queued = Gauge(
            "bridge_ledger_oldest_queued_age_seconds",
            "How long the oldest queued intent has waited since it was queued or last retried (0: none queued)",
            registry=registry,
        )
        self.store_up = Gauge(
            "bridge_store_up", "1 when the store answered this scrape's queries, else 0", registry=registry
        )

        self._listeners: set[str] = set()
        for counter, values in (
            (self.enrollments, ENROLLMENT_RESULTS),
            (self.batches, BATCH_OUTCOMES),
            (self.reloads, RELOAD_RESULTS),
            (self.topics_refused, TOPIC_ACTIONS),
            (self.acks, tuple(AckState)),
        ):
            for value in values:
                counter.labels(str(value))

    def connections_pending(self, listener: str, count: int) -> None:
        self.pending_connections.labels(listener).set(count)
        if listener not in self._listeners:  # told first as the listener opens: its shed counters from 0
            self._listeners.add(listener)
            for limit in SHED_LIMITS:
                self.connections_shed.labels(listener, limit)

    def connection_shed(self, listener: str, limit: str) -> None:
        self.connections_shed.labels(listener, limit).inc()

    def count_commits(self, commits: Callable[[], int]) -> None:
        """Expose the store's commit count (read when scraped)."""
        self.registry.register(_Commits(commits))

    def observe(self, kind: str, outcome: str, code: str, seconds: float | None) -> None:
        """One execution's end: its outcome and code, and how long the provider took (None: not called)."""
        self.outcomes.labels(kind, outcome, code or "none").inc()
        if seconds is not None:
            self.latency.labels(kind).observe(seconds)

    def set_ledger(self, depth: LedgerDepth, now: float) -> None:
        """The ledger's depth as read for this scrape (label sets no longer present are dropped)."""
        self.ledger.clear()
        for (state, kind), count in depth.counts.items():
            self.ledger.labels(state, kind).set(count)
        self.oldest_queued.set(depth.oldest_queued_age(now))
