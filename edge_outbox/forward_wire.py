"""What the forwarder puts on the wire and what it says of the link, built without I/O.

The envelope of a stored intent on the bridge's clock, a batch of stored rows (and the rows no batch can
carry), the confirms grouped by the attempt of their results, and the link's state as `edge-outbox status`
and the fleet report show it. Export builds its bundles' batches here too (edge_outbox.bundle).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import orjson

from edge_outbox.bridge_clock import BridgeClock
from edge_outbox.db import IntentRow
from intent_contract.codec import encode_batch
from intent_contract.envelope import Envelope


class LinkState(StrEnum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    REVOKED = "revoked"

    @property
    def down(self) -> bool:
        """No link to the bridge: offline, or trying to connect (an outage lasts through its attempts)."""
        return self in (LinkState.OFFLINE, LinkState.CONNECTING)


@dataclass(frozen=True, slots=True)
class LinkSnapshot:
    """What `edge-outbox status` shows about the link."""

    state: LinkState
    since: int  # when the link went down (through every reconnect attempt since), came up, or was revoked
    last_contact: int | None
    sent: int
    acked: int
    rate: float  # intents acknowledged per second over the last minute (0.0: none)
    connects: int = 0  # connections made since the outbox started
    failures: int = 0  # connection attempts that failed
    error: str = ""  # while down: why the last attempt failed (forward_wire.link_failure's line, a refusal)
    # Since when intents sent to the bridge have had no ack at all, through every reconnect (None: none waits). A link
    # that connects and drops mid-batch, again and again, is up at times but delivers nothing (edge_outbox.health).
    unanswered_since: int | None = None


def envelope_of(row: IntentRow, clock: BridgeClock) -> Envelope:
    """The envelope of a stored intent, its times on the bridge's clock (stored times are on this device's).

    Built once with the moved times: building it and then a moved copy (`dataclasses.replace`) made a
    batch cost 9.6-10.7 us per intent to encode, this 6.3-7.0 us.
    """
    return Envelope(
        id=row.id,
        app=row.app,
        kind=row.kind,
        created=clock.bridge_ms(row.created),
        expires=None if row.expires is None else clock.bridge_ms(row.expires),
        attempt=row.attempt,
        payload=orjson.loads(row.payload),  # exact for what the intake took: integers within 64 bits
        priority=row.priority,
    )


def encode_rows(
    rows: list[IntentRow], clock: BridgeClock
) -> tuple[bytes | None, list[IntentRow], list[tuple[int, str]]]:
    """The batch of `rows` for the bridge (None if none can go), the rows it carries, and (seq, why) for
    each row that cannot be sent.

    The intake refuses such payloads (a lone surrogate in a string, which msgpack cannot encode; a number
    past the float range), but an older outbox's intake stored some: one of them must not hold up every
    intent behind it, as it did when the whole batch failed to encode.
    """
    try:
        return encode_batch([envelope_of(r, clock) for r in rows]), rows, []
    except (ValueError, OverflowError):  # UnicodeEncodeError and orjson's JSONDecodeError are ValueErrors
        pass
    sendable: list[IntentRow] = []
    unsendable: list[tuple[int, str]] = []
    for row in rows:
        try:
            encode_batch([envelope_of(row, clock)])
        except (ValueError, OverflowError) as exc:
            unsendable.append((row.seq, str(exc)[:200]))
        else:
            sendable.append(row)
    batch = encode_batch([envelope_of(r, clock) for r in sendable]) if sendable else None
    return batch, sendable, unsendable


def confirm_groups(to_confirm: dict[str, int]) -> dict[int, list[str]]:
    """The ids to confirm by the attempt of their results, one confirms message (or more) each: a message's
    `attempt` confirms results of that attempt or an earlier one at the bridge, so a confirm of attempt 1
    that arrives after an operator's retry there cannot confirm attempt 2's result before the edge has it;
    0 (a bridge that did not say) goes without one, as confirms did before."""
    groups: dict[int, list[str]] = {}
    for intent_id, attempt in to_confirm.items():
        groups.setdefault(attempt, []).append(intent_id)
    return groups


def link_failure(failure: str, bridge_host: str) -> tuple[str, str]:
    """(code, line) for a connection to the bridge that failed before MQTT spoke: `bridge_certificate` names what
    fixes a certificate this device cannot verify (the TLS library's words named neither the pinned CA nor the
    address); `bridge_unreachable` for anything else (refused, timed out, no route)."""
    if "CERTIFICATE_VERIFY_FAILED" not in failure:
        return "bridge_unreachable", f"bridge unreachable: {failure}"
    if "mismatch" in failure or "not valid for" in failure:
        fix = (
            f"it does not name {bridge_host!r}, the bridge address this device was enrolled with (bridge_host in"
            " DATA_DIR/identity/device.json): the bridge's certificate must name it, or, for a bridge that moved,"
            " set bridge_host to a name its certificate has and reload `edge-outbox run` (SIGHUP)"
        )
    elif "expired" in failure or "not yet valid" in failure:
        fix = "its validity period does not cover this device's clock: renew it at the bridge, or set the clock"
    else:
        fix = (
            "it is not signed by the CA pinned at enrollment (DATA_DIR/identity/ca.pem, from `enroll --ca`): put"
            " the CA that signs the bridge's certificate in that file (read at each connect)"
        )
    return "bridge_certificate", f"the bridge's certificate does not verify ({failure}): {fix}"


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception that is no group: what ended a connection's TaskGroup."""
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
