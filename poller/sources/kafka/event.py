"""AWS's self-managed Kafka event (https://docs.aws.amazon.com/lambda/latest/dg/with-kafka.html):
records keyed ``topic-partition``, base64 key and value, headers as lists of Java signed bytes.

Pure translation, no I/O: the records aiokafka fetched become Records whose payloads are the event
records. This is the poller's hottest loop (docs/benchmarks.md).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Hashable, Sequence
from typing import Any

import pybase64

from poller.connections.account import ACCOUNT_ID, default_region
from poller.engine.filters import KAFKA_FILTER_FIELD
from poller.engine.records import Record, json_copy, new_record
from poller.sources.protocol import OriginalMessage

# What one record adds to the event's JSON besides its key, value and headers.
_RECORD_OVERHEAD = 160


def lane_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def signed_bytes(value: bytes | None) -> list[int]:
    """Header bytes as AWS sends them: Java signed bytes (-128..127)."""
    return memoryview(value).cast("b").tolist() if value else []


def to_records(messages: Sequence[Any], lane: str, topic: str, partition: int) -> list[Record]:
    """The messages aiokafka fetched of one partition (its ``lane_name``, ``topic`` and
    ``partition``) as Records whose payloads are the AWS event records. A message is a
    ConsumerRecord or the parsed record it would have been made of (:mod:`.fetched`): only the
    fields both have are read.

    This runs once per record read, the poller's hottest loop (docs/benchmarks.md), so it is one
    plain loop with its callables in locals rather than a function call per record, and headers,
    which most records lack, are only looked at when present."""
    encode, make = pybase64.b64encode_as_string, new_record
    records: list[Record] = []
    append = records.append
    for message in messages:
        value, key, offset, timestamp = message.value, message.key, message.offset, message.timestamp
        encoded = encode(value) if value is not None else ""
        size = _RECORD_OVERHEAD + len(encoded)
        headers: list[dict[str, list[int]]] = []
        if message.headers:
            for name, data in message.headers:
                headers.append({name: signed_bytes(data)})
                size += 4 * (len(data or b"") + len(name))
        payload: dict[str, Any] = {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": timestamp,
            "timestampType": "LOG_APPEND_TIME" if message.timestamp_type == 1 else "CREATE_TIME",
            "value": encoded,
            "headers": headers,
        }
        if value is None:  # a tombstone: AWS leaves the value out
            del payload["value"]
        if key is not None:
            payload["key"] = encoded_key = encode(key)
            size += len(encoded_key)
        append(
            make(
                partition=lane,
                lane=lane,
                position=offset,
                item_key=(lane, offset),
                payload=payload,
                size=size,
                timestamp=timestamp / 1000,
                data=value,
            )
        )
    return records


def cluster_arn(bootstrap_servers: str, region: str) -> str:
    """An MSK-style cluster ARN for a self-managed cluster, which has none (SPEC section 5): the
    first broker's host as the name, a uuid derived from the bootstrap servers, so it is stable."""
    host = bootstrap_servers.split(",")[0].strip().rpartition(":")[0] or "kafka"
    name = re.sub(r"[^A-Za-z0-9-]+", "-", host).strip("-")[:64] or "kafka"
    return f"arn:aws:kafka:{region}:{ACCOUNT_ID}:cluster/{name}/{uuid.uuid5(uuid.NAMESPACE_URL, bootstrap_servers)}"


class KafkaEventFormat:
    """AWS's self-managed Kafka event; an item is identified by ``{"partition", "offset"}``."""

    messaging_system = "kafka"
    filter_field = KAFKA_FILTER_FIELD

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.cluster_arn = cluster_arn(bootstrap_servers, default_region())

    def event(self, records: Sequence[Record], *, own: bool = True) -> dict[str, Any]:
        by_partition: dict[str, list[dict[str, Any]]] = {}
        partition, entries = None, []
        for record in records:
            if record.partition != partition:  # a batch is usually of one partition
                partition = record.partition
                entries = by_partition.setdefault(partition, [])
            if not own:
                entries.append(record.payload)
                continue
            # New containers, so that the handler owns its event; only headers nest deeper. And
            # dict.copy, which clones the table: several times faster than {**payload, ...}.
            entry = record.payload.copy()
            headers = entry["headers"]
            entry["headers"] = json_copy(headers) if headers else []
            entries.append(entry)
        return {
            "eventSource": "SelfManagedKafka",
            "bootstrapServers": self.bootstrap_servers,
            "records": by_partition,
        }

    def describe(self, records: Sequence[Record]) -> dict[str, Any]:
        first, last = records[0].payload, records[-1].payload
        return {
            "type": "kafka",
            "topic": first["topic"],
            "partition": first["partition"],
            "startOffset": first["offset"],
            "endOffset": last["offset"],
            "batchSize": len(records),
        }

    def item_key(self, identifier: object) -> Hashable | None:
        # {"partition": "<topic>-<partition>", "offset": <int>}
        if not isinstance(identifier, dict):
            return None
        partition, offset = identifier.get("partition"), identifier.get("offset")
        if not isinstance(partition, str) or isinstance(offset, bool):
            return None
        if isinstance(offset, str) and offset.isdigit():
            offset = int(offset)
        return (partition, offset) if isinstance(offset, int) else None

    def window_fields(self, partition: str) -> dict[str, Any]:
        return {"partition": partition, "eventSourceARN": self.cluster_arn}

    def trace_parent(self, record: Record) -> str | None:
        headers = record.payload["headers"]
        if not headers:  # the common case: nothing to look for
            return None
        for header in headers:
            value = header.get("traceparent")
            if value is not None:
                return bytes(b & 0xFF for b in value).decode(errors="replace")
        return None

    def original_message(self, record: Record) -> OriginalMessage:
        """The record's key and headers as the producer sent them, and its topic, partition and
        offset (the Kafka destination's ``x-poller-*`` headers)."""
        payload = record.payload
        key = payload.get("key")
        return OriginalMessage(
            key=pybase64.b64decode(key) if key is not None else None,
            headers=[
                (name, bytes(b & 0xFF for b in signed))
                for header in payload["headers"]
                for name, signed in header.items()
            ],
            location={
                "topic": str(payload["topic"]),
                "partition": str(payload["partition"]),
                "offset": str(payload["offset"]),
            },
        )
