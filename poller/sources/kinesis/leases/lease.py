"""A shard's lease as the lease stores keep it, and the LeaseStore protocol every store implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Checkpoint values that are not sequence numbers: where a shard without one starts, and the mark
# of a closed shard that was read to its end (never read again).
TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
AT_TIMESTAMP = "AT_TIMESTAMP"
SHARD_END = "SHARD_END"
STARTING_POSITIONS = frozenset({TRIM_HORIZON, LATEST, AT_TIMESTAMP})


@dataclass(frozen=True, slots=True)
class Lease:
    """One shard's row in the lease store, as last read or written by this process.

    ``checkpoint`` is a sequence number (decimal string), a starting position for a shard with no
    checkpoint yet, or SHARD_END. ``owner`` is None while nobody holds the lease. ``pending_owner``
    is a process that asked for the lease: the owner finishes its in-flight batches, checkpoints and
    hands the lease over (graceful handoff), so that two processes never read a shard at once.
    """

    shard_id: str
    parent_shard_ids: tuple[str, ...] = ()
    checkpoint: str = TRIM_HORIZON
    owner: str | None = None
    counter: int = 0
    pending_owner: str | None = None

    @property
    def finished(self) -> bool:
        return self.checkpoint == SHARD_END


class LeaseStore(Protocol):
    """Durable leases of one mapping's shards.

    Every conditional operation takes the caller's last known version of the lease and returns the
    lease as stored after the write, or None when the condition failed because someone else changed
    the lease meanwhile. Operations that change the owner or are made by the owner raise the counter.
    All raise SourceError (retriable) when the store cannot be reached.
    """

    async def open(self) -> None:
        """Connect, create the table if it is missing. Raises SourceError."""

    async def close(self) -> None:
        """Release connections. Never raises."""

    async def list_leases(self) -> list[Lease]:
        """Every lease of this mapping's stream, read consistently."""

    async def create(self, lease: Lease) -> bool:
        """Add a lease for a newly found shard; False if one exists already."""

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        """Become the owner of a free or expired lease (or adopt one handed to ``owner``); the
        condition is that the counter is still ``lease.counter``. Clears any pending owner."""

    async def renew(self, lease: Lease) -> Lease | None:
        """Raise the counter of a lease this process owns (owner and counter unchanged)."""

    async def checkpoint(self, lease: Lease, checkpoint: str, *, free: bool = False) -> Lease | None:
        """Record a checkpoint of an owned lease; with ``free`` also give the lease up."""

    async def request_handoff(self, lease: Lease, owner: str) -> Lease | None:
        """Ask the current owner to hand the lease to ``owner``. Does not raise the counter, so the
        owner keeps renewing it until it hands it over."""

    async def hand_over(self, lease: Lease) -> Lease | None:
        """Give an owned lease to its pending owner."""

    async def free(self, lease: Lease) -> Lease | None:
        """Give an owned lease up: nobody owns it, anyone may take it at once."""
