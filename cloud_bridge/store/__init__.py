"""Every piece of bridge state behind one setting: ledger, registry, token replay cache, and signals
between nodes. `open_store(url, node=...)` builds the SQLite store (one node) or the PostgreSQL
store (several nodes); nothing else in the bridge names a backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cloud_bridge.errors import NoStoreError
from cloud_bridge.fleet import FleetStore
from cloud_bridge.intent_sql import PurgePace, SqlIntents
from cloud_bridge.ledger import Ledger
from cloud_bridge.own_threads import own_thread
from cloud_bridge.registry import Registry, revoked_in
from cloud_bridge.store.pg_deadline import DEFAULT_STORE_TIMEOUT
from cloud_bridge.store.url import StoreKind, StoreUrl
from cloud_bridge.tokens import DEFAULT_TOKENS_PER_DEVICE, ReplayCache


class Signals(Protocol):
    """Wake-ups between nodes sharing a store: a final result for a device, new work for the executors."""

    async def start(
        self, on_results: Callable[[str], None], on_work: Callable[[], None], on_cancel: Callable[[str], None] = ...
    ) -> None:
        """Start delivering: `on_results(device_id)` when another node finished a result of that device
        (or when signals may have been missed: then for every device, as `on_results("*")`);
        `on_cancel(device_id)` when an operator asked to cancel a running row of that device (or "*")."""

    async def stop(self) -> None:
        """Stop delivering."""


class NoSignals:
    """Signals of a single-node store: there is no other node to hear from."""

    async def start(
        self,
        on_results: Callable[[str], None],
        on_work: Callable[[], None],
        on_cancel: Callable[[str], None] = lambda _device_id: None,
    ) -> None:
        return None

    async def stop(self) -> None:
        return None


@dataclass(slots=True)
class Store:
    """The bridge's state; `open()` before use, `close()` after."""

    url: StoreUrl
    ledger: Ledger
    registry: Registry
    replay: ReplayCache
    signals: Signals
    # Applies pending schema migrations, returns the versions applied; `at_start=True` applies only
    # steps that are safe while other nodes run (store.migrations).
    migrate: Callable[[bool], list[int]]
    fleet: FleetStore  # device health, connect telemetry, diagnose requests (cloud_bridge.fleet)
    intents: SqlIntents  # operators' list, retry, cancel and purge (cloud_bridge.operator_api)
    # Whether the store was made before (a node ran there, or `db upgrade`, or an enrollment code was made), read
    # without making anything: an operator's command refuses a store that was not (`require_made`).
    made: Callable[[], bool]
    # SchemaError unless the schema is at the code's version; applies nothing (`for_operators`).
    check_schema: Callable[[], None]
    # `cloud-bridge db upgrade`: applies every pending step; one that is not online only while no node runs on the
    # store (a fresh heartbeat), or when forced (the argument).
    upgrade: Callable[[bool], list[int]]

    async def open(self, *, migrate: bool = True) -> None:
        """Migrate (what is safe at start) unless told not to, then open the registry, the fleet tables and the
        ledger."""
        if migrate:
            await own_thread(self.migrate, True)
        await own_thread(self.registry.open)
        await own_thread(self.fleet.open)
        await own_thread(self.intents.open)
        await self.ledger.open()

    async def close(self) -> None:
        await self.signals.stop()
        await self.ledger.close()
        await own_thread(self.fleet.close)
        await own_thread(self.registry.close)


def open_store(
    url: StoreUrl,
    *,
    node: str,
    tokens_per_device: int = DEFAULT_TOKENS_PER_DEVICE,
    timeout: float = DEFAULT_STORE_TIMEOUT,
    clock: Callable[[], float] = time.time,
) -> Store:
    """The store `url` names, not yet opened; `node` names this process in leases and signals. `clock` is the
    node's (a shared store keeps leases in its own time, and measures how far the node's is from it). `timeout`
    limits each use of a PostgreSQL connection (`[bridge] store_timeout`)."""
    if url.kind is StoreKind.SQLITE:
        # Imported here: the backends import store.migrations, and a process needs only one of them.
        from cloud_bridge.fleet_schema import FLEET_DB  # noqa: PLC0415
        from cloud_bridge.fleet_sql import sqlite_fleet  # noqa: PLC0415
        from cloud_bridge.ledger_sqlite import SqliteLedger  # noqa: PLC0415
        from cloud_bridge.ledger_sqlite_schema import check_file, migrate_file  # noqa: PLC0415
        from cloud_bridge.registry_sqlite import SqliteRegistry  # noqa: PLC0415
        from cloud_bridge.signals_sqlite import SqliteSignals, add_signal  # noqa: PLC0415
        from cloud_bridge.sqlite_calls import sqlite_transaction  # noqa: PLC0415
        from cloud_bridge.tokens import MemoryReplayCache  # noqa: PLC0415

        directory = url.directory
        ledger_path = directory / "ledger.db"
        registry = SqliteRegistry(directory / "registry.db")
        return Store(
            url,
            SqliteLedger(ledger_path),
            registry,
            MemoryReplayCache(per_device=tokens_per_device),
            SqliteSignals(ledger_path),
            lambda at_start: migrate_file(ledger_path, at_start=at_start),
            sqlite_fleet(directory / FLEET_DB),
            SqlIntents(
                sqlite_transaction(ledger_path, "ledger"),
                signal=add_signal,
                purge_pace=PurgePace(),
                revoked=revoked_in(registry),
            ),
            ledger_path.is_file,
            lambda: check_file(ledger_path),
            lambda force: migrate_file(ledger_path, at_start=False, force=force),
        )
    from cloud_bridge.store.pg import open_pg_store  # noqa: PLC0415

    return open_pg_store(url, node=node, tokens_per_device=tokens_per_device, timeout=timeout, clock=clock)


def require_made(store: Store) -> None:
    """NoStoreError unless `store` was made before: for the operators' commands, which read or change what is
    there. They used to make an empty store wherever a mistyped --data-dir (or the default one, relative to the
    working directory) or --store pointed, and answer from it: no devices, no intents, exit 0."""
    if not store.made():
        raise NoStoreError(
            f"no bridge store at {store.url}: check --data-dir, --store or [bridge] store"
            " (a node makes its store when it first starts; so does `cloud-bridge db upgrade`)"
        )


def for_operators(store: Store, *, make: bool = False) -> None:
    """Ready `store` for an operator's command, changing no schema: SchemaError unless it is at this code's
    version (`cloud-bridge db upgrade`, or a node's start, applies the steps). The command used to apply them as
    a node does at start, so a newer cloud-bridge's `devices ls` made the store newer than the nodes running on
    it, which then refused to start again. A store never made is NoStoreError, or made whole when `make`."""
    if make and not store.made():
        store.migrate(True)
        return
    require_made(store)
    store.check_schema()
