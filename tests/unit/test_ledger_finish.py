"""Finishes that wait together go to one store operation; every caller gets its own ack, or the operation's
error, whenever it fails (cloud_bridge/ledger_finish.py)."""

from __future__ import annotations

import asyncio

import pytest

from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_finish import Finish, JoinedFinishes, final_state
from cloud_bridge.ledger_states import EntryState
from intent_contract.codec import Ack, AckState

NOW = 1_800_000_000.0


def finish(intent_id: str, state: EntryState = EntryState.DELIVERED) -> Finish:
    entry = LedgerEntry("dev-1", "acme", intent_id, "app", "email.send", {}, 2, 0, 0, None, EntryState.RUNNING)
    return Finish(entry, state, f"code-{intent_id}", "", NOW, "smtp", 0.1)


class Store:
    """A store operation: waits for `go` (the writer busy with another group), then takes the finishes."""

    def __init__(self, fail: BaseException | None = None, *, before_take: bool = False) -> None:
        self.go = asyncio.Event()
        self.taken: list[list[str]] = []
        self.fail, self.before_take = fail, before_take

    async def operation(self, take: object) -> list[Ack]:
        await self.go.wait()
        if self.fail is not None and self.before_take:
            raise self.fail
        assert callable(take)
        finishes: list[Finish] = take()
        self.taken.append([f.entry.intent_id for f in finishes])
        if self.fail is not None:
            raise self.fail
        return [f.ack() for f in finishes]


async def test_finishes_that_wait_together_share_one_operation_and_each_gets_its_own_ack() -> None:
    store = Store()
    joined = JoinedFinishes(store.operation)
    first = [asyncio.create_task(joined.finish(finish(i))) for i in ("a", "b", "c")]
    await asyncio.sleep(0.01)
    store.go.set()
    acks = await asyncio.gather(*first)
    assert [(a.id, a.state, a.code, a.attempt) for a in acks] == [
        ("a", AckState.DELIVERED, "code-a", 2),
        ("b", AckState.DELIVERED, "code-b", 2),
        ("c", AckState.DELIVERED, "code-c", 2),
    ]
    later = await joined.finish(finish("d", EntryState.FAILED))  # after the take: an operation of its own
    assert (later.id, later.state) == ("d", AckState.FAILED)
    assert store.taken == [["a", "b", "c"], ["d"]]


@pytest.mark.parametrize("before_take", [False, True], ids=["after-take", "before-take"])
async def test_a_failed_operation_fails_every_finish_in_it(before_take: bool) -> None:
    """Also when it fails before it ran (the store closed): nobody is left waiting."""
    store = Store(RuntimeError("ledger is not open"), before_take=before_take)
    joined = JoinedFinishes(store.operation)
    tasks = [asyncio.create_task(joined.finish(finish(i))) for i in ("a", "b")]
    await asyncio.sleep(0.01)
    store.go.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert [str(r) for r in results] == ["ledger is not open", "ledger is not open"]
    store.fail = None
    assert (await joined.finish(finish("c"))).id == "c"  # the next operation takes only its own


async def test_a_caller_that_stops_waiting_does_not_break_the_others() -> None:
    store = Store()
    joined = JoinedFinishes(store.operation)
    gave_up = asyncio.create_task(joined.finish(finish("a")))
    waits = asyncio.create_task(joined.finish(finish("b")))
    await asyncio.sleep(0.01)
    gave_up.cancel()
    store.go.set()
    assert (await asyncio.wait_for(waits, 5)).id == "b"
    assert store.taken == [["a", "b"]]  # its finish is recorded all the same


def test_only_final_states_end_a_job() -> None:
    assert final_state(EntryState.EXPIRED) is EntryState.EXPIRED
    with pytest.raises(ValueError, match="final state"):
        final_state(EntryState.RUNNING)
