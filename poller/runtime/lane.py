"""A lane: the ordered stream of one lane's records, processed one batch at a time by its own task."""

from __future__ import annotations

import asyncio
import time

from poller.clock import first_of
from poller.engine.batching import Batcher
from poller.engine.checkpoint import CommitTracker
from poller.engine.records import Record


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
        self.stopping = asyncio.Event()
        self.finished = asyncio.Event()
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Records were added to the batcher: let next_batch look again."""
        self._wakeup.set()

    async def next_batch(self) -> list[Record] | None:
        """Wait until a batch is ready; None once the lane is stopping."""
        while not self.stopping.is_set():
            now = time.monotonic()
            if self.batcher.ready(now):
                return self.batcher.take()
            deadline = self.batcher.deadline()
            self._wakeup.clear()
            timeout = None if deadline is None else max(0.0, deadline - now)
            await first_of(self._wakeup, self.stopping, within=timeout)
        return None

    def stop(self) -> None:
        self.stopping.set()
