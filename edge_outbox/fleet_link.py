"""The outbox's side of fleet health, on the forwarder's own MQTT session.

`DeviceReporter` sends a health report when the link comes up and every `health_interval_s` while it
stays up (`devices/{id}/health`), and answers the bridge's diagnose requests (`devices/{id}/diagnose`)
with a diagnosis (`devices/{id}/diagnosis`). The messages are made by edge_outbox.fleet_report
(pure); this module only reads their inputs and publishes. A bridge too old to know these topics
refuses the subscription and ignores the reports: the forwarder carries on without them.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from edge_outbox import ops
from edge_outbox.bridge_clock import BridgeClock
from edge_outbox.cancelling import raise_if_cancelled
from edge_outbox.db import DB_NAME
from edge_outbox.fleet_report import EdgeFacts, LinkLike, RecentErrors, build_diagnosis, build_health
from edge_outbox.identity import Identity
from edge_outbox.settings import ForwarderSettings
from edge_outbox.states import FINAL, State, sql_set
from edge_outbox.store import Store
from edge_outbox.windows import Window
from intent_contract.device_wire import HealthReport, decode_diagnose, encode_diagnosis, encode_health
from intent_contract.errors import DecodeError
from intent_contract.wire import DIAGNOSE, DIAGNOSIS, DIAGNOSIS_FAILING, HEALTH, device_topic

log = logging.getLogger(__name__)

FAILING_WINDOW_MS = 24 * 3600 * 1000  # a diagnosis counts the failures of the last day
_FAILED = sql_set(frozenset({State.FAILED, State.EXPIRED, State.REJECTED}))


def software_version() -> str:
    """This outbox's version, as the bridge shows it."""
    try:
        return version("edge-outbox")
    except PackageNotFoundError:
        return "unknown"


def disk_facts(data_dir: Path) -> EdgeFacts:
    """The database's size and the free space beside it (the facts a flush-only forwarder has)."""
    used = sum(p.stat().st_size for p in data_dir.glob(DB_NAME + "*") if p.is_file())
    try:
        free: int | None = shutil.disk_usage(data_dir).free
    except OSError:
        free = None
    return EdgeFacts(db_bytes=used, free_bytes=free)


def failing_kinds(conn: sqlite3.Connection, since_ms: int) -> list[tuple[str, str, int]]:
    """(kind, code, count) of the intents that ended failed, expired or rejected since `since_ms`, most first."""
    # The first term repeats the intents_final index's condition so that SQLite uses the index.
    rows = conn.execute(
        f"SELECT kind, code, COUNT(*) AS n FROM intents WHERE state IN {sql_set(FINAL)} AND updated >= ?"
        f" AND state IN {_FAILED} GROUP BY kind, code ORDER BY n DESC, kind, code LIMIT ?",
        (since_ms, DIAGNOSIS_FAILING),
    )
    return [(str(kind), str(code), int(n)) for kind, code, n in rows]


def window_text(window: Window) -> str:
    """A forwarding window as it was given, HH:MM-HH:MM."""
    start, end = divmod(window.start // 60, 60), divmod(window.end // 60, 60)
    return f"{start[0]:02d}:{start[1]:02d}-{end[0]:02d}:{end[1]:02d}"


class Client(Protocol):
    """What the reporter needs of the MQTT client (aiomqtt.Client has it)."""

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> Any: ...

    async def subscribe(self, topic: str, qos: int = 0) -> Any: ...


@dataclass(frozen=True, slots=True)
class ReporterSettings:
    device_id: str
    interval_s: float  # 0: no periodic reports (one on connect still goes)
    bridge: str  # host:port the forwarder connects to
    transport: str
    windows: tuple[str, ...]

    @classmethod
    def of(cls, identity: Identity, settings: ForwarderSettings) -> ReporterSettings:
        port = settings.websocket_port if settings.transport == "websockets" else identity.mqtt_port
        return cls(
            identity.device_id,
            settings.health_interval_s,
            f"{identity.bridge_host}:{port}",
            settings.transport,
            tuple(window_text(w) for w in settings.windows),
        )


class DeviceReporter:
    """Health reports and diagnoses for one forwarder."""

    def __init__(
        self,
        store: Store,
        settings: ReporterSettings,
        *,
        link: Callable[[], LinkLike],
        clock: Callable[[], BridgeClock],
        facts: Callable[[], EdgeFacts],
        errors: RecentErrors,
        clock_ms: Callable[[], int],
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._store = store
        self._settings = settings
        self._link = link
        self._clock = clock
        self._facts = facts
        self.errors = errors
        self._clock_ms = clock_ms
        self._log = log
        self._software = software_version()
        self._answering: asyncio.Task[None] | None = None
        self.diagnose_topic = device_topic(settings.device_id, DIAGNOSE)
        self._health_topic = device_topic(settings.device_id, HEALTH)
        self._diagnosis_topic = device_topic(settings.device_id, DIAGNOSIS)

    async def subscribe(self, client: Client) -> None:
        """Subscribe to diagnose requests, in a SUBSCRIBE of its own: a bridge too old to know the topic
        refuses it, and the acks subscription must not be refused with it."""
        granted = await client.subscribe(self.diagnose_topic, qos=1)
        if any(getattr(code, "is_failure", code == 0x80) for code in granted):
            self._log.info("the bridge does not ask for diagnoses (an older bridge); health reports go unread")

    async def health(self) -> HealthReport:
        summary = await self._store.read(ops.summary)
        clock = self._clock()
        return build_health(
            summary=summary,
            link=self._link(),
            facts=self._facts(),
            errors=self.errors,
            clock_offset_ms=clock.offset_ms,
            clock_source=clock.source,
            software=self._software,
            now_ms=self._clock_ms(),
        )

    async def report_loop(self, client: Client) -> None:
        """Send a report now and then every interval, for as long as the connection lasts."""
        while True:
            await client.publish(self._health_topic, encode_health(await self.health()), qos=1)
            raise_if_cancelled()
            if self._settings.interval_s <= 0:
                return
            await asyncio.sleep(self._settings.interval_s)

    def on_diagnose(self, client: Client, payload: bytes) -> None:
        """A diagnose request arrived: answer it in the background (one at a time; others are dropped)."""
        try:
            request_id = decode_diagnose(payload)
        except DecodeError as exc:
            self._log.warning("ignoring a malformed diagnose request from the bridge: %s", exc)
            return
        if self._answering is not None and not self._answering.done():
            self._log.info("a diagnosis is already being made; request %s dropped", request_id)
            return
        self._answering = asyncio.create_task(self._answer(client, request_id), name="diagnosis")

    async def _answer(self, client: Client, request_id: str) -> None:
        try:
            health = await self.health()
            failing = await self._store.read(failing_kinds, health.at - FAILING_WINDOW_MS)
            s = self._settings
            diagnosis = build_diagnosis(
                request_id,
                health=health,
                errors=self.errors,
                failing=failing,
                failing_window_ms=FAILING_WINDOW_MS,
                bridge=s.bridge,
                transport=s.transport,
                windows=s.windows,
            )
            await client.publish(self._diagnosis_topic, encode_diagnosis(diagnosis), qos=1)
            self._log.info("diagnosis %s sent to the bridge", request_id)
        except Exception as exc:  # noqa: BLE001 - the link's failure is the forwarder's to handle
            # Nothing asks again: the request stays `sent` at the bridge and `devices diagnose` ends at its
            # --timeout (exit 1); the operator runs it again.
            self._log.warning("diagnosis %s not sent: %s", request_id, exc)

    def stop(self) -> None:
        if self._answering is not None:
            self._answering.cancel()
