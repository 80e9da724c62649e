"""Inbound QoS 2 packet ids of persistent sessions, kept in the outbox database from the commit of their intent
until their PUBREL (MQTT 4.3.3, method B: the server keeps the packet id, not the message).

An intent published at QoS 2 is committed together with its (client id, packet id), and the PUBREL's PUBCOMP
goes out once the id is deleted again. An app that sends the intent again (DUP) after a crash of the outbox,
its PUBREC not received, has it answered PUBREC as taken, not stored a second time under a new id; and a
packet id freed by PUBREL is not taken for a resend after a crash, which would lose the next intent under it.
Plain functions on a connection, run inside the store's group commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

Key = tuple[str, int]  # (client id, packet id)


def take(conn: sqlite3.Connection, keys: Iterable[Key]) -> None:
    """Note packet ids as taken, in the transaction that stores their intents; only for a session still stored
    (one deleted meanwhile, its client back with clean session, keeps nothing)."""
    conn.executemany(
        "INSERT OR IGNORE INTO qos2_taken(client_id, packet_id)"
        " SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM sessions WHERE client_id = ?1)",
        list(keys),
    )


def release(conn: sqlite3.Connection, keys: Iterable[Key]) -> None:
    """Free packet ids: their PUBREL came."""
    conn.executemany("DELETE FROM qos2_taken WHERE client_id = ? AND packet_id = ?", list(keys))


def forget(conn: sqlite3.Connection, client_id: str) -> None:
    """A session was deleted: its packet ids with it."""
    conn.execute("DELETE FROM qos2_taken WHERE client_id = ?", (client_id,))


def load(conn: sqlite3.Connection) -> dict[str, tuple[int, ...]]:
    """The packet ids taken, by client id, of the sessions stored (those of sessions gone are deleted)."""
    conn.execute("DELETE FROM qos2_taken WHERE client_id NOT IN (SELECT client_id FROM sessions)")
    taken: dict[str, list[int]] = {}
    for client_id, packet_id in conn.execute("SELECT client_id, packet_id FROM qos2_taken ORDER BY packet_id"):
        taken.setdefault(client_id, []).append(packet_id)
    return {client_id: tuple(ids) for client_id, ids in taken.items()}
