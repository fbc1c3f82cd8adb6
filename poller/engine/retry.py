"""Pure retry and bisect planning (SPEC section 6): an outcome in, a decision out, no I/O.

Counting rule: with bisect on, a failed batch of more than one record is split in two and the
halves inherit its retry count; only the failure of a batch that can no longer be split counts
against ``maximum_retry_attempts``. Without bisect every failed attempt counts. Record age is
checked before every attempt (:func:`screen`). Backoff is 1 s doubling to 60 s with jitter.
See https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-errors.html
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field
from operator import attrgetter

from poller.config import Mapping
from poller.engine.outcome import Failed, InvocationError, Outcome, PartiallyFailed, Succeeded
from poller.engine.records import MAX_PAYLOAD_BYTES, Batch, Record

RETRY_ATTEMPTS_EXHAUSTED = "RetryAttemptsExhausted"
RECORD_AGE_EXCEEDED = "RecordAgeExceeded"
RECORD_TOO_LARGE = "RecordTooLarge"

_timestamp = attrgetter("timestamp")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    maximum_retry_attempts: int  # -1 = no limit
    maximum_record_age: float  # seconds; -1 = no limit
    bisect: bool
    ordered: bool  # streams keep order: a partial failure retries from the lowest failed record
    rng: random.Random = field(default_factory=random.Random, compare=False)

    @classmethod
    def of(cls, mapping: Mapping, *, ordered: bool, rng: random.Random | None = None) -> RetryPolicy:
        return cls(
            maximum_retry_attempts=mapping.maximum_retry_attempts,
            maximum_record_age=mapping.maximum_record_age_in_seconds,
            bisect=mapping.bisect_batch_on_function_error,
            ordered=ordered,
            rng=rng or random.Random(),
        )

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (1-based): half fixed, half random ("equal jitter")."""
        base = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (retry - 1))
        return base / 2 + self.rng.random() * base / 2


@dataclass(frozen=True)
class Commit:
    """These records succeeded: commit them (or the checkpoint they allow)."""

    records: list[Record]


@dataclass(frozen=True)
class Retry:
    """Invoke ``batch`` again, in process, after ``delay`` seconds."""

    batch: Batch
    delay: float


@dataclass(frozen=True)
class Release:
    """Hand ``records`` back to the broker, to be delivered again after ``delay`` seconds with their
    attempt count raised (queues: the count then survives a restart, and nothing is held)."""

    records: list[Record]
    delay: float


@dataclass(frozen=True)
class Split:
    """Bisect: invoke ``left``, then ``right``, each on its own."""

    left: Batch
    right: Batch


@dataclass(frozen=True)
class GiveUp:
    """Retries are over: send ``batch`` to the on-failure destination, then commit it."""

    batch: Batch
    condition: str
    error: InvocationError


Action = Commit | Retry | Release | Split | GiveUp


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


def hold_back(batch: Batch, groups: Collection[str]) -> tuple[Batch | None, list[Record]]:
    """Take out of ``batch`` the records of ``groups``: groups of which a record was handed back to
    the broker earlier in the same batch (the left half of a bisection). They must not be processed
    before it, so they go back too. Returns what is left to invoke, if anything, and what was taken."""
    if not groups:
        return batch, []
    held = [record for record in batch.records if record.group in groups]
    if not held:
        return batch, []
    kept = [record for record in batch.records if record.group not in groups]
    return (batch.derive(kept) if kept else None), held


@dataclass(frozen=True)
class Screened:
    """A batch checked before an attempt: what may be invoked, and what must go to the destination."""

    batch: Batch | None
    expired: list[Record]
    too_large: list[Record]


def screen(batch: Batch, now: float, policy: RetryPolicy, max_bytes: int = MAX_PAYLOAD_BYTES) -> Screened:
    """Take out records older than the maximum age and records too large to invoke on their own."""
    records, max_age = batch.records, policy.maximum_record_age
    # This runs before every attempt, so first the common case, in two C-level passes: no record
    # is too old, and all of them together fit (then none is too large on its own).
    fresh = max_age == -1 or now - min(map(_timestamp, records)) <= max_age
    if fresh and batch.size <= max_bytes:
        return Screened(batch, [], [])
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
    if not expired and not too_large:
        return Screened(batch, [], [])
    return Screened(batch.derive(kept) if kept else None, expired, too_large)
