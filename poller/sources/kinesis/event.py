"""The Kinesis event of Lambda (https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html):
``Records[].kinesis`` with base64 ``data``, and the lanes records are processed in.

Pure translation, no I/O: a GetRecords record becomes a Record whose payload is the event record,
and a failed batch is described by AWS's ``KinesisBatchInfo`` fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime
from typing import Any

import pybase64

from poller.engine.filters import KINESIS_FILTER_FIELD
from poller.engine.records import Record, new_record
from poller.sources.protocol import OriginalMessage

# What one record adds to the event's JSON besides its data, key, ARNs and ids.
_RECORD_OVERHEAD = 260


def partition_key_bucket(partition_key: str, factor: int) -> int:
    """A stable bucket (the same in every process, unlike ``hash()``) of a partition key."""
    digest = hashlib.md5(partition_key.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % factor


def lane_of(shard_id: str, partition_key: str, factor: int) -> str:
    """The lane of a record: its shard, or with ``parallelization_factor`` > 1 the shard and the
    bucket of its partition key."""
    return shard_id if factor == 1 else f"{shard_id}#{partition_key_bucket(partition_key, factor)}"


def lanes_of_shard(shard_id: str, factor: int) -> list[str]:
    """Every lane a shard's records can be in."""
    return [shard_id] if factor == 1 else [f"{shard_id}#{bucket}" for bucket in range(factor)]


def to_record(
    raw: dict[str, Any], *, shard_id: str, stream_arn: str, region: str, role_arn: str, factor: int = 1
) -> Record:
    """A GetRecords record as a Record whose payload is the Lambda event record.

    ``Data`` may be the wire's base64 text (``create_client(..., wire_values=True)``) or bytes,
    ``ApproximateArrivalTimestamp`` epoch seconds or a datetime."""
    data = raw["Data"]
    received = None if isinstance(data, str) else data  # bytes: kept for the filter (Record.data)
    if received is not None:
        data = pybase64.b64encode_as_string(received)
    sequence: str = raw["SequenceNumber"]
    key: str = raw["PartitionKey"]
    arrival = raw["ApproximateArrivalTimestamp"]
    # Epoch seconds with millisecond precision, as Lambda sends it.
    arrival_seconds = round(arrival.timestamp() if isinstance(arrival, datetime) else float(arrival), 3)
    payload: dict[str, Any] = {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": key,
            "sequenceNumber": sequence,
            "data": data,
            "approximateArrivalTimestamp": arrival_seconds,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": role_arn,
        "awsRegion": region,
        "eventSourceARN": stream_arn,
    }
    encryption = raw.get("EncryptionType")
    if encryption is not None:  # NONE or KMS, where Kinesis says (Lambda passes it on)
        payload["kinesis"]["encryptionType"] = encryption
    size = _RECORD_OVERHEAD + len(data) + len(key) + 2 * (len(sequence) + len(shard_id))
    size += len(role_arn) + len(region) + len(stream_arn)
    return new_record(
        partition=shard_id,
        lane=lane_of(shard_id, key, factor),
        position=int(sequence),  # ~56 digits: compared as integers, never as strings
        item_key=sequence,
        payload=payload,
        size=size,
        timestamp=arrival_seconds,
        data=received,
    )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KinesisEventFormat:
    """Lambda's Kinesis event; an item is identified by its ``sequenceNumber``."""

    # OpenTelemetry has no well-known messaging.system value for Kinesis.
    messaging_system = "aws.kinesis"
    filter_field = KINESIS_FILTER_FIELD

    def __init__(self, stream_arn: str = "") -> None:
        self.stream_arn = stream_arn  # known once the source has described the stream

    def event(self, records: Sequence[Record], *, own: bool = True) -> dict[str, Any]:
        if not own:
            return {"Records": [record.payload for record in records]}
        # New containers, so that the handler owns its event (EventFormat.event); dict.copy clones
        # the table, several times faster than {**payload}.
        entries = []
        for record in records:
            entry = record.payload.copy()
            entry["kinesis"] = entry["kinesis"].copy()
            entries.append(entry)
        return {"Records": entries}

    def describe(self, records: Sequence[Record]) -> dict[str, Any]:
        """AWS's ``KinesisBatchInfo`` of the records (all of one shard), plus ``type``."""
        first, last = records[0].payload, records[-1].payload
        return {
            "type": "kinesis",
            "shardId": records[0].partition,
            "startSequenceNumber": first["kinesis"]["sequenceNumber"],
            "endSequenceNumber": last["kinesis"]["sequenceNumber"],
            "approximateArrivalOfFirstRecord": _iso(first["kinesis"]["approximateArrivalTimestamp"]),
            "approximateArrivalOfLastRecord": _iso(last["kinesis"]["approximateArrivalTimestamp"]),
            "batchSize": len(records),
            "streamArn": first["eventSourceARN"],
        }

    def item_key(self, identifier: object) -> Hashable | None:
        # The record's sequenceNumber, a decimal string.
        return identifier if isinstance(identifier, str) and identifier.isdigit() else None

    def window_fields(self, partition: str) -> dict[str, Any]:
        return {"shardId": partition, "eventSourceARN": self.stream_arn}

    def trace_parent(self, record: Record) -> str | None:
        return None  # a Kinesis record has no headers to carry a producer's context

    def original_message(self, record: Record) -> OriginalMessage | None:
        return None
