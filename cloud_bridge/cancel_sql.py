"""An operator's cancel of a running row, in the store: the ask, and the holding node's answer to it.

A running row may be one claimed ahead of its call (the executor's "claimed ahead", bench/findings.md F23),
whose call has not started and can still be stopped; only the node holding it knows, since a call's start
writes nothing. So a cancel of a running row records an ask on the row (`cancel_ask`, "ATTEMPT OPERATOR")
and signals the nodes (`SqlIntents.ask_signal`); the holding node (cloud_bridge.cancel_asks) ends the row
`failed`/`cancelled` if it had not started its call (`end_asked`), else answers that it had (`answered`,
the ask then reads "ATTEMPT OPERATOR started"). A row claimed again with an unanswered ask of its attempt
(its node died or stopped; on SQLite, put back in the queue at the next start) is ended so by the claiming
node before any call. Every write here is conditioned on the ask and the holder, so of a cancel and a
call's start exactly one happens; nothing is written on a job's path unless an operator asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloud_bridge.ledger import LedgerEntry, entry_from_row
from cloud_bridge.ledger_states import EntryState, LedgerEvent

if TYPE_CHECKING:
    from cloud_bridge.intent_sql import SqlIntents

SUMMARY = "operators' cancels of running rows"
SQLITE_SCHEMA = ("ALTER TABLE intents ADD COLUMN cancel_ask TEXT NOT NULL DEFAULT ''",)
PG_SCHEMA = ("ALTER TABLE intents ADD COLUMN cancel_ask text NOT NULL DEFAULT ''",)
STARTED = " started"  # appended to an ask its node answered: the call had started

_RUNNING = f"state = '{EntryState.RUNNING}'"
_ROW = "device_id = ? AND intent_id = ?"


def ask_of(attempt: int, operator: str) -> str:
    return f"{attempt} {operator}"


def answered(entry: LedgerEntry, ask: str) -> bool:
    """Whether the node holding `entry` answered `ask`: its call had started."""
    return entry.cancel_ask == ask + STARTED


def ask_cancel(intents: SqlIntents, conn: Any, entry: LedgerEntry, operator: str) -> LedgerEntry | None:
    """Record `operator`'s cancel of the running row `entry` and signal the nodes, in the operation's
    transaction; the row as it is then, or None when it is no longer running at that attempt."""
    changed = intents.run(
        conn,
        f"UPDATE intents SET cancel_ask = ? WHERE {_ROW} AND {_RUNNING} AND attempt = ?",
        (ask_of(entry.attempt, operator), entry.device_id, entry.intent_id, entry.attempt),
    ).rowcount
    if not changed:
        return None
    intents.ask_signal(conn, entry.device_id)
    row = intents.run(conn, f"SELECT * FROM intents WHERE {_ROW}", (entry.device_id, entry.intent_id)).fetchone()
    return entry_from_row(row)


def asked(intents: SqlIntents, owner: str, device_id: str | None) -> list[LedgerEntry]:
    """The running rows `owner` holds (of `device_id`; None: of any device) with a cancel asked."""
    where = f"{_RUNNING} AND owner = ? AND cancel_ask <> ''"
    params: tuple[str, ...] = (owner,)
    if device_id is not None:
        where, params = f"device_id = ? AND {where}", (device_id, owner)
    with intents.transaction() as conn:
        rows = intents.run(conn, f"SELECT * FROM intents WHERE {where}", params).fetchall()
    return [entry for entry in map(entry_from_row, rows) if entry.cancel_pending is not None]


def _held(entry: LedgerEntry) -> tuple[str, tuple[Any, ...]]:
    """The condition that `entry`'s holder still holds it, with the ask it read."""
    return (
        f"{_ROW} AND {_RUNNING} AND owner = ? AND attempt = ? AND tries = ? AND cancel_ask = ?",
        (entry.device_id, entry.intent_id, entry.owner, entry.attempt, entry.tries, entry.cancel_ask),
    )


def end_asked(intents: SqlIntents, entry: LedgerEntry, now: float) -> LedgerEntry | None:
    """End `entry`, held here with a cancel asked and its call not started, `failed`/`cancelled` (its claim's
    try taken back), audited and counted as an operator's cancel; None when it is no longer so held. A row
    asked again meanwhile (another operator) is ended for the last ask."""
    for _ in range(3):
        ended, row = _end_asked(intents, entry, now)
        if ended or row is None:
            return row
        entry = row  # asked again meanwhile: ended for the last ask
    return None


def _end_asked(intents: SqlIntents, entry: LedgerEntry, now: float) -> tuple[bool, LedgerEntry | None]:
    """`end_asked` once: (True, the row ended); (False, the row as it now is) when only its ask changed; (False,
    None) when it is no longer so held."""
    from cloud_bridge.intent_sql import CANCELLED, cancel_detail, cancel_detail_sql, operator_detail  # noqa: PLC0415

    operator = entry.cancel_pending
    if operator is None:
        return False, None
    where, params = _held(entry)
    with intents.transaction() as conn:
        changed = intents.run(
            conn,
            f"UPDATE intents SET state = '{EntryState.FAILED}', tries = tries - 1, code = ?,"
            f" detail = {cancel_detail_sql('tries - 1')}, updated = ?, owner = '', lease_until = 0,"
            f" confirmed = {intents.false}, cancel_ask = '' WHERE {where}",
            (CANCELLED, *cancel_detail(operator_detail(LedgerEvent.CANCEL, operator)), now, *params),
        ).rowcount
        row = intents.run(conn, f"SELECT * FROM intents WHERE {_ROW}", (entry.device_id, entry.intent_id)).fetchone()
        now_is = entry_from_row(row)
        if not changed:
            same = (now_is.state, now_is.owner, now_is.attempt, now_is.tries)
            held = same == (EntryState.RUNNING, entry.owner, entry.attempt, entry.tries)
            return False, now_is if held and now_is.cancel_ask != entry.cancel_ask else None
        intents.record(conn, now_is, LedgerEvent.CANCEL, CANCELLED, now)
    return True, now_is


def answer_started(intents: SqlIntents, entry: LedgerEntry) -> bool:
    """Answer the cancel asked of `entry`, held here: its call had started (it finishes). False when the row
    is no longer so held (it finished meanwhile)."""
    where, params = _held(entry)
    with intents.transaction() as conn:
        text = f"UPDATE intents SET cancel_ask = ? WHERE {where}"
        return bool(intents.run(conn, text, (entry.cancel_ask + STARTED, *params)).rowcount)
