"""`edge-outbox run`: wires store, intake, status and the transport together and keeps house."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
from dataclasses import asdict
from typing import Any

from edge_outbox import clock_steps, event_log, ops, paced, retention, tick
from edge_outbox.app_sessions import StoredSessions, drop_expired
from edge_outbox.apps_auth import AppLogins, reload_users
from edge_outbox.attach import AttachedClient
from edge_outbox.bridge_clock import BridgeClock
from edge_outbox.db import LINK_SEEN_KEY, STATUS_KEY
from edge_outbox.errors import StorageError
from edge_outbox.fleet_link import disk_facts
from edge_outbox.fleet_report import EdgeFacts
from edge_outbox.forward_wire import LinkSnapshot
from edge_outbox.forwarder import Forwarder
from edge_outbox.health import BEAT_EVERY_S
from edge_outbox.identity import Identity, load_identity
from edge_outbox.intake import Intake
from edge_outbox.lock import ATTACH_KEY, BEAT_KEY, INTAKE_KEY, LINK_KEY, MAX_OFFLINE_KEY, DataDirLock
from edge_outbox.mqtt.ports import EndpointSettings
from edge_outbox.mqtt.server import MqttEndpoint
from edge_outbox.ops import QueueLimits
from edge_outbox.probe import Observed, Probe, held_since_ms
from edge_outbox.reload import identity_to_forward
from edge_outbox.settings import OutboxSettings
from edge_outbox.status import StatusFeed
from edge_outbox.store import Store
from intent_contract.ids import IdGenerator

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0  # how often retention purges (and at start)


class Outbox:
    """The running outbox. `start()` returns once it serves; `stop()` shuts it down in order."""

    def __init__(self, settings: OutboxSettings, clock: clock_steps.LocalClock | None = None) -> None:
        self.settings = settings
        self._clock = clock or clock_steps.LocalClock()  # follows a step of the wall clock (edge_outbox.clock_steps)
        self._run_start = clock_steps.RunStart(0, 0)
        self._lock = DataDirLock(settings.data_dir)
        self._transport: MqttEndpoint | AttachedClient | None = None
        self.probe: Probe | None = None
        if settings.metrics is not None:
            host, port = settings.metrics
            self.probe = Probe(host, port, self._observe, settings.max_offline_s)
        self.store = Store(
            settings.data_dir,
            on_events=self._on_events,
            on_commit=self.probe.commit_seconds.observe if self.probe is not None else None,
            wants_events=lambda: self.feed is not None and self.feed.wanted,
        )
        self._logins = AppLogins(settings.users)
        self.feed: StatusFeed | None = None
        self.intake: Intake | None = None
        self.forwarder: Forwarder | None = None
        self._link_before: LinkSnapshot | None = None  # the counts of the forwarder a reload stopped
        self._link_seen: int | None = None  # the last contact with the bridge as stored (db.LINK_SEEN_KEY)
        self._forwarding: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._device_id: str | None = None  # the identity enrolled when the outbox started
        self.revoked = False  # the bridge said this device is revoked: every new intent is ended
        self._beat = time.monotonic()  # the last heartbeat: a housekeeping tick, and the last record written
        self._recorded_at = self._beat

    def _on_events(self, seen: event_log.EventsSeen) -> None:
        if self.feed is not None:
            if seen.events is None:
                self.feed.skip_to(seen.head)
            else:
                self.feed.on_events(seen.events)
        if self.forwarder is not None and seen.accepted:
            self.forwarder.wake()
        if self.intake is not None and seen.final:
            self.intake.room()

    async def start(self) -> None:
        s = self.settings
        where = f"attached to {s.attach.url}" if s.attach else f"listening on {s.listen_host}:{s.listen_port}"
        # max_offline_s: `edge-outbox status` given no --max-offline judges as this outbox's /healthz does.
        started = self._clock.now_ms()
        self._lock.acquire({"where": where, "started": started, MAX_OFFLINE_KEY: s.max_offline_s, BEAT_KEY: started})
        try:
            await self._start(where)
        except BaseException:
            self._lock.release()
            raise

    async def _start(self, where: str) -> None:
        s = self.settings
        now_ms = self._clock.now_ms
        await self.store.start()
        self._run_start = await self.store.read(clock_steps.run_start)
        self._link_seen = await self.store.call(tick.link_seen, self._clock.now_ms())
        head = self._run_start.events_after
        self.feed = StatusFeed(lambda after, limit: self.store.read(event_log.events_after, after, limit), head)
        self.intake = Intake(
            self.store,
            QueueLimits(s.max_queue_items, s.max_queue_bytes),
            now_ms,
            # Intent ids need to be unique, not secret: a generator seeded from the OS, not a syscall per id.
            IdGenerator(now_ms, random.Random(os.urandom(16)).randbytes),
        )
        self._tasks = [asyncio.create_task(self.intake.run(), name="intake")]
        try:
            if s.attach is not None:
                position = await self.store.read(event_log.get_meta, STATUS_KEY)
                if first := position is None:  # the broker is a new consumer: from the newest, as a new session is
                    await self.store.call(event_log.set_meta, STATUS_KEY, position := str(head))
                self._transport = AttachedClient(
                    s.attach,
                    self.intake,
                    self.feed,
                    int(position),
                    lambda app, after, limit: self.store.read(event_log.app_statuses, app, after, limit),
                    first=first,
                    clock=lambda: self._clock.now_ms() / 1000,
                )
            else:
                sessions = StoredSessions(self.store, now_ms, int(s.session_expiry_s * 1000))
                endpoint = EndpointSettings(s.listen_host, s.listen_port, logins=s.users is not None)
                self._transport = MqttEndpoint(endpoint, self.intake, self.feed, sessions, self._logins.check)
            if self.probe is not None:
                await self.probe.start()
            await self._transport.start()
        except BaseException:
            if self.probe is not None:
                await self.probe.stop()
            for task in self._tasks:
                task.cancel()
            await self.store.close()
            raise
        identity = load_identity(s.data_dir)
        self._device_id = identity.device_id if identity is not None else None
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(asyncio.create_task(self._retention(), name="retention"))
        if identity is None:
            log.warning(
                "not enrolled with a bridge: intents are kept here until `edge-outbox enroll` is run "
                "and the outbox restarted"
            )
        elif s.forward:
            self._forward(identity)
        log.info("edge outbox %s, data in %s", where, s.data_dir)

    def _forward(self, identity: Identity) -> None:
        if not identity.http_url:
            log.info("enrolled offline with no bridge address: intents leave in bundles (edge-outbox export)")
            return
        s = self.settings
        carried = self._link_before
        seen = carried.last_contact if carried and carried.last_contact else self._link_seen
        self.forwarder = Forwarder(
            self.store, s.data_dir, identity, s.forwarder, self._clock.now_ms, facts=self._edge_facts,
            carried=carried, offline_since=seen,
        )  # fmt: skip
        self._forwarding = asyncio.create_task(self.forwarder.run(), name="forwarder")
        self._tasks.append(self._forwarding)
        log.info("forwarding as device %s to %s:%d", identity.device_id, identity.bridge_host, identity.mqtt_port)

    def _stop_forwarding(self) -> asyncio.Task[None] | None:
        """Stop sending (everything unacknowledged is resent by the next forwarder); the task, to await."""
        task, self._forwarding = self._forwarding, None
        if task is not None:
            assert self.forwarder is not None
            # Counters count from the outbox's start (docs/operations.md): a reload's forwarder goes on from these.
            self._link_before = self.forwarder.snapshot()
            self.forwarder.request_stop()
            task.cancel()
            self._tasks.remove(task)
        self.forwarder = None
        return task

    async def reload(self) -> None:
        """SIGHUP: forward to the bridge device.json names now, on the CA ca.pem holds now (edge_outbox.reload); take
        the users file again (apps_auth.reload_users)."""
        if self.settings.users_file is not None and isinstance(self._transport, MqttEndpoint):
            reload_users(self.settings.users_file, self._logins, self._transport.end_logins)
        identity = identity_to_forward(self.settings.data_dir, self._device_id)
        if identity is None or not self.settings.forward:
            return
        if (task := self._stop_forwarding()) is not None:
            await asyncio.gather(task, return_exceptions=True)
        self._forward(identity)
        log.info("reloaded device.json and ca.pem")

    async def stop(self) -> None:
        if self.probe is not None:
            await self.probe.stop()
        forwarding = self._stop_forwarding()  # stop sending first
        if forwarding is not None:
            self._tasks.append(forwarding)
        if self._transport is not None:
            await self._transport.stop()
        self._logins.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(StorageError):
            await self.store.call(tick.save_positions, self._positions())
        await self.store.close()
        self._lock.release()

    async def _observe(self) -> Observed:
        """What the metrics and health endpoint reports, read now."""
        assert self.intake is not None
        summary = await self.store.read_aside(ops.summary)
        link = self.forwarder.snapshot() if self.forwarder is not None else None
        health = self.intake.health
        return Observed(
            summary=summary,
            now_ms=self._clock.now_ms(),
            link_state=link.state.value if link else None,
            link_since_ms=link.since if link else None,
            sent=link.sent if link else 0,
            acked=link.acked if link else 0,
            intake_outcomes=dict(self.intake.outcomes),
            held=health.held,
            held_total=health.held_total,
            held_since_ms=held_since_ms(health.held_since),
            held_reason=health.reason,
            apps_connected=self._transport.connected if isinstance(self._transport, MqttEndpoint) else 0,
            revoked=self.revoked,
            attach_down_since_ms=self._attach_down_since_ms(),
            silent_s=time.monotonic() - self._beat,
            attach_fault=self._transport.fault if isinstance(self._transport, AttachedClient) else "",
            link_unanswered_since_ms=link.unanswered_since if link else None,
        )

    def _edge_facts(self) -> EdgeFacts:
        """What a health report says of the queue's limits, the disk and intake (fleet_report)."""
        s, disk = self.settings, disk_facts(self.settings.data_dir)
        health = self.intake.health if self.intake is not None else None
        return dataclasses.replace(
            disk,
            max_items=s.max_queue_items,
            max_bytes=s.max_queue_bytes,
            held=health.held if health else 0,
            held_since_ms=held_since_ms(health.held_since) if health else None,
            held_reason=health.reason if health else "",
        )

    def _positions(self) -> dict[str, int]:
        """Where each status consumer is: persistent app sessions, or the attached broker (under STATUS_KEY)."""
        if isinstance(self._transport, MqttEndpoint):
            return self._transport.cursors()
        if isinstance(self._transport, AttachedClient):
            return {STATUS_KEY: self._transport.status.position}
        return {}

    def _oldest_wanted(self) -> int:
        """Events after this seq may still be read by a connected consumer."""
        assert self.feed is not None
        if isinstance(self._transport, MqttEndpoint):
            return min([self.feed.head, *self._transport.all_positions()])
        if isinstance(self._transport, AttachedClient):
            return self._transport.status.position
        return self.feed.head

    def _attach_down_since_ms(self) -> int | None:
        if isinstance(self._transport, AttachedClient) and self._transport.down_since is not None:
            return int(self._transport.down_since * 1000)
        return None

    def _live(self) -> dict[str, Any]:
        """What `edge-outbox status` reads of the running outbox (recorded in the lock file, edge_outbox.lock)."""
        live: dict[str, Any] = {}
        if isinstance(self._transport, AttachedClient):
            live[ATTACH_KEY] = {"down_since_ms": self._attach_down_since_ms(), "fault": self._transport.fault}
        if self.forwarder is not None:
            live[LINK_KEY] = asdict(self.forwarder.snapshot())
        if self.intake is not None:
            health = asdict(self.intake.health)
            live[INTAKE_KEY] = {**health, "reason": health["reason"][:1000]}
        return live

    def _record_live(self, recorded: dict[str, Any]) -> dict[str, Any]:
        """Record what changed since `recorded` in the lock file, or the heartbeat alone when it is due; returns
        what is recorded now."""
        self._beat = time.monotonic()
        live = self._live()
        if live == recorded and self._beat - self._recorded_at < BEAT_EVERY_S:
            return live
        if not self._lock.record({**live, BEAT_KEY: self._clock.now_ms()}):
            return recorded  # tried again next tick
        self._recorded_at = self._beat
        return live

    async def _housekeeping(self) -> None:
        """Expire overdue intents, end them all once the device is revoked, store where status consumers
        are.

        The revocation is read here, not only by the forwarder: a site with no bridge address runs none,
        and one outside its forwarding windows has one waiting, yet a receipt may say the device is revoked.

        One transaction a tick, and it writes only what changed, so an idle outbox does not fsync. What status
        shows of the link and intake goes to the lock file first, whether the database can be written or not.
        """
        written: dict[str, int] = {}
        recorded: dict[str, Any] = {}
        failing = False
        while True:
            await asyncio.sleep(self.settings.housekeeping_s)
            recorded = self._record_live(recorded)
            try:
                step = await clock_steps.follow_step(self._clock, self.store, self._run_start, self._bridge_clock_moved)
                if step:
                    self._clock_stepped(step)
                now = self._clock.now_ms()
                current = self._positions()
                if self.forwarder is not None and (contact := self.forwarder.last_contact) is not None:
                    current[LINK_SEEN_KEY] = self._link_seen = contact
                changed = {k: v for k, v in current.items() if written.get(k) != v}
                expired, ended = await self.store.call(tick.tick, now, changed, self._device_id)
                written.update(changed)
                if expired:
                    log.info("%d intents expired before they could be forwarded", expired)
                self._on_revocation(ended)
                if failing:
                    log.warning("housekeeping works again")
                    failing = False
            except StorageError as exc:
                if not failing:  # once per episode: intake reports the full disk itself
                    log.error("housekeeping cannot write, trying again every tick: %s", exc)
                    failing = True
                    if self.forwarder is not None:
                        self.forwarder.errors.add(
                            self._clock.now_ms(), "storage_error", f"housekeeping cannot write: {exc}"
                        )
            except Exception:
                log.exception("housekeeping failed; trying again")

    async def _retention(self) -> None:
        """Purge what retention allows, at the first tick and hourly, in paced steps (edge_outbox.paced).

        A task of its own: a purge long due takes seconds, and the housekeeping ticks go on meanwhile."""
        await asyncio.sleep(self.settings.housekeeping_s)
        while True:
            try:
                now = self._clock.now_ms()
                purged = await paced.in_operations(
                    self.store.call, retention.purge, now - int(self.settings.retention_s * 1000)
                )
                if purged:
                    log.info("retention: purged %d final intents", purged)
                if isinstance(self._transport, AttachedClient):  # the sessions of an earlier embedded endpoint
                    await self.store.call(drop_expired, now, int(self.settings.session_expiry_s * 1000))
                history = now - int(self.settings.status_history_s * 1000)
                await paced.in_operations(self.store.call, retention.prune_seen_events, self._oldest_wanted(), history)
            except StorageError as exc:  # housekeeping and intake report a disk that fails
                log.warning("retention: cannot purge, trying again in an hour: %s", exc)
            except Exception:
                log.exception("retention failed; trying again in an hour")
            await asyncio.sleep(RETENTION_INTERVAL_S)

    def _clock_stepped(self, step_ms: int) -> None:
        """What this outbox keeps in memory on its clock moves with a step, as the store's times did: a link, a broker
        connection or an intake held for seconds was "for 86400 s" once NTP corrected a clock a day behind."""
        if self.forwarder is not None:
            self.forwarder.clock_stepped(step_ms)
        if isinstance(self._transport, AttachedClient) and self._transport.down_since is not None:
            self._transport.down_since += step_ms / 1000
        if self.intake is not None and self.intake.health.held_since is not None:
            self.intake.health.held_since += step_ms / 1000

    def _bridge_clock_moved(self, clock: BridgeClock) -> None:
        if self.forwarder is not None:
            self.forwarder.use_clock(clock)

    def _on_revocation(self, ended: int | None) -> None:
        """Log what the tick did about a revocation (`ended` None: the device is not revoked)."""
        if ended is None:
            return
        context = {"device_id": self._device_id, "code": "device_revoked"}
        if not self.revoked:
            self.revoked = True
            log.error("this device was revoked at the bridge; every new intent ends as failed", extra=context)
        if ended:
            log.warning("%d intents ended: device revoked", ended, extra=context)
