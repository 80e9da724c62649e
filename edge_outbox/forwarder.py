"""The forwarder: sends committed intents to the cloud bridge whenever a link exists, applies its acks.

One connection at a time, over MQTT/TLS verified against the pinned CA (optionally WebSocket over
TLS). Each connect carries a freshly signed JWT; a connection is closed and re-made before its token
would expire. While the bridge is unreachable, reconnects back off with full jitter.

Flow control: at most `window` intents are unacknowledged at once. An intent is marked sent (and so
can no longer be cancelled) before it goes out; one that is not acknowledged within `ack_timeout`,
or that was sent on an earlier connection, is sent again: the bridge deduplicates by id.

On the same session it reports the outbox's health and answers diagnose requests (fleet_link).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt

from edge_outbox import forward_ops, offline_ops, ops
from edge_outbox.bridge_access import ACK_WAIT_S, bridge_client, device_token
from edge_outbox.bridge_clock import BridgeClock, TimeSample
from edge_outbox.cancelling import raise_if_cancelled
from edge_outbox.confirms import Confirms
from edge_outbox.db import IntentRow
from edge_outbox.device_check import check_device
from edge_outbox.errors import StorageError
from edge_outbox.fleet_link import DeviceReporter, ReporterSettings, disk_facts
from edge_outbox.fleet_report import EdgeFacts, RecentErrors
from edge_outbox.forward_recheck import Recheck
from edge_outbox.forward_wire import LinkSnapshot, LinkState, encode_rows, first_leaf, link_failure
from edge_outbox.identity import Identity
from edge_outbox.link_gate import LinkGate
from edge_outbox.link_pace import LinkPace
from edge_outbox.link_rate import AckRate
from edge_outbox.pins_learn import has_pins, learn_pins
from edge_outbox.send_window import SendWindow
from edge_outbox.settings import ForwarderSettings
from edge_outbox.store import Store
from intent_contract.backoff import compute_backoff
from intent_contract.codec import Ack, read_acks
from intent_contract.errors import DecodeError
from intent_contract.timefmt import format_age
from intent_contract.wire import ACKS, BATCHES_IN_FLIGHT, CONFIRMS, INTENTS, device_topic

log = logging.getLogger(__name__)

_REFUSED_CODES = {4, 5, 134, 135}  # bad user name or password / not authorized (3.1.1 and 5 numbering)
_MAX_ACK_MESSAGES = 100  # acks messages applied in one commit
# A learned clock that moves by more than this (a third of the bridge's token leeway) is worth a
# reconnect at once: the refused token was made on the old one.
CLOCK_MOVE_MS = 10_000


class _TokenExpiringError(Exception):
    """Raised inside a connection to close it before its token expires."""


class _WindowClosedError(Exception):
    """Raised inside a connection to close it when its forwarding window ends (and no flush wants it)."""


class Forwarder:
    def __init__(
        self,
        store: Store,
        data_dir: Path,
        identity: Identity,
        settings: ForwarderSettings,
        clock_ms: Callable[[], int],
        *,
        facts: Callable[[], EdgeFacts] | None = None,
        carried: LinkSnapshot | None = None,
        offline_since: int | None = None,
    ) -> None:
        """`carried`: the counts of the forwarder a reload stopped; `offline_since`: the last contact with the bridge
        known (ms; an earlier run's too), from which the link is offline until it connects."""
        self._store = store
        self._data_dir = data_dir
        self._identity = identity
        # Every line about the link names the device (shown by intent_contract.logs' formatters).
        self._log = logging.LoggerAdapter(log, {"device_id": identity.device_id})
        self._settings = settings
        self._clock_ms = clock_ms
        self._wake = asyncio.Event()
        self._stopping = False
        self._window = SendWindow(settings.window, BATCHES_IN_FLIGHT, int(settings.ack_timeout_s * 1000))
        self._pace = LinkPace(settings.batch_items, settings.batch_bytes)  # batch sizes this link carries
        self._recheck = Recheck(clock_ms())
        self._connected_at = 0
        self._state = LinkState.OFFLINE
        self._since = clock_ms() if offline_since is None else min(clock_ms(), offline_since)
        self._last_contact: int | None = None
        self._unanswered_since: int | None = None  # LinkSnapshot.unanswered_since
        # Counted since the outbox started: a reload's forwarder goes on from the one before it (`carried`).
        self._sent, self._acked = (carried.sent, carried.acked) if carried else (0, 0)
        self._rate = AckRate()
        self._gate = LinkGate(settings.windows, store, clock_ms)
        self._intents_topic, self._acks_topic = (device_topic(identity.device_id, leaf) for leaf in (INTENTS, ACKS))
        self._confirms = Confirms(device_topic(identity.device_id, CONFIRMS))
        self._connects, self._failures = (carried.connects, carried.failures) if carried else (0, 0)
        self._error = ""  # why the last connection attempt failed; "" once connected
        self.errors = RecentErrors()
        self._reporter = DeviceReporter(
            store,
            ReporterSettings.of(identity, settings),
            link=self.snapshot,
            clock=lambda: self._gate.clock,
            facts=facts or (lambda: disk_facts(data_dir)),
            errors=self.errors,
            clock_ms=clock_ms,
            log=self._log,
        )

    def request_stop(self) -> None:
        """Make `run()` end at its next step; call it before cancelling the task that runs it.

        A cancellation that lands while the link is failing can come out of the TaskGroup or aiomqtt's
        exit as the link's error instead (and Python 3.11's TaskGroup leaves `cancelling()` set after
        any failure, so that cannot tell): without this the outbox stopped, logged "stopping" and went
        on reconnecting forever.
        """
        self._stopping = True

    def _stop_if_asked(self) -> None:
        if self._stopping:
            raise asyncio.CancelledError

    def wake(self) -> None:
        """New intents are waiting."""
        self._wake.set()

    def use_clock(self, clock: BridgeClock) -> None:
        """The bridge's clock as stored now: this device's clock stepped, and the store's times were moved with it
        (edge_outbox.clock_steps). The next batch's times are corrected by it."""
        self._gate.clock = clock

    def clock_stepped(self, step_ms: int) -> None:
        """This outbox's clock followed a step of the wall clock: the link's times move with it, as the store's did
        (a link down for seconds was "down for 86400 s" once NTP corrected a clock a day behind)."""
        self._since += step_ms
        self._last_contact = None if self._last_contact is None else self._last_contact + step_ms
        self._unanswered_since = None if self._unanswered_since is None else self._unanswered_since + step_ms

    @property
    def last_contact(self) -> int | None:
        """The last contact with the bridge in this run (ms), None before any."""
        return self._last_contact

    def snapshot(self) -> LinkSnapshot:
        now = time.monotonic()
        self._rate.record(now, self._acked)
        rate = self._rate.rate(now)
        return LinkSnapshot(
            self._state, self._since, self._last_contact, self._sent, self._acked, rate, self._connects, self._failures,
            "" if self._state is LinkState.CONNECTED else self._error, self._unanswered_since,
        )  # fmt: skip

    def _set_state(self, state: LinkState) -> None:
        if state is not self._state:
            # Since each attempt's start or failure, an unreachable bridge was never down longer than the
            # backoff (60 s), and no --max-offline past it ever found the link down (edge_outbox.health).
            self._since = self._since if state.down and self._state.down else self._clock_ms()
            self._state = state
            self._log.info("bridge link %s", state)

    async def run(self) -> None:
        """Forward until stopped (or revoked). A fault of the forwarder's own (a damaged key file, a bug) is
        logged with its traceback and the forwarder starts again after a backoff: before, it ended this task
        with nothing said until the outbox stopped, and the outbox went on taking intents and forwarding none."""
        failures = 0
        while True:
            try:
                await self._run()
                return
            except Exception as exc:  # noqa: BLE001 - logged with its traceback; the forwarder starts again
                self._stop_if_asked()
                failures += 1
                delay = compute_backoff(
                    failures, base=self._settings.backoff_base_s, cap=self._settings.backoff_cap_s,
                    jitter=random.random(),
                )  # fmt: skip
                self._log.exception("the forwarder failed; it starts again in %s", format_age(delay))
                # The type only: the report goes to the bridge, and a message may quote what it should not.
                self.errors.add(self._clock_ms(), "forwarder_failed", f"the forwarder failed: {type(exc).__name__}")
                self._set_state(LinkState.OFFLINE)
                await self._gate.sleep(delay)

    async def _run(self) -> None:
        failures = 0
        retried_for_clock = False
        while True:
            self._stop_if_asked()
            if await self._revoked():  # a receipt said so
                await self._stay_revoked()
                return
            await self._gate.wait_open(self._waiting)
            if await self._revoked():  # a receipt applied while the windows were closed
                await self._stay_revoked()
                return
            self._set_state(LinkState.CONNECTING)
            acked_before = self._acked
            try:
                await self._connection()
                failures, retried_for_clock = 0, False
            except (_TokenExpiringError, _WindowClosedError):
                failures, retried_for_clock = 0, False
                continue
            except aiomqtt.MqttCodeError as exc:
                code = getattr(exc.rc, "value", exc.rc)
                self._log.warning("bridge refused the connection: %s", exc)
                self._error = f"the bridge refused the connection: {exc}"
                self.errors.add(self._clock_ms(), "connect_refused", self._error)
                if code in _REFUSED_CODES:
                    answer = await check_device(
                        self._data_dir, self._identity, self._clock_ms, self._gate.clock, self._log
                    )
                    if answer.revoked:
                        await self._stay_revoked()
                        return
                    if answer.key_replaced:
                        detail = (
                            "the bridge says this device's key was replaced by a key rotation (made from another copy"
                            " of this data dir, or this one was restored from a backup): it cannot connect with it;"
                            " enroll again, or put back the identity that rotated"
                        )
                        self._log.error("%s", detail)
                        self.errors.add(self._clock_ms(), "key_replaced", detail)
                        self._error = detail
                    # A token refused for our clock: once, try again at once on the corrected clock.
                    if answer.time is not None and await self._learn_time(answer.time) and not retried_for_clock:
                        retried_for_clock = True
                        continue
            except (aiomqtt.MqttError, OSError) as exc:
                self._pace.link_lost()
                # A link that delivered is a new outage when it drops: its backoff starts again (it kept growing
                # over a flapping link's every drop, to a minute's wait after each, until a token refresh).
                failures = 0 if self._acked > acked_before else failures
                code, self._error = link_failure(str(exc), self._identity.bridge_host)
                self._log.warning("%s", self._error)
                self.errors.add(self._clock_ms(), code, self._error)
            except StorageError as exc:  # before connecting (_send_as_this_device): try again later
                self._log.error("not connecting: %s", exc)
                self.errors.add(self._clock_ms(), "storage_error", f"not connecting: {exc}")
            self._stop_if_asked()
            self._set_state(LinkState.OFFLINE)
            failures += 1
            self._failures += 1
            delay = compute_backoff(
                failures, base=self._settings.backoff_base_s, cap=self._settings.backoff_cap_s, jitter=random.random()
            )
            await self._gate.sleep(delay)

    async def _revoked(self) -> bool:
        """Whether a revocation is stored; False when the store cannot say now (a full disk fails every read
        that joins a failing commit: raising here ended the forwarder for good, outside run()'s handlers)."""
        try:
            return await self._store.read(offline_ops.revocation, self._identity.device_id) is not None
        except StorageError as exc:
            self.errors.add(self._clock_ms(), "storage_error", f"cannot read the revocation: {exc}")
            return False

    def _waiting(self, seconds: float) -> None:
        self._set_state(LinkState.OFFLINE)
        self._unanswered_since = None  # outside the windows the link is down by design: judged by --max-offline
        self._log.info("outside the forwarding windows; the next opens in %s", format_age(seconds))

    async def _learn_time(self, sample: TimeSample) -> bool:
        """Store what the bridge's answer proves about its clock; True when ours was off by more than a token allows."""
        before = self._gate.clock
        try:
            after = await self._store.call(offline_ops.learn_time, sample, self._clock_ms())
        except StorageError as exc:  # not learned: the next refusal's answer teaches it again
            self.errors.add(self._clock_ms(), "storage_error", f"cannot store the bridge's time: {exc}")
            return False
        self._gate.clock = after
        moved = abs(after.offset_ms - before.offset_ms) > CLOCK_MOVE_MS
        if moved:
            side = "behind" if after.offset_ms > 0 else "ahead of"
            self._log.warning(
                "this device's clock is %s %s the bridge's: tokens and deadlines are corrected",
                format_age(abs(after.offset_ms) / 1000),
                side,
            )
        return moved

    async def _send_as_this_device(self) -> None:
        """Before anything is sent: intents sent as another device (this data dir was enrolled again) end
        here instead of going out again as this one (offline_ops.send_as)."""
        ended = await self._store.call(offline_ops.send_as, self._identity.device_id, self._clock_ms())
        if ended:
            self._log.warning(
                "%d intents sent as the device this data dir was before ended failed/identity_changed", ended
            )

    async def _connection(self) -> None:
        s = self._settings
        await self._send_as_this_device()
        clock = await self._gate.refresh()
        token = device_token(
            self._data_dir, self._identity, clock.bridge_ms(self._clock_ms()) // 1000, s.token_lifetime_s
        )
        client = bridge_client(self._data_dir, self._identity, s, token)
        async with client:
            client.timeout = ACK_WAIT_S  # for PUBACKs and SUBACKs over a slow link
            self._connected_at = self._clock_ms()
            self._last_contact = self._connected_at
            self._window.reset(self._connected_at)
            self._set_state(LinkState.CONNECTED)
            self._connects, self._error = self._connects + 1, ""
            await client.subscribe(self._acks_topic, qos=1)
            await self._reporter.subscribe(client)
            self._stop_if_asked()  # a stop that came with the SUBACK (edge_outbox/cancelling.py)
            # MQTT 3.1.1 cannot re-authenticate: reconnect with a new token before this one expires.
            lifetime = s.token_lifetime_s * 0.8
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._send_loop(client))
                    group.create_task(self._receive_loop(client))
                    group.create_task(self._confirms.loop(client))
                    group.create_task(self._expire_after(lifetime))
                    group.create_task(self._window_closes())
                    group.create_task(self._reporter.report_loop(client))
                    if not has_pins(self._data_dir):  # enrolled by a bridge before offline bundles
                        group.create_task(self._learn_pins())
            except BaseExceptionGroup as failed:
                # Report the first failure as itself, so run() can tell a lost link from a token refresh.
                raise first_leaf(failed) from None
            finally:
                self._reporter.stop()

    async def _learn_pins(self) -> None:
        await learn_pins(self._data_dir, self._identity, self._clock_ms, self._gate.clock, self._log)

    async def _expire_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        raise _TokenExpiringError

    async def _window_closes(self) -> None:
        await self._gate.until_closed()
        self._log.info("forwarding window closed")
        raise _WindowClosedError

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        s = self._settings
        while True:
            self._wake.clear()  # before looking: an ack or intent arriving meanwhile wakes the wait below
            now = self._clock_ms()
            window = self._window
            window.expire(now)
            rows: list[IntentRow] = []
            if (room := window.room()) > 0:
                limit, max_bytes = self._pace.limits(room)
                # Eligible: never sent, sent on an earlier connection, or not acked within ack_timeout.
                rows = await self._store.call(
                    forward_ops.take_batch, limit=limit, max_bytes=max_bytes, sent_before=window.sent_before(now),
                    now=now,
                )  # fmt: skip
                if not rows:  # nothing new: a forwarded intent's result may never come (forward_recheck)
                    rows = await self._recheck.take(self._store, limit, max_bytes, now)
            if not rows:
                try:
                    async with asyncio.timeout(s.idle_poll_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            batch, sendable, unsendable = encode_rows(rows, self._gate.clock)
            if unsendable:
                ended = await self._store.call(ops.reject_unsendable, unsendable, now)
                ids = {r.seq: r.id for r in rows}
                named = ", ".join(ids[seq] for seq, _why in unsendable[:5])
                self._log.error(
                    "%d stored intents cannot be sent to the bridge (%s): ended rejected/bad_json", ended, named
                )
                self.errors.add(now, "unsendable", f"{ended} stored intents could not be sent: {unsendable[0][1]}")
            if batch is None:
                continue
            self._pace.sending()
            if self._unanswered_since is None:
                self._unanswered_since = now
            started = time.monotonic()
            await client.publish(self._intents_topic, batch, qos=1)
            self._pace.went(len(batch), len(sendable), time.monotonic() - started)
            window.sent([r.id for r in sendable], now)
            self._sent += len(sendable)
            raise_if_cancelled()

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        async for first in messages:
            # Take every acks message already waiting and apply them in one commit: one commit per
            # message let acks queue up under load (bench/findings.md F2).
            batch = [first]
            while len(messages) and len(batch) < _MAX_ACK_MESSAGES:
                batch.append(await anext(messages))
            acks: list[Ack] = []
            for message in batch:
                if not isinstance(message.payload, bytes | bytearray):
                    continue
                if message.topic.value == self._reporter.diagnose_topic:
                    self._reporter.on_diagnose(client, bytes(message.payload))
                    continue
                try:
                    read = read_acks(bytes(message.payload))
                except DecodeError as exc:
                    self._log.warning("ignoring a malformed acks message from the bridge: %s", exc)
                    self.errors.add(self._clock_ms(), "malformed_acks", f"a malformed acks message: {exc}")
                    continue
                # An entry this version cannot read costs only itself: dropping its whole message dropped the
                # other acks with it, and the bridge re-sends the same group of results at every reconnect.
                acks.extend(read.acks)
                if read.unreadable:
                    why, count = read.unreadable[0], len(read.unreadable)
                    self._log.warning("ignoring %d ack entries from the bridge this edge cannot read: %s", count, why)
                    self.errors.add(self._clock_ms(), "unreadable_acks", f"{count} unreadable ack entries: {why}")
            if not acks:
                continue
            self._last_contact = self._clock_ms()
            self._unanswered_since = None
            applied = await self._store.call(forward_ops.apply_acks, acks, self._last_contact)
            for ack in acks:
                if self._window.acked(ack.id):
                    self._acked += 1
            if applied.final:
                self._confirms.add(applied.final)
            self._wake.set()

    async def _stay_revoked(self) -> None:
        """This device may send nothing more: end every pending intent, now and as they arrive."""
        self._set_state(LinkState.REVOKED)
        self._log.error("this device was revoked at the bridge; pending intents end as failed")
        marked = False
        while True:
            self._wake.clear()
            try:
                if not marked:
                    await self._store.call(
                        offline_ops.mark_revoked, self._identity.device_id, self._clock_ms(), "bridge"
                    )
                    marked = True
                ended = await self._store.call(ops.end_revoked, self._clock_ms())
                if ended:
                    self._log.warning("%d intents ended: device revoked", ended)
            except StorageError as exc:  # a full disk: again at the next turn
                self._log.error("cannot end the intents of this revoked device yet: %s", exc)
            try:
                async with asyncio.timeout(5):
                    await self._wake.wait()
            except TimeoutError:
                pass
