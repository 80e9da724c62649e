"""Wiring of devices' messages to the ledger: batches -> policy + ledger -> acks; results -> acks; confirms.

Each device gets a bounded queue (messages and bytes) and one worker, so a hostile client can delay
only itself: decoding (size/depth/length limits from intent_contract.codec) runs in a worker thread
under a shared semaphore, and a device whose queue is full has its messages dropped (the edge
resends). Undecodable messages are logged without payload bytes and dropped; the session keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence

from cloud_bridge.enroll_http import BridgeMetrics, HttpServer, build_http_app, server_ssl_context
from cloud_bridge.errors import BridgeError, ConfigError
from cloud_bridge.executor import Executor
from cloud_bridge.integrations import build_integrations
from cloud_bridge.integrations.base import Integration
from cloud_bridge.ledger import Ledger
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.listener import ACKS, CONFIRMS, INTENTS, BridgeListener, DeviceGate
from cloud_bridge.policy import Decision, DeviceRef, PolicyEngine
from cloud_bridge.ratelimit import utc_day
from cloud_bridge.registry import Registry
from cloud_bridge.settings import BridgeSettings, HostPort
from intent_contract.codec import Ack, AckState, Envelope, decode_batch, decode_confirms, encode_acks
from intent_contract.errors import DecodeError
from intent_contract.names import is_name

logger = logging.getLogger(__name__)

ACKS_PER_MESSAGE = 200  # 200 acks of at most ~1.1 KiB stay well under the edge's 1 MiB decode limit
# Final results go to the device in one message per loop pass: the executor's jobs finish in groups
# (the ledger commits their results together and wakes them in one pass), so waiting for the end of
# that pass gathers a group without adding latency. One message per result cost the edge a commit
# and a confirm each (bench/findings.md F1); a fixed 5 ms wait added 5 ms to every result (F12).
Publish = Callable[[str, str, bytes], Awaitable[None]]


class BridgeService:
    """Turns permitted publishes into ledger calls and acks; implements listener.MessageSink."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        policy: PolicyEngine,
        registry: Registry,
        metrics: BridgeMetrics | None = None,
        clock: Callable[[], float] = time.time,
        queue_per_device: int = 64,
        queue_bytes_per_device: int = 16 << 20,
        decode_threads: int = 2,
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._registry = registry
        self._metrics = metrics or BridgeMetrics()
        self._clock = clock
        self._queue_size = queue_per_device
        self._queue_bytes = queue_bytes_per_device
        self._queued_bytes: dict[str, int] = {}
        self._decode_slots = asyncio.Semaphore(decode_threads)
        self._queues: dict[str, deque[tuple[str, bytes]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._devices: dict[str, DeviceRef] = {}
        self._publish: Publish | None = None
        self._wake: Callable[[], None] = lambda: None
        self._final_acks: dict[str, list[Ack]] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    def attach(self, publish: Publish, wake: Callable[[], None]) -> None:
        """Connect the outbound side: the listener's publish and the executor's wake."""
        self._publish = publish
        self._wake = wake

    # -- listener.MessageSink -------------------------------------------------------------------

    def submit(self, device_id: str, leaf: str, data: bytes) -> None:
        """Queue one permitted publish of `device_id`; drops it when that device's queue is full."""
        queue = self._queues.setdefault(device_id, deque())
        queued = self._queued_bytes.get(device_id, 0)
        # Full by count or by bytes; a lone message always fits (the decoder bounds its size).
        if queue and (len(queue) >= self._queue_size or queued + len(data) > self._queue_bytes):
            self._metrics.batches.labels("dropped_busy").inc()
            logger.warning("device queue full; message dropped", extra={"device_id": device_id, "bytes": len(data)})
            return
        queue.append((leaf, data))
        self._queued_bytes[device_id] = queued + len(data)
        worker = self._workers.get(device_id)
        if worker is None or worker.done():
            self._workers[device_id] = asyncio.create_task(self._drain(device_id, queue), name=f"device-{device_id}")

    async def on_acks_subscribed(self, device_id: str) -> None:
        """Re-send every final result the device has not confirmed."""
        try:
            acks = await self._ledger.unconfirmed(device_id)
        except BridgeError:
            logger.exception("cannot read unconfirmed results", extra={"device_id": device_id})
            return
        await self.send_acks(device_id, acks)

    # -- executor side --------------------------------------------------------------------------

    async def on_final(self, device_id: str, ack: Ack) -> None:
        """The executor's on_final: queue a final result; results finishing together share a message."""
        pending = self._final_acks.setdefault(device_id, [])
        pending.append(ack)
        if len(pending) == 1:
            task = asyncio.create_task(self._flush_final(device_id), name=f"final-acks-{device_id}")
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush_final(self, device_id: str) -> None:
        await asyncio.sleep(0)  # after the other jobs woken in this pass have added theirs
        acks = self._final_acks.pop(device_id, [])
        try:
            await self.send_acks(device_id, acks)
        except Exception:  # they stay unconfirmed in the ledger and are re-sent on the next subscribe
            logger.exception("cannot send final results", extra={"device_id": device_id})

    async def send_acks(self, device_id: str, acks: Sequence[Ack]) -> None:
        """Publish acks QoS 1 to `devices/{id}/acks`, in messages of at most ACKS_PER_MESSAGE."""
        if self._publish is None or not acks:
            return
        for start in range(0, len(acks), ACKS_PER_MESSAGE):
            chunk = list(acks[start : start + ACKS_PER_MESSAGE])
            await self._publish(device_id, ACKS, encode_acks(chunk))
            for ack in chunk:
                self._metrics.acks.labels(str(ack.state)).inc()

    # -- per-device work ------------------------------------------------------------------------

    async def _drain(self, device_id: str, queue: deque[tuple[str, bytes]]) -> None:
        while queue:
            leaf, data = queue.popleft()
            try:
                if leaf == INTENTS:
                    await self.handle_intents(device_id, data)
                elif leaf == CONFIRMS:
                    await self.handle_confirms(device_id, data)
            except BridgeError as exc:
                # The edge resends anything not acked; log and keep serving this device.
                self._metrics.batches.labels("error").inc()
                logger.error("message not processed: %s", exc.code, extra={"device_id": device_id})
            finally:
                self._queued_bytes[device_id] -= len(data)

    async def _device_ref(self, device_id: str) -> DeviceRef | None:
        ref = self._devices.get(device_id)
        if ref is None:
            device = await asyncio.to_thread(self._registry.get, device_id)
            if device is None or device.revoked:
                return None
            ref = self._devices[device_id] = DeviceRef(device.device_id, device.tenant, device.name)
        return ref

    async def handle_intents(self, device_id: str, data: bytes) -> list[Ack]:
        """One batch: decode, reject invalid envelopes, admit the rest, publish the acks."""
        async with self._decode_slots:
            try:
                batch = await asyncio.to_thread(decode_batch, data)
            except DecodeError as exc:
                self._metrics.batches.labels("undecodable").inc()
                logger.warning(
                    "undecodable batch dropped: %s", str(exc)[:200], extra={"device_id": device_id, "bytes": len(data)}
                )
                return []
        device = await self._device_ref(device_id)
        if device is None:
            logger.warning("batch from an unknown or revoked device dropped", extra={"device_id": device_id})
            return []
        now = self._clock()
        acks = [
            Ack(ident, AckState.REJECTED, code, detail[:1000], int(now * 1000))
            for ident, code, detail in batch.invalid
            if is_name(ident)
        ]
        if batch.envelopes:
            policy = self._policy

            def decide(envelope: Envelope) -> Decision:
                return policy.check(device, envelope.kind, envelope.payload, now)

            acks.extend(await self._ledger.admit(device, batch.envelopes, decide, now))
            self._wake()
        self._metrics.batches.labels("admitted").inc()
        await self.send_acks(device_id, acks)
        return acks

    async def handle_confirms(self, device_id: str, data: bytes) -> int:
        """Mark final results as applied by the edge."""
        try:
            ids = decode_confirms(data)
        except DecodeError as exc:
            logger.warning("undecodable confirms dropped: %s", str(exc)[:200], extra={"device_id": device_id})
            return 0
        return await self._ledger.confirm(device_id, ids)

    def forget(self, device_id: str) -> None:
        """Drop cached device data (after a revocation)."""
        self._devices.pop(device_id, None)

    async def close(self) -> None:
        """Stop the per-device workers (unsent final results stay unconfirmed in the ledger)."""
        workers = [*self._workers.values(), *self._flushes]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers.clear()


def _check_port_free(bind: HostPort, flag: str) -> None:
    """Fail with a one-line message naming the flag when the address is taken (before any I/O starts)."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind.host, bind.port))
        except OSError as exc:
            raise BridgeError(f"{flag} {bind}: {exc.strerror or exc}", code="listen_failed") from exc


class Bridge:
    """The whole cloud bridge in one process: registry, ledger, policy, executor, MQTT and HTTPS listeners."""

    def __init__(
        self,
        settings: BridgeSettings,
        *,
        integrations: Mapping[str, Integration] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = BridgeMetrics()
        self.registry = Registry(settings.registry_path)
        self.ledger = SqliteLedger(settings.ledger_path)
        self._clock = clock
        self._given_integrations = integrations
        self.integrations: Mapping[str, Integration] = {}
        self.service: BridgeService | None = None
        self.listener: BridgeListener | None = None
        self._executor: Executor | None = None
        self._http: HttpServer | None = None

    async def start(self) -> None:
        """Open the stores and bind every listener; BridgeError (one line) on any problem."""
        settings = self.settings
        if settings.tls_cert is None or settings.tls_key is None:
            raise ConfigError("--tls-cert and --tls-key are required (try `cloud-bridge dev-certs DIR`)")
        context = server_ssl_context(settings.tls_cert, settings.tls_key)
        _check_port_free(settings.listen, "--listen")
        _check_port_free(settings.http_listen, "--http-listen")
        if settings.ws_listen is not None:
            _check_port_free(settings.ws_listen, "--ws-listen")
        if not settings.configured:
            logger.warning("no config file (or an empty one): no integration enabled, every intent is rejected")
        policy = PolicyEngine.from_config(settings.tenants)
        if self._given_integrations is not None:
            self.integrations = dict(self._given_integrations)
        elif settings.integrations:
            self.integrations = build_integrations(settings.integrations, settings.env)
        logger.info("integrations enabled: %s", ", ".join(sorted(self.integrations)) or "none")
        await asyncio.to_thread(self.registry.open)
        await self.ledger.open()
        now = self._clock()
        day = utc_day(now)
        policy.load_usage(await self.ledger.usage_since(day * 86400.0), day)
        service = self.service = BridgeService(
            ledger=self.ledger, policy=policy, registry=self.registry, metrics=self.metrics, clock=self._clock
        )
        executor = self._executor = Executor(
            self.ledger,
            self.integrations,
            max_attempts=settings.max_attempts,
            retry_base=settings.retry_base,
            retry_cap=settings.retry_cap,
            on_final=service.on_final,
            now=self._clock,
            revoked=self._revoked,
        )
        gate = DeviceGate(
            self.registry,
            settings.audience,
            clock=self._clock,
            on_refused=lambda code: self.metrics.connects_refused.labels(code).inc(),
        )
        listener = self.listener = BridgeListener(settings, self.registry, gate, service)
        service.attach(listener.publish, executor.wake)
        app = build_http_app(
            self.registry,
            self.metrics,
            mqtt_port=settings.listen.port,
            audience=settings.audience,
            clock=self._clock,
            connected=lambda: len(listener.connected()),
        )
        self._http = HttpServer(app, settings.http_listen, context)
        await self._http.start()
        await listener.start()
        await executor.start()
        logger.info("bridge running: mqtt %s, https %s", settings.listen, settings.http_listen)

    def _revoked(self, device_id: str) -> bool:
        return self.listener is not None and device_id in self.listener.revoked

    async def stop(self) -> None:
        """Stop in reverse order; safe after a failed start."""
        if self.listener is not None:
            await self.listener.stop()
        if self._executor is not None:
            await self._executor.stop()
        if self.service is not None:
            await self.service.close()
        if self._http is not None:
            await self._http.stop()
        for integration in self.integrations.values():
            try:
                await integration.aclose()
            except BridgeError:
                logger.exception("integration %s did not close cleanly", integration.kind)
        await self.ledger.close()
