"""Which lane an SQS message goes to, and when the engine gets it. Pure bookkeeping, no I/O.

Lanes bound concurrency: the engine runs one batch at a time per lane, and a queue has
``maximum_concurrency`` of them (``<queue>#0``, ``<queue>#1``, ...).

- Standard queue: received messages fill one lane up to a batch within the batching window (so
  that receives of ten aggregate into larger batches), then the least busy lane is filled next.
- FIFO queue: each MessageGroupId maps to one lane, and a lane is given its next batch only once
  every message of its previous batch has settled. A group is therefore processed in order, and a
  group whose message was handed back cannot overtake it: its later messages, still held here, go
  back after it (:meth:`LaneAssignment.take_behind`).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Collection, Iterable, Sequence

from poller.engine.records import MAX_PAYLOAD_BYTES, Record


class LaneAssignment:
    """The lanes of one queue, and the messages each lane has been given and not settled."""

    def __init__(self, queue: str, concurrency: int, batch_size: int, window: float, *, fifo: bool) -> None:
        self.names = [f"{queue}#{index}" for index in range(concurrency)]
        self.fifo = fifo
        self.batch_size = batch_size
        self.window = window
        self._outstanding = dict.fromkeys(self.names, 0)  # per lane: dispatched, not yet settled
        self._held: dict[str, deque[Record]] = {name: deque() for name in self.names} if fifo else {}
        self._group_waits: dict[str, float] = {}  # FIFO: group -> when its handed-back message returns
        self._filling: str | None = None  # standard: the lane being filled, since when, how far
        self._filling_since = 0.0
        self._filled = 0

    def outstanding(self, lane: str) -> int:
        """Messages given to the engine on ``lane`` and not settled yet."""
        return self._outstanding[lane]

    def held(self, lane: str) -> list[Record]:
        """FIFO: messages received for ``lane`` and not given to the engine yet, in order."""
        return list(self._held.get(lane, ()))

    # --- receiving -------------------------------------------------------------------------------

    def lane_for_receive(self, count: int, now: float) -> str:
        """Standard queues: the lane for the ``count`` messages of one receive at monotonic time
        ``now``; they count as given to the engine at once."""
        if (
            self._filling is None
            or self._filled >= self.batch_size
            or now - self._filling_since >= self.window
        ):
            self._filling = min(self.names, key=self._outstanding.__getitem__)
            self._filling_since = now
            self._filled = 0
        self._filled += count
        self._outstanding[self._filling] += count
        return self._filling

    def lane_for_group(self, group: str) -> str:
        """FIFO: the lane of a MessageGroupId (stable: crc32, not ``hash``)."""
        return self.names[zlib.crc32(group.encode()) % len(self.names)]

    def hold(self, record: Record) -> None:
        """FIFO: queue a received record behind its lane until :meth:`dispatch` gives it out."""
        self._held[record.lane].append(record)

    def dispatch(self) -> list[Record]:
        """FIFO: the next batch of every idle lane (at most ``batch_size`` records and one
        payload, so that the lane's batch is exactly what was dispatched)."""
        dispatched: list[Record] = []
        for lane, held in self._held.items():
            if not held or self._outstanding[lane]:
                continue
            size = count = 0
            while held and count < self.batch_size:
                record = held[0]
                if count and size + record.size > MAX_PAYLOAD_BYTES:
                    break
                dispatched.append(held.popleft())
                size += record.size
                count += 1
            self._outstanding[lane] = count
        return dispatched

    # --- settling --------------------------------------------------------------------------------

    def settled(self, records: Iterable[Record]) -> None:
        """These dispatched records were deleted or handed back: their lanes have room again."""
        for record in records:
            self._outstanding[record.lane] -= 1

    def take_behind(self, records: Sequence[Record]) -> list[Record]:
        """FIFO: take out the held (undispatched) records of the groups of ``records``, which are
        being handed back: they must go back too, after them."""
        groups = {record.group for record in records if record.group is not None}
        behind: list[Record] = []
        if not groups:
            return behind
        for held in self._held.values():
            if any(record.group in groups for record in held):
                behind += [record for record in held if record.group in groups]
                kept = [record for record in held if record.group not in groups]
                held.clear()
                held.extend(kept)
        return behind

    def waits_for_group(self, records: Collection[Record], visibility: int, now: float) -> list[bool]:
        """FIFO: for records handed back together with a delay of ``visibility`` seconds, whether
        each waits out the delay (the first of its group: it holds the group, since SQS delivers
        nothing of a group while one of its messages is invisible) or may become visible at once
        (a later one of a group already waiting, which then follows it in order)."""
        self._group_waits = {group: until for group, until in self._group_waits.items() if until > now}
        waits: list[bool] = []
        for record in records:
            group = record.group or ""
            if group in self._group_waits:
                waits.append(False)
            else:
                waits.append(True)
                self._group_waits[group] = now + visibility
        return waits

    def clear(self) -> None:
        """Forget everything (the source closed)."""
        for held in self._held.values():
            held.clear()
        self._outstanding = dict.fromkeys(self.names, 0)
        self._group_waits.clear()
