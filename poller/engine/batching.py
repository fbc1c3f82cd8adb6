"""Pure batching: when does a lane's buffer become a batch (SPEC section 6)?

A batch is ready when it holds ``batch_size`` records, when adding the next record would pass the
payload limit, or when ``window`` seconds have passed since its first record arrived. No I/O and
no clock of its own: the caller passes monotonic ``now`` values.

Records that matched no filter (``Record.filtered``) count for neither the size nor the limit: they
ride in the batch to be committed uninvoked, so that a filter that drops most records also saves
most invocations (AWS: a matching record goes "in the next event"). ``max_records`` bounds a batch
with them, so that a lane of filtered records still makes batches before the poller pauses it.

    batcher = Batcher(batch_size=100, window=0.5, max_bytes=MAX_PAYLOAD_BYTES)
    batcher.extend(records, now)  # records that arrived together
    if batcher.ready(now):
        records = batcher.take()
    else:
        wait until batcher.deadline() or the next extend
"""

from __future__ import annotations

from operator import attrgetter

from poller.engine.records import Record

_size = attrgetter("size")


class Batcher:
    def __init__(
        self, *, batch_size: int, window: float, max_bytes: int, max_records: int | None = None
    ) -> None:
        self.batch_size = batch_size
        self.window = window
        self.max_bytes = max_bytes
        self.max_records = max(max_records or batch_size, batch_size)
        # Two parallel lists rather than a deque of (record, arrival) pairs: take() then moves a
        # whole batch with one slice instead of one pop per record, on the hot path of every source.
        self._records: list[Record] = []
        self._arrivals: list[float] = []
        self._bytes = 0  # of the records that are not filtered
        self._kept = 0  # records that are not filtered

    def __len__(self) -> int:
        return len(self._records)

    def extend(self, records: list[Record], now: float, *, filtered: int = 0) -> None:
        """Add records that arrived together, ``filtered`` of which are marked ``filtered``."""
        self._records += records
        self._arrivals += [now] * len(records)
        if filtered:
            records = [record for record in records if not record.filtered]
        self._kept += len(records)
        self._bytes += sum(map(_size, records))

    def ready(self, now: float) -> bool:
        if not self._records:
            return False
        if self._kept >= self.batch_size or self._bytes > self.max_bytes:
            return True
        if len(self._records) >= self.max_records:
            return True
        return now >= self._arrivals[0] + self.window

    def deadline(self) -> float | None:
        """Monotonic time at which the current first record's window closes, if any record waits."""
        return self._arrivals[0] + self.window if self._records else None

    def take(self) -> list[Record]:
        """Remove and return the next batch: at most batch_size records and max_bytes (never empty
        while records wait: a record larger than max_bytes on its own is a batch of one), not
        counting filtered ones, and at most max_records in all."""
        if self._kept == len(self._records) and self._bytes <= self.max_bytes:
            # Nothing filtered and everything waiting fits: one slice, no sizes added one by one.
            count = kept = min(len(self._records), self.batch_size)
            records = self._records[:count]
            size = self._bytes if count == len(self._records) else sum(map(_size, records))
        else:
            kept = size = count = 0
            for record in self._records[: self.max_records]:
                if not record.filtered:
                    if kept == self.batch_size or (kept and size + record.size > self.max_bytes):
                        break
                    kept += 1
                    size += record.size
                count += 1
            records = self._records[:count]
        del self._records[:count]
        del self._arrivals[:count]
        self._bytes -= size
        self._kept -= kept
        return records

    def clear(self) -> list[Record]:
        """Drop everything pending (the lane was revoked or is shutting down) and return it."""
        dropped = self._records
        self._records = []
        self._arrivals = []
        self._bytes = 0
        self._kept = 0
        return dropped
