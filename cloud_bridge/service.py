"""Wiring of devices' messages to the ledger: batches -> policy + ledger -> acks; results -> acks; confirms.

Each device gets a bounded queue (messages and bytes) and one worker (device_queues.py), so a hostile
client can delay only itself: decoding (size/depth/length limits from intent_contract.codec) and
judging each envelope by policy run on the event loop for small batches and in a worker thread under a
shared semaphore for large ones (INLINE_JUDGE_BYTES), and a device whose queue is full has its messages
dropped (the edge resends). Undecodable messages are logged without payload bytes and dropped; the
session keeps going.

With a shared store, a result may be finished by another node's executor: the store's signals name
the device, and the node holding its session sends what it has not sent yet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from cloud_bridge.device_queues import DeviceQueues, Stage
from cloud_bridge.errors import BridgeError
from cloud_bridge.ledger import ClaimOffer, Ledger, LedgerEntry
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, Request, requests_for
from cloud_bridge.metrics import BridgeMetrics
from cloud_bridge.own_threads import own_thread
from cloud_bridge.policy import Decision, DeviceRef, PolicyEngine
from cloud_bridge.refusals import schema_refusals, version_refusals
from cloud_bridge.registry import Registry
from intent_contract.codec import (
    Ack,
    AckState,
    DecodedBatch,
    decode_batch,
    encode_acks,
    read_confirms,
    refuse_version,
)
from intent_contract.envelope import Envelope
from intent_contract.errors import DecodeError, UnsupportedVersionError
from intent_contract.logs import LogThrottles, left_out
from intent_contract.names import is_name
from intent_contract.wire import (
    ACKS,
    ACKS_PER_MESSAGE,
    CONFIRMS,
    DEVICE_QUEUE_BYTES,
    DEVICE_QUEUE_MESSAGES,
    INTENTS,
    MAX_DETAIL,
)

logger = logging.getLogger(__name__)

# Final results go to the device in one message per loop pass: the executor's jobs finish in groups
# (the ledger commits their results together and wakes them in one pass), so waiting for the end of
# that pass gathers a group without adding latency. One message per result cost the edge a commit
# and a confirm each (bench/findings.md F1); a fixed 5 ms wait added 5 ms to every result (F12).
Publish = Callable[[str, str, bytes], Awaitable[None]]

# Batches up to this size are judged on the event loop, larger ones in a worker thread. The hop to a
# thread and back cost more than judging a small batch: with 300 devices sending 20 intents at a time
# (bench.scale P4), a batch took 3-5 ms of wall through the thread, waiting for the GIL, against 0.5 ms
# inline, and the two decode slots capped a node at ~11,000 intents/s (bench/findings.md F20). A batch
# this size holds at most ~80 intents, ~2 ms of the loop; a drain's batches of 500 still go to the thread,
# where the loop keeps serving other devices between the thread's GIL slices.
UNDECODABLE_LOG_INTERVAL = 10.0  # seconds between a device's "undecodable ... dropped" lines
INLINE_JUDGE_BYTES = 8 * 1024


async def _no_acks() -> list[Ack]:
    """The second stage of a message that was dropped in its first."""
    return []


def _log_revoked_batch(device_id: str) -> None:
    logger.warning(
        "batch of a revoked device dropped: it was queued before its session ended",
        extra={"device_id": device_id, "code": "device_revoked"},
    )


class SlotOffers(Protocol):
    """The executor's free slots, offered to admissions (executor.Executor: see its docstring)."""

    def offer(self, tenant: str) -> ClaimOffer | None: ...

    def adopt(self, offer: ClaimOffer, entries: list[LedgerEntry]) -> None: ...

    def release(self, offer: ClaimOffer) -> None: ...


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
        queue_per_device: int = DEVICE_QUEUE_MESSAGES,
        queue_bytes_per_device: int = DEVICE_QUEUE_BYTES,
        decode_threads: int = 2,
        max_intent_age: float = DEFAULT_MAX_AGE,
        on_intents: Callable[[str, Sequence[Envelope]], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._registry = registry
        self._metrics = metrics or BridgeMetrics()
        self._clock = clock
        self._queues = DeviceQueues(
            self._handle, self._metrics, messages=queue_per_device, max_bytes=queue_bytes_per_device
        )
        self._decode_slots = asyncio.Semaphore(decode_threads)
        # What a device sends that cannot be read: a line per device per UNDECODABLE_LOG_INTERVAL (the metric counts
        # each); an enrolled device publishing garbage in a loop wrote a line per publish.
        self._undecodable_logs = LogThrottles(UNDECODABLE_LOG_INTERVAL)
        self._devices: dict[str, DeviceRef] = {}
        self._publish: Publish | None = None
        self._wake: Callable[[], None] = lambda: None
        self._slots: SlotOffers | None = None
        self._final_acks: dict[str, list[Ack]] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        self._max_age = max_intent_age
        self._holds: Callable[[str], bool] = lambda _device_id: False
        self._revoked: Callable[[str], bool] = lambda _device_id: False
        # What each device was sent since it last subscribed, by intent id: (attempt, final) of its final
        # result until the device confirms it, or of the `accepted` of a row an operator retried until its
        # result. A signal from another node then sends only what is new: the result of an attempt an
        # operator retried (the same id) before the device confirmed the last one; a retried row's
        # `accepted` once, not again on every signal (each retry of a script signals once, and each sent
        # every live retried row again: quadratic).
        self._sent: dict[str, dict[str, tuple[int, bool]]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._stale: set[str] = set()
        self._on_intents = on_intents  # the fleet desk counts each device's volume

    def use_policy(self, policy: PolicyEngine) -> None:
        """Judge batches from now on by `policy` (a config reload); a batch being judged keeps the old one."""
        self._policy = policy

    def attach(
        self,
        publish: Publish,
        wake: Callable[[], None],
        holds: Callable[[str], bool] | None = None,
        slots: SlotOffers | None = None,
        revoked: Callable[[str], bool] | None = None,
    ) -> None:
        """Connect the outbound side: the listener's publish, the executor's wake, whether this node holds
        a device's session (for results finished by other nodes), the executor's free slots, and whether a
        device is revoked (the revocation watcher's set: its batches still queued here are dropped)."""
        self._publish = publish
        self._wake = wake
        if holds is not None:
            self._holds = holds
        if revoked is not None:
            self._revoked = revoked
        self._slots = slots

    # -- listener.MessageSink -------------------------------------------------------------------

    def submit(self, device_id: str, leaf: str, data: bytes) -> None:
        """Queue one permitted publish of `device_id`; drops it when that device's queue is full."""
        self._queues.submit(device_id, leaf, data)

    async def on_acks_subscribed(self, device_id: str) -> None:
        """Re-send every final result the device has not confirmed."""
        self._sent[device_id] = {}  # also marks the device as one to refresh after lost signals
        await self._send_unconfirmed(device_id)

    async def _send_unconfirmed(self, device_id: str) -> None:
        try:
            acks = await self._ledger.unconfirmed(device_id)
        except BridgeError:
            logger.exception("cannot read unconfirmed results", extra={"device_id": device_id})
            return
        sent = self._sent.get(device_id, {})
        # Live rows here are rows an operator retried: their `accepted` goes out once per attempt.
        news = [a for a in acks if sent.get(a.id) != (a.attempt, a.state.final)]
        await self.send_acks(device_id, news)
        if self._holds(device_id):
            sent = self._sent.setdefault(device_id, {})
            sent.update((a.id, (a.attempt, False)) for a in news if not a.state.final)

    def on_results(self, device_id: str) -> None:
        """Another node finished results of `device_id` ("*": of any device): send them if we hold it."""
        devices = list(self._sent) if device_id == "*" else [device_id]
        for device in devices:
            if not self._holds(device):
                self._sent.pop(device, None)
                continue
            if device in self._refreshing:
                self._stale.add(device)  # read again when the current read is done
                continue
            task = asyncio.create_task(self._refresh(device), name=f"results-{device}")
            self._refreshing[device] = task

    async def _refresh(self, device_id: str) -> None:
        try:
            while True:
                self._stale.discard(device_id)
                await self._send_unconfirmed(device_id)
                if device_id not in self._stale:
                    return
        except Exception:  # they stay unconfirmed and go out on the next subscribe
            logger.exception("cannot send results finished elsewhere", extra={"device_id": device_id})
        finally:
            self._refreshing.pop(device_id, None)

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
        # Remembered only for a device held here: results finished for devices on other nodes go nowhere.
        sent = self._sent.setdefault(device_id, {}) if self._holds(device_id) else {}
        for start in range(0, len(acks), ACKS_PER_MESSAGE):
            chunk = list(acks[start : start + ACKS_PER_MESSAGE])
            await self._publish(device_id, ACKS, encode_acks(chunk))
            # One counter update per state, not per ack: a label lookup takes a lock and a dict.
            for state, count in collections.Counter(ack.state for ack in chunk).items():
                self._metrics.acks.labels(str(state)).inc(count)
            for ack in chunk:
                if ack.state.final:
                    sent[ack.id] = (ack.attempt, True)
                else:
                    sent.pop(ack.id, None)  # retried: its next final result is news

    # -- per-device work ------------------------------------------------------------------------

    async def _handle(self, device_id: str, leaf: str, data: bytes) -> Stage:
        """One message from the device's queue: its first stage, which returns its second (device_queues.py
        runs one message's first stage beside the one before's second)."""
        if leaf == INTENTS:
            return await self.judge_intents(device_id, data)
        if leaf == CONFIRMS:
            return functools.partial(self.handle_confirms, device_id, data)
        return _no_acks

    async def _device_ref(self, device_id: str) -> DeviceRef | None:
        if self._revoked(device_id):  # its batches queued before its session was dropped
            self.forget(device_id)
            return None
        ref = self._devices.get(device_id)
        if ref is None:
            device = await own_thread(self._registry.get, device_id)
            if device is None or device.revoked:
                return None
            ref = self._devices[device_id] = DeviceRef(device.device_id, device.tenant, device.name)
        return ref

    def _judge(self, device: DeviceRef, data: bytes, now: float) -> tuple[DecodedBatch, list[Request]]:
        """Decode a batch and judge each envelope by policy (pure, so it runs in a worker thread)."""
        batch = decode_batch(data)
        policy = self._policy

        def decide(envelope: Envelope) -> Decision:
            return policy.check(device, envelope.kind, envelope.payload)

        return batch, requests_for(batch.envelopes, decide, now, self._max_age)

    async def handle_intents(self, device_id: str, data: bytes) -> list[Ack]:
        """One batch: decode and judge, reject invalid envelopes, admit the rest, publish the acks."""
        admit = await self.judge_intents(device_id, data)
        return await admit()

    async def judge_intents(self, device_id: str, data: bytes) -> Callable[[], Awaitable[list[Ack]]]:
        """The first stage of a batch: decode it and judge each envelope. Nothing is written and no ack
        sent; the stage returned does that (admits, refuses, acks) and returns the acks."""
        device = await self._device_ref(device_id)
        if device is None:
            if self._revoked(device_id):
                _log_revoked_batch(device_id)
            else:
                logger.warning(
                    "batch from an unknown or revoked device dropped",
                    extra={"device_id": device_id, "code": "unknown_device"},
                )
            return _no_acks
        now = self._clock()
        try:
            if len(data) <= INLINE_JUDGE_BYTES:
                batch, requests = self._judge(device, data, now)
            else:
                async with self._decode_slots:
                    batch, requests = await own_thread(self._judge, device, data, now)
        except UnsupportedVersionError as exc:
            return functools.partial(self._refuse_version, device, exc)
        except DecodeError as exc:
            self._metrics.batches.labels("undecodable").inc()
            self._log_undecodable("batch", device_id, exc, len(data))
            return _no_acks
        return functools.partial(self._admit_judged, device, batch, requests, now)

    async def _admit_judged(
        self, device: DeviceRef, batch: DecodedBatch, requests: list[Request], now: float
    ) -> list[Ack]:
        """The second stage of a batch: audit and reject the invalid envelopes, admit the rest, send the acks."""
        if self._revoked(device.device_id):  # revoked while the batch waited for the one before it
            self.forget(device.device_id)
            _log_revoked_batch(device.device_id)
            return []
        acks = [
            Ack(ident, AckState.REJECTED, code, detail[:MAX_DETAIL], int(now * 1000))
            for ident, code, detail, _ in batch.invalid
            if is_name(ident)
        ]
        if batch.invalid:  # audited before the edge is told
            await self._ledger.note(schema_refusals(device, batch.invalid, now))
        if requests:
            admitted, all_running = await self._admit(device, requests, now)
            acks.extend(admitted)
            if not all_running:  # rows may wait: the executor looks (it makes no offers until it has)
                self._wake()
            if self._on_intents is not None:
                self._on_intents(device.device_id, [r.envelope for r in requests])
        self._metrics.batches.labels("admitted").inc()
        await self.send_acks(device.device_id, acks)
        return acks

    async def _admit(self, device: DeviceRef, requests: list[Request], now: float) -> tuple[list[Ack], bool]:
        """Admit the batch, claiming its new rows into the executor's free slots when it offers some; the
        acks, and whether every request of the batch is running now (nothing of it waits)."""
        slots = self._slots
        offer = slots.offer(device.tenant) if slots is not None else None
        if slots is None or offer is None:
            return await self._ledger.admit(device, requests, now), False

        def settle(done: asyncio.Future[tuple[list[Ack], list[LedgerEntry]]]) -> None:
            # Here, not after the await: rows claimed by a committed admission run even if this caller
            # was cancelled meanwhile (a running row nobody runs would wait for its lease to end).
            if done.cancelled() or done.exception() is not None:
                slots.release(offer)
            else:
                slots.adopt(offer, done.result()[1])

        admission = asyncio.ensure_future(self._ledger.admit_claiming(device, requests, now, offer))
        admission.add_done_callback(settle)
        acks, claimed = await asyncio.shield(admission)
        return acks, len(claimed) == len(requests)

    def _log_undecodable(self, what: str, device_id: str, exc: DecodeError, size: int) -> None:
        not_logged = self._undecodable_logs.allow(f"{what} {device_id}", time.monotonic())
        if not_logged is not None:
            logger.warning(
                "undecodable %s dropped: %s%s", what, str(exc)[:200], left_out(not_logged),
                extra={"device_id": device_id, "bytes": size, "code": "undecodable", "not_logged": not_logged},
            )  # fmt: skip

    async def _refuse_version(self, device: DeviceRef, error: UnsupportedVersionError) -> list[Ack]:
        """Reject (and audit) every intent of the batch that can be named, so the edge reports them instead of
        resending."""
        device_id, now = device.device_id, self._clock()
        acks = refuse_version(error, int(now * 1000))
        await self._ledger.note(version_refusals(device, acks, now))
        self._metrics.batches.labels("unsupported_version").inc()
        logger.warning(
            "batch of wire version %s refused; %d intents rejected%s",
            error.version,
            len(acks),
            "" if acks else " (none could be named: the edge is not told)",
            extra={"device_id": device_id, "code": "unsupported_version"},
        )
        await self.send_acks(device_id, acks)
        return acks

    async def handle_confirms(self, device_id: str, data: bytes) -> int:
        """Mark final results as applied by the edge."""
        try:
            ids, attempt = read_confirms(data)
        except DecodeError as exc:
            self._log_undecodable("confirms", device_id, exc, len(data))
            return 0
        sent = self._sent.get(device_id)
        if sent:
            for intent_id in ids:
                sent.pop(intent_id, None)
        return await self._ledger.confirm(device_id, ids, attempt)

    def forget(self, device_id: str) -> None:
        """Drop cached device data (after a revocation)."""
        self._devices.pop(device_id, None)

    async def close(self) -> None:
        """Stop the per-device workers (unsent final results stay unconfirmed in the ledger)."""
        await self._queues.close()
        workers = [*self._flushes, *self._refreshing.values()]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
