"""The forwarder: sends committed intents to the cloud bridge whenever a link exists, applies its acks.

One connection at a time, over MQTT/TLS verified against the pinned CA (optionally WebSocket over
TLS). Each connect carries a freshly signed JWT; a connection is closed and re-made before its token
would expire. While the bridge is unreachable, reconnects back off with full jitter.

Flow control: at most `window` intents are unacknowledged at once. An intent is marked sent (and so
can no longer be cancelled) before it goes out; one that is not acknowledged within `ack_timeout`,
or that was sent on an earlier connection, is sent again: the bridge deduplicates by id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import aiomqtt
import httpx

from edge_outbox import ops
from edge_outbox.db import IntentRow
from edge_outbox.identity import Identity, client_tls_context, device_token
from edge_outbox.settings import ForwarderSettings
from edge_outbox.store import Store
from intent_contract.backoff import compute_backoff
from intent_contract.codec import Ack, Envelope, decode_acks, encode_batch, encode_confirms
from intent_contract.errors import DecodeError

log = logging.getLogger(__name__)

_REFUSED_CODES = {4, 5, 134, 135}  # bad user name or password / not authorized (3.1.1 and 5 numbering)
_MAX_CONFIRMS = 5000
_MAX_ACK_MESSAGES = 100  # acks messages applied in one commit
# Results arriving this close together are confirmed in one message: the bridge sends one message
# per result, and one confirm per result would fill the device's queue at the bridge, which then
# drops messages, intent batches included.
_CONFIRM_DELAY_S = 0.2
# Batch messages unacknowledged at once: the bridge queues at most 64 messages (16 MiB) per device,
# confirms included, and drops the rest, which then wait for ack_timeout. With 4 in flight a drain
# waited on round trips: 4,400 -> 8,200 intents/s accepted at 8 (bench/findings.md F10).
_MAX_BATCHES_IN_FLIGHT = 8


class LinkState(StrEnum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class LinkSnapshot:
    """What `edge-outbox status` shows about the link."""

    state: LinkState
    since: int
    last_contact: int | None
    sent: int
    acked: int
    rate: float  # intents acknowledged per second, smoothed


class _TokenExpiringError(Exception):
    """Raised inside a connection to close it before its token expires."""


def envelope_of(row: IntentRow) -> Envelope:
    return Envelope(
        id=row.id,
        app=row.app,
        kind=row.kind,
        created=row.created,
        expires=row.expires,
        attempt=row.attempt,
        payload=json.loads(row.payload),
        priority=row.priority,
    )


class Forwarder:
    def __init__(
        self, store: Store, data_dir: Path, identity: Identity, settings: ForwarderSettings, clock_ms: Callable[[], int]
    ) -> None:
        self._store = store
        self._data_dir = data_dir
        self._identity = identity
        self._settings = settings
        self._clock_ms = clock_ms
        self._wake = asyncio.Event()
        self._to_confirm: list[str] = []
        self._confirm_wake = asyncio.Event()
        self._inflight: dict[str, int] = {}  # id -> ms sent, on the current connection
        self._batches: list[list[str]] = []  # ids of each batch sent on this connection
        self._connected_at = 0
        self._state = LinkState.OFFLINE
        self._since = clock_ms()
        self._last_contact: int | None = None
        self._sent = 0
        self._acked = 0
        self._rate = 0.0
        self._rate_mark = (time.monotonic(), 0)
        topic = f"devices/{identity.device_id}"
        self._intents_topic, self._acks_topic, self._confirms_topic = (
            f"{topic}/intents",
            f"{topic}/acks",
            f"{topic}/confirms",
        )

    def wake(self) -> None:
        """New intents are waiting."""
        self._wake.set()

    def snapshot(self) -> LinkSnapshot:
        now = time.monotonic()
        then, acked_then = self._rate_mark
        if now - then >= 1.0:
            instant = (self._acked - acked_then) / (now - then)
            self._rate = instant if self._rate == 0 else 0.7 * self._rate + 0.3 * instant
            self._rate_mark = (now, self._acked)
        return LinkSnapshot(self._state, self._since, self._last_contact, self._sent, self._acked, self._rate)

    def _set_state(self, state: LinkState) -> None:
        if state is not self._state:
            self._state, self._since = state, self._clock_ms()
            log.info("bridge link %s", state)

    async def run(self) -> None:
        failures = 0
        while True:
            self._set_state(LinkState.CONNECTING)
            try:
                await self._connection()
                failures = 0
            except _TokenExpiringError:
                failures = 0
                continue
            except aiomqtt.MqttCodeError as exc:
                code = getattr(exc.rc, "value", exc.rc)
                log.warning("bridge refused the connection: %s", exc)
                if code in _REFUSED_CODES and await self._revoked():
                    await self._stay_revoked()
                    return
            except (aiomqtt.MqttError, OSError) as exc:
                log.warning("bridge unreachable: %s", exc)
            self._set_state(LinkState.OFFLINE)
            failures += 1
            delay = compute_backoff(
                failures, base=self._settings.backoff_base_s, cap=self._settings.backoff_cap_s, jitter=random.random()
            )
            await asyncio.sleep(delay)

    async def _connection(self) -> None:
        s = self._settings
        now_s = self._clock_ms() // 1000
        token = device_token(self._data_dir, self._identity, now_s, s.token_lifetime_s)
        port = s.websocket_port if s.transport == "websockets" else self._identity.mqtt_port
        client = aiomqtt.Client(
            self._identity.bridge_host,
            port,
            identifier=self._identity.device_id,
            username=self._identity.device_id,
            password=token,
            tls_context=client_tls_context(self._data_dir),
            clean_session=True,
            keepalive=30,
            timeout=15,
            transport=s.transport,
            max_inflight_messages=64,
        )
        async with client:
            self._connected_at = self._clock_ms()
            self._last_contact = self._connected_at
            self._inflight.clear()
            self._batches.clear()
            self._set_state(LinkState.CONNECTED)
            await client.subscribe(self._acks_topic, qos=1)
            # MQTT 3.1.1 cannot re-authenticate: reconnect with a new token before this one expires.
            lifetime = s.token_lifetime_s * 0.8
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._send_loop(client))
                    group.create_task(self._receive_loop(client))
                    group.create_task(self._confirm_loop(client))
                    group.create_task(self._expire_after(lifetime))
            except BaseExceptionGroup as failed:
                # Report the first failure as itself, so run() can tell a lost link from a token refresh.
                raise _first_leaf(failed) from None

    async def _expire_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        raise _TokenExpiringError

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        s = self._settings
        while True:
            self._wake.clear()  # before looking: an ack or intent arriving meanwhile wakes the wait below
            now = self._clock_ms()
            stale = now - int(s.ack_timeout_s * 1000)
            for intent_id in [i for i, at in self._inflight.items() if at < stale]:
                del self._inflight[intent_id]  # no ack in time: eligible to be sent again
            self._batches = [b for b in self._batches if any(i in self._inflight for i in b)]
            room = s.window - len(self._inflight) if len(self._batches) < _MAX_BATCHES_IN_FLIGHT else 0
            rows: list[IntentRow] = []
            if room > 0:
                # Eligible: never sent, sent on an earlier connection, or not acked within ack_timeout.
                rows = await self._store.call(
                    ops.take_batch,
                    limit=min(s.batch_items, room),
                    max_bytes=s.batch_bytes,
                    sent_before=max(self._connected_at, stale),
                    now=now,
                )
            if not rows:
                try:
                    async with asyncio.timeout(s.idle_poll_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            await client.publish(self._intents_topic, encode_batch([envelope_of(r) for r in rows]), qos=1)
            self._inflight.update((r.id, now) for r in rows)
            self._batches.append([r.id for r in rows])
            self._sent += len(rows)

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
                try:
                    acks.extend(decode_acks(bytes(message.payload)))
                except DecodeError as exc:
                    log.warning("ignoring a malformed acks message from the bridge: %s", exc)
            if not acks:
                continue
            self._last_contact = self._clock_ms()
            applied = await self._store.call(ops.apply_acks, acks, self._last_contact)
            for ack in acks:
                if self._inflight.pop(ack.id, None) is not None:
                    self._acked += 1
            if applied.final_ids:
                self._to_confirm.extend(applied.final_ids)
                self._confirm_wake.set()
            self._wake.set()

    async def _confirm_loop(self, client: aiomqtt.Client) -> None:
        """Confirm applied final results, a batch at a time (ids kept across reconnects: repeats are harmless)."""
        while True:
            await self._confirm_wake.wait()
            await asyncio.sleep(_CONFIRM_DELAY_S)
            self._confirm_wake.clear()
            ids, self._to_confirm = self._to_confirm, []
            try:
                for start in range(0, len(ids), _MAX_CONFIRMS):
                    await client.publish(
                        self._confirms_topic, encode_confirms(ids[start : start + _MAX_CONFIRMS]), qos=1
                    )
            except BaseException:
                self._to_confirm[:0] = ids  # the link failed: confirm them on the next one
                self._confirm_wake.set()
                raise

    async def _revoked(self) -> bool:
        """Ask the bridge's HTTPS endpoint, with our own signed token, whether we were revoked."""
        token = device_token(self._data_dir, self._identity, self._clock_ms() // 1000, 120)
        try:
            async with httpx.AsyncClient(verify=client_tls_context(self._data_dir), timeout=15) as http:
                response = await http.get(
                    f"{self._identity.http_url}/v1/device", headers={"Authorization": f"Bearer {token}"}
                )
            return response.status_code == 200 and response.json().get("status") == "revoked"
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not ask the bridge whether this device is revoked: %s", exc)
            return False

    async def _stay_revoked(self) -> None:
        """This device may send nothing more: end every pending intent, now and as they arrive."""
        self._set_state(LinkState.REVOKED)
        log.error("this device (%s) was revoked at the bridge; pending intents end as failed", self._identity.device_id)
        while True:
            ended = await self._store.call(ops.end_revoked, self._clock_ms())
            if ended:
                log.warning("%d intents ended: device revoked", ended)
            self._wake.clear()
            try:
                async with asyncio.timeout(5):
                    await self._wake.wait()
            except TimeoutError:
                pass


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
