"""Ordered commits: a partition's checkpoint passes a record only when every record before it is done.

Records of one partition may complete out of order (expired records given up before the rest of
their batch, several lanes of one Kinesis shard), but a checkpoint is a single position: it may
only advance over the contiguous prefix of completed records. Pure, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from poller.records import Record


class CommitTracker:
    def __init__(self) -> None:
        self._in_order: deque[Record] = deque()
        self._done: set[Record] = set()

    def __len__(self) -> int:
        return len(self._in_order)

    def track(self, record: Record) -> None:
        """Register a record when it is read; records must be tracked in partition order."""
        self._in_order.append(record)

    def complete(self, records: Iterable[Record]) -> Record | None:
        """Mark records done (succeeded or dead-lettered); return the last record the checkpoint may
        now pass, or None if it cannot advance yet."""
        self._done.update(records)
        last: Record | None = None
        while self._in_order and self._in_order[0] in self._done:
            last = self._in_order.popleft()
            self._done.discard(last)
        return last
