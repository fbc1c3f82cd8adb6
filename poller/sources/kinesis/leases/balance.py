"""Pure lease decisions, as the Kinesis Client Library makes them: no I/O, no clock.

- :func:`new_leases`: the leases to create for shards that have none yet, and where each starts.
- :func:`workable`: the leases that may be read now (a child waits until its parents are read to
  their end).
- :func:`plan_leases`: which leases this process takes (free or expired ones first, up to its fair
  share) and which it asks a more loaded process to hand over.

https://docs.aws.amazon.com/streams/latest/dev/kcl-concepts.html
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from poller.sources.kinesis.leases.lease import LATEST, SHARD_END, TRIM_HORIZON, Lease


@dataclass(frozen=True, slots=True)
class Shard:
    """A shard as ListShards describes it: closed shards have an ending sequence number."""

    shard_id: str
    parent_shard_ids: tuple[str, ...] = ()
    closed: bool = False


@dataclass(frozen=True, slots=True)
class LeasePlan:
    take: tuple[Lease, ...] = ()  # free, expired, or handed over to this process
    steal: tuple[Lease, ...] = ()  # ask their owners to hand them over


def new_leases(shards: Sequence[Shard], existing: Mapping[str, Lease], starting_position: str) -> list[Lease]:
    """Leases for the shards in ``shards`` that ``existing`` lacks.

    A child of a shard that already had a lease starts at TRIM_HORIZON, so that nothing written
    after a split or merge is skipped. Otherwise a shard starts at the mapping's starting position,
    except that with LATEST a closed shard is marked read (it has nothing newer than "now").
    """
    created: list[Lease] = []
    for shard in shards:
        if shard.shard_id in existing:
            continue
        if any(parent in existing for parent in shard.parent_shard_ids):
            checkpoint = TRIM_HORIZON
        elif starting_position == LATEST and shard.closed:
            checkpoint = SHARD_END
        else:
            checkpoint = starting_position
        created.append(Lease(shard.shard_id, shard.parent_shard_ids, checkpoint))
    return created


def workable(leases: Mapping[str, Lease], listed: Collection[str]) -> list[Lease]:
    """The leases that may be read now: not finished, their shard still in the stream (``listed``),
    and every parent read to its end. A parent that left the stream (past its retention period)
    counts as read: nothing of it can be read any more."""

    def parent_done(parent: str) -> bool:
        if parent not in listed:
            return True
        lease = leases.get(parent)
        return lease is not None and lease.finished

    return [
        lease
        for lease in leases.values()
        if not lease.finished
        and lease.shard_id in listed
        and all(parent_done(parent) for parent in lease.parent_shard_ids)
    ]


def plan_leases(
    leases: Sequence[Lease],
    *,
    me: str,
    held: Collection[str],
    expired: Collection[str],
    max_steal: int,
    rng: random.Random,
) -> LeasePlan:
    """What ``me`` should take and steal among the workable ``leases``.

    ``held`` are the shards this process reads now, ``expired`` the leases whose owner has not
    renewed them for a lease duration. The fair share is ``ceil(leases / workers)`` over every
    owner of a live lease plus ``me``. Below it, this process takes free and expired leases first
    (a lease recorded as its own but not held here, such as one just handed over to it, is always
    taken back); only when there are none does it steal, from the most loaded owner, at most
    ``max_steal`` leases a round (and one when that owner is exactly at the fair share but this
    process is two or more below it, so that uneven counts even out).
    """
    counts: Counter[str] = Counter()
    adopt: list[Lease] = []
    free: list[Lease] = []
    for lease in leases:
        if lease.shard_id in held:
            counts[me] += 1
        elif lease.owner == me:
            adopt.append(lease)
            counts[me] += 1
        elif lease.owner is None or lease.shard_id in expired:
            free.append(lease)
        elif lease.pending_owner == me:
            counts[me] += 1  # asked for, on its way here
        else:
            counts[lease.owner] += 1
    workers = len(set(counts) | {me})
    target = math.ceil(len(leases) / workers)
    needed = target - counts[me]
    if needed <= 0:
        return LeasePlan(take=tuple(adopt))
    if free:
        rng.shuffle(free)  # replicas that start together then rarely race for the same lease
        return LeasePlan(take=tuple(adopt + free[:needed]))
    others = [(count, owner) for owner, count in counts.items() if owner != me]
    if not others:
        return LeasePlan(take=tuple(adopt))
    load, victim = max(others)
    if load > target:
        count = min(needed, load - target, max_steal)
    elif load == target and needed > 1:
        count = 1
    else:
        count = 0
    candidates = [lease for lease in leases if lease.owner == victim and lease.pending_owner is None]
    rng.shuffle(candidates)
    return LeasePlan(take=tuple(adopt), steal=tuple(candidates[:count]))
