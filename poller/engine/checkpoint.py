"""Ordered commits: a partition's checkpoint passes a record only when every record before it is done.

Records of one partition may complete out of order (expired records given up before the rest of
their batch, several lanes of one Kinesis shard), but a checkpoint is a single position: it may
only advance over the contiguous prefix of completed records. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from poller.engine.records import Record

# Completed records are dropped from the front of the list only once this many have gathered
# (one list move per compaction instead of one pop per record).
_COMPACT_AFTER = 1024


class CommitTracker:
    def __init__(self) -> None:
        self._in_order: list[Record] = []
        self._head = 0  # records before it are completed and passed
        self._done: set[Record] = set()

    def __len__(self) -> int:
        return len(self._in_order) - self._head

    def track(self, records: Sequence[Record]) -> None:
        """Register records when they are read; records must be tracked in partition order."""
        self._in_order += records

    def complete(self, records: Sequence[Record]) -> Record | None:
        """Mark records done (succeeded or dead-lettered); return the last record the checkpoint may
        now pass, or None if it cannot advance yet."""
        if not records:
            return None
        head, count = self._head, len(records)
        # The common case, a whole batch completing in order: the records are the next ones
        # tracked (a list comparison, which tests identity first, since records compare by it).
        if not self._done and self._in_order[head : head + count] == list(records):
            self._advance(head + count)
            return records[-1]
        self._done.update(records)
        end = head
        while end < len(self._in_order) and self._in_order[end] in self._done:
            self._done.discard(self._in_order[end])
            end += 1
        if end == head:
            return None
        last = self._in_order[end - 1]
        self._advance(end)
        return last

    def _advance(self, head: int) -> None:
        if head >= _COMPACT_AFTER or head == len(self._in_order):
            del self._in_order[:head]
            head = 0
        self._head = head
