"""The values that flow through the engine: a Record from a source, a Batch of them."""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

# Lambda's synchronous invocation payload limit: a batch is closed before its event would pass it.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

_batch_ids = itertools.count(1)
_size = attrgetter("size")


@dataclass(slots=True, eq=False)
class Record:
    """One message, as a source read it.

    ``partition`` is the unit whose positions commit in order (a Kafka topic-partition, a Kinesis
    shard, or a queue), ``lane`` the unit processed one batch at a time, in order (usually the
    partition). ``payload`` is the record exactly as it appears in the handler's event and in the
    on-failure record; ``size`` is what it adds to the event's JSON, for the 6 MB limit. Sources
    make Records with :func:`new_record`.
    """

    partition: str
    lane: str
    position: Any
    item_key: Hashable
    payload: dict[str, Any]
    size: int
    timestamp: float  # seconds since the epoch at which the broker received it
    receive_count: int = 0  # earlier attempts the broker counted (queues: survives restarts); 0 for streams
    # Records of one group (an SQS FIFO MessageGroupId) are processed in order even by a queue
    # source: once one is handed back to the broker, the later ones of its batch go back with it.
    group: str | None = None
    # Matched none of the mapping's filters (set as it is polled): it rides in its batch to be
    # committed uninvoked, and counts for neither the batch size nor the payload limit.
    filtered: bool = False
    # The bytes that the payload's data field holds in base64 (a Kafka value, a RabbitMQ body, a
    # Kinesis record's data), kept by the source until the record is filtered: the filter parses
    # them without decoding what the source has just encoded.
    data: bytes | None = None


def new_record(
    *,
    partition: str,
    lane: str,
    position: Any,
    item_key: Hashable,
    payload: dict[str, Any],
    size: int,
    timestamp: float,
    receive_count: int = 0,
    group: str | None = None,
    data: bytes | None = None,
) -> Record:
    """A Record, by keyword, for the sources' per-record loops. Calling the class with keywords
    makes Python build a dict of them for ``type.__call__`` on every record, which cost more than
    half of what making a Record costs (0.72 against 0.28 µs); a function's keywords need none,
    and the positional call stays here, beside the fields it must follow (a test checks it)."""
    return Record(
        partition, lane, position, item_key, payload, size, timestamp, receive_count, group, False, data
    )


@dataclass(slots=True, eq=False)
class Batch:
    """Records of one lane invoked together.

    ``retries`` counts failed attempts against ``maximum_retry_attempts``; ``invocations`` counts
    every invocation that held these records, bisected parents included.
    """

    records: list[Record]
    retries: int = 0
    invocations: int = 0
    depth: int = 0  # how many bisections produced this batch
    trace_id: str = ""  # shared by the halves of a bisected batch
    batch_id: int = field(default_factory=lambda: next(_batch_ids))

    @property
    def lane(self) -> str:
        return self.records[0].lane

    @property
    def size(self) -> int:
        """What the records add to the event's JSON, together."""
        return sum(map(_size, self.records))

    def derive(self, records: list[Record], *, retries: int | None = None, split: bool = False) -> Batch:
        """A batch of some of these records that remembers their history."""
        return Batch(
            records,
            retries=self.retries if retries is None else retries,
            invocations=self.invocations,
            depth=self.depth + 1 if split else self.depth,
            trace_id=self.trace_id,
        )


def json_copy(value: Any) -> Any:
    """A JSON value with dicts and lists of its own; strings and numbers are immutable and shared."""
    if isinstance(value, dict):
        return {name: json_copy(item) for name, item in value.items()}
    if isinstance(value, list):
        return [json_copy(item) for item in value]
    return value
