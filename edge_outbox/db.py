"""The outbox database: schema, pragmas and the row type. Shared by the running outbox and the ops CLI.

Triggers keep two derived tables exact whoever writes (the outbox or an ops command in another
process): `stats` (items and bytes per state, so queue limits and `status` are O(1)) and `events`
(every status message, committed with the change it reports, and read by every status consumer
from its own position; see edge_outbox.status).
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

from edge_outbox.errors import ConfigError
from edge_outbox.states import FINAL, PENDING, State, sql_set, unknown_state
from intent_contract import sqlite_faults, sqlite_wal

DB_NAME = "outbox.db"
# meta keys the running outbox keeps for itself and for `edge-outbox status`
STATUS_KEY = "status_published_seq"  # attach mode: statuses up to here are acknowledged by the broker
CLOCK_KEY = "bridge_clock"  # the bridge's clock as learned (edge_outbox.bridge_clock)
REVOKED_KEY = "revoked"  # set when the bridge said this device is revoked (online or in a receipt)
# ms: the last contact with the bridge (or, before any, the first start): /healthz's outage counts from it across
# restarts (edge_outbox.forwarder)
LINK_SEEN_KEY = "link_seen"
SENT_AS_KEY = "sent_as"  # the device id this database's intents are sent as (edge_outbox.offline_ops.send_as)
BUSY_TIMEOUT_MS = 10_000
# The database's generation (SQLite's user_version): an outbox refuses a database whose version is higher, in one
# line and before it changes anything there (going back to an earlier outbox used to be taken silently, whatever
# the later one had made of its database). A later outbox raises it only for a change an outbox of this version
# could not run on correctly (a table it writes changing meaning); one that only adds (a table, a nullable
# column, an index) keeps it, so that going back a version keeps working. Databases made before it are 0.
SCHEMA_VERSION = 1

_PENDING, _FINAL = sql_set(PENDING), sql_set(FINAL)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS intents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    code TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    expires INTEGER,
    updated INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    sent INTEGER NOT NULL DEFAULT 0,
    sent_at INTEGER NOT NULL DEFAULT 0,
    confirmed INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
);
-- By id, every row. Not UNIQUE ... WHERE state <> 'rejected', as it was: a partial index on `state`
-- took part in every state change, and with the random ids an app may give each change dirtied a page
-- of it of its own (about a quarter of the store's CPU in a drain, bench/findings.md F37); a
-- database made before loses it at its next start. The intake keeps one row per id that is not
-- rejected: it looks the ids of a batch up before it inserts any (`commit_intakes`, on the one writer
-- thread), and a rejected row never blocks its id.
DROP INDEX IF EXISTS intents_id;
CREATE INDEX IF NOT EXISTS intents_by_id ON intents(id);
CREATE INDEX IF NOT EXISTS intents_pending ON intents(priority DESC, seq)
    WHERE state IN {_PENDING};
CREATE INDEX IF NOT EXISTS intents_to_send ON intents(priority DESC, seq) WHERE state = 'accepted';
-- Only intents with a deadline, and only until they are sent: most intents never enter it.
CREATE INDEX IF NOT EXISTS intents_deadline ON intents(expires)
    WHERE state = 'accepted' AND sent = 0 AND expires IS NOT NULL;
DROP INDEX IF EXISTS intents_expiring;
-- Final intents by age, for retention: an intent enters it once, when it ends. (An index on
-- (state, updated) would move on every transition and cost a third of the drain rate.)
CREATE INDEX IF NOT EXISTS intents_final ON intents(updated)
    WHERE state IN {_FINAL};
DROP INDEX IF EXISTS intents_state_updated;
CREATE INDEX IF NOT EXISTS intents_app ON intents(app, seq);

CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    code TEXT NOT NULL,
    detail TEXT NOT NULL,
    at INTEGER NOT NULL
);
-- An app's statuses, for its replay requests (event_log.app_statuses): without it a request read every
-- status stored after its seq, of every app, on the writer thread (46 ms at 1,000,000 for an app with none
-- among them, each request, while no intent could commit). A database made before gets it at its next start.
CREATE INDEX IF NOT EXISTS events_app ON events(app, seq);

CREATE TABLE IF NOT EXISTS stats (
    state TEXT PRIMARY KEY,
    items INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- Persistent MQTT sessions of local apps (clean session = 0): what they subscribe to, and up to
-- which event they have every status. Statuses themselves are never copied here: they are re-read
-- from `events` from `status_seq` on.
CREATE TABLE IF NOT EXISTS sessions (
    client_id TEXT PRIMARY KEY,
    username TEXT,
    subscriptions TEXT NOT NULL,
    status_seq INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    expiry_ms INTEGER -- MQTT 5: the expiry the client asked for, if below --session-expiry; NULL: that
);

-- Inbound QoS 2 packet ids of persistent sessions, from their intent's commit to their PUBREL
-- (edge_outbox/qos2_taken.py): a resend after a crash is not stored twice.
CREATE TABLE IF NOT EXISTS qos2_taken (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;

-- Final results taken from a receipt, to confirm to the bridge in the next bundle (offline sites).
CREATE TABLE IF NOT EXISTS confirm_queue (id TEXT PRIMARY KEY);

CREATE TRIGGER IF NOT EXISTS intents_ins AFTER INSERT ON intents BEGIN
    INSERT INTO stats(state, items, bytes) VALUES (NEW.state, 1, NEW.size)
        ON CONFLICT(state) DO UPDATE SET items = items + 1, bytes = bytes + NEW.size;
    INSERT INTO events(id, app, kind, state, code, detail, at)
        VALUES (NEW.id, NEW.app, NEW.kind, NEW.state, NEW.code, NEW.detail, NEW.updated);
END;
CREATE TRIGGER IF NOT EXISTS intents_upd AFTER UPDATE OF state, attempt ON intents
    WHEN OLD.state <> NEW.state OR OLD.attempt <> NEW.attempt BEGIN
    UPDATE stats SET items = items - 1, bytes = bytes - OLD.size WHERE state = OLD.state;
    INSERT INTO stats(state, items, bytes) VALUES (NEW.state, 1, NEW.size)
        ON CONFLICT(state) DO UPDATE SET items = items + 1, bytes = bytes + NEW.size;
    INSERT INTO events(id, app, kind, state, code, detail, at)
        VALUES (NEW.id, NEW.app, NEW.kind, NEW.state, NEW.code, NEW.detail, NEW.updated);
END;
CREATE TRIGGER IF NOT EXISTS intents_del AFTER DELETE ON intents BEGIN
    UPDATE stats SET items = items - 1, bytes = bytes - OLD.size WHERE state = OLD.state;
END;
"""


TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))


class IntentRow(NamedTuple):
    """One stored intent.

    Immutable like the frozen dataclasses of STYLE.md, but a NamedTuple: one is built for every intent
    stored, sent and listed, and a frozen dataclass of 17 fields took 3.6 us to build, this 0.4 us
    (bench/findings.md F32).
    """

    seq: int
    id: str
    app: str
    kind: str
    state: State
    code: str
    detail: str
    priority: int
    created: int
    expires: int | None
    updated: int
    attempt: int
    sent: int
    sent_at: int
    confirmed: int
    payload: bytes
    size: int

    @classmethod
    def from_db(cls, row: tuple[Any, ...]) -> IntentRow:
        """From a row selected with SELECT_ROW."""
        state = _STATES.get(row[4]) or unknown_state(row[4])  # stored_state, inline: one row per intent listed
        return cls._make((*row[:4], state, *row[5:15], bytes(row[15]), row[16]))


_STATES = {str(state): state for state in State}


def stored_state(text: str) -> State:
    """The state stored as `text`; one a newer outbox stored is a stand-in (`states.unknown_state`), not a KeyError."""
    return _STATES.get(text) or unknown_state(text)


EVENT_COLUMNS = "seq, id, app, kind, state, code, detail, at"
COLUMNS = IntentRow._fields
SELECT_ROW = f"SELECT {', '.join(COLUMNS)} FROM intents"


class StatusEvent(NamedTuple):
    """A state change to publish to the app.

    A NamedTuple, as `IntentRow` is and for the same reason: one is built for every state change an app
    is told of (bench/findings.md F33).
    """

    seq: int
    id: str
    app: str
    kind: str
    state: State
    code: str
    detail: str
    at: int

    @classmethod
    def from_db(cls, row: tuple[Any, ...]) -> StatusEvent:
        """From a row selected with EVENT_COLUMNS."""
        state = _STATES.get(row[4]) or unknown_state(row[4])
        return cls(row[0], row[1], row[2], row[3], state, row[5], row[6], row[7])


def db_path(data_dir: Path) -> Path:
    return data_dir / DB_NAME


def fault_text(data_dir: Path, exc: sqlite3.Error, failed: str) -> str:
    """The one line for a fault of the database: `failed` ("could not commit to") and the file, or what to do
    with a damaged one (a disk-full-like "could not commit" sent operators looking at the disk)."""
    path = db_path(data_dir)
    if sqlite_faults.is_damaged(exc):
        return (
            f"{path} is damaged or not an outbox database ({exc}); `edge-outbox run` does not start on it (nor makes"
            f" a new one). Stop the outbox, keep a copy of the data dir (SQLite's tools may save some of what it"
            f" holds), then restore the last backup of {DB_NAME} (docs/durability.md: what a restored one sends again)"
        )
    if sqlite_faults.cannot_open(exc) and _read_only(data_dir):
        return (
            f"{failed} {path}: {exc}: {data_dir} is on a read-only file system, and SQLite writes {DB_NAME}-shm"
            " beside a WAL database even to read it; copy the data dir somewhere writable to look at it"
        )
    return f"{failed} {path}: {exc}"


def _read_only(data_dir: Path) -> bool:
    try:
        return bool(os.statvfs(data_dir).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# Applying the bridge's acks uses UPDATE ... FROM (SQLite 3.33) and the JSON functions (built in from 3.38;
# Debian's, Ubuntu's and RHEL's builds have them before that): `forward_ops.apply_acks`, bench/findings.md F39.
MIN_SQLITE = (3, 33, 0)


def connect(data_dir: Path, *, create: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode with WAL and synchronous=FULL; creates the schema if asked."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise ConfigError(
            f"this Python's SQLite is {sqlite3.sqlite_version}; the outbox needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or later (a Python built against a newer libsqlite3)"
        )
    path = db_path(data_dir)
    if not create and not path.exists():
        raise ConfigError(f"no outbox database in {data_dir} (is --data-dir right? `edge-outbox run` creates it)")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a path under a file, a read-only or missing mount, no permission
        raise ConfigError(f"cannot use {data_dir} as the data directory: {exc.strerror}") from None
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        _check_version(conn, path)
    except BaseException:
        conn.close()
        raise
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {sqlite_wal.WAL_SIZE_LIMIT}")  # a long read's WAL cut back
    if create:
        conn.executescript(SCHEMA)
        _add_columns(conn)
        if _version(conn) < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    else:
        try:
            check_schema(conn, path)
        except BaseException:
            conn.close()
            raise
    return conn


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    """ConfigError when a later outbox marked the database as not for this one (SCHEMA_VERSION)."""
    if (found := _version(conn)) > SCHEMA_VERSION:
        raise ConfigError(
            f"{path} was made by a later edge-outbox (database version {found}; this one runs on {SCHEMA_VERSION} at"
            " most): run that version again, or restore the backup made before the upgrade; nothing was changed"
        )


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """ConfigError unless `path` holds every table of SCHEMA. The ops commands do not upgrade a database
    (an older `run` may still be live on it, with the schema it knows): `run` does, at start.
    Their queries met an empty file, another program's database or an older outbox's as "no such table"."""
    found = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "intents" not in found:
        raise ConfigError(f"{path} is not an outbox database (it has no intents table)")
    if missing := TABLES - found:
        raise ConfigError(
            f"{path} was made by an older edge-outbox (no table {', '.join(sorted(missing))}): "
            "start `edge-outbox run` of this version once to upgrade it"
        )


# Columns added to a table after its first release, (table, column, declaration): a database made by an
# older outbox gets them at start (nullable, so an older outbox still reads and writes the table).
ADDED_COLUMNS = (("sessions", "expiry_ms", "INTEGER"),)


def _add_columns(conn: sqlite3.Connection) -> None:
    for table, column, declaration in ADDED_COLUMNS:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise


def free_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the database file that hold nothing (pages freed by retention): reused before the file grows."""
    pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return pages * int(conn.execute("PRAGMA page_size").fetchone()[0])


def pending_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(items, bytes) not yet in a final state: what counts against the queue limits."""
    row = conn.execute(
        f"SELECT COALESCE(SUM(items), 0), COALESCE(SUM(bytes), 0) FROM stats WHERE state IN {_PENDING}"
    ).fetchone()
    return int(row[0]), int(row[1])
