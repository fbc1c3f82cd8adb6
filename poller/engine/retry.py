"""The retry and bisect planner (SPEC section 6): the one place that decides what happens to a batch.

Pure, no I/O. Before every attempt :func:`plan_attempt` says what to take out of the batch and what
to invoke; after it, :func:`plan` turns the outcome into what to do next. Both return ordered
actions that the batch processor carries out one by one.

Counting rule: with bisect on, a failed batch of more than one record is split in two and the
halves inherit its retry count; only the failure of a batch that can no longer be split counts
against ``maximum_retry_attempts``. Without bisect every failed attempt counts. Record age is
checked before every attempt. Backoff is 1 s doubling to 60 s with jitter.
See https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-errors.html

Draining rule: a lane that stops (the service drains, or its partition was revoked) still carries
out the actions that settle what was already decided, :class:`Commit` and :class:`Release`, but
none that starts new work: no :class:`Invoke`, :class:`Retry` or :class:`Split`, and no
:class:`GiveUp` (its delivery may wait for a destination). What it leaves is read again later.
Each action says so in ``while_draining``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import ClassVar

from poller.engine.backoff import Backoff
from poller.engine.outcome import Failed, InvocationError, Outcome, PartiallyFailed, Succeeded
from poller.engine.records import MAX_PAYLOAD_BYTES, Batch, Record

RETRY_ATTEMPTS_EXHAUSTED = "RetryAttemptsExhausted"
RECORD_AGE_EXCEEDED = "RecordAgeExceeded"
RECORD_TOO_LARGE = "RecordTooLarge"

_timestamp = attrgetter("timestamp")


def batch_backoff() -> Backoff:
    """The schedule of retries of failed batches: 1 s doubling to 60 s, with jitter."""
    return Backoff(first=1.0, maximum=60.0)


@dataclass(frozen=True)
class RetryPolicy:
    maximum_retry_attempts: int  # -1 = no limit
    maximum_record_age: float  # seconds; -1 = no limit
    bisect: bool
    ordered: bool  # streams keep order: a partial failure retries from the lowest failed record
    schedule: Backoff = field(default_factory=batch_backoff, compare=False)
    max_bytes: int = MAX_PAYLOAD_BYTES  # a record larger than this cannot be invoked at all

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (1-based)."""
        return self.schedule.delay(retry)


@dataclass(frozen=True)
class Invoke:
    """Invoke ``batch`` now."""

    batch: Batch
    while_draining: ClassVar[bool] = False


@dataclass(frozen=True)
class Commit:
    """These records succeeded: commit them (or the checkpoint they allow)."""

    records: list[Record]
    while_draining: ClassVar[bool] = True


@dataclass(frozen=True)
class Retry:
    """Invoke ``batch`` again, in process, after ``delay`` seconds."""

    batch: Batch
    delay: float
    while_draining: ClassVar[bool] = False


@dataclass(frozen=True)
class Release:
    """Hand ``records`` back to the broker, to be delivered again after ``delay`` seconds (queues:
    the broker then counts the attempt, which survives a restart, and nothing is held here).

    ``held_back``: the records were not invoked; a record of their group (an SQS FIFO
    MessageGroupId) went back earlier in the batch, and they must not be processed before it."""

    records: list[Record]
    delay: float
    held_back: bool = False
    while_draining: ClassVar[bool] = True


@dataclass(frozen=True)
class Split:
    """Bisect: invoke ``left``, then ``right``, each on its own."""

    left: Batch
    right: Batch
    while_draining: ClassVar[bool] = False


@dataclass(frozen=True)
class GiveUp:
    """Retries are over, or the records cannot be invoked at all: send ``batch`` to the on-failure
    destination, then commit it."""

    batch: Batch
    condition: str
    error: InvocationError
    while_draining: ClassVar[bool] = False


Action = Invoke | Commit | Retry | Release | Split | GiveUp

_GIVE_UP_REASONS = {
    RECORD_AGE_EXCEEDED: "record older than maximum_record_age_in_seconds",
    RECORD_TOO_LARGE: "record larger than the 6 MB invocation payload limit",
}


def plan_attempt(
    batch: Batch, now: float, policy: RetryPolicy, handed_back_groups: Mapping[str, float] | None = None
) -> list[Action]:
    """What to do before invoking ``batch`` at wall time ``now``, in order:

    1. records of a group of which a record was handed back earlier in this batch (the left half of
       a bisection; ``handed_back_groups`` maps each such group to its delay) go back too, uninvoked,
       after the same delay, so that the group keeps its order (SQS FIFO);
    2. records older than the maximum age are given up (RecordAgeExceeded), and records too large
       to be invoked even alone are given up (RecordTooLarge);
    3. what is left is invoked, if anything is.
    """
    actions: list[Action] = []
    records = batch.records
    if handed_back_groups:
        held = [record for record in records if record.group in handed_back_groups]
        if held:
            delay = max(handed_back_groups[record.group] for record in held if record.group is not None)
            actions.append(Release(held, delay, held_back=True))
            records = [record for record in records if record.group not in handed_back_groups]
            if not records:
                return actions
            batch = batch.derive(records)
    # This runs before every attempt, so first the common case, in two C-level passes: no record
    # is too old, and all of them together fit (then none is too large on its own).
    max_age, max_bytes = policy.maximum_record_age, policy.max_bytes
    fresh = max_age == -1 or now - min(map(_timestamp, records)) <= max_age
    if fresh and batch.size <= max_bytes:
        return [*actions, Invoke(batch)]
    expired: list[Record] = []
    too_large: list[Record] = []
    kept: list[Record] = []
    for record in records:
        if max_age != -1 and now - record.timestamp > max_age:
            expired.append(record)
        elif record.size > max_bytes:
            too_large.append(record)
        else:
            kept.append(record)
    for taken, condition in ((expired, RECORD_AGE_EXCEEDED), (too_large, RECORD_TOO_LARGE)):
        if taken:
            error = InvocationError(condition, _GIVE_UP_REASONS[condition])
            actions.append(GiveUp(batch.derive(taken), condition, error))
    if kept:
        actions.append(Invoke(batch if len(kept) == len(records) else batch.derive(kept)))
    return actions


def plan(batch: Batch, outcome: Outcome, policy: RetryPolicy, *, release: bool = False) -> list[Action]:
    """What to do after ``batch`` was invoked (its ``invocations`` already counts this one), as
    actions to carry out in order. With ``release`` (a queue that can redeliver later), retries
    are handed back to the broker and counted by it (``Record.receive_count``)."""
    if isinstance(outcome, Succeeded):
        return [Commit(batch.records)]
    if isinstance(outcome, PartiallyFailed):
        records = batch.records
        if policy.ordered:
            # Checkpoint just before the lowest failed record and retry from there on.
            cut = next(i for i, record in enumerate(records) if record.item_key in outcome.failed)
            done, rest = records[:cut], records[cut:]
        else:
            done = [record for record in records if record.item_key not in outcome.failed]
            rest = [record for record in records if record.item_key in outcome.failed]
        actions: list[Action] = [Commit(done)] if done else []
        return actions + _count_failure(batch.derive(rest), outcome.error, policy, release)
    assert isinstance(outcome, Failed)
    if policy.bisect and len(batch.records) > 1:
        middle = len(batch.records) // 2
        return [
            Split(
                batch.derive(batch.records[:middle], split=True),
                batch.derive(batch.records[middle:], split=True),
            )
        ]
    return _count_failure(batch, outcome.error, policy, release)


def _count_failure(batch: Batch, error: InvocationError, policy: RetryPolicy, release: bool) -> list[Action]:
    limit = policy.maximum_retry_attempts
    if release:
        # The broker counts each record's attempts; records may have been redelivered unequally.
        exhausted = [r for r in batch.records if limit != -1 and r.receive_count >= limit]
        again = [r for r in batch.records if not (limit != -1 and r.receive_count >= limit)]
        actions: list[Action] = []
        if exhausted:
            actions.append(GiveUp(batch.derive(exhausted), RETRY_ATTEMPTS_EXHAUSTED, error))
        if again:
            retry = max(r.receive_count for r in again) + 1
            actions.append(Release(again, policy.backoff(retry)))
        return actions
    if limit != -1 and batch.retries >= limit:
        return [GiveUp(batch, RETRY_ATTEMPTS_EXHAUSTED, error)]
    retries = batch.retries + 1
    return [Retry(batch.derive(batch.records, retries=retries), policy.backoff(retries))]
