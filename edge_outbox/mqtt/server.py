"""The outbox's own MQTT endpoint for local apps: MQTT 3.1.1 and 3.1 on asyncio, sessions kept in the outbox.

Publishes to intake topics are handed to the intake and acknowledged only once committed, in the
order they arrived [MQTT-4.6.0-2]; every other topic is an ordinary broker (retained messages, wills,
QoS 0/1/2, persistent sessions), kept in memory. Status messages are not routed here at all: each
session reads them from the outbox's status log (`StatusFeed`) from its own position, which a
persistent session keeps in the database, so a status committed while the app (or the outbox) was
down reaches the app when it is back.

This module keeps the sessions and routes messages; `connection` speaks the protocol with one client, and
`answers` writes its answers in order; `ports` is what the endpoint needs of the rest of the outbox. They only
move bytes: the codec (`intent_contract.mqtt_packets`), topic rules (`topics`), the session's bookkeeping
(`session`) and the retained messages (`retained`) are pure and tested on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import replace
from typing import Any

from edge_outbox.errors import ConfigError, StorageError
from edge_outbox.intake import REFUSAL_LOG_INTERVAL
from edge_outbox.mqtt.connection import Connection
from edge_outbox.mqtt.dialect import SERVER_SHUTTING_DOWN, SESSION_TAKEN_OVER
from edge_outbox.mqtt.ports import Authenticator, EndpointSettings, IntakePort, SessionsPort, keeps_session
from edge_outbox.mqtt.retained import Retained
from edge_outbox.mqtt.session import Passed, Session, SessionRecord, StatusCursor
from edge_outbox.mqtt.topics import is_status_topic
from edge_outbox.status import StatusFeed
from intent_contract import mqtt_packets as p
from intent_contract.logs import Context, LogThrottle, left_out
from intent_contract.turns import Turns

log = logging.getLogger(__name__)


class MqttEndpoint:
    """Listens for local apps; `start()` returns once the port is open."""

    def __init__(
        self,
        settings: EndpointSettings,
        intake: IntakePort,
        feed: StatusFeed,
        sessions: SessionsPort,
        authenticate: Authenticator,
    ) -> None:
        self.settings = settings
        self._intake = intake
        self._feed = feed
        self._sessions_port = sessions
        self._authenticate = authenticate
        self.sessions: dict[str, Session] = {}
        self._connections: dict[str, Connection] = {}
        self._attaching = Turns()
        self.retained = Retained(settings.max_retained_bytes)
        self._server: asyncio.AbstractServer | None = None
        self._handlers: dict[asyncio.Task[None], Connection] = {}  # every connection, before its CONNECT too
        self._writes: set[asyncio.Future[None]] = set()
        self._sweeping: asyncio.Task[None] | None = None
        self._interested: set[str] = set()  # client ids of the sessions that subscribe to statuses
        self._input_logs: dict[str, LogThrottle] = {}  # by kind of line: see `log_input`
        # The outbox is stopping: the connections it closes now are no failure of their clients, whose wills are not
        # sent (a will on an intake topic, "the app is down", was stored as an intent at every restart of the outbox).
        self.stopping = False
        feed.listen(self._status_arrived)
        feed.wanted = False

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def start(self) -> None:
        for record in await self._sessions_port.load():
            session = Session(
                record.client_id,
                True,
                record.username,
                dict(record.subscriptions),
                StatusCursor(record.status_seq),
                principal=record.username if self.settings.logins else None,
                window=self.settings.window,
                max_queued_bytes=self.settings.max_queued_bytes,
                last_seen=record.last_seen,
                expiry_ms=record.expiry_ms,
                incoming_qos2=dict.fromkeys(record.taken),
            )
            self.sessions[record.client_id] = session
            session.note_subscriptions()
            self.status_interest_changed(record.client_id)
        try:
            self._server = await asyncio.start_server(
                self._accept, self.settings.host, self.settings.port, limit=self.settings.max_packet
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{self.address} is already in use: choose another with --listen HOST:PORT, "
                    "or attach to the broker already there with --attach mqtt://HOST:PORT"
                ) from None
            raise ConfigError(f"could not listen on {self.address}: {exc.strerror}") from None
        self._sweeping = asyncio.create_task(self._keep_sessions(), name="mqtt-sessions")

    async def stop(self) -> None:
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections.values()):
            connection.close(SERVER_SHUTTING_DOWN)
        for connection in list(self._handlers.values()):
            if connection.session is None:  # no CONNECT answered yet: its handler must end, not be cancelled
                connection.writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
        if self._writes:  # when the clients closed just now were last seen
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _keep_sessions(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            try:
                await self.sweep_sessions()
            except StorageError as exc:  # the housekeeping reports a store that cannot write
                log.debug("sessions not swept: %s", exc)

    async def sweep_sessions(self) -> int:
        """Drop persistent sessions whose client is away for longer than their expiry, and write when
        connected ones were seen, a quarter of their expiry apart (not every sweep: an idle outbox does not
        write). The number of sessions dropped."""
        port = self._sessions_port
        now, default = port.now_ms(), port.expiry_ms
        writes: list[Awaitable[None]] = []
        gone = 0
        for client_id, session in list(self.sessions.items()):
            if not session.persistent:
                continue
            if client_id in self._connections:
                if session.seen_is_stale(now, default):
                    session.last_seen = now
                    writes.append(port.seen(client_id, now))
            elif session.expired(now, default):
                del self.sessions[client_id]
                self.status_interest_changed(client_id)
                writes.append(port.delete(client_id))
                gone += 1
        if gone:
            log.info("%d persistent sessions expired (their clients away longer than their session expiry)", gone)
        await asyncio.gather(*writes)
        return gone

    @property
    def connected(self) -> int:
        """Clients connected now."""
        return len(self._connections)

    def cursors(self) -> dict[str, int]:
        """Each persistent session's status position, for the housekeeping to store."""
        self._pass_unwanted()
        return {cid: s.status.position for cid, s in self.sessions.items() if s.persistent}

    def all_positions(self) -> list[int]:
        """The status position of every session, connected or persistent: events after the lowest are wanted."""
        self._pass_unwanted()
        return [s.status.position for s in self.sessions.values()]

    def _pass_unwanted(self) -> None:
        """Sessions that want no statuses have looked at every event: their pumps are not woken for them
        (`_status_arrived`), so their positions move here, when someone reads them. Absent ones too: a
        persistent session without a status subscription is owed no status published while its client is
        away (MQTT queues only what matches a subscription), and its position held back the pruning of
        every event for as long as the session was kept."""
        head = self._feed.head
        for session in self.sessions.values():
            if not session.wants_statuses and session.status.sent < head:
                session.status.passed(head)

    def record(self, session: Session) -> SessionRecord:
        return SessionRecord(session.client_id, session.username, dict(session.subscriptions), session.status.position,
                             session.last_seen, session.expiry_ms)  # fmt: skip

    def granted_expiry_s(self, connect: p.Connect) -> int | None:
        """The session expiry interval to announce in an MQTT 5 CONNACK: the outbox's maximum when the client
        asked for more, else None (the client's own stands)."""
        server_s = self._sessions_port.expiry_ms // 1000
        return server_s if connect.session_expiry is not None and connect.session_expiry > server_s else None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = self._handlers[task] = Connection(self, reader, writer)
        try:
            await connection.run()
        finally:
            del self._handlers[task]

    # --- called by connections -------------------------------------------------------------------

    async def attach(self, connection: Connection, connect: p.Connect, client_id: str) -> bool | None:
        """Bind a connection to its session (taking it over from an older connection); True if one existed,
        None if it is refused: it would be a new persistent session past `max_sessions`, or its session cannot be
        stored (a full disk).

        Attaches for one client id run one at a time: each awaits (the older connection's end, the session's
        save) between reading who holds the client id and taking it, and two CONNECTs at once both took
        over the same old connection and both stayed, sharing one session. Now the second closes the first."""
        async with self._attaching.turn(client_id):
            try:
                return await self._attach(connection, connect, client_id)
            except StorageError as exc:  # a full disk: the client tries again (a traceback each try, before)
                self.log_input("storage", "refused client %s: its session cannot be stored: %s", connection.name, exc)
                return None

    async def _attach(self, connection: Connection, connect: p.Connect, client_id: str) -> bool | None:
        if not self._room_for(connection.principal, connect, self.sessions.get(client_id)):
            name, kept = connection.name, self.settings.max_sessions
            self.log_input("sessions", "refused client %s: %d persistent sessions kept, the most", name, kept)
            return None  # refused before anything of the client id's current session and connection changes
        old = self._connections.get(client_id)
        if old is not None:
            log.info("client %s connected again: closing its previous connection", connection.name)
            old.close(SESSION_TAKEN_OVER)
            await old.closed.wait()
        # 3.1.1: clean session 0 keeps the session; MQTT 5: a session expiry interval above 0 does, as long as
        # the client asked (at most --session-expiry).
        keep = keeps_session(connect)
        expiry_ms = self._expiry_ms(connect.session_expiry)
        now = self._sessions_port.now_ms()
        session = self.sessions.get(client_id)
        if session is not None:
            session.last_seen = now  # not expired by a sweep while this attach awaits
        # A session is its app's: another app using the client id starts afresh, as if with clean session
        # (MQTT 5.0 section 5.4.2: the client id gives access to the session's state).
        foreign = session is not None and self.settings.logins and session.username != connection.principal
        if foreign:
            log.warning(
                "client %s logged in as %r; its session was %r's: that session is discarded",
                connection.name,
                connection.principal,
                session.username if session is not None else None,
            )
        present = session is not None and not connect.clean and not foreign
        if session is None or connect.clean or foreign:
            if session is not None and session.persistent:
                await self._sessions_port.delete(client_id)
            session = Session(
                client_id,
                keep,
                connect.username,
                status=StatusCursor(self._feed.head),
                principal=connection.principal,
                window=self.settings.window,
                max_queued_bytes=self.settings.max_queued_bytes,
                last_seen=now,
                expiry_ms=expiry_ms,
            )
            if keep:
                await self._sessions_port.save(self.record(session))
            self.sessions[client_id] = session
            self.status_interest_changed(client_id)
        elif session.persistent != keep or (keep and session.expiry_ms != expiry_ms):
            if keep:  # stored first: a write refused (a full disk) changes nothing, and the client tries again
                await self._sessions_port.save(replace(self.record(session), expiry_ms=expiry_ms))
            else:
                await self._sessions_port.delete(client_id)
            session.persistent, session.expiry_ms = keep, expiry_ms
        elif keep:
            with contextlib.suppress(StorageError):  # on a full disk: written by the next sweep that can
                await self._sessions_port.seen(client_id, now)  # a crash from now on does not expire it early
        self._connections[client_id] = connection
        connection.session = session
        return present

    def _room_for(self, principal: str | None, connect: p.Connect, session: Session | None) -> bool:
        """Whether a CONNECT may have the persistent session it asks for: one it resumes always, a new one while
        its app (with logins; else all apps) keeps fewer than `max_sessions`. Counted only for a new persistent
        session, and there are at most `max_sessions` to count."""
        keep = keeps_session(connect)
        mine = session is not None and session.persistent and (principal is None or session.username == principal)
        if not keep or (mine and not connect.clean):
            return True
        kept = sum(1 for s in self.sessions.values() if s.persistent and (principal is None or s.username == principal))
        return kept - mine < self.settings.max_sessions

    def _expiry_ms(self, asked_s: int | None) -> int | None:
        """A session's own expiry from the interval its client asked for (MQTT 5), or None for the outbox's
        --session-expiry when it asked for none or for more."""
        asked = None if asked_s is None else asked_s * 1000
        return asked if asked is not None and asked < self._sessions_port.expiry_ms else None

    def detach(self, connection: Connection) -> None:
        session = connection.session
        if session is None or self._connections.get(session.client_id) is not connection:
            return
        del self._connections[session.client_id]
        session.disconnected()
        port = self._sessions_port
        leave = connection.expiry_on_leave  # MQTT 5: its DISCONNECT set the session's expiry anew
        if session.persistent and leave == 0:  # the session ends now
            session.persistent = False
            self._write_later(port.delete(session.client_id))
        if not session.persistent:
            self.sessions.pop(session.client_id, None)
            self.status_interest_changed(session.client_id)
            return
        # Its expiry runs from now: written, so that a restart counts from here too.
        session.last_seen = port.now_ms()
        if leave is None:
            self._write_later(port.seen(session.client_id, session.last_seen))
        else:
            session.expiry_ms = self._expiry_ms(leave)
            self._write_later(port.save(self.record(session)))

    def end_logins(self, apps: set[str]) -> int:
        """Close the connections logged in as one of `apps` (a reload took them out of the users file, or changed
        their password), their CONNECTs not yet answered too; how many."""
        ended = [c for c in self._handlers.values() if c.principal in apps] if apps else []
        for connection in ended:
            connection.end_login()
        return len(ended)

    def _write_later(self, write: Coroutine[Any, Any, None]) -> None:
        """A session's write from a step that cannot await (a connection's end), kept until it is done."""
        future = asyncio.ensure_future(write)
        self._writes.add(future)
        future.add_done_callback(self._written)

    def _written(self, write: asyncio.Future[None]) -> None:
        self._writes.discard(write)
        if not write.cancelled() and write.exception() is not None:  # the housekeeping reports a failing store
            log.debug("last seen not written: %s", write.exception())

    def route(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        sender: str,
        expiry_s: int | None = None,
        props: object = None,
        origin: str | None = None,
    ) -> None:
        """Deliver an ordinary publish or a will to every matching session (queued for absent persistent ones).

        Nothing on a status topic: only the outbox publishes statuses, from its status log. A will was routed
        there unchecked (only a PUBLISH was refused), so any local client could leave behind a forged
        `delivered` status for another app's intent, retained and sent again to every later subscriber.
        `expiry_s`: its MQTT 5 message expiry interval; past it, it is no longer sent nor kept retained. `props`: its
        other MQTT 5 properties, passed on. `origin`: the publisher's client id (a no-local subscription of its session
        does not take it)."""
        if is_status_topic(topic):
            self.log_input("status topic", "client %s published to status topic %r, which only the outbox does: "
                           "dropped", sender, topic[:100])  # fmt: skip
            return
        expires = None if expiry_s is None else time.monotonic() + expiry_s
        props = props if isinstance(props, Passed) else None
        if retain and not self.retained.keep(topic, payload, qos, expires, props):
            self.log_input("retained", "no room: retained message on %r not kept (%d in all)", topic[:100],
                           self.retained.refused)  # fmt: skip
        for client_id, session in self.sessions.items():
            connection = self._connections.get(client_id)
            if connection is None and qos == 0:
                continue  # QoS 0 is not kept for absent clients
            dropped = session.dropped
            offered = session.offer(
                topic, payload, qos, retain=retain, expires=expires, props=props, own=client_id == origin
            )
            if offered and connection is not None:
                connection.wake.set()
            if session.dropped > dropped:
                self.log_input("dropped", "no room: session %s had %d messages dropped in all, the oldest first",
                               client_id, session.dropped)  # fmt: skip

    def log_input(
        self, kind: str, message: str, *args: object, level: int = logging.WARNING, context: Context | None = None
    ) -> None:
        """A line about what an app sent and the endpoint refused or could not keep: at most one of each `kind`
        every REFUSAL_LOG_INTERVAL, saying how many were left out, like the intake's "rejected input" line. One
        976 KB SUBSCRIBE of bad filters wrote 22 MB of log, a line each. `context`: the client's (the line's
        `client` and `peer`)."""
        throttle = self._input_logs.setdefault(kind, LogThrottle(REFUSAL_LOG_INTERVAL))
        not_logged = throttle.allow(time.monotonic())
        if not_logged is not None:
            extra = {**(context or {}), "not_logged": not_logged}
            log.log(level, message + "%s", *args, left_out(not_logged), extra=extra)

    def retained_for(self, session: Session, topic_filter: str, granted: int) -> None:
        for message in self.retained.matching(topic_filter, time.monotonic()):
            session.enqueue(replace(message, qos=min(message.qos, granted)))

    def status_interest_changed(self, client_id: str) -> None:
        """The session of `client_id` came, went or changed its subscriptions. The store reads status events
        back only while some session, connected or kept, subscribes to statuses (bench/findings.md F42).
        Only that session is looked at: a scan of every session's filters each time made each new session
        cost more than the one before."""
        session = self.sessions.get(client_id)
        if session is not None and session.wants_statuses:
            self._interested.add(client_id)
        else:
            self._interested.discard(client_id)
        self._feed.wanted = bool(self._interested)

    def _status_arrived(self) -> None:
        """New events: wake the connections of the sessions that subscribe to statuses, and only those (each
        commit woke every connection: 2,000 idle ones cut another app's intake to a quarter)."""
        for client_id in self._interested:
            connection = self._connections.get(client_id)
            if connection is not None:
                connection.wake.set()

    @property
    def feed(self) -> StatusFeed:
        return self._feed

    @property
    def intake(self) -> IntakePort:
        return self._intake

    @property
    def sessions_port(self) -> SessionsPort:
        return self._sessions_port

    async def authenticate(self, username: str | None, password: bytes | None) -> bool:
        return await self._authenticate(username, password)
