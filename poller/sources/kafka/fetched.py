"""aiokafka's fetched records without a ConsumerRecord each, for poller's own consumers.

aiokafka parses a fetch response into record objects of its C extension, then copies every one
into a new ``ConsumerRecord`` dataclass (topic, partition and nine more fields) that
:func:`~poller.sources.kafka.event.to_records` reads once and drops. On poller's thread, that copy
cost about as much as parsing the record (0.6 µs each, about a twentieth of what a record cost
poller in the Kafka benchmark, docs/benchmarks.md). Poller's consumers get the parsed records
themselves: they have the same ``offset``, ``timestamp``, ``timestamp_type``, ``key``, ``value``
and ``headers``, and the topic and partition are the fetch's.

How: aiokafka makes a ``PartitionRecords`` per partition of a fetch, and its
``_consumer_record`` makes the dataclass. :func:`install` puts a subclass in its place whose
``_consumer_record`` hands over the parsed record when the consumer's key deserializer is
:func:`raw_records`, the mark of poller's consumers, and is aiokafka's own for every other
consumer (a handler's, in an inline function). Both are private to aiokafka: if a release
changes them, :func:`install` leaves aiokafka alone, and ``raw_records``, called then as the key
deserializer it is, returns the key as it was, so poller's consumers get ConsumerRecords, which
``to_records`` reads as well.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.consumer import fetcher

log = logging.getLogger(__name__)


def raw_records(key: bytes | None) -> bytes | None:
    """The key deserializer of poller's consumers: the key as it is, and the mark that the
    consumer takes aiokafka's parsed records (see the module's docstring)."""
    return key


_Stock: Any = getattr(fetcher, "PartitionRecords", None)


def install() -> bool:
    """Make aiokafka hand parsed records to consumers marked with :func:`raw_records`; False if
    this aiokafka is not the one this module knows (then it is left as it is)."""
    current = getattr(fetcher, "PartitionRecords", None)
    if current is not None and getattr(current, "raw_records_of_poller", False):
        return True
    if (
        not isinstance(_Stock, type)
        or current is not _Stock
        or not callable(getattr(_Stock, "_consumer_record", None))
    ):
        log.debug("aiokafka's PartitionRecords is not the one poller knows: ConsumerRecords it is")
        return False

    # Made here, after the checks: with an aiokafka that lacks the class, this module still imports.
    class PartitionRecords(_Stock):  # type: ignore[misc]
        raw_records_of_poller = True

        def _consumer_record(self, tp: Any, record: Any) -> Any:
            if self._key_deserializer is raw_records:
                return record
            return super()._consumer_record(tp, record)

    fetcher.PartitionRecords = PartitionRecords
    return True
