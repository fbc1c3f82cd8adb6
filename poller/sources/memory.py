"""An in-memory broker behind the Source protocol, for tests of the engine's orchestration.

:class:`MemoryStream` behaves like a stream (Kafka, Kinesis): ordered partitions read one lane per
partition, a checkpoint per partition, lanes that pause, partitions that can be revoked as in a
rebalance. :class:`MemoryQueue` behaves like a queue (SQS, RabbitMQ): unordered, every completed
record committed, and records handed back (``release``) come back with their receive count raised.
Both can be told to fail: at start, at the next polls, or in a background task. Nothing here is
used by ``poller run``; the real brokers are tested against real brokers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Collection, Hashable, Sequence
from typing import Any, ClassVar

import orjson

from poller.engine.filters import FilterField
from poller.engine.records import Record, json_copy, new_record
from poller.errors import SourceError
from poller.sources.protocol import LagMetric, LaneListener, OriginalMessage
from poller.tasks import BackgroundTasks

POLL_WAIT = 0.02  # seconds a poll waits for records when none are there


class MemoryEventFormat:
    """``{"Records": [payload, ...]}``; an item is identified by ``"<partition>:<position>"``."""

    messaging_system = "memory"
    filter_field = FilterField("data", base64=False, plain_text=True)

    def event(self, records: Sequence[Record], *, own: bool = True) -> dict[str, Any]:
        return {"Records": [json_copy(record.payload) if own else record.payload for record in records]}

    def describe(self, records: Sequence[Record]) -> dict[str, Any]:
        return {
            "type": "memory",
            "partition": records[0].partition,
            "positions": [record.position for record in records],
        }

    def item_key(self, identifier: object) -> Hashable | None:
        return identifier if isinstance(identifier, str) and ":" in identifier else None

    def window_fields(self, partition: str) -> dict[str, Any]:
        return {"partition": partition, "eventSourceARN": f"arn:memory:{partition}"}

    def trace_parent(self, record: Record) -> str | None:
        value = record.payload.get("traceparent")
        return value if isinstance(value, str) else None

    def original_message(self, record: Record) -> OriginalMessage | None:
        return None


class MemoryStream:
    """Partitions of records in memory, read in order; see the module docstring."""

    ordered: ClassVar[bool] = True
    lag_metric: ClassVar[LagMetric] = LagMetric("poller_memory_lag_records", "Records not read yet.")

    def __init__(self, name: str = "memory", *, fetch: int = 100) -> None:
        self.reads = name
        self.consumer_group: str | None = None
        self.format = MemoryEventFormat()
        self.fetch = fetch  # records per lane and poll, at most
        self.started = 0  # successful starts
        self.closed = 0
        self.start_failures = 0  # the next starts that raise a retriable SourceError
        self.poll_failures = 0  # the next polls that raise a retriable SourceError
        self.fatal_start: str | None = None  # a non-retriable SourceError at the next start
        self.committed: list[Record] = []  # in commit order
        self.paused: set[str] = set()
        self.pauses = 0  # how often any lane was paused
        self.listener: LaneListener | None = None
        self._waiting: dict[str, deque[Record]] = {}  # per lane, in order
        self._positions: dict[str, int] = {}  # per partition: the next position
        self._arrived = asyncio.Event()
        self._tasks: BackgroundTasks | None = None

    # --- for the test ----------------------------------------------------------------------------

    def put(
        self,
        partition: str,
        *payloads: dict[str, Any],
        lane: str | None = None,
        group: str | None = None,
        timestamp: float | None = None,
    ) -> list[Record]:
        """Append records with these payloads to ``partition`` (in ``lane``, by default the
        partition itself); return them."""
        records = []
        for payload in payloads:
            position = self._positions.get(partition, 0)
            self._positions[partition] = position + 1
            record = new_record(
                partition=partition,
                lane=lane or partition,
                position=position,
                item_key=f"{partition}:{position}",
                payload=payload,
                size=len(orjson.dumps(payload)) + 1,
                timestamp=time.time() if timestamp is None else timestamp,
                group=group,
            )
            self._waiting.setdefault(record.lane, deque()).append(record)
            records.append(record)
        self._arrived.set()
        return records

    def committed_position(self, partition: str) -> int | None:
        """The checkpoint of a partition: the position after the last record committed."""
        positions = [record.position for record in self.committed if record.partition == partition]
        return max(positions) + 1 if positions else None

    def assign(self, partitions: Collection[str]) -> None:
        """Tell the engine these partitions are its now, as a rebalance or a lease taken does."""
        assert self.listener is not None, "assign() before start()"
        self.listener.partitions_assigned(partitions)

    async def end(self, partitions: Collection[str]) -> None:
        """Tell the engine these partitions were read to their end, as a closed Kinesis shard."""
        assert self.listener is not None, "end() before start()"
        await self.listener.partitions_ended(partitions)

    async def revoke(self, partitions: Collection[str]) -> None:
        """Give partitions up, as a rebalance does: the engine finishes their in-flight batches
        first; what was not read yet is dropped (the partitions' next owner reads it)."""
        assert self.listener is not None, "revoke() before start()"
        await self.listener.partitions_revoked(partitions)
        for lane in [
            lane for lane, waiting in self._waiting.items() if waiting and waiting[0].partition in partitions
        ]:
            del self._waiting[lane]

    def fail_in_background(self, error: BaseException) -> None:
        """Make a background task of the source raise ``error`` (a bug the source did not expect)."""
        assert self._tasks is not None, "fail_in_background() before start()"

        async def fail() -> None:
            raise error

        self._tasks.spawn(fail(), "failing")

    # --- Source ----------------------------------------------------------------------------------

    async def start(self, listener: LaneListener, tasks: BackgroundTasks) -> None:
        if self.fatal_start is not None:
            raise SourceError(self.fatal_start, retriable=False)
        if self.start_failures:
            self.start_failures -= 1
            raise SourceError("memory broker unreachable")
        self.listener, self._tasks = listener, tasks
        self.started += 1

    async def poll(self) -> list[Record]:
        if self.poll_failures:
            self.poll_failures -= 1
            raise SourceError("memory broker gone")
        if not self._readable():
            self._arrived.clear()
            try:
                async with asyncio.timeout(POLL_WAIT):
                    await self._arrived.wait()
            except TimeoutError:
                return []
        records: list[Record] = []
        for lane, waiting in self._waiting.items():
            if lane not in self.paused:
                for _ in range(min(self.fetch, len(waiting))):
                    records.append(waiting.popleft())
        return records

    async def commit(self, records: Sequence[Record]) -> None:
        self.committed += records

    def pause(self, lanes: Collection[str]) -> None:
        self.paused.update(lanes)
        self.pauses += 1

    def resume(self, lanes: Collection[str]) -> None:
        self.paused.difference_update(lanes)
        self._arrived.set()

    def lag(self) -> dict[str, int]:
        lags: dict[str, int] = {}
        for waiting in self._waiting.values():
            for record in waiting:
                lags[record.partition] = lags.get(record.partition, 0) + 1
        return lags

    async def close(self) -> None:
        self.closed += 1

    def _readable(self) -> bool:
        return any(waiting and lane not in self.paused for lane, waiting in self._waiting.items())


class MemoryQueue(MemoryStream):
    """A queue in memory: unordered, and records handed back are delivered again at once (the
    delay is recorded in ``released``, not waited out) with their receive count raised."""

    ordered: ClassVar[bool] = False

    def __init__(self, name: str = "memory", *, fetch: int = 100) -> None:
        super().__init__(name, fetch=fetch)
        self.released: list[tuple[list[Record], float]] = []

    async def release(self, records: Sequence[Record], delay: float) -> None:
        self.released.append((list(records), delay))
        for record in records:
            again = new_record(
                partition=record.partition,
                lane=record.lane,
                position=record.position,
                item_key=record.item_key,
                payload=record.payload,
                size=record.size,
                timestamp=record.timestamp,
                receive_count=record.receive_count + 1,
                group=record.group,
            )
            self._waiting.setdefault(again.lane, deque()).append(again)
        self._arrived.set()
