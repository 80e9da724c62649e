"""The running node's side of fleet health: it hears connects, reports and diagnoses, and writes them in batches.

The hooks (`connected`, `refused`, `intents`, `submit`) only touch memory, so a CONNECT or a batch
costs no store write; one loop writes what gathered (`FleetStore.flush`, one transaction) at most
once a second, and at least every HEARTBEAT_S as this node's heartbeat. The same loop looks for
diagnose requests (rows any process may add) every POLL_S and sends those of the devices this node
holds; the answers are written as they come (they are rare). docs/fleet.md has the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from cloud_bridge.errors import BridgeError
from cloud_bridge.fleet import TELEMETRY_AGE_S, FleetStore, Flush, Received, RequestState, Sighting, hour_of
from cloud_bridge.fleet_rules import (
    HEARTBEAT_S,
    WAITING,
    AnomalyKind,
    DeviceLike,
    DiagnoseStep,
    anomalies,
    diagnose_step,
)
from cloud_bridge.own_threads import own_thread
from intent_contract.accept_limits import address_key
from intent_contract.device_wire import Diagnosis, HealthReport, decode_diagnosis, decode_health, encode_diagnose
from intent_contract.envelope import Envelope
from intent_contract.errors import DecodeError
from intent_contract.ids import IdGenerator
from intent_contract.logs import LogThrottles, left_out
from intent_contract.wire import DIAGNOSE, HEALTH

logger = logging.getLogger(__name__)

FLUSH_S = 1.0  # what gathered is written at most this often
POLL_S = 0.5  # diagnose requests are looked for this often
REQUEST_TTL_S = 60.0  # a request no node took within this is left for the asker to give up on
HISTORY_EVERY_S = 900.0  # a device's history keeps its first report after a connect, then one per 15 minutes
REPORT_GAP_S = 1.0  # a device's reports closer together than this are dropped
DROP_LOG_INTERVAL = 10.0  # seconds between lines about one device's dropped reports (the metric counts each)
MAX_SIGHTINGS = 100_000  # connects kept between two flushes (beyond: dropped, and said so once)
PRUNE_EVERY_S = 3600.0
REPORT_OUTCOMES = ("health", "diagnosis", "too_often", "undecodable", "unasked")  # bridge_device_reports_total
ANOMALIES_EVERY_S = 60.0  # `bridge_device_anomalies` is counted again this often ...
ANOMALIES_AFTER_S = 10.0  # ... or this soon after connects or intents were written

new_request_id = IdGenerator(lambda: int(time.time() * 1000), secrets.token_bytes).new


class FleetDesk:
    """Fleet health for one node; `start()` after the listener, `stop()` before the store closes."""

    def __init__(
        self,
        fleet: FleetStore,
        *,
        node: str,
        devices: Callable[[], Sequence[DeviceLike]],
        metrics: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fleet = fleet
        self._node = node
        self._send: Callable[[str, str, bytes], bool] = lambda _device, _leaf, _data: False
        self._held: Callable[[], Sequence[str]] = list
        self._subscribed: Callable[[str, str], bool] = lambda _device, _leaf: False
        self._connected_at: dict[str, float] = {}  # when each device's session here began
        self._waiting: set[str] = set()  # requests said to wait for their device's SUBSCRIBE
        self._devices = devices
        self._clock = clock
        self._sightings: list[Sighting] = []
        self._reports: dict[str, Received] = {}
        self._volume: Counter[tuple[str, int]] = Counter()
        self._held_before: set[str] = set()
        # Devices that connected here since the last flush: written as held here even when they were held here
        # at the last flush too (they left and came back, and another node may have written them as its own
        # meanwhile: with only the difference of the two sets written, such a device stayed the other node's,
        # then nobody's once that node saw its session end, while it was connected here).
        self._connects: set[str] = set()
        self._last_report: dict[str, float] = {}
        self._drop_logs = LogThrottles(DROP_LOG_INTERVAL)  # reports dropped: a line per device per interval
        self._history_at: dict[str, float] = {}
        self._sent: dict[str, tuple[str, float]] = {}  # request id -> (device id, when), requests this node sent
        self._answering: set[asyncio.Task[object]] = set()  # answers being written (the loop keeps weak refs)
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._dropped = False
        self._counts_stale = False  # telemetry was written since the anomalies were counted
        self.reports = PromCounter(
            "bridge_device_reports", "Health reports and diagnoses from devices, by outcome", ["outcome"],
            registry=metrics,
        )  # fmt: skip
        for outcome in REPORT_OUTCOMES:  # from 0, so that `increase()` sees the first (cloud_bridge.metrics)
            self.reports.labels(outcome)
        self.anomalies = Gauge(
            "bridge_device_anomalies", "Devices flagged now, by anomaly (fleet-wide: every node says the same)",
            ["kind"], registry=metrics,
        )  # fmt: skip
        for kind in AnomalyKind:
            self.anomalies.labels(str(kind)).set(0)

    def attach(
        self,
        send: Callable[[str, str, bytes], bool],
        held: Callable[[], Sequence[str]],
        subscribed: Callable[[str, str], bool],
    ) -> None:
        """Connect the listener: its `send` (False when the device is not here or not subscribed), the devices
        whose session it holds, and whether a device here is subscribed to a leaf of its topics."""
        self._send = send
        self._held = held
        self._subscribed = subscribed

    # -- hooks: memory only ----------------------------------------------------------------------

    def connected(self, device_id: str, address: str, at: float) -> None:
        """The gate let an enrolled device in (device_gate.ConnectTelemetry)."""
        self._sight(Sighting(device_id, at, address_key(address)))
        self._connects.add(device_id)
        self._history_at.pop(device_id, None)  # its first report after a connect goes to the history
        self._connected_at[device_id] = at

    def refused(self, device_id: str, address: str, code: str, at: float) -> None:
        """The gate refused a CONNECT naming an enrolled device."""
        self._sight(Sighting(device_id, at, address_key(address), code))

    def _sight(self, sighting: Sighting) -> None:
        if len(self._sightings) >= MAX_SIGHTINGS:
            if not self._dropped:
                logger.warning("fleet telemetry: too many connects to keep before the next write; some are dropped")
                self._dropped = True
            return
        self._sightings.append(sighting)

    def intents(self, device_id: str, envelopes: Sequence[Envelope]) -> None:
        """A batch was admitted: count its intents by the hour they were created (the volume rule)."""
        now = self._clock()
        oldest = now - TELEMETRY_AGE_S
        for envelope in envelopes:
            created = min(envelope.created / 1000, now)  # a clock ahead of ours counts as now
            if created >= oldest:
                self._volume[(device_id, hour_of(created))] += 1

    def submit(self, device_id: str, leaf: str, data: bytes) -> None:
        """A health report or a diagnosis (listener.ReportSink)."""
        now = self._clock()
        try:
            if leaf == HEALTH:
                self._take_report(device_id, decode_health(data), now)
            else:
                self._take_diagnosis(device_id, data, now)
        except DecodeError as exc:
            self.reports.labels("undecodable").inc()  # every one; a line per device per DROP_LOG_INTERVAL
            not_logged = self._drop_logs.allow(device_id, time.monotonic())
            if not_logged is not None:
                logger.warning(
                    "undecodable %s dropped: %s%s", leaf, str(exc)[:200], left_out(not_logged),
                    extra={"device_id": device_id, "code": "undecodable", "not_logged": not_logged},
                )  # fmt: skip

    def _take_report(self, device_id: str, report: HealthReport, now: float) -> None:
        if now - self._last_report.get(device_id, float("-inf")) < REPORT_GAP_S:
            self.reports.labels("too_often").inc()
            return
        self._last_report[device_id] = now
        history = now - self._history_at.get(device_id, float("-inf")) >= HISTORY_EVERY_S
        if history:
            self._history_at[device_id] = now
        earlier = self._reports.get(device_id)
        self._reports[device_id] = Received(
            device_id, now, report, history or (earlier is not None and earlier.history)
        )
        self.reports.labels("health").inc()

    def _take_diagnosis(self, device_id: str, data: bytes, now: float) -> None:
        diagnosis = decode_diagnosis(data)
        if self._sent.get(diagnosis.request_id, ("", 0.0))[0] != device_id:
            self.reports.labels("unasked").inc()
            not_logged = self._drop_logs.allow(device_id, time.monotonic())
            if not_logged is not None:
                logger.info(
                    "diagnosis %s that this node did not ask for dropped%s", diagnosis.request_id, left_out(not_logged),
                    extra={"device_id": device_id, "code": "unasked", "not_logged": not_logged},
                )  # fmt: skip
            return
        # Every request this node sent the device and that is still unanswered gets this diagnosis: the edge makes
        # one at a time and drops a request that arrives meanwhile, so a second operator asking at the same
        # time waited for an answer that never came.
        answered = [r for r, (device, _at) in self._sent.items() if device == device_id]
        for request_id in answered:
            del self._sent[request_id]
        self.reports.labels("diagnosis").inc()
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            own_thread(self._answer_all, answered, device_id, diagnosis, now)
        )
        self._answering.add(task)
        task.add_done_callback(self._answered)

    def _answer_all(self, request_ids: Sequence[str], device_id: str, diagnosis: Diagnosis, now: float) -> None:
        for request_id in request_ids:
            self._fleet.answer(request_id, device_id, dataclasses.replace(diagnosis, request_id=request_id), now)

    def _answered(self, task: asyncio.Task[object]) -> None:
        self._answering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a diagnosis could not be stored: %s", task.exception())

    # -- the loop --------------------------------------------------------------------------------

    async def start(self) -> None:
        # Rows a previous run of this node left as held are stale: that process is gone.
        await own_thread(self._fleet.leave, self._node, self._clock())
        self._task = asyncio.create_task(self._run(), name="fleet-desk")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*self._answering, return_exceptions=True)  # answers already on their way
        with contextlib.suppress(BridgeError):
            await self.flush(held=())  # what gathered, and every session here ended
            await own_thread(self._fleet.leave, self._node, self._clock())

    async def _run(self) -> None:
        last_flush = last_prune = last_count = float("-inf")
        while True:
            now = time.monotonic()
            try:
                await self.poll_requests()
                since = now - last_flush
                if since >= HEARTBEAT_S or (since >= FLUSH_S and self._dirty()):
                    last_flush = now
                    await self.flush()
                if now - last_prune >= PRUNE_EVERY_S:
                    last_prune = now
                    await own_thread(self._fleet.prune, self._clock())
                since = now - last_count
                if since >= ANOMALIES_EVERY_S or (self._counts_stale and since >= ANOMALIES_AFTER_S):
                    last_count = now
                    await self.count_anomalies()
                if self._failing:
                    logger.warning("fleet tables can be written again")
                    self._failing = False
            except BridgeError as exc:
                if not self._failing:
                    logger.error("fleet tables cannot be written (%s); what gathered is kept and tried again", exc)
                    self._failing = True
            await asyncio.sleep(POLL_S)

    def _dirty(self) -> bool:
        return bool(
            self._sightings or self._reports or self._volume or self._connects or set(self._held()) != self._held_before
        )

    async def flush(self, held: Sequence[str] | None = None) -> None:
        """Write what gathered and the heartbeat, in one transaction; kept for the next try when it fails."""
        now_held = set(self._held() if held is None else held)
        connects, self._connects = self._connects, set()
        flush = Flush(
            node=self._node,
            now=self._clock(),
            sightings=tuple(self._sightings),
            reports=tuple(self._reports.values()),
            held=tuple(sorted((now_held - self._held_before) | (now_held & connects))),
            released=tuple(self._held_before - now_held),
            volume=dict(self._volume),
        )
        self._sightings, self._reports, self._volume = [], {}, Counter()
        try:
            await own_thread(self._fleet.flush, flush)
        except BridgeError:
            self._sightings[:0] = flush.sightings
            self._reports = {r.device_id: r for r in flush.reports} | self._reports
            self._volume.update(flush.volume or {})
            self._connects |= connects
            raise
        self._held_before = now_held
        self._dropped = False
        self._counts_stale = self._counts_stale or bool(flush.sightings or flush.volume)
        for gone in flush.released:
            self._last_report.pop(gone, None)
            self._connected_at.pop(gone, None)

    async def poll_requests(self) -> None:
        """Send the diagnose requests of devices this node holds; a device that cannot answer is said so."""
        now = self._clock()
        for request_id, (_device, sent_at) in list(self._sent.items()):
            if sent_at < now - REQUEST_TTL_S:  # never answered: the asker gave up long ago
                del self._sent[request_id]
        pending = await own_thread(self._fleet.pending, now - REQUEST_TTL_S)
        self._waiting &= {r.request_id for r in pending}
        for request in pending:
            device_id, request_id = request.device_id, request.request_id
            if device_id not in self._held():
                continue  # another node's, or nobody's: the asker gives up after its timeout
            connected_at = self._connected_at.get(device_id, float("-inf"))
            step = diagnose_step(
                subscribed=self._subscribed(device_id, DIAGNOSE),
                reported=self._last_report.get(device_id, float("-inf")) >= connected_at,
                connected_for=now - connected_at,
            )
            if step is DiagnoseStep.WAIT:
                if request_id not in self._waiting:  # said once in the row, for the asker; asked again next poll
                    self._waiting.add(request_id)
                    await own_thread(self._fleet.mark, request_id, RequestState.PENDING, self._node, WAITING, now)
                continue
            if step is DiagnoseStep.UNANSWERABLE:
                detail = "the device does not take diagnose requests: its edge is older than this bridge"
                await own_thread(self._fleet.mark, request_id, RequestState.UNANSWERABLE, self._node, detail, now)
                continue
            # Taken (and known here) before it goes out: the answer can come back before a write after the
            # send returns, and was then dropped as not asked for by this node.
            taken = await own_thread(self._fleet.mark, request_id, RequestState.SENT, self._node, "", now)
            if not taken:
                continue  # another node took it
            self._sent[request_id] = (device_id, now)
            if not self._send(device_id, DIAGNOSE, encode_diagnose(request_id)):
                # It left (or was cut off as a slow reader) since: pending again, for the node it comes back to.
                del self._sent[request_id]
                await own_thread(self._fleet.mark, request_id, RequestState.PENDING, self._node, "", now)
                continue
            logger.info("diagnose request %s sent", request_id, extra={"device_id": device_id})

    async def count_anomalies(self) -> dict[str, int]:
        """Refresh `bridge_device_anomalies` from the store; returns the counts."""
        self._counts_stale = False
        now = self._clock()
        devices = await own_thread(self._devices)
        telemetry = await own_thread(self._fleet.telemetry, now)
        counts = dict.fromkeys((str(k) for k in AnomalyKind), 0)
        for device in devices:
            if device.revoked_at is None:
                for anomaly in anomalies(telemetry.get(device.device_id), enrolled_at=device.enrolled_at, now=now):
                    counts[str(anomaly.kind)] += 1
        for kind, count in counts.items():
            self.anomalies.labels(kind).set(count)
        return counts
