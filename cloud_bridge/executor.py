"""The executor: runs due ledger rows through their integrations, with bounded concurrency and retries.

A row is RUNNING in the ledger (committed) before its provider call, claimed by this executor (`owner`)
under a lease that it renews while the call lasts. A crash leaves the row RUNNING: a single-node store
puts it back in the queue at the next `start()`, a shared store lets the lease run out and any node's
executor claims it again. Either way it runs again with the same idempotency key: providers that honour
the key see it once; towards the others delivery is at least once.

Claimed ahead: each fill claims up to `AHEAD` times a pool's slots, the jobs running and rows that wait
for the next free slots (RUNNING too, under leases this executor renews). A slot that frees starts the
next of them at once, while the loop claims more, instead of waiting for a claim's commit
(bench/findings.md F23). They start in the order claimed, passing over a tenant already running its
cap; a stopping executor starts none of them and puts them back in the queue (`Ledger.unclaim`). An operator
may cancel one until it starts (`unstarted`; cloud_bridge.cancel_asks); a row claimed with a cancel asked
of it goes to `on_asked`, never to a slot. A job holds its slot from its start through its result's
commit, so at most the slots' number of calls can have reached a provider with no result recorded when a
node dies: the calls that may run twice. A pool whose provider answered "slow down" claims and starts no row
until the time it gave (provider_pause.py); its jobs running finish.

`use()` swaps the integrations (a config reload): new jobs and rows claimed ahead run on the new ones, a job
already running keeps the integration it started with, and one no longer in use closes after its last job.

Claimed while admitted (`offer`, `adopt`): a pool with free slots and nothing due waiting (as its last fill
found it, since the last admission woke us) offers its free slots to the next admission of a tenant it
runs; the ledger claims that batch's new rows in the admitting transaction (`Ledger.admit_claiming`),
and they start at once. At low rates this spares each intent a trip through the ledger's writer and a
commit between its admission and its provider call; under a backlog the pools are full and nothing is
offered. The reserved slots count as taken until `adopt` or `release`.

Tenants (`tenant_pools`): a row runs on its tenant's own integration of its kind when the tenant brings
one, else on the vendor's. Each integration's slots form a pool; a vendor pool's slots are shared
fairly between the tenants with work waiting (`fair_share`: weighted, capped), so one tenant's backlog
cannot take every slot. Fairness is per node: each node's executor shares its own slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from cloud_bridge.errors import BridgeError
from cloud_bridge.fair_share import FairRound, Shares
from cloud_bridge.integrations.base import Integration
from cloud_bridge.job_run import JobRun, Observe, ignore
from cloud_bridge.lease_renewal import LeaseRenewal
from cloud_bridge.ledger import DEFAULT_LEASE, ClaimOffer, Ledger, LedgerEntry, log_context
from cloud_bridge.outcome import RetryPolicy
from cloud_bridge.provider_pause import Pauses
from cloud_bridge.tenant_pools import VENDOR, Claims, Pool, Pools, Ready, rehomed
from intent_contract.codec import Ack
from intent_contract.logs import FailureEpisode

logger = logging.getLogger(__name__)

AHEAD = 2  # a pool holds up to this many times its slots in rows: those not running are claimed ahead


class Executor:
    """Claims due rows for the kinds it has integrations for and runs them; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        integrations: Mapping[str, Integration],
        *,
        on_final: Callable[[str, Ack], Awaitable[None]],
        max_attempts: int = 20,
        retry_base: float = 1.0,
        retry_cap: float = 300.0,
        max_rate_limited: int = 100,
        now: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        idle_poll: float = 1.0,
        stop_grace: float = 10.0,
        revoked: Callable[[str], bool] = lambda _device_id: False,
        owner: str = "",
        lease: float = DEFAULT_LEASE,
        observe: Observe = ignore,
        tenants: Mapping[str, Mapping[str, Integration]] | None = None,
        shares: Shares | None = None,
        orphan_grace: float = 0.0,
        on_asked: Callable[[LedgerEntry], None] = lambda _entry: None,
    ) -> None:
        self._ledger = ledger
        self._pools = Pools.build({})
        self._claims = Claims(ledger, owner=owner, lease=lease, now=now, idle_poll=idle_poll, orphan_grace=orphan_grace)
        self._running: dict[Pool, set[asyncio.Task[None]]] = {}
        self._ready: Ready = {}  # claimed ahead (RUNNING, leases renewed): a freed slot starts the next at once
        self._uses: dict[asyncio.Task[None], Integration] = {}
        self._retiring: list[Integration] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._idle: set[Pool] = set()  # pools whose last fill left slots free: nothing due waited
        self._reserved: dict[Pool, int] = {}  # slots offered to admissions under way
        self._pauses = Pauses()  # pools whose provider asked us to slow down (provider_pause.py)
        self._offers: dict[ClaimOffer, tuple[Pools, dict[Pool, int]]] = {}
        self._on_asked = on_asked
        self.use(integrations, tenants, shares)
        self._jobs = JobRun(
            ledger,
            on_final=on_final,
            retry_policy=RetryPolicy(max_attempts, retry_base, retry_cap, max_rate_limited),
            now=now,
            rand=rand,
            revoked=revoked,
            observe=observe,
            slowed=self._slowed,
        )
        self._now = now
        self._idle_poll = idle_poll
        self._stop_grace = stop_grace
        self._owner = owner
        self._lease = lease
        self._held: dict[asyncio.Task[None], LedgerEntry] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._leases = LeaseRenewal(ledger, lease, now)  # owed: the last renewal failed, no claim until one works
        self._reads = FailureEpisode(logger, "executor cannot read the ledger")
        self._stopping = False

    def use(
        self,
        integrations: Mapping[str, Integration],
        tenants: Mapping[str, Mapping[str, Integration]] | None = None,
        shares: Shares | None = None,
    ) -> None:
        """Run new jobs, and rows claimed ahead, on `integrations` (the vendor's, by kind) and `tenants`' own (by
        tenant, then kind), sharing the vendor's slots by `shares`; those replaced close once their jobs end."""
        pools = Pools.build(integrations, tenants, shares)  # raises before anything changes
        old = list(self._pools.integrations.values())
        self._pools, self._ready = pools, rehomed(self._ready, pools)
        self._idle.clear()
        for pool in pools.integrations:
            self._running.setdefault(pool, set())
            self._start_ready(pool)
        self._claims.woken()  # which rows wait, and for whom, may have changed
        current = [id(i) for i in pools.integrations.values()]
        for integration in old:
            if id(integration) not in current and not any(i is integration for i in self._retiring):
                self._retiring.append(integration)
        self._close_unused()

    def _close_unused(self) -> None:
        """Close every replaced integration that no running job uses any more."""
        in_use = [*self._uses.values()]
        in_use += [pools.integrations[pool] for pool, ready in self._ready.items() for _, pools in ready]
        for integration in list(self._retiring):
            if not any(used is integration for used in in_use):
                self._retiring.remove(integration)
                task = asyncio.get_running_loop().create_task(self._close(integration), name="close integration")
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(integration: Integration) -> None:
        try:
            await integration.aclose()
        except Exception:  # a close that fails leaks a connection pool, nothing else
            logger.exception("replaced integration %s did not close cleanly", integration.kind)

    @property
    def in_flight(self) -> int:
        """Jobs running now."""
        return sum(len(tasks) for tasks in self._running.values())

    async def start(self) -> None:
        """Put rows a crash left running back in the queue, then start claiming."""
        if self._loop_task is not None:
            raise RuntimeError("executor already started")
        await self._ledger.recover(self._now())
        self._stopping = False
        self._loop_task = asyncio.create_task(self._loop(), name="executor")
        self._renew_task = asyncio.create_task(self._renew_loop(), name="executor-leases")

    def wake(self) -> None:
        """Look for due rows now (call after admitting new rows)."""
        self._claims.woken()
        self._idle.clear()  # rows may wait now: no offers until a fill has looked
        self._wakeup.set()

    # -- slots offered to admissions ----------------------------------------------------------------

    def offer(self, tenant: str) -> ClaimOffer | None:
        """Reserve, for one admission of `tenant`'s batch, the free slots of the idle pools that run its rows
        (within its fair share of a vendor pool); None when there are none. Then `adopt` or `release` it."""
        if self._stopping or self._loop_task is None or not self._idle:
            return None
        pools = self._pools
        reserved: dict[Pool, int] = {}
        for pool in self._idle:
            if pools.pool_of(pool[0], tenant) == pool and (n := self._grantable(pools, pool, tenant)) > 0:
                reserved[pool] = n
        if not reserved:
            return None
        for pool, n in reserved.items():
            self._reserved[pool] = self._reserved.get(pool, 0) + n
        offer = ClaimOffer(self._owner, self._lease, {kind: n for (kind, _), n in reserved.items()})
        self._offers[offer] = (pools, reserved)
        return offer

    def _grantable(self, pools: Pools, pool: Pool, tenant: str) -> int:
        free = pools.slots[pool] - len(self._running.get(pool, ())) - self._reserved.get(pool, 0)
        if free <= 0 or pool[1] != VENDOR:
            return max(0, free)
        fair = FairRound(free, pools.slots[pool], self._held_by_tenant(pool), [tenant], pools.shares)
        return fair.next_grant().get(tenant, 0)

    def adopt(self, offer: ClaimOffer, entries: list[LedgerEntry]) -> None:
        """Run the rows an admission claimed into `offer` (on the integrations of the time of the offer, as a
        job that started before a reload), and give back the slots it left."""
        pools, _ = self._offers.get(offer, (self._pools, {}))
        self.release(offer)
        for entry in entries:
            pool = pools.pool_of(entry.kind, entry.tenant)
            if self._stopping or pool is None:  # running rows without a job: taken again once their lease ends
                logger.info("%s/%s claimed at admission but not started: the executor stops", entry.device_id,
                            entry.intent_id, extra=log_context(entry))  # fmt: skip
                continue
            self._start(pool, entry, pools.integrations[pool])

    def release(self, offer: ClaimOffer) -> None:
        """Give back the slots reserved for `offer` (its admission failed, or claimed fewer)."""
        _, reserved = self._offers.pop(offer, (None, {}))
        for pool, n in reserved.items():
            self._reserved[pool] -= n

    async def stop(self) -> None:
        """Stop claiming, give back the rows claimed ahead (`Ledger.unclaim`); give running jobs `stop_grace`
        seconds, then cancel them (they resume at start)."""
        self._stopping = True
        self._wakeup.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        left = [entry for ready in self._ready.values() for entry, _ in ready]
        self._ready.clear()
        try:  # as before their claim: a restart or a lease's end took each for a try (it may have reached the provider)
            await self._ledger.unclaim(left)
        except Exception:  # RUNNING without a job, as when the node dies: taken again at the next start or lease's end
            logger.exception("could not give back %d rows claimed ahead and not started", len(left))
        tasks = {t for tasks in self._running.values() for t in tasks}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._stop_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._renew_task is not None:
            self._renew_task.cancel()
            await asyncio.gather(self._renew_task, return_exceptions=True)
            self._renew_task = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def run_due(self) -> int:
        """Run every row that is due now to its end or next retry; returns how many jobs ran.

        For tests and one-shot tools; do not call it while the loop started by `start()` runs.
        """
        self._claims.woken()  # whatever was admitted since the last run is looked for
        total = 0
        while True:
            started, _ = await self._fill()
            total += started
            tasks = {t for tasks in self._running.values() for t in tasks}
            if not started and not tasks:
                return total
            if tasks:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)

    # -- the loop ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            try:
                _, idle_kinds = await self._fill()
                # With every slot busy, a finishing job wakes us; only free slots need the next due time
                # (asking on every pass scanned all queued rows, 11% of the bridge's time in a drain).
                delay = await self._idle_delay(idle_kinds)
            except BridgeError as exc:  # the store refuses (a full disk, an outage): a line at its start and end
                self._reads.failed(exc)
                delay = self._idle_poll
            except Exception:
                logger.exception("executor could not read the ledger; trying again in %.1fs", self._idle_poll)
                delay = self._idle_poll
            else:
                self._reads.worked()
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _fill(self) -> tuple[int, list[str]]:
        """Claim due rows up to each pool's free slots, fairly between tenants, and start them.

        Returns how many started, and the kinds whose every pool still has free slots (nothing more is
        due): only those may sleep until the next due time; a kind with a full or capped pool waits for
        a job to end.
        """
        if self._leases.owed and not await self._leases.renew(*self._holding()):
            return 0, []  # a claim first would take our own lapsed rows (lease_renewal.py)
        taken = 0
        idle: set[str] = set()
        busy: set[str] = set()
        pools = self._pools
        for pool in pools.integrations:
            self._start_ready(pool)
            held = AHEAD * pools.slots[pool]
            room = held - len(self._running[pool]) - len(self._ready.get(pool, ())) - self._reserved.get(pool, 0)
            if room <= 0 or self._stopping or self._pauses.paused(pool, self._now()):
                busy.add(pool[0])
                self._idle.discard(pool)
                continue
            at = time.monotonic()  # each row's lease runs from no earlier (lease_renewal.py)
            claimed, full = await self._claims.fill(pools, pool, room, self._held_by_tenant(pool), held)
            self._leases.claimed(claimed, at)
            (busy if full else idle).add(pool[0])
            if full:
                self._idle.discard(pool)
            elif self._pools is pools:  # not replaced by a reload meanwhile
                self._idle.add(pool)
            ready = self._ready.setdefault(pool, deque())
            for entry in claimed:
                if entry.cancel_ask and entry.cancel_pending:  # an operator's cancel waits for it: it ends so, unrun
                    self._on_asked(entry)
                else:
                    ready.append((entry, pools))
            self._start_ready(pool)
            taken += len(claimed)
        if not self._stopping:
            for entry in await self._claims.orphans(pools):
                detail = f"no integration for {entry.kind} is configured at the bridge"
                await self._jobs.end_unrun(entry, "no_integration", detail)
                taken += 1
        return taken, sorted(idle - busy)

    def unstarted(self, entry: LedgerEntry) -> bool | None:
        """An operator cancels `entry` (a row held here): True when it waited claimed ahead (it is taken out, it
        will not start), False when its job runs (its call started), None when neither (not held here)."""
        key = (entry.device_id, entry.intent_id, entry.attempt)
        for ready in self._ready.values():
            for item in ready:
                if (item[0].device_id, item[0].intent_id, item[0].attempt) == key:
                    ready.remove(item)
                    return True
        return False if any((e.device_id, e.intent_id, e.attempt) == key for e in self._held.values()) else None

    def _held_by_tenant(self, pool: Pool) -> dict[str, int]:
        """The pool's running jobs and rows claimed ahead, counted by tenant (what fills share out)."""
        held = self._running_by_tenant(pool)
        for entry, _ in self._ready.get(pool, ()):
            held[entry.tenant] = held.get(entry.tenant, 0) + 1
        return held

    def _running_by_tenant(self, pool: Pool) -> dict[str, int]:
        """The pool's running jobs (those holding slots), counted by tenant."""
        running: dict[str, int] = {}
        for task in self._running.get(pool, ()):
            running[self._held[task].tenant] = running.get(self._held[task].tenant, 0) + 1
        return running

    def _start_ready(self, pool: Pool) -> None:
        """Start rows claimed ahead for `pool` while it has free slots, in the order claimed, on the
        integrations of their claim; a row whose tenant runs as many jobs as its cap (`max_share` of a vendor
        pool's slots) waits for one of them to end, and rows behind it go first."""
        ready = self._ready.get(pool)
        if not ready or self._stopping or self._pauses.paused(pool, self._now()):
            return
        pools = self._pools if pool in self._pools.slots else ready[0][1]
        slots, running = pools.slots[pool], self._running[pool]
        tenants = self._running_by_tenant(pool)
        passed: list[tuple[LedgerEntry, Pools]] = []
        while ready and len(running) + self._reserved.get(pool, 0) < slots:
            entry, claimed_in = ready.popleft()
            if pool[1] == VENDOR:
                if tenants.get(entry.tenant, 0) >= pools.shares.of(entry.tenant).cap(slots):
                    passed.append((entry, claimed_in))
                    continue
                tenants[entry.tenant] = tenants.get(entry.tenant, 0) + 1
            self._start(pool, entry, claimed_in.integrations[pool], checked=not self._leases.sure(entry))
        ready.extendleft(reversed(passed))

    def _start(self, pool: Pool, entry: LedgerEntry, integration: Integration, *, checked: bool = False) -> None:
        """Run `entry` in a slot of `pool`; `checked`: once its lease is renewed (it may have run out: a stall)."""
        slots = self._running.setdefault(pool, set())
        job = self._run_held(entry, integration) if checked else self._jobs.run(entry, integration)
        task = asyncio.create_task(job, name=f"job {entry.intent_id}")
        slots.add(task)
        self._held[task] = entry
        self._uses[task] = integration
        task.add_done_callback(functools.partial(self._ended, pool))
        task.add_done_callback(self._release)

    def _slowed(self, entry: LedgerEntry, until: float) -> None:
        """A provider asked to slow down: start and claim no row of `entry`'s pool before `until` (provider_pause)."""
        if (pool := self._pools.pool_of(entry.kind, entry.tenant)) is not None:
            self._pauses.pause(pool, until)
            self._idle.discard(pool)  # nor offered to admissions

    def _ended(self, pool: Pool, task: asyncio.Task[None]) -> None:
        """A job has ended (its result committed, or not recordable): its slot starts the next row claimed
        ahead, and the loop claims more."""
        self._running[pool].discard(task)
        self._start_ready(pool)
        self._wakeup.set()

    async def _run_held(self, entry: LedgerEntry, integration: Integration) -> None:
        if await self._leases.hold(entry):
            await self._jobs.run(entry, integration)

    def _release(self, task: asyncio.Task[None]) -> None:
        if (entry := self._held.pop(task, None)) is not None:
            self._leases.forget(entry)
        if self._uses.pop(task, None) is not None and self._retiring:
            self._close_unused()

    async def _renew_loop(self) -> None:
        """Every third of a lease, extend the leases of the jobs still running, so no other node takes them."""
        while True:
            await asyncio.sleep(self._lease / 3)
            await self._leases.renew(*self._holding())

    def _holding(self) -> tuple[list[LedgerEntry], list[LedgerEntry]]:
        """The rows this executor holds: its jobs running, and the rows claimed ahead."""
        return [*self._held.values()], [entry for ready in self._ready.values() for entry, _ in ready]

    async def _idle_delay(self, kinds: list[str]) -> float:
        """How long to sleep: until the next row of `kinds` is due or a provider's pause ends, at most idle_poll."""
        due = await self._ledger.next_due(kinds) if kinds else None
        delay = self._idle_poll if due is None else max(0.0, min(self._idle_poll, due - self._now()))
        return self._pauses.wait(delay, self._now())
