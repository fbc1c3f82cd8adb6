"""Tumbling windows at run time (SPEC section 15): each partition's open window, its state from one
invocation to the next, and the final invocation that closes it.

A lane (one partition: windows rule out ``parallelization_factor`` > 1) has at most one open window.
Its batches never span two windows: :meth:`WindowKeeper.process` cuts them where a later window
begins, and closes the earlier window first. A window also closes once its end has passed on the
clock and its lane has nothing left to do for :data:`CLOSE_GRACE` seconds (a consumer that is
behind keeps reading the window's records before that). Closing is one more invocation with no
records and ``isFinalInvokeForWindow: true``; once it succeeded (or, its retries over, went to the
on-failure destination) the window's state is dropped.

Every invocation's state is stored (:mod:`poller.runtime.window_store`) before the records folded
into it are committed, with the position of the last of them: after a restart or a rebalance the
window resumes with its state, and records read again that it already holds are skipped. A state
over 1 MB ends the window early (``isWindowTerminatedEarly``); a new window of the same bounds then
opens, empty, for the records that follow.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from poller.clock import Clock
from poller.engine.backoff import Backoff
from poller.engine.outcome import Failed, Outcome, PartiallyFailed, Succeeded, outcome_of
from poller.engine.records import Batch, Record, json_copy
from poller.engine.retry import RETRY_ATTEMPTS_EXHAUSTED, RetryPolicy
from poller.engine.windows import MAX_STATE_BYTES, OpenWindow, runs_by_window, state_size
from poller.errors import SourceError
from poller.observability.tracing import MappingInfo, Telemetry
from poller.runtime.lane import Lane
from poller.runtime.processor import BatchProcessor
from poller.runtime.window_store import WindowStore
from poller.sources.protocol import Windowed

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_GRACE = 1.5  # seconds past a window's end that its lane must be idle before it closes
RECHECK_INTERVAL = 1.0  # seconds at most between two looks at whether an idle lane's window ended
STORE_RETRY_FIRST, STORE_RETRY_MAX = 0.5, 30.0  # waits while the window store is unreachable


class WindowKeeper:
    """The tumbling windows of one mapping's lanes; the processor's :class:`WindowHooks`."""

    def __init__(
        self,
        name: str,
        length: int,
        store: WindowStore,
        processor: BatchProcessor,
        *,
        clock: Clock,
        policy: RetryPolicy,
        telemetry: Telemetry,
        info: MappingInfo,
    ) -> None:
        assert isinstance(processor.source.format, Windowed), "windows need a Kinesis or Kafka source"
        self.name = name
        self.length = length
        self.store = store
        self.processor = processor
        self.format: Windowed = processor.source.format
        self.clock = clock
        self.policy = policy
        self.telemetry = telemetry
        self.info = info
        self.lanes: dict[str, Lane] = {}  # lanes whose window this keeper tracks, by partition
        processor.windows = self

    # --- what the runner asks --------------------------------------------------------------------

    async def open(self, lane: Lane) -> bool:
        """Resume the lane's partition's open window from the store, if it has one; False if the
        lane stopped while the store was unreachable."""
        try:
            loaded = await self._with_store(lambda: self.store.load(lane.partition), lane)
        except _LaneStopped:
            return False
        lane.window = loaded
        self.lanes[lane.partition] = lane
        if loaded is not None:
            log.info(
                "mapping %s: %s resumes its window %s with %d bytes of state",
                self.name,
                lane.partition,
                loaded.window.describe()["start"],
                state_size(loaded.state),
            )
        return True

    def forget(self, lane: Lane) -> None:
        """The lane is gone (revoked, stopped): its window stays in the store for its next owner."""
        if self.lanes.get(lane.partition) is lane:
            del self.lanes[lane.partition]

    def due(self, lane: Lane) -> float | None:
        """The monotonic time at which to look whether the lane's open window must close: when it
        is due, but at least every :data:`RECHECK_INTERVAL` seconds, so that a step of the wall
        clock (or of a test's clock) is noticed."""
        if lane.window is None:
            return None
        wait = max(0.0, lane.window.window.end + CLOSE_GRACE - self.clock.now())
        return time.monotonic() + min(wait, RECHECK_INTERVAL)

    async def close_if_due(self, lane: Lane) -> bool:
        """Close the lane's window if its end has passed (its lane was idle since); False if the
        lane stopped first."""
        window = lane.window
        if window is None or self.clock.now() < window.window.end + CLOSE_GRACE:
            return True
        return await self.close(lane)

    async def process(self, batch: Batch, lane: Lane) -> bool:
        """Run a polled batch window by window; False if the lane stopped first."""
        current = lane.window.window if lane.window is not None else None
        for window, records in runs_by_window(batch.records, self.length, current):
            later = lane.window is not None and window.start > lane.window.window.start
            # A record of a later window arrived: the open one has all of its records.
            if later and not await self.close(lane):
                return False
            if lane.window is None:
                lane.window = OpenWindow(window)
            open_window = lane.window
            folded = [record for record in records if open_window.folded(record)]
            if folded:  # read again after a restart: in the state already
                await self.processor.complete(folded, lane)
                records = records[len(folded) :]
            if not records:
                continue
            if not await self.processor.process(batch.derive(records), lane):
                return False
            if open_window.terminated_early and not await self.close(lane):
                return False
        return True

    def open_windows(self) -> dict[str, OpenWindow]:
        """The open windows of the partitions this process reads, by partition."""
        return {
            partition: lane.window
            for partition, lane in sorted(self.lanes.items())
            if lane.window is not None
        }

    # --- what the processor asks (WindowHooks) ---------------------------------------------------

    def event_fields(self, lane: Lane, *, final: bool = False) -> dict[str, Any]:
        window = lane.window
        assert window is not None, "an invocation of a windowed lane without a window"
        return {
            "window": window.window.describe(),
            # A copy: a handler that changes its event's state in place and then fails must not
            # change what its retry gets.
            "state": json_copy(window.state),
            **self.format.window_fields(lane.partition),
            "isFinalInvokeForWindow": final,
            "isWindowTerminatedEarly": final and window.terminated_early,
        }

    async def fold(self, lane: Lane, batch: Batch, outcome: Outcome) -> bool:
        window = lane.window
        if window is None or not isinstance(outcome, Succeeded | PartiallyFailed) or outcome.state is None:
            return True
        window.state = outcome.state
        done = batch.records if isinstance(outcome, Succeeded) else _before_failures(batch.records, outcome)
        if done:
            window.through = done[-1].position
        if state_size(window.state) > MAX_STATE_BYTES:
            # Not stored: after a crash these records are folded again and end the window again.
            window.terminated_early = True
            log.warning(
                "mapping %s: the state of %s's window passed %d bytes; ending the window early",
                self.name,
                lane.partition,
                MAX_STATE_BYTES,
            )
            return True
        try:
            await self._with_store(lambda: self.store.save(lane.partition, window), lane)
        except _LaneStopped:
            return False  # stopped while the store was down: these records must stay uncommitted
        return True

    # --- closing ---------------------------------------------------------------------------------

    async def close(self, lane: Lane) -> bool:
        """The window's final invocation (retried as batches are; given up to the on-failure
        destination when retries are over), then its state is dropped. False if the lane stopped."""
        window = lane.window
        assert window is not None
        batch = Batch([], trace_id=secrets.token_hex(16))
        with self.telemetry.window_close(self.info, lane.partition, window.window.describe()):
            while True:
                if lane.stopping.is_set():
                    return False  # draining: the window stays stored, its next run closes it
                outcome = await self._final_invoke(lane, batch)
                if isinstance(outcome, Succeeded):
                    break
                assert isinstance(outcome, Failed | PartiallyFailed)
                limit = self.policy.maximum_retry_attempts
                if limit != -1 and batch.retries >= limit:
                    source = {
                        "type": "window",
                        **self.format.window_fields(lane.partition),
                        "window": window.window.describe(),
                    }
                    if not await self.processor.give_up(
                        batch, RETRY_ATTEMPTS_EXHAUSTED, outcome.error, lane, source=source
                    ):
                        return False
                    break
                batch.retries += 1
                delay = self.policy.backoff(batch.retries)
                log.warning(
                    "mapping %s: the final invocation of %s's window failed (%s: %s); retry %d in %.1f s",
                    self.name,
                    lane.partition,
                    outcome.error.error_type,
                    outcome.error.message,
                    batch.retries,
                    delay,
                )
                if not await self.clock.wait(delay, until=lane.stopping):
                    return False
        try:
            if window.terminated_early:
                # The records that follow fold into a new, empty window of the same bounds.
                reopened = OpenWindow(window.window, through=window.through)
                await self._with_store(lambda: self.store.save(lane.partition, reopened), lane)
                lane.window = reopened
            else:
                await self._with_store(lambda: self.store.drop(lane.partition), lane)
                lane.window = None
        except _LaneStopped:
            return False
        return True

    async def _final_invoke(self, lane: Lane, batch: Batch) -> Outcome:
        event = self.processor.source.format.event([])
        event.update(self.event_fields(lane, final=True))
        batch.invocations += 1
        self.processor.counts.invocations += 1
        with self.telemetry.attempt(self.info, batch) as attempt:
            result = await self.processor.function.invoke(event, fresh=True)
            attempt.outcome = outcome_of(
                result, report_batch_item_failures=False, batch_keys=[], item_key=lambda _: None, window=True
            )
        return attempt.outcome

    async def _with_store(self, call: Callable[[], Awaitable[T]], lane: Lane) -> T:
        """``await call()``, retried with backoff while the store is unreachable. Raises
        :class:`_LaneStopped` if the lane stopped first."""
        backoff = Backoff(STORE_RETRY_FIRST, STORE_RETRY_MAX)
        while True:
            try:
                return await call()
            except SourceError as exc:
                delay = backoff.next()
                log.warning("mapping %s: window store: %s; trying again in %.1f s", self.name, exc, delay)
                if not await self.clock.wait(delay, until=lane.stopping):
                    raise _LaneStopped from exc


class _LaneStopped(Exception):
    """The lane stopped while waiting for the window store."""


def _before_failures(records: list[Record], outcome: PartiallyFailed) -> list[Record]:
    """The records before the lowest failed one: what a stream commits of a partial failure."""
    for index, record in enumerate(records):
        if record.item_key in outcome.failed:
            return records[:index]
    return records


def window_group(mapping: str, reads: str) -> str:
    """The key of one mapping's windows over what it reads, in the window store."""
    return f"{mapping}/{reads}"
