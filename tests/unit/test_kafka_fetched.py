"""Poller's Kafka consumers take aiokafka's parsed records instead of a ConsumerRecord each
(``sources/kafka/fetched.py``): through aiokafka's own fetch parsing, the same records, and the
same events, as through ConsumerRecords; and every other consumer still gets ConsumerRecords."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition

from poller.devtools.samples import kafka_record_batch
from poller.sources.kafka.event import KafkaEventFormat, to_records
from poller.sources.kafka.fetched import install, raw_records

TP = TopicPartition("orders", 3)


def fetched_batch(compression_type: int = 0) -> bytes:
    """One record batch as a broker returns it: a plain record, a keyless one with headers (one
    of them null), a tombstone."""
    return kafka_record_batch(
        [
            (0, 1_700_000_000_000, b"k-0", b'{"n": 0}', []),
            (1, 1_700_000_000_001, None, b"\x00\xff", [("traceparent", b"00-ab-cd-01"), ("empty", None)]),
            (2, 1_700_000_000_002, b"k-2", None, []),
        ],
        compression_type,
    )


def unpacked(key_deserializer: Any, compression_type: int = 0) -> list[Any]:
    """What aiokafka's fetcher hands a consumer with this key deserializer, for that batch."""
    records = fetcher.PartitionRecords(
        TP,
        MemoryRecords(fetched_batch(compression_type)),
        [],
        0,
        key_deserializer,
        None,
        True,  # check_crcs
        fetcher.READ_COMMITTED,
    )
    return list(records)


# Producers often compress their batches: the parsed records come out of the decompressed batch.
@pytest.mark.parametrize("compression_type", [0, 1, 3], ids=["uncompressed", "gzip", "lz4"])
def test_poller_s_consumers_get_parsed_records_with_the_same_events_as_consumer_records(
    compression_type: int,
) -> None:
    assert install()
    assert install()  # once per process, however many sources start
    assert DefaultRecordBatch(fetched_batch(compression_type)).compression_type == compression_type
    parsed = unpacked(raw_records, compression_type)
    stock = unpacked(None, compression_type)
    assert all(type(message) is ConsumerRecord for message in stock)
    assert not any(isinstance(message, ConsumerRecord) for message in parsed)
    assert [message.offset for message in parsed] == [0, 1, 2]

    kafka = KafkaEventFormat("broker:9092")
    from_parsed = to_records(parsed, "orders-3", TP.topic, TP.partition)
    from_stock = to_records(stock, "orders-3", TP.topic, TP.partition)
    assert [record.payload for record in from_parsed] == [record.payload for record in from_stock]
    assert [(record.size, record.data, record.timestamp) for record in from_parsed] == [
        (record.size, record.data, record.timestamp) for record in from_stock
    ]
    event = kafka.event(from_parsed)
    entries = event["records"]["orders-3"]
    assert [(entry["topic"], entry["partition"], entry["offset"]) for entry in entries] == [
        ("orders", 3, 0),
        ("orders", 3, 1),
        ("orders", 3, 2),
    ]
    assert "key" not in entries[1]
    assert "value" not in entries[2]
    assert entries[1]["headers"] == [{"traceparent": list(b"00-ab-cd-01")}, {"empty": []}]
    assert kafka.trace_parent(from_parsed[1]) == "00-ab-cd-01"


def test_raw_records_is_the_key_as_it_is_where_aiokafka_calls_it() -> None:
    """Were fetched.py's subclass not in place (another aiokafka), aiokafka calls the mark as the
    key deserializer it is: the keys stay bytes, and ConsumerRecords come as before."""
    assert install()
    stock = fetcher.PartitionRecords.__mro__[1]._consumer_record  # aiokafka's own
    partition_records = fetcher.PartitionRecords(
        TP, MemoryRecords(fetched_batch()), [], 0, raw_records, None, True, fetcher.READ_COMMITTED
    )
    first = next(iter(MemoryRecords(fetched_batch()).next_batch()))
    message = stock(partition_records, TP, first)
    assert type(message) is ConsumerRecord
    assert (message.topic, message.partition, message.key, message.value) == (
        "orders",
        3,
        b"k-0",
        b'{"n": 0}',
    )
