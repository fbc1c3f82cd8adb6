"""Every source's event belongs to the handler: building it twice gives two independent events,
and nothing a handler does to one reaches the records that are retried or dead-lettered."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from poller.devtools.samples import sample_records


def scramble(value: Any) -> None:
    """Change every dict and list inside a JSON value, innermost first, as a careless handler might."""
    if isinstance(value, dict):
        for item in value.values():
            scramble(item)
        for key in list(value):
            value[key] = "changed"
        value["added"] = True
    elif isinstance(value, list):
        for item in value:
            scramble(item)
        value.append("added")
        value.reverse()


@pytest.mark.parametrize("source_type", ["kafka", "sqs", "kinesis", "rabbitmq"])
def test_each_event_is_new_json_that_the_handler_may_change(source_type: str) -> None:
    event_format, records = sample_records(source_type)
    payloads = copy.deepcopy([record.payload for record in records])
    event = event_format.event(records)
    # Only JSON types: the runtime hands these events over without a JSON round trip.
    assert orjson.loads(orjson.dumps(event)) == event
    expected = copy.deepcopy(event)

    scramble(event)

    assert [record.payload for record in records] == payloads
    assert event_format.event(records) == expected


def test_a_kafka_record_knows_its_partition_offset_and_size() -> None:
    _, [first, second] = sample_records("kafka")
    assert (first.partition, first.lane, first.position, first.item_key) == (
        "orders-0",
        "orders-0",
        15,
        ("orders-0", 15),
    )
    assert second.position == 16
    assert first.timestamp == 1718000000.471  # the record's CreateTime, in seconds
    assert first.size >= len(orjson.dumps(first.payload)), "no smaller than its JSON in the event"


@pytest.mark.parametrize("source_type", ["kafka", "sqs", "kinesis", "rabbitmq"])
def test_an_event_to_serialise_is_the_same_event_without_copies_of_the_records(source_type: str) -> None:
    event_format, records = sample_records(source_type)
    shared = event_format.event(records, own=False)
    assert orjson.dumps(shared) == orjson.dumps(event_format.event(records))
    payloads = [id(record.payload) for record in records]
    entries = shared["records"] if "records" in shared else shared.get("rmqMessagesByQueue", shared)
    listed = [entry for group in entries.values() for entry in group]
    assert [id(entry) for entry in listed] == payloads, "the records' own dicts, nothing built and dropped"
