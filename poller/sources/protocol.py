"""The contract between the engine and a broker: a Source, and the EventFormat of its events.

One module per broker implements it; the engine never branches on the broker type. Sources are
found by the ``type`` of their config through :func:`build_source`.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from poller.engine.records import Record


class EventFormat(Protocol):
    """Pure translation between records and the AWS event shape of one source type."""

    def event(self, records: Sequence[Record]) -> dict[str, Any]:
        """The handler's event for a batch, exactly as AWS would build it.

        Every call builds new dicts and lists (strings and numbers are immutable and may be
        shared), so that the handler owns its event as on Lambda: what it changes in it never
        reaches the records that are retried or dead-lettered. This is what lets the function
        runtime hand the event over without a JSON copy (``fresh=True``)."""

    def describe(self, records: Sequence[Record]) -> dict[str, Any]:
        """The ``source`` object of the on-failure record: where these records came from."""

    def item_key(self, identifier: object) -> Hashable | None:
        """Normalise one ``batchItemFailures[].itemIdentifier`` to a ``Record.item_key``, or None
        when it does not have this source's identifier shape."""


class LaneListener(Protocol):
    async def partitions_revoked(self, partitions: Collection[str]) -> None:
        """The source is giving these partitions up (a Kafka rebalance, a lost Kinesis lease).
        Returns once their in-flight batches have finished and what completed is committed;
        nothing of them commits after."""


class Source(Protocol):
    """A broker connection that yields records and settles them.

    ``ordered`` sources (streams) commit a checkpoint: ``commit`` receives, per partition, the last
    record that the checkpoint may pass. Queue sources receive every completed record.
    """

    ordered: ClassVar[bool]
    format: EventFormat

    async def start(self, listener: LaneListener) -> None:
        """Connect and subscribe. Raises SourceError: retriable ones are retried with backoff by the
        caller, others (an unknown topic, bad credentials) stop the service at start."""

    async def poll(self) -> list[Record]:
        """Wait up to about half a second for records; an empty list when there are none."""

    async def commit(self, records: Sequence[Record]) -> None:
        """Make these records' completion durable (offset commit, delete, ack). Raises SourceError.

        Called only once the records completed. A source may make it durable a little later, in the
        background (Kafka coalesces commits), provided close() and a revocation make durable what
        was handed over before they return."""

    async def close(self) -> None:
        """Leave the group / close the connection. Never raises."""


@runtime_checkable
class Pausable(Protocol):
    """A source that can stop fetching some lanes while they hold enough buffered work."""

    def pause(self, lanes: Collection[str]) -> None: ...

    def resume(self, lanes: Collection[str]) -> None: ...


@runtime_checkable
class Releasing(Protocol):
    """A queue that can take records back and deliver them again later (SQS visibility, a RabbitMQ
    delay queue). Retries then wait in the broker, not in the poller, and the broker's count of
    attempts (``Record.receive_count`` on redelivery) survives a restart."""

    async def release(self, records: Sequence[Record], delay: float) -> None:
        """Deliver these records again after ``delay`` seconds with their attempt count raised.
        Raises SourceError; the records then come back by the broker's own timeout."""


@runtime_checkable
class Lagging(Protocol):
    """A source that knows how far behind it is, per partition, without I/O at call time."""

    def lag(self) -> dict[str, int]:
        """Kafka: records between the committed offset and the end of each partition. Queues:
        messages waiting (one entry per queue)."""
