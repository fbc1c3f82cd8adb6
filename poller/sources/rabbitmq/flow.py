"""Pure bookkeeping of the RabbitMQ source: which lane takes a delivery, which acks to send."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable


class AckTracker:
    """The deliveries of one channel that are not acknowledged yet, and the ack frames to send.

    Pure. Completed deliveries at the head of the delivery order are covered by one ``multiple``
    ack; one completed behind an unfinished delivery is acked on its own at once (never held).
    No tag is ever acked twice, and a ``multiple`` ack always names a tag still unacked, so the
    broker never sees an unknown delivery tag (which would close the channel).
    """

    def __init__(self) -> None:
        self._pending: deque[int] = deque()  # delivered, not covered by a multiple ack yet
        self._unsettled: set[int] = set()  # the same tags, less those completed
        self._sent: set[int] = set()  # completed and settled on their own, still in _pending

    def __len__(self) -> int:
        """Deliveries not settled with the broker yet."""
        return len(self._pending) - len(self._sent)

    def delivered(self, tag: int) -> None:
        if not self._pending or tag > self._pending[-1]:
            self._pending.append(tag)
        else:  # tags arrive in order; keep the order even if a caller does not
            self._pending.insert(bisect.bisect_left(self._pending, tag), tag)
        self._unsettled.add(tag)

    def settle(self, tags: Iterable[int], *, sent: bool = False) -> list[tuple[int, bool]]:
        """Mark deliveries complete; return the ``(tag, multiple)`` acks to send, in order.
        ``sent`` means the caller settled them with the broker itself (a nack). Tags that are
        unknown or already settled are ignored."""
        completed = [tag for tag in tags if tag in self._unsettled]
        self._unsettled.difference_update(completed)
        if sent:
            self._sent.update(completed)
        multiple: int | None = None
        while self._pending and self._pending[0] not in self._unsettled:
            tag = self._pending.popleft()
            if tag in self._sent:
                self._sent.discard(tag)
            else:
                multiple = tag
        frames = [] if multiple is None else [(multiple, True)]
        head = self._pending[0] if self._pending else None
        for tag in completed:
            if head is not None and tag > head and tag not in self._sent:
                frames.append((tag, False))
                self._sent.add(tag)
        return frames


class LaneAssigner:
    """Spreads messages over the lanes (one batch in flight each) so that batches fill up.

    Pure. Messages go to one lane until it was given ``batch_size`` of them or the batching
    window passed since it was chosen; then the lane with the fewest unsettled messages is chosen.
    Consecutive deliveries thus share a batch, which lets their acks combine.
    """

    def __init__(self, lanes: int, batch_size: int, window: float) -> None:
        self._outstanding = [0] * lanes
        self._current = 0
        self._filled = 0
        self._chosen_at = -math.inf
        self._batch_size = batch_size
        self._window = window

    def assign(self, now: float) -> int:
        """The lane for the next message; ``now`` is a monotonic time in seconds."""
        if self._filled >= self._batch_size or now - self._chosen_at > self._window:
            self._current = min(range(len(self._outstanding)), key=self._outstanding.__getitem__)
            self._filled = 0
            self._chosen_at = now
        self._filled += 1
        self._outstanding[self._current] += 1
        return self._current

    def settled(self, lane: int) -> None:
        self._outstanding[lane] -= 1

    def outstanding(self) -> list[int]:
        return list(self._outstanding)
