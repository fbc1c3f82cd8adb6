"""Pure batching: when does a lane's buffer become a batch (SPEC section 6)?

A batch is ready when it holds ``batch_size`` records, when adding the next record would pass the
payload limit, or when ``window`` seconds have passed since its first record arrived. No I/O and
no clock of its own: the caller passes monotonic ``now`` values.

    batcher = Batcher(batch_size=100, window=0.5, max_bytes=MAX_PAYLOAD_BYTES)
    batcher.add(record, now)
    if batcher.ready(now):
        records = batcher.take()
    else:
        wait until batcher.deadline() or the next add
"""

from __future__ import annotations

from collections import deque

from poller.records import Record


class Batcher:
    def __init__(self, *, batch_size: int, window: float, max_bytes: int) -> None:
        self.batch_size = batch_size
        self.window = window
        self.max_bytes = max_bytes
        self._pending: deque[tuple[Record, float]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, record: Record, now: float) -> None:
        self._pending.append((record, now))
        self._bytes += record.size

    def ready(self, now: float) -> bool:
        if not self._pending:
            return False
        if len(self._pending) >= self.batch_size or self._bytes > self.max_bytes:
            return True
        return now >= self._pending[0][1] + self.window

    def deadline(self) -> float | None:
        """Monotonic time at which the current first record's window closes, if any record waits."""
        return self._pending[0][1] + self.window if self._pending else None

    def take(self) -> list[Record]:
        """Remove and return the next batch: at most batch_size records and max_bytes (never empty
        while records wait: a record larger than max_bytes on its own is a batch of one)."""
        records: list[Record] = []
        size = 0
        while self._pending and len(records) < self.batch_size:
            record = self._pending[0][0]
            if records and size + record.size > self.max_bytes:
                break
            self._pending.popleft()
            records.append(record)
            size += record.size
        self._bytes -= size
        return records

    def clear(self) -> list[Record]:
        """Drop everything pending (the lane was revoked or is shutting down) and return it."""
        dropped = [record for record, _ in self._pending]
        self._pending.clear()
        self._bytes = 0
        return dropped
