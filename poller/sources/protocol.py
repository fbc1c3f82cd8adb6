"""The contract between the engine and a broker: a Source, and the EventFormat of its events.

One package per broker implements it; the engine and the cross-cutting code (tracing, metrics,
destinations) never branch on the broker type: what they need to know of a broker, its source and
its event format answer here. Optional capabilities are small protocols of their own.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from poller.engine.filters import FilterField
from poller.engine.records import Record
from poller.tasks import BackgroundTasks


@dataclass(frozen=True)
class OriginalMessage:
    """A record as the message it was, for a destination that writes it again as a message of its
    own (the Kafka destination keeps the original key and headers, as AWS's does): its key, its
    headers, and where it was, as ``x-poller-<name>`` headers (Kafka: topic, partition, offset)."""

    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    location: dict[str, str] = field(default_factory=dict)


class EventFormat(Protocol):
    """Pure translation between records and the AWS event shape of one source type."""

    # The OpenTelemetry ``messaging.system`` of the broker (semantic conventions 1.27).
    messaging_system: str
    # Which field of a record filter patterns see as its data, and how (SPEC section 14).
    filter_field: FilterField

    def event(self, records: Sequence[Record], *, own: bool = True) -> dict[str, Any]:
        """The handler's event for a batch, exactly as AWS would build it.

        Every call builds new dicts and lists (strings and numbers are immutable and may be
        shared), so that the handler owns its event as on Lambda: what it changes in it never
        reaches the records that are retried or dead-lettered. This is what lets the function
        runtime hand the event over without a JSON copy (``fresh=True``).

        ``own=False``: only the outer containers are new; the records' own dicts are in it as
        they are. For an event that is serialised at once and never handed to code (a function
        in execution environments gets it as JSON): nothing is copied that would be thrown away."""

    def describe(self, records: Sequence[Record]) -> dict[str, Any]:
        """The ``source`` object of the on-failure record: where these records came from."""

    def item_key(self, identifier: object) -> Hashable | None:
        """Normalise one ``batchItemFailures[].itemIdentifier`` to a ``Record.item_key``, or None
        when it does not have this source's identifier shape."""

    def trace_parent(self, record: Record) -> str | None:
        """The W3C ``traceparent`` of the producer's trace that the record carries, if any (Kafka
        and AMQP headers, SQS message attributes or SQS's X-Ray ``AWSTraceHeader``). Called for every
        record of every batch: cheap when there is none."""

    def original_message(self, record: Record) -> OriginalMessage | None:
        """The record as a message that can be written again, or None when the source's records
        have no key and headers worth keeping."""


class LaneListener(Protocol):
    """What a source tells the engine about the partitions it reads (the runner listens)."""

    def partitions_assigned(self, partitions: Collection[str]) -> None:
        """The source reads these partitions now (a Kafka assignment, a Kinesis lease taken).
        Must not block: it only starts work."""

    async def partitions_revoked(self, partitions: Collection[str]) -> None:
        """The source is giving these partitions up (a Kafka rebalance, a lost Kinesis lease).
        Returns once their in-flight batches have finished and what completed is committed;
        nothing of them commits after."""

    async def partitions_ended(self, partitions: Collection[str]) -> None:
        """These partitions were read to their end (a Kinesis shard closed by a reshard) and
        everything read of them is committed; returns once they are given up, as revoked ones."""


class Source(Protocol):
    """A broker connection that yields records and settles them.

    ``ordered`` sources (streams) commit a checkpoint: ``commit`` receives, per partition, the last
    record that the checkpoint may pass. Queue sources receive every completed record.
    """

    ordered: ClassVar[bool]
    format: EventFormat
    # What the mapping reads, as spans name it (OpenTelemetry's ``messaging.destination.name``):
    # its topics, queues or stream; and the consumer group it reads them as, if the broker has one.
    reads: str
    consumer_group: str | None

    async def start(self, listener: LaneListener, tasks: BackgroundTasks) -> None:
        """Connect and subscribe; start background work (receivers, committers, lease renewals)
        with ``tasks``, whose owner cancels and awaits it after :meth:`close` (or after a failed
        start). Raises SourceError: retriable ones are retried with backoff by the caller, others
        (an unknown topic, bad credentials) stop the service at start."""

    async def poll(self) -> list[Record]:
        """Wait up to about half a second for records; an empty list when there are none."""

    async def commit(self, records: Sequence[Record]) -> None:
        """Make these records' completion durable (offset commit, delete, ack). Raises SourceError.

        Called only once the records completed. A source may make it durable a little later, in the
        background (Kafka coalesces commits), provided close() and a revocation make durable what
        was handed over before they return."""

    async def close(self) -> None:
        """Leave the group / close the connection, also after a failed or no start. Never raises."""


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
class Windowed(Protocol):
    """An event format whose sources can aggregate over tumbling windows (Kinesis, Kafka)."""

    def window_fields(self, partition: str) -> dict[str, Any]:
        """What a tumbling-window event says of where it comes from: Kinesis ``shardId`` and
        ``eventSourceARN``; Kafka ``partition`` (``topic-partition``) and ``eventSourceARN``."""


@dataclass(frozen=True)
class LagMetric:
    """How a source's lag is published: the Prometheus gauge (labelled by mapping and partition),
    its help text, and its key in ``/mappings``."""

    name: str
    help: str
    key: str = "lag"


@runtime_checkable
class Lagging(Protocol):
    """A source that knows how far behind it is, per partition, without I/O at call time."""

    lag_metric: ClassVar[LagMetric]

    def lag(self) -> dict[str, int]:
        """Kafka: records between the committed offset and the end of each partition. Queues:
        messages waiting (one entry per queue). Kinesis: milliseconds behind the shard's end."""
