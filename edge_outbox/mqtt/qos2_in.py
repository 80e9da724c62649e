"""QoS 2 publishes from apps: which one is a resend of a publish taken already, and what frees a packet id.

A persistent session's QoS 2 intent is committed with its packet id (`edge_outbox/qos2_taken.py`), and the id is
deleted again before its PUBREL's PUBCOMP goes out: a resend after a crash of the outbox is not stored twice, and
a later intent under an id freed before the crash is not taken for a resend and lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

from edge_outbox.mqtt.dialect import refuses
from edge_outbox.mqtt.ports import SessionsPort
from edge_outbox.mqtt.session import Session
from intent_contract import mqtt_packets as p


def is_resend(session: Session, packet: p.Publish) -> bool:
    """Whether a QoS 2 publish is one taken already, awaiting its PUBREL: answered once the first copy is stored
    (it was at once, so lost on a crash). An id loaded from the database (None) is trusted for a resend (DUP)
    only: the client may not use the id for another message before its PUBREL, but the id may be stale."""
    return (
        packet.qos == 2
        and packet.packet_id in session.incoming_qos2
        and bool(packet.dup or session.incoming_qos2[packet.packet_id])
    )


def key(session: Session, packet: p.Publish) -> tuple[str, int] | None:
    """What the intake stores with an intent so that a resend after a crash is known: a persistent session's QoS 2
    (client id, packet id)."""
    if packet.qos == 2 and session.persistent and packet.packet_id:
        return session.client_id, packet.packet_id
    return None


def release(session: Session, packet_id: int, port: SessionsPort) -> asyncio.Future[Any] | None:
    """A PUBREL frees its packet id; what its PUBCOMP waits for: the id's deletion from the database, for a
    persistent session. Shielded: the end of the connection cancels what its answers await, and the id must still
    be freed."""
    if packet_id not in session.incoming_qos2:
        return None
    taken = session.incoming_qos2.pop(packet_id)
    if not session.persistent:
        return None
    return asyncio.shield(_released(session.client_id, packet_id, taken, port))


async def _released(client_id: str, packet_id: int, taken: asyncio.Future[Any] | None, port: SessionsPort) -> None:
    if taken is not None:  # its intent's commit, which stores the id, comes first
        await asyncio.shield(taken)
    await port.release(client_id, packet_id)


def freed_if_refused(
    session: Session, packet: p.Publish, ready: asyncio.Future[Any], port: SessionsPort
) -> asyncio.Future[Any]:
    """`ready` (an MQTT 5 client's QoS 2 intent committed), then, if its PUBREC `refuses` it, its packet id freed, in
    the database first. Such a PUBREC ends the exchange: no PUBREL comes and the client uses the id for its next
    message [MQTT-4.3.3], which was taken for a resend of the refused one, answered with its refusal and lost."""

    async def freed() -> Any:
        result = await ready
        if refuses(result) and packet.packet_id is not None:
            session.incoming_qos2.pop(packet.packet_id, None)
            if session.persistent:
                await port.release(session.client_id, packet.packet_id)
        return result

    return asyncio.ensure_future(freed())
