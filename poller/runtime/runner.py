"""One mapping at run time: poll a source, batch per lane, invoke, retry or bisect, dead-letter, commit.

Each lane (a Kafka partition) has its own task and processes one batch at a time, in order, so a
lane that retries never blocks another lane or another mapping. The checkpoint of an ordered
source advances only over completed records, and only after the on-failure destination confirmed
what it was given (SPEC section 6).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Collection, Sequence
from operator import attrgetter
from typing import Any

from poller.clock import Clock
from poller.config import Mapping
from poller.destinations import Destination
from poller.engine.batching import Batcher
from poller.engine.checkpoint import CommitTracker
from poller.engine.failure import failure_record
from poller.engine.outcome import InvocationError, Outcome, Succeeded, outcome_of
from poller.engine.records import MAX_PAYLOAD_BYTES, Batch, Record
from poller.engine.retry import (
    RECORD_AGE_EXCEEDED,
    RECORD_TOO_LARGE,
    Commit,
    Release,
    Retry,
    RetryPolicy,
    Split,
    hold_back,
    plan,
    screen,
)
from poller.errors import DestinationError, SourceError
from poller.observability.tracing import MappingInfo, Telemetry
from poller.runtime.function import FunctionRuntime
from poller.runtime.lane import Lane, first_of
from poller.runtime.status import MappingState
from poller.sources import Pausable, Releasing, Source

log = logging.getLogger(__name__)
_lane_of = attrgetter("lane")

RECONNECT_FIRST = 1.0
RECONNECT_MAX = 30.0


class MappingRunner:
    """Runs one mapping until :meth:`stop`; owns its source, its lanes and their tasks."""

    def __init__(
        self,
        name: str,
        mapping: Mapping,
        source: Source,
        function: FunctionRuntime,
        destination: Destination | None,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        telemetry: Telemetry | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.mapping = mapping
        self.source = source
        self.function = function
        self.destination = destination
        self.clock = clock or Clock()
        self.policy = policy or RetryPolicy.of(mapping, ordered=source.ordered)
        self._releasing = source if isinstance(source, Releasing) else None
        self.drain_timeout = drain_timeout
        self.telemetry = telemetry or Telemetry()
        self.info = MappingInfo.of(name, mapping)
        self.status = MappingState()
        self.stats = self.status.stats
        self._lanes: dict[str, Lane] = {}
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._revoking: set[str] = set()  # partitions being given up: late-polled records are dropped
        self._progress = asyncio.Event()  # a lane took a batch: buffer space freed
        self._trackers: dict[str, CommitTracker] = {}
        self._stopping = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        batch_size = mapping.effective_batch_size
        # Buffered records per lane before pausing it. Four batches, so that a lane resumed at half
        # of it still holds two full batches to work on while its next fetch is on the way.
        self._high_water = max(4 * batch_size, 500)
        self._low_water = self._high_water // 2

    # --- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop polling; in-flight batches finish within the drain timeout, then the rest is abandoned."""
        self._stopping.set()

    async def run(self) -> None:
        if not await self._start_source():
            return
        self.status.state = "Enabled"
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await self._poll_until_stopped()
                await self._drain()
        finally:
            self._tasks = None
            self.status.ready = False
            self.status.state = "Disabled"
            await self.source.close()
            log.info("mapping %s: stopped", self.name, extra={"mapping": self.name})

    async def _start_source(self) -> bool:
        """Connect, retrying retriable errors with backoff; False if stopped meanwhile."""
        delay = RECONNECT_FIRST
        self.status.state = "Connecting"
        while not self._stopping.is_set():
            try:
                await self.source.start(self)
                self.status.ready = True
                self.status.last_error = None
                return True
            except SourceError as exc:
                self.status.last_error = str(exc)
                if not exc.retriable:
                    self.status.state = "Failed"
                    raise
                log.warning(
                    "mapping %s: %s; retrying in %.0f s", self.name, exc, delay, extra={"mapping": self.name}
                )
            if await first_of(self._stopping, within=delay):
                break
            delay = min(RECONNECT_MAX, delay * 2)
        return False

    async def _poll_until_stopped(self) -> None:
        delay = RECONNECT_FIRST
        pausable = isinstance(self.source, Pausable)
        while not self._stopping.is_set():
            if not pausable and self._buffered() >= self._high_water:
                # A source that cannot pause single lanes is not polled while the lanes are full.
                self._progress.clear()
                await first_of(self._progress, self._stopping)
                continue
            try:
                records = await self.source.poll()
            except SourceError as exc:
                self.status.ready = False
                self.status.last_error = str(exc)
                if not exc.retriable:
                    raise
                log.warning("mapping %s: %s; polling again in %.0f s", self.name, exc, delay)
                await first_of(self._stopping, within=delay)
                delay = min(RECONNECT_MAX, delay * 2)
                continue
            delay = RECONNECT_FIRST
            self.status.ready = True
            if records:
                self._dispatch(records)

    async def _drain(self) -> None:
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.stop()
        waiting = [asyncio.ensure_future(lane.finished.wait()) for lane in lanes]
        if not waiting:
            return
        _, pending = await asyncio.wait(waiting, timeout=self.drain_timeout)
        for future in pending:
            future.cancel()
        if pending:
            log.warning(
                "mapping %s: %d lane(s) did not finish within the %.0f s drain timeout; abandoning them",
                self.name,
                len(pending),
                self.drain_timeout,
            )
            for lane in lanes:
                lane.revoked = True
            assert self._tasks is not None
            for task in self._lane_tasks.values():
                task.cancel()

    # --- lanes -----------------------------------------------------------------------------------

    def _buffered(self) -> int:
        return sum(len(lane.batcher) for lane in self._lanes.values())

    def _dispatch(self, records: Sequence[Record]) -> None:
        """Hand polled records to their lanes (opening new ones), track them for ordered commits,
        and pause the lanes that are now full. Sources return a lane's records together, so each
        run of one lane's records is handed over whole, not record by record."""
        self.stats.polled += len(records)
        now = time.monotonic()
        full: list[Lane] = []
        for name, run in itertools.groupby(records, _lane_of):
            mine = list(run)
            first = mine[0]
            if self._revoking and first.partition in self._revoking:
                continue
            lane = self._lanes.get(name) or self._open_lane(name, first.partition)
            if self.source.ordered:
                tracker = self._trackers.get(first.partition)
                if tracker is None:
                    tracker = self._trackers[first.partition] = CommitTracker()
                tracker.track(mine)
            lane.batcher.extend(mine, now)
            lane.wake()
            if not lane.paused and len(lane.batcher) >= self._high_water:
                lane.paused = True
                full.append(lane)
        if full and isinstance(self.source, Pausable):
            self.source.pause([lane.name for lane in full])

    def _open_lane(self, name: str, partition: str) -> Lane:
        lane = Lane(
            name,
            partition,
            Batcher(
                batch_size=self.mapping.effective_batch_size,
                window=self.mapping.effective_batching_window,
                max_bytes=MAX_PAYLOAD_BYTES,
            ),
        )
        self._lanes[name] = lane
        assert self._tasks is not None
        self._lane_tasks[name] = self._tasks.create_task(self._run_lane(lane), name=f"{self.name}:{name}")
        return lane

    async def _run_lane(self, lane: Lane) -> None:
        try:
            while (records := await lane.next_batch()) is not None:
                self._progress.set()
                if lane.paused and len(lane.batcher) <= self._low_water and isinstance(self.source, Pausable):
                    lane.paused = False
                    self.source.resume([lane.name])
                lane.released_groups.clear()
                await self._process(Batch(records, trace_id=secrets.token_hex(16)), lane)
        finally:
            lane.finished.set()

    async def partitions_revoked(self, partitions: Collection[str]) -> None:
        """LaneListener: let the lanes of revoked partitions finish their in-flight batch and commit,
        then drop them; nothing of these partitions commits afterwards."""
        gone = set(partitions)
        self._revoking |= gone
        closing = [lane for lane in self._lanes.values() if lane.partition in gone]
        for lane in closing:
            del self._lanes[lane.name]
            lane.stop()
        if closing:
            waiting = [asyncio.ensure_future(lane.finished.wait()) for lane in closing]
            _, pending = await asyncio.wait(waiting, timeout=self.function.config.timeout + 5.0)
            for future in pending:
                future.cancel()
        self._revoking -= gone
        for lane in closing:
            lane.revoked = True
            lane.batcher.clear()
            task = self._lane_tasks.pop(lane.name, None)
            if task is not None and not task.done():
                task.cancel()
        for partition in gone:
            self._trackers.pop(partition, None)
        if closing:
            log.info(
                "mapping %s: gave up %s", self.name, ",".join(sorted(gone)), extra={"mapping": self.name}
            )

    # --- one batch -------------------------------------------------------------------------------

    async def _process(self, batch: Batch, lane: Lane, *, parent: bool = False) -> bool:
        """Run a batch to its end: every record succeeded, dead-lettered or handed back to the
        broker, and committed. False if the lane stopped first: what did not finish is left
        uncommitted, to be read again. A bisected half runs as a nested call, so its span is a
        child of the span of the batch it was split from."""
        positions = (batch.records[0].position, batch.records[-1].position)
        with self.telemetry.batch(self.info, batch, positions, parent):
            current: Batch | None = batch
            while current is not None:
                current = await self._hold_back(current, lane)
                if current is None:
                    return True
                screened = screen(current, self.clock.now(), self.policy)
                for records, condition in (
                    (screened.expired, RECORD_AGE_EXCEEDED),
                    (screened.too_large, RECORD_TOO_LARGE),
                ):
                    if records:
                        error = InvocationError(condition, _GIVE_UP_REASONS[condition])
                        if not await self._give_up(current.derive(records), condition, error, lane):
                            return False
                if screened.batch is None:
                    return True
                current = screened.batch
                outcome = await self._invoke(current)
                retry: Batch | None = None
                for action in plan(current, outcome, self.policy, release=self._releasing is not None):
                    if isinstance(action, Commit):
                        await self._complete(action.records, lane)
                    elif isinstance(action, Release):
                        await self._release(action, current, outcome)
                        for record in action.records:
                            if record.group is not None:
                                lane.released_groups[record.group] = action.delay
                    elif lane.stopping.is_set():
                        return False  # draining or revoked: no more attempts
                    elif isinstance(action, Split):
                        self.stats.bisections += 1
                        self._log_batch(
                            logging.WARNING, current, "failed (%s); bisecting", _error_of(outcome)
                        )
                        return await self._process(action.left, lane, parent=True) and await self._process(
                            action.right, lane, parent=True
                        )
                    elif isinstance(action, Retry):
                        self.stats.retries += 1
                        self._log_batch(
                            logging.WARNING,
                            action.batch,
                            "failed (%s); retry %d in %.1f s",
                            _error_of(outcome),
                            action.batch.retries,
                            action.delay,
                        )
                        if not await self._sleep(action.delay, lane):
                            return False
                        retry = action.batch
                    elif not await self._give_up(action.batch, action.condition, action.error, lane):
                        return False
                current = retry
        return True

    async def _release(self, action: Release, batch: Batch, outcome: Any) -> None:
        assert self._releasing is not None
        self.stats.retries += 1
        self._log_batch(
            logging.WARNING,
            batch.derive(action.records),
            "failed (%s); handed back to the broker for a retry in %.1f s",
            _error_of(outcome),
            action.delay,
        )
        try:
            await self._releasing.release(action.records, action.delay)
        except SourceError as exc:
            # They come back on their own when the broker's lease on them ends.
            log.warning("mapping %s: %s", self.name, exc, extra={"mapping": self.name})

    async def _hold_back(self, batch: Batch, lane: Lane) -> Batch | None:
        """Hand back, uninvoked, the records whose group had a record handed back earlier in this
        batch, so that a group's order holds (SQS FIFO); return what is left to invoke."""
        kept, held = hold_back(batch, lane.released_groups.keys())
        if held:
            assert self._releasing is not None
            delay = max(lane.released_groups[record.group] for record in held if record.group is not None)
            self._log_batch(
                logging.INFO, batch.derive(held), "handed back after an earlier record of the same group"
            )
            try:
                await self._releasing.release(held, delay)
            except SourceError as exc:
                log.warning("mapping %s: %s", self.name, exc, extra={"mapping": self.name})
        return kept

    async def _invoke(self, batch: Batch) -> Outcome:
        batch.invocations += 1
        self.stats.invocations += 1
        self.stats.invoked += len(batch.records)
        self.stats.in_flight += 1
        try:
            with self.telemetry.attempt(self.info, batch) as attempt:
                result = await self.function.invoke(self.source.format.event(batch.records), fresh=True)
                attempt.outcome = outcome_of(
                    result,
                    report_batch_item_failures=self.mapping.report_batch_item_failures,
                    batch_keys=[record.item_key for record in batch.records],
                    item_key=self.source.format.item_key,
                )
        finally:
            self.stats.in_flight -= 1
        if isinstance(attempt.outcome, Succeeded):
            self.stats.succeeded += len(batch.records)
        else:
            self.stats.failed += len(batch.records)
        return attempt.outcome

    async def _give_up(self, batch: Batch, condition: str, error: InvocationError, lane: Lane) -> bool:
        """Hand the batch to the on-failure destination (retrying until it confirms), then commit.
        False if the lane stopped before the destination confirmed."""
        records = batch.records
        destination = self.mapping.on_failure_destination or "none"
        with self.telemetry.delivery(self.info, destination, batch, condition):
            delivered = await self._deliver(batch, condition, error, lane)
        if delivered:
            await self._complete(records, lane)
        return delivered

    async def _deliver(self, batch: Batch, condition: str, error: InvocationError, lane: Lane) -> bool:
        records = batch.records
        failure = failure_record(
            mapping=self.name,
            function_arn=self.function.arn,
            condition=condition,
            error=error,
            # Queues count earlier deliveries themselves: attempts made before a restart count too.
            invocations=batch.invocations + max(record.receive_count for record in records),
            source=self.source.format.describe(records),
            records=records,
            trace_id=batch.trace_id,
            now=self.clock.now(),
        )
        if self.destination is None:
            self.stats.dropped += len(records)
            self._log_batch(
                logging.ERROR,
                batch,
                "dropped after %s (no on-failure destination): %s",
                condition,
                error.message,
            )
        else:
            delay = RECONNECT_FIRST
            while True:
                try:
                    await self.destination.send(failure, records)
                    break
                except DestinationError as exc:
                    self._log_batch(
                        logging.WARNING,
                        batch,
                        "on-failure destination unavailable (%s); retrying in %.0f s",
                        exc,
                        delay,
                    )
                    if not await self._sleep(delay, lane):
                        return False
                    delay = min(RECONNECT_MAX, delay * 2)
            self.stats.dead_lettered += len(records)
            self._log_batch(
                logging.ERROR,
                batch,
                "sent to the on-failure destination after %s: %s",
                condition,
                error.message,
            )
        return True

    async def _complete(self, records: Sequence[Record], lane: Lane) -> None:
        """Records are done: commit them (queues) or the checkpoint they allow (streams)."""
        if lane.revoked or not records:
            return
        if self.source.ordered:
            # A lane of a stream reads one partition, whose records commit in order.
            tracker = self._trackers.get(lane.partition)
            last = tracker.complete(records) if tracker else None
            records = [last] if last is not None else []
        if records:
            try:
                await self.source.commit(records)
            except SourceError as exc:
                # A later commit covers these records; until then they may be delivered again.
                log.warning("mapping %s: %s", self.name, exc, extra={"mapping": self.name})

    async def _sleep(self, seconds: float, lane: Lane) -> bool:
        """Back off on the injected clock; False if the lane stopped meanwhile."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopper = asyncio.ensure_future(lane.stopping.wait())
        try:
            await asyncio.wait([sleeper, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()
        return not lane.stopping.is_set()

    def _log_batch(self, level: int, batch: Batch, message: str, *args: object) -> None:
        records = batch.records
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
            extra={"mapping": self.name, "batch_id": batch.batch_id, "trace_id": batch.trace_id},
        )


_GIVE_UP_REASONS = {
    RECORD_AGE_EXCEEDED: "record older than maximum_record_age_in_seconds",
    RECORD_TOO_LARGE: "record larger than the 6 MB invocation payload limit",
}


def _error_of(outcome: Any) -> str:
    error = getattr(outcome, "error", None)
    return f"{error.error_type}: {error.message}" if error is not None else "?"
