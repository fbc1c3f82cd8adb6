"""Holding, renewing, taking and balancing shard leases; the same for every lease store.

A :class:`LeaseCoordinator` belongs to one Kinesis source. It tells the source, through a
:class:`ShardListener`, which shards to read (``acquired``), which to stop reading at once because
the lease is gone (``lost``), and which another process asked for (``handoff_requested``: the source
finishes that shard's in-flight batches, checkpoints, then calls :meth:`LeaseCoordinator.hand_over`).

Timing, with ``d`` the lease duration: held leases are renewed every ``d/4`` by a loop that wakes
every ``d/6``; a lease this process could not renew for ``d/2`` is dropped (``lost``) before any
other process may consider it expired, which takes ``d`` of seeing its counter unchanged. Expiry is
judged by watching counters on the local monotonic clock, as the KCL does, so clocks need not agree.
Free and expired leases are taken, and fair shares restored, every ``d/2``; the stream's shards are
listed every minute and whenever a shard was read to its end.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from poller.errors import SourceError
from poller.sources.kinesis.leases.balance import Shard, new_leases, plan_leases, workable
from poller.sources.kinesis.leases.lease import SHARD_END, Lease, LeaseStore

log = logging.getLogger(__name__)

T = TypeVar("T")

SHARD_SYNC_INTERVAL = 60.0


class ShardListener(Protocol):
    """What the coordinator tells its source. The callbacks must not block: they start work."""

    def acquired(self, lease: Lease) -> None:
        """Start reading the shard from ``lease.checkpoint``."""

    def lost(self, shard_id: str, reason: str) -> None:
        """Stop reading the shard now; its checkpoints will be refused."""

    def handoff_requested(self, shard_id: str) -> None:
        """Stop reading, let in-flight batches finish and commit, then call ``hand_over``."""


@dataclass
class _Held:
    lease: Lease
    renewed_at: float  # monotonic start of the last write that raised the counter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one write at a time: each needs the counter
    leaving: bool = False  # a handoff was requested and is under way


class LeaseCoordinator:
    def __init__(
        self,
        store: LeaseStore,
        *,
        name: str,
        owner: str,
        lease_duration: float,
        max_steal: int,
        starting_position: str,
        list_shards: Callable[[], Awaitable[list[Shard]]],
        listener: ShardListener,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.name = name
        self.owner = owner
        self.lease_duration = lease_duration
        self.max_steal = max_steal
        self.starting_position = starting_position
        self.list_shards = list_shards
        self.listener = listener
        self.rng = rng or random.Random()
        self.clock = clock
        # The last error of the lease store and of the shard listing; None once they work again.
        self._store_failure: str | None = None
        self._listing_failure: str | None = None
        self._held: dict[str, _Held] = {}
        self._seen: dict[str, tuple[int, float]] = {}  # shard -> (counter, when first seen)
        self._listed: dict[str, Shard] = {}
        self._last_sync = -float("inf")
        self._wake = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """List the shards and take a first share of leases. Raises SourceError."""
        await self._sync_shards()
        await self.take_round()

    async def renew_forever(self) -> None:
        """Renew held leases and drop those that could not be renewed in time; runs until cancelled."""
        while True:
            await asyncio.sleep(self.lease_duration / 6)
            try:
                await self.renew_due()
            except Exception as exc:  # a bug must not stop the renewals of the other leases
                log.exception("mapping %s: renewing leases failed: %s", self.name, exc)

    async def take_forever(self) -> None:
        """Take free, expired and fairly stolen leases, and list new shards; runs until cancelled."""
        while True:
            try:
                async with asyncio.timeout(self.lease_duration / 2):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.take_round()
            except SourceError as exc:
                self._failed(str(exc))
            except Exception as exc:
                log.exception("mapping %s: taking leases failed: %s", self.name, exc)

    def wake(self, *, sync_shards: bool = False) -> None:
        """Run a take round soon (after a shard ended: its children may be read now)."""
        if sync_shards:
            self._last_sync = -float("inf")
        self._wake.set()

    def held(self) -> list[str]:
        return sorted(self._held)

    async def free_all(self) -> None:
        """On shutdown, after the last commits: give every held lease up (to its pending owner if
        one asked), so that other processes take the shards at once. Never raises."""
        for shard_id, held in list(self._held.items()):
            async with held.lock:
                if self._held.get(shard_id) is not held:
                    continue
                del self._held[shard_id]
                try:
                    if held.lease.pending_owner:
                        await self._call(self.store.hand_over(held.lease))
                    else:
                        await self._call(self.store.free(held.lease))
                except SourceError as exc:
                    log.warning(
                        "mapping %s: could not free the lease of %s (it expires by itself): %s",
                        self.name,
                        shard_id,
                        exc,
                    )

    # --- writes by the owner ---------------------------------------------------------------------

    async def checkpoint(self, shard_id: str, sequence_number: str) -> bool:
        """Record that the shard is processed through ``sequence_number``. False if this process no
        longer holds the lease (the checkpoint is refused). Raises SourceError."""
        held = self._held.get(shard_id)
        if held is None:
            return False
        async with held.lock:
            if self._held.get(shard_id) is not held:
                return False
            current = held.lease.checkpoint
            if current.isdigit() and int(current) >= int(sequence_number):
                return True  # a later batch of another lane of this shard got here first
            started = self.clock()
            updated = await self._call(self.store.checkpoint(held.lease, sequence_number))
            return self._accept(shard_id, held, updated, started)

    async def finish(self, shard_id: str) -> bool:
        """Mark a shard read to its end (SHARD_END) and give up its lease, so its children can be
        read. False if the lease was lost first. Raises SourceError."""
        held = self._held.get(shard_id)
        if held is None:
            return False
        async with held.lock:
            if self._held.get(shard_id) is not held:
                return False
            updated = await self._call(self.store.checkpoint(held.lease, SHARD_END, free=True))
            del self._held[shard_id]
        self.wake(sync_shards=True)
        return updated is not None

    async def hand_over(self, shard_id: str) -> None:
        """Give the lease to the process that asked for it, after the source stopped the shard and
        committed what finished. Never raises: a lease that cannot be handed over expires."""
        held = self._held.get(shard_id)
        if held is None:
            return
        async with held.lock:
            if self._held.get(shard_id) is not held:
                return
            del self._held[shard_id]
            try:
                updated = await self._call(self.store.hand_over(held.lease))
            except SourceError as exc:
                log.warning(
                    "mapping %s: handing %s over failed (it will expire): %s", self.name, shard_id, exc
                )
                return
        if updated is not None:
            log.info("mapping %s: handed %s over to %s", self.name, shard_id, updated.owner)

    # --- renewals --------------------------------------------------------------------------------

    async def renew_due(self) -> None:
        """One pass of :meth:`renew_forever`: drop leases not renewed in time, renew those due."""
        now = self.clock()
        due: list[str] = []
        for shard_id, held in list(self._held.items()):
            if now - held.renewed_at >= self.lease_duration / 2:
                self._lose(
                    shard_id,
                    held,
                    f"could not renew the lease for {now - held.renewed_at:.1f} s "
                    f"(lease duration {self.lease_duration:g} s)",
                )
            elif now - held.renewed_at >= self.lease_duration / 4:
                due.append(shard_id)
        if due:
            await asyncio.gather(*(self._renew(shard_id) for shard_id in due))

    async def _renew(self, shard_id: str) -> None:
        held = self._held.get(shard_id)
        if held is None:
            return
        try:
            # The lock wait counts against the deadline too, so a slow checkpoint cannot delay the
            # next check of held leases past the point where they must be dropped.
            async with asyncio.timeout(self.lease_duration / 6), held.lock:
                if self._held.get(shard_id) is not held:
                    return
                started = self.clock()
                updated = await self.store.renew(held.lease)
                self._accept(shard_id, held, updated, started)
        except (SourceError, TimeoutError) as exc:
            self._failed(f"renewing the lease of {shard_id}: {exc or 'timed out'}")
            return
        self._store_failure = None

    def _accept(self, shard_id: str, held: _Held, updated: Lease | None, started: float) -> bool:
        """Adopt the result of an owner's write; a refused write means the lease is gone."""
        if updated is None:
            self._lose(shard_id, held, "another process took the lease")
            return False
        held.lease = updated
        held.renewed_at = started
        if updated.pending_owner and not held.leaving:
            held.leaving = True
            log.info(
                "mapping %s: %s asked for %s; finishing its in-flight batches, then handing it over",
                self.name,
                updated.pending_owner,
                shard_id,
            )
            self.listener.handoff_requested(shard_id)
        return True

    def _lose(self, shard_id: str, held: _Held, reason: str) -> None:
        if self._held.get(shard_id) is held:
            del self._held[shard_id]
            log.warning("mapping %s: lost the lease of %s: %s", self.name, shard_id, reason)
            self.listener.lost(shard_id, reason)

    # --- taking ----------------------------------------------------------------------------------

    async def take_round(self) -> None:
        """One round of :meth:`take_forever`: list shards if due, create leases for new ones, then
        take and steal per :func:`~poller.sources.kinesis.leases.balance.plan_leases`. Raises SourceError."""
        if self.clock() - self._last_sync >= SHARD_SYNC_INTERVAL:
            try:
                await self._sync_shards()
            except SourceError as exc:
                if not self._listed:
                    raise
                self._failed(f"listing shards: {exc}", listing=True)  # carry on with the last listing
        leases = {lease.shard_id: lease for lease in await self._call(self.store.list_leases())}
        for lease in new_leases(list(self._listed.values()), leases, self.starting_position):
            if await self._call(self.store.create(lease)):
                log.info("mapping %s: new shard %s starts at %s", self.name, lease.shard_id, lease.checkpoint)
                leases[lease.shard_id] = lease
        now = self.clock()
        self._observe(leases.values(), now)
        for shard_id, held in list(self._held.items()):
            if shard_id not in self._listed:
                # Past its retention period, or the stream was deleted: nothing left to read.
                self._lose(shard_id, held, "the shard is no longer in the stream")
                await self._call(self.store.free(held.lease))
        expired = {
            shard_id
            for shard_id, lease in leases.items()
            if lease.owner is not None
            and shard_id not in self._held
            and now - self._seen[shard_id][1] >= self.lease_duration
        }
        plan = plan_leases(
            workable(leases, self._listed),
            me=self.owner,
            held=self._held.keys(),
            expired=expired,
            max_steal=self.max_steal,
            rng=self.rng,
        )
        for lease in plan.take:
            await self._take(lease, expired=lease.shard_id in expired)
        for lease in plan.steal:
            if await self._call(self.store.request_handoff(lease, self.owner)) is not None:
                log.info("mapping %s: asked %s to hand %s over", self.name, lease.owner, lease.shard_id)
        self._store_failure = None

    async def _take(self, lease: Lease, *, expired: bool) -> None:
        started = self.clock()
        taken = await self._call(self.store.take(lease, self.owner))
        if taken is None:
            return  # another process was faster
        self._held[lease.shard_id] = _Held(taken, renewed_at=started)
        how = f"took over the expired lease of {lease.owner} for" if expired else "took the lease of"
        log.info("mapping %s: %s %s at checkpoint %s", self.name, how, lease.shard_id, taken.checkpoint)
        self.listener.acquired(taken)

    async def _sync_shards(self) -> None:
        shards = await self.list_shards()
        self._listed = {shard.shard_id: shard for shard in shards}
        self._last_sync = self.clock()
        self._listing_failure = None

    def _observe(self, leases: Iterable[Lease], now: float) -> None:
        seen: dict[str, tuple[int, float]] = {}
        for lease in leases:
            previous = self._seen.get(lease.shard_id)
            if previous is not None and previous[0] == lease.counter:
                seen[lease.shard_id] = previous
            else:
                seen[lease.shard_id] = (lease.counter, now)
        self._seen = seen

    async def _call(self, operation: Awaitable[T]) -> T:
        """A store call with a deadline: a hung connection must not stall the coordinator."""
        try:
            async with asyncio.timeout(self.lease_duration / 2):
                return await operation
        except TimeoutError:
            raise SourceError(
                f"the lease store did not answer within {self.lease_duration / 2:g} s"
            ) from None

    @property
    def failure(self) -> str | None:
        """Why the lease store or the shard listing does not work now, if one does not."""
        return self._store_failure or self._listing_failure

    def _failed(self, message: str, *, listing: bool = False) -> None:
        if message not in (self._store_failure, self._listing_failure):
            log.warning("mapping %s: %s", self.name, message)
        if listing:
            self._listing_failure = message
        else:
            self._store_failure = message
