"""A lane: the ordered stream of one partition's records, processed one batch at a time by its own task."""

from __future__ import annotations

import asyncio
import time

from poller.engine.batching import Batcher
from poller.engine.records import Record


class Lane:
    """The ordered stream of one lane's records and the task that processes them."""

    def __init__(self, name: str, partition: str, batcher: Batcher) -> None:
        self.name = name
        self.partition = partition
        self.batcher = batcher
        self.paused = False
        self.revoked = False  # once set, nothing of this lane commits any more
        # Groups (Record.group) of which a record was handed back during the current batch, with the
        # delay: their later records in the batch go back after them instead of being invoked.
        self.released_groups: dict[str, float] = {}
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


async def first_of(*events: asyncio.Event, within: float | None = None) -> bool:
    """Wait until any event is set or the timeout passes; True if an event was set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
