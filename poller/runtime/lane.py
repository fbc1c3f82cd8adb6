"""A lane: the ordered stream of one lane's records, processed one batch at a time by its own task."""

from __future__ import annotations

import asyncio
import time

from poller.clock import first_of
from poller.engine.batching import Batcher
from poller.engine.checkpoint import CommitTracker
from poller.engine.records import Record
from poller.engine.windows import OpenWindow


class Lane:
    """The records of one lane (``Record.lane``) waiting in its batcher, and the state of the task
    that processes them. ``tracker`` is the ordered-commit tracker of the lane's partition, shared
    by every lane of that partition (Kinesis with ``parallelization_factor`` > 1); None for queues."""

    def __init__(self, name: str, partition: str, batcher: Batcher, tracker: CommitTracker | None) -> None:
        self.name = name
        self.partition = partition
        self.batcher = batcher
        self.tracker = tracker
        self.paused = False
        self.revoked = False  # once set, nothing of this lane commits any more
        # Groups (Record.group) of which a record was handed back during the current batch, with the
        # delay: their later records in the batch go back after them instead of being invoked.
        self.handed_back_groups: dict[str, float] = {}
        self.window: OpenWindow | None = None  # with tumbling windows: the lane's open window
        self.stopping = asyncio.Event()
        self.ended = False  # its partition was read to its end: once idle, the lane finishes
        self.finished = asyncio.Event()
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Records were added to the batcher: let next_batch look again."""
        self._wakeup.set()

    async def next_batch(self, until: float | None = None) -> list[Record] | None:
        """Wait until a batch is ready; None once the lane is stopping. With ``until`` (a monotonic
        time), an empty list once it has passed with no batch ready."""
        while not self.stopping.is_set():
            now = time.monotonic()
            if self.batcher.ready(now) or (self.ended and len(self.batcher)):
                return self.batcher.take()
            if self.ended or (until is not None and now >= until):
                return []
            deadline = min((d for d in (self.batcher.deadline(), until) if d is not None), default=None)
            self._wakeup.clear()
            timeout = None if deadline is None else max(0.0, deadline - now)
            await first_of(self._wakeup, self.stopping, within=timeout)
        return None

    def stop(self) -> None:
        self.stopping.set()

    def end(self) -> None:
        """The partition was read to its end: next_batch returns an empty list once nothing is left."""
        self.ended = True
        self._wakeup.set()
