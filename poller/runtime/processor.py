"""One batch, from its first attempt to its end: attempt -> plan -> act -> deliver -> complete.

The :class:`BatchProcessor` decides nothing itself: before each attempt and after each outcome it
asks the planner (:mod:`poller.engine.retry`) what to do, and carries the actions out in order,
under the planner's draining rule. A batch ends when every record succeeded, was dead-lettered or
was handed back to the broker, and what completed is committed. The checkpoint of an ordered
source advances only over completed records, and only after the on-failure destination confirmed
what it was given (SPEC section 6).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from poller.clock import Clock
from poller.config import Mapping
from poller.destinations import Destination
from poller.engine.backoff import Backoff
from poller.engine.failure import failure_record
from poller.engine.outcome import Failed, InvocationError, Outcome, PartiallyFailed, Succeeded, outcome_of
from poller.engine.records import Batch, Record
from poller.engine.retry import (
    Action,
    Commit,
    GiveUp,
    Invoke,
    Release,
    Retry,
    RetryPolicy,
    Split,
    plan,
    plan_attempt,
)
from poller.errors import DestinationError, SourceError
from poller.observability.logs import batch_context
from poller.observability.tracing import BatchSpan, MappingInfo, Telemetry
from poller.runtime.function import FunctionRuntime
from poller.runtime.lane import Lane
from poller.runtime.status import MappingCounts
from poller.sources import Releasing, Source

log = logging.getLogger(__name__)

# Waits between attempts to deliver to an on-failure destination that is down.
DESTINATION_RETRY_FIRST, DESTINATION_RETRY_MAX = 1.0, 30.0


def retry_policy(mapping: Mapping, *, ordered: bool) -> RetryPolicy:
    """The retry policy a mapping's settings describe."""
    return RetryPolicy(
        maximum_retry_attempts=mapping.maximum_retry_attempts,
        maximum_record_age=mapping.maximum_record_age_in_seconds,
        bisect=mapping.bisect_batch_on_function_error,
        ordered=ordered,
    )


class WindowHooks(Protocol):
    """What the processor asks of a mapping's tumbling windows (:mod:`poller.runtime.windows`)."""

    def event_fields(self, lane: Lane) -> dict[str, Any]:
        """The window's keys of the lane's next event: window, state, where it comes from."""

    async def fold(self, lane: Lane, batch: Batch, outcome: Outcome) -> bool:
        """An invocation of the window ended: keep the state it returned (stored durably); False
        if the lane stopped before it could be stored."""


class BatchProcessor:
    """Carries batches of one mapping through the planner's actions; one call of :meth:`process`
    per batch, from the lane's own task."""

    def __init__(
        self,
        name: str,
        mapping: Mapping,
        source: Source,
        function: FunctionRuntime,
        destination: Destination | None,
        *,
        policy: RetryPolicy,
        clock: Clock,
        telemetry: Telemetry,
        info: MappingInfo,
        counts: MappingCounts,
    ) -> None:
        self.name = name
        self.mapping = mapping
        self.source = source
        self.function = function
        self.destination = destination
        self.policy = policy
        self.clock = clock
        self.telemetry = telemetry
        self.info = info
        self.counts = counts
        self._releasing = source if isinstance(source, Releasing) else None
        self.filters = mapping.filters  # compiled once, at start
        self.windows: WindowHooks | None = None  # a mapping with tumbling windows sets its keeper here

    async def process(self, batch: Batch, lane: Lane, *, parent: bool = False) -> bool:
        """Run a batch to its end. False if the lane stopped first: what did not finish is left
        uncommitted, to be read again. A bisected half runs as a nested call, so its span is a
        child of the span of the batch it was split from."""
        positions = (batch.records[0].position, batch.records[-1].position)
        with (
            self.telemetry.batch(self.info, self.source.format, batch, positions, parent) as span,
            batch_context(batch.batch_id, batch.trace_id),
        ):
            pending: Batch | None = batch
            if self.filters and not parent:
                pending = await self._filter(batch, lane, span)
            while pending is not None:
                attempt: Batch | None = None
                for action in plan_attempt(pending, self.clock.now(), self.policy, lane.handed_back_groups):
                    if not await self._carry_out(action, lane, pending):
                        return False
                    if isinstance(action, Invoke):
                        attempt = action.batch
                if attempt is None:
                    return True  # nothing left to invoke: all of it was handed back or given up
                outcome = await self._invoke(attempt, lane)
                # A window's new state is stored before what it folded in is committed.
                if self.windows is not None and not await self.windows.fold(lane, attempt, outcome):
                    return False
                pending = None
                for action in plan(attempt, outcome, self.policy, release=self._releasing is not None):
                    if not await self._carry_out(action, lane, attempt, outcome):
                        return False
                    if isinstance(action, Split):
                        return await self.process(action.left, lane, parent=True) and await self.process(
                            action.right, lane, parent=True
                        )
                    if isinstance(action, Retry):
                        pending = action.batch
        return True

    async def _filter(self, batch: Batch, lane: Lane, span: BatchSpan) -> Batch | None:
        """Commit, uninvoked, the records that match no filter (SPEC section 14; the runner marked
        them as they were polled); return the batch of those that do, if any. Only a batch as it
        was polled is filtered: its retries and halves hold records that matched."""
        matched = [record for record in batch.records if not record.filtered]
        if len(matched) == len(batch.records):
            return batch
        unmatched = [record for record in batch.records if record.filtered]
        self.counts.filtered += len(unmatched)
        span.filtered(len(unmatched))
        await self.complete(unmatched, lane)
        return batch.derive(matched) if matched else None

    async def _carry_out(
        self, action: Action, lane: Lane, batch: Batch, outcome: Outcome | None = None
    ) -> bool:
        """Carry out one action of the planner (an Invoke or a Split only passes the draining rule
        here: :meth:`process` runs them); False if the lane stopped and the batch must end here,
        with what is left uncommitted."""
        if lane.stopping.is_set() and not action.while_draining:
            return False  # draining or revoked: settle what was decided, start nothing new
        if isinstance(action, Commit):
            await self.complete(action.records, lane)
        elif isinstance(action, Release):
            await self._release(action, batch, outcome)
            for record in action.records:
                if record.group is not None:
                    lane.handed_back_groups[record.group] = action.delay
        elif isinstance(action, Retry):
            self.counts.retries += 1
            self._log_batch(
                logging.WARNING,
                action.batch,
                "failed (%s); retry %d in %.1f s",
                _error_of(outcome),
                action.batch.retries,
                action.delay,
            )
            return await self.clock.wait(action.delay, until=lane.stopping)
        elif isinstance(action, Split):
            self.counts.bisections += 1
            self._log_batch(logging.WARNING, batch, "failed (%s); bisecting", _error_of(outcome))
        elif isinstance(action, GiveUp):
            return await self.give_up(action.batch, action.condition, action.error, lane)
        return True

    async def _invoke(self, batch: Batch, lane: Lane) -> Outcome:
        counts = self.counts
        batch.invocations += 1
        counts.invocations += 1
        counts.invoked += len(batch.records)
        counts.in_flight += 1
        try:
            with self.telemetry.attempt(self.info, batch) as attempt:
                # A function in environments gets the event as JSON, serialised at once: its
                # records need no copies of their own (EventFormat.event).
                event = self.source.format.event(batch.records, own=self.function.pool is None)
                if self.windows is not None:
                    event.update(self.windows.event_fields(lane))
                result = await self.function.invoke(event, fresh=True, report=attempt)
                attempt.outcome = outcome_of(
                    result,
                    report_batch_item_failures=self.mapping.report_batch_item_failures,
                    batch_keys=[record.item_key for record in batch.records],
                    item_key=self.source.format.item_key,
                    window=self.windows is not None,
                )
        finally:
            counts.in_flight -= 1
        if isinstance(attempt.outcome, Succeeded):
            counts.succeeded += len(batch.records)
        else:
            counts.failed += len(batch.records)
        return attempt.outcome

    async def _release(self, action: Release, batch: Batch, outcome: Outcome | None) -> None:
        assert self._releasing is not None, "the planner hands records back only to a Releasing source"
        released = batch.derive(action.records)
        if action.held_back:
            self._log_batch(logging.INFO, released, "handed back after an earlier record of the same group")
        else:
            self.counts.retries += 1
            self._log_batch(
                logging.WARNING,
                released,
                "failed (%s); handed back to the broker for a retry in %.1f s",
                _error_of(outcome),
                action.delay,
            )
        try:
            await self._releasing.release(action.records, action.delay)
        except SourceError as exc:
            # They come back on their own when the broker's lease on them ends.
            log.warning("mapping %s: %s", self.name, exc)

    async def give_up(
        self,
        batch: Batch,
        condition: str,
        error: InvocationError,
        lane: Lane,
        *,
        source: dict[str, Any] | None = None,
    ) -> bool:
        """Hand the batch to the on-failure destination (retrying until it confirms), then commit.
        False if the lane stopped before the destination confirmed. ``source`` describes a batch
        of no records (a window's final invocation); otherwise the event format describes them."""
        destination = self.mapping.on_failure_destination or "none"
        with self.telemetry.delivery(self.info, destination, batch, condition):
            delivered = await self._deliver(batch, condition, error, lane, source)
        if delivered:
            await self.complete(batch.records, lane)
        return delivered

    async def _deliver(
        self, batch: Batch, condition: str, error: InvocationError, lane: Lane, source: dict[str, Any] | None
    ) -> bool:
        records = batch.records
        failure = failure_record(
            mapping=self.name,
            function_arn=self.function.arn,
            condition=condition,
            error=error,
            # Queues count earlier deliveries themselves: attempts made before a restart count too.
            invocations=batch.invocations + max((record.receive_count for record in records), default=0),
            source=source or self.source.format.describe(records),
            records=records,
            trace_id=batch.trace_id,
            now=self.clock.now(),
        )
        if self.destination is None:
            self.counts.dropped += len(records)
            self._log_batch(
                logging.ERROR,
                batch,
                "dropped after %s (no on-failure destination): %s",
                condition,
                error.message,
            )
            return True
        backoff = Backoff(DESTINATION_RETRY_FIRST, DESTINATION_RETRY_MAX)
        while True:
            try:
                await self.destination.send(failure, records, self.source.format)
                break
            except DestinationError as exc:
                delay = backoff.next()
                self._log_batch(
                    logging.WARNING,
                    batch,
                    "on-failure destination unavailable (%s); retrying in %.1f s",
                    exc,
                    delay,
                )
                if not await self.clock.wait(delay, until=lane.stopping):
                    return False
        self.counts.dead_lettered += len(records)
        self._log_batch(
            logging.ERROR, batch, "sent to the on-failure destination after %s: %s", condition, error.message
        )
        return True

    async def complete(self, records: Sequence[Record], lane: Lane) -> None:
        """Records are done: commit them (queues) or the checkpoint they allow (streams)."""
        if lane.revoked or not records:
            return
        if lane.tracker is not None:
            # A partition's records commit in order: only the checkpoint they now allow.
            last = lane.tracker.complete(records)
            records = [last] if last is not None else []
        if records:
            try:
                await self.source.commit(records)
            except SourceError as exc:
                # A later commit covers these records; until then they may be delivered again.
                log.warning("mapping %s: %s", self.name, exc)

    def _log_batch(self, level: int, batch: Batch, message: str, *args: object) -> None:
        records = batch.records
        if not records:  # a window's final invocation
            log.log(level, "mapping %s batch %d: %s", self.name, batch.batch_id, message % args)
            return
        log.log(
            level,
            "mapping %s batch %d (%s %s..%s, %d records): %s",
            self.name,
            batch.batch_id,
            batch.lane,
            records[0].position,
            records[-1].position,
            len(records),
            message % args,
            extra={"batch_id": batch.batch_id, "trace_id": batch.trace_id},
        )


def _error_of(outcome: Outcome | None) -> str:
    if isinstance(outcome, Failed | PartiallyFailed):
        return f"{outcome.error.error_type}: {outcome.error.message}"
    return "?"
