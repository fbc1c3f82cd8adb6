"""One mapping at run time: connect its source, poll, hand records to lanes, drain, close.

Each lane (a Kafka partition, a Kinesis shard or key bucket, a queue slot) has its own task and
processes one batch at a time, in order, through the :class:`~poller.runtime.processor.BatchProcessor`,
so a lane that retries never blocks another lane or another mapping. The runner owns every task of
the mapping, its source's background tasks included, in one TaskGroup: an unexpected error in any
of them stops the mapping at once, and stopping cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Collection, Sequence
from operator import attrgetter

from poller.clock import Clock, first_of
from poller.config import Mapping
from poller.destinations import Destination
from poller.engine.backoff import Backoff
from poller.engine.batching import Batcher
from poller.engine.checkpoint import CommitTracker
from poller.engine.records import MAX_PAYLOAD_BYTES, Batch, Record
from poller.engine.retry import RetryPolicy
from poller.errors import SourceError
from poller.observability.logs import set_mapping_context
from poller.observability.tracing import MappingInfo, Telemetry
from poller.runtime.function import FunctionRuntime
from poller.runtime.lane import Lane
from poller.runtime.processor import BatchProcessor, retry_policy
from poller.runtime.status import MappingStatus
from poller.runtime.window_store import WindowStore
from poller.runtime.windows import WindowKeeper
from poller.sources import Pausable, Source
from poller.tasks import BackgroundTasks

log = logging.getLogger(__name__)
_lane_of = attrgetter("lane")

# Waits between attempts to connect a source, or to poll one that failed (real time).
RECONNECT_FIRST, RECONNECT_MAX = 1.0, 30.0


class MappingRunner:
    """Runs one mapping until :meth:`stop`; owns its source, its lanes and their tasks.

    Also the source's :class:`~poller.sources.LaneListener`: a source that gives partitions up
    calls :meth:`partitions_revoked`."""

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
        window_store: WindowStore | None = None,
        status: MappingStatus | None = None,
    ) -> None:
        self.name = name
        self.mapping = mapping
        self.source = source
        self.drain_timeout = drain_timeout
        self.status = status or MappingStatus()
        self.info = MappingInfo.of(name, mapping, source)
        clock, telemetry = clock or Clock(), telemetry or Telemetry()
        policy = policy or retry_policy(mapping, ordered=source.ordered)
        self.processor = BatchProcessor(
            name,
            mapping,
            source,
            function,
            destination,
            policy=policy,
            clock=clock,
            telemetry=telemetry,
            info=self.info,
            counts=self.status.counts,
        )
        self.windows: WindowKeeper | None = None
        if mapping.tumbling_window_in_seconds is not None:
            assert window_store is not None, "a mapping with tumbling windows needs a window store"
            self.windows = WindowKeeper(
                name,
                mapping.tumbling_window_in_seconds,
                window_store,
                self.processor,
                clock=clock,
                policy=policy,
                telemetry=telemetry,
                info=self.info,
            )
        self._lanes: dict[str, Lane] = {}
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._revoking: set[str] = set()  # partitions being given up: late-polled records are dropped
        self._progress = asyncio.Event()  # a lane took a batch: buffer space freed
        self._trackers: dict[str, CommitTracker] = {}
        self._stopping = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        batch_size = mapping.effective_batch_size
        # Buffered records per lane before pausing it. Four batches, so that a lane resumed at half
        # of it still holds two full batches to work on while its next fetch is on the way.
        self._high_water = max(4 * batch_size, 500)
        self._low_water = self._high_water // 2

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def function(self) -> FunctionRuntime:
        """The function invoked; a reload may swap it (:meth:`swap_function`)."""
        return self.processor.function

    def swap_function(self, function: FunctionRuntime) -> None:
        """Invoke ``function`` from the next invocation on; those in flight finish on the old one."""
        self.processor.function = function

    def stop(self) -> None:
        """Stop polling; in-flight batches finish within the drain timeout, then the rest is abandoned."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (a runner runs once: to start again, make another)."""
        return self._stopping.is_set()

    async def run(self) -> None:
        """Connect, poll until :meth:`stop`, drain, close the source. Raises a non-retriable
        SourceError from the source (an unknown topic at start), and whatever a task of the
        mapping raised that nobody expected."""
        set_mapping_context(self.name)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                source_tasks = BackgroundTasks(group, f"{self.name} source")
                try:
                    if await self._start_source(source_tasks):
                        self.status.state = "Enabled"
                        await self._poll_until_stopped()
                        self.status.state = "Disabling"
                        await self._drain()
                finally:
                    # Inside the group, so that the group need not wait for the source's tasks.
                    self.status.ready = False
                    await self.source.close()
                    await source_tasks.close()
                    if self.windows is not None:
                        await self.windows.store.close()
        except BaseExceptionGroup as errors:
            # The mapping's error itself rather than a group of one.
            if len(errors.exceptions) == 1:
                raise errors.exceptions[0] from errors
            raise
        finally:
            self._group = None
            if self.status.state != "Failed":
                self.status.state = "Disabled"
            log.info("mapping %s: stopped", self.name)

    async def _start_source(self, tasks: BackgroundTasks) -> bool:
        """Connect, retrying retriable errors with backoff; False if stopped meanwhile."""
        backoff = Backoff(RECONNECT_FIRST, RECONNECT_MAX)
        self.status.state = "Connecting"
        while not self._stopping.is_set():
            try:
                if self.windows is not None:
                    await self.windows.store.open()
                await self.source.start(self, tasks)
            except SourceError as exc:
                self.status.last_error = str(exc)
                if not exc.retriable:
                    self.status.state = "Failed"
                    raise
                await tasks.close()  # what a failed start began
                if self.windows is not None:
                    await self.windows.store.close()
                delay = backoff.next()
                log.warning("mapping %s: %s; retrying in %.1f s", self.name, exc, delay)
                await first_of(self._stopping, within=delay)
                continue
            self.status.ready = True
            self.status.last_error = None
            return True
        return False

    async def _poll_until_stopped(self) -> None:
        backoff = Backoff(RECONNECT_FIRST, RECONNECT_MAX)
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
                    self.status.state = "Failed"
                    raise
                delay = backoff.next()
                log.warning("mapping %s: %s; polling again in %.1f s", self.name, exc, delay)
                await first_of(self._stopping, within=delay)
                continue
            backoff.reset()
            self.status.ready = True
            if records:
                self._dispatch(records)

    async def _drain(self) -> None:
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.stop()
        if not lanes:
            return
        pending = await _wait_finished(lanes, self.drain_timeout)
        if pending:
            log.warning(
                "mapping %s: %d lane(s) did not finish within the %.0f s drain timeout; abandoning them",
                self.name,
                len(pending),
                self.drain_timeout,
            )
            for lane in lanes:
                lane.revoked = True
            for task in self._lane_tasks.values():
                task.cancel()

    # --- intake: records to lanes ----------------------------------------------------------------

    def _buffered(self) -> int:
        return sum(len(lane.batcher) for lane in self._lanes.values())

    def _dispatch(self, records: Sequence[Record]) -> None:
        """Hand polled records to their lanes (opening new ones), track them for ordered commits,
        and pause the lanes that are now full. Sources return a lane's records together, so each
        run of one lane's records is handed over whole, not record by record."""
        self.status.counts.polled += len(records)
        now = time.monotonic()
        full: list[Lane] = []
        for name, run in itertools.groupby(records, _lane_of):
            mine = list(run)
            first = mine[0]
            if self._revoking and first.partition in self._revoking:
                continue
            lane = self._lanes.get(name) or self._open_lane(name, first.partition)
            if lane.tracker is not None:
                lane.tracker.track(mine)
            lane.batcher.extend(mine, now, filtered=self._mark_filtered(mine))
            lane.wake()
            if not lane.paused and len(lane.batcher) >= self._high_water:
                lane.paused = True
                full.append(lane)
        if full and isinstance(self.source, Pausable):
            self.source.pause([lane.name for lane in full])

    def _mark_filtered(self, records: list[Record]) -> int:
        """Mark the records that match none of the mapping's filters (SPEC section 14); how many.
        Marked as they are polled, so that batches are made of records that match (the others
        ride along to be committed uninvoked by the processor)."""
        filters = self.processor.filters
        field, count = self.source.format.filter_field, 0
        for record in records:
            if filters and not filters.matches_record(record.payload, field, data=record.data):
                record.filtered = True
                count += 1
            record.data = None  # only the payload is kept from here on
        return count

    def _open_lane(self, name: str, partition: str) -> Lane:
        tracker = None
        if self.source.ordered:
            tracker = self._trackers.get(partition)
            if tracker is None:
                tracker = self._trackers[partition] = CommitTracker()
        batcher = Batcher(
            batch_size=self.mapping.effective_batch_size,
            window=self.mapping.effective_batching_window,
            max_bytes=MAX_PAYLOAD_BYTES,
            max_records=self._high_water,  # with filtered records; the lane pauses at this many
        )
        lane = self._lanes[name] = Lane(name, partition, batcher, tracker)
        assert self._group is not None
        self._lane_tasks[name] = self._group.create_task(
            self._run_lane(lane), name=f"{self.name}: lane {name}"
        )
        return lane

    async def _run_lane(self, lane: Lane) -> None:
        windows = self.windows
        try:
            if windows is not None and not await windows.open(lane):
                return
            while (records := await lane.next_batch(windows.due(lane) if windows else None)) is not None:
                if not records:  # its window's end passed, or its shard ended, with nothing left to do
                    assert windows is not None
                    if lane.ended:
                        if lane.window is not None:
                            await windows.close(lane)
                        break
                    await windows.close_if_due(lane)
                    continue
                self._progress.set()
                if lane.paused and len(lane.batcher) <= self._low_water and isinstance(self.source, Pausable):
                    lane.paused = False
                    self.source.resume([lane.name])
                lane.handed_back_groups.clear()
                batch = Batch(records, trace_id=secrets.token_hex(16))
                if windows is not None:
                    await windows.process(batch, lane)
                else:
                    await self.processor.process(batch, lane)
        finally:
            if windows is not None:
                windows.forget(lane)
            lane.finished.set()

    def partitions_assigned(self, partitions: Collection[str]) -> None:
        """LaneListener: these partitions are this mapping's now. With tumbling windows their lanes
        open at once, so that a window resumed from the store closes on time even if no record
        of it is left to read."""
        if self.windows is None or self._group is None:
            return
        for partition in partitions:
            if partition not in self._lanes and partition not in self._revoking:
                self._open_lane(partition, partition)

    async def partitions_ended(self, partitions: Collection[str]) -> None:
        """LaneListener: these partitions were read to their end (a Kinesis shard after a reshard).
        With tumbling windows their lanes close their windows first, from their own tasks, once
        they have nothing else to do; then the partitions are given up as revoked ones are."""
        if self.windows is not None:
            ending = [lane for lane in self._lanes.values() if lane.partition in partitions]
            for lane in ending:
                lane.end()
            await _wait_finished(
                ending,
                self.function.config.timeout * (self.processor.policy.maximum_retry_attempts + 2) + 5.0,
            )
        await self.partitions_revoked(partitions)

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
            await _wait_finished(closing, self.function.config.timeout + 5.0)
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
            log.info("mapping %s: gave up %s", self.name, ",".join(sorted(gone)))


async def _wait_finished(lanes: Sequence[Lane], timeout: float) -> list[Lane]:  # noqa: ASYNC109
    """Wait up to ``timeout`` seconds for the lanes' tasks to finish; return those that did not."""
    waiting = {asyncio.ensure_future(lane.finished.wait()): lane for lane in lanes}
    _, pending = await asyncio.wait(waiting, timeout=timeout)
    for future in pending:
        future.cancel()
    return [waiting[future] for future in pending]
