"""Handlers for the Kafka integration tests. They run in execution environments (other processes),
so they record what they saw in files (``recording``), keyed by topic: each test reads only its own
calls with :func:`calls`. What a test wants of them it sets in the function's ``environment``:
``SLOW_PARTITION`` (``"<partition>:<seconds>"``) and ``BATCH_DELAY`` (seconds). Subprocess tests also
set RECORDER_FILE to get the records as JSON lines ``[partition, offset]``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import recording
from aws_lambda_powertools.utilities.data_classes import KafkaEvent


def _records(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for records in event["records"].values() for record in records]


def calls(topic: str) -> list[list[dict[str, Any]]]:
    """The records of every invocation that held records of ``topic``, in order."""
    return list(recording.entries(topic))


def _remember(event: dict[str, Any]) -> list[dict[str, Any]]:
    records = _records(event)
    recording.append(records[0]["topic"], records)
    path = os.environ.get("RECORDER_FILE")
    if path:
        with open(path, "a") as file:
            for record in records:
                file.write(json.dumps([record["partition"], record["offset"]]) + "\n")
            file.flush()
            os.fsync(file.fileno())
    return records


def collect(event: dict[str, Any], context: Any) -> None:
    """Record the batch; fail it if any value contains b"poison"."""
    records = _remember(event)
    for record in records:
        if b"poison" in base64.b64decode(record["value"]):
            raise ValueError(f"poison at offset {record['offset']}")


def always_fail(event: dict[str, Any], context: Any) -> None:
    _remember(event)
    raise RuntimeError("always failing")


def slow_partition(event: dict[str, Any], context: Any) -> None:
    """A sync handler that sleeps on the partition that SLOW_PARTITION names, for that long."""
    records = _remember(event)
    partition, _, seconds = os.environ.get("SLOW_PARTITION", "-1:0").partition(":")
    if records[0]["partition"] == int(partition):
        time.sleep(float(seconds))


async def slow_every_batch(event: dict[str, Any], context: Any) -> None:
    """Record the batch, then take BATCH_DELAY seconds (without blocking the loop)."""
    _remember(event)
    await asyncio.sleep(float(os.environ.get("BATCH_DELAY", "0")))


def powertools(event: dict[str, Any], context: Any) -> None:
    """Read the event through AWS Lambda Powertools' Kafka data class, as a Lambda handler would."""
    parsed = KafkaEvent(event)
    seen = []
    for record in parsed.records:
        seen.append(
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "key": record.decoded_key,
                "value": record.json_value,
                "headers": dict(record.decoded_headers),
                "timestamp_type": record.timestamp_type,
            }
        )
    recording.append("powertools:" + seen[0]["topic"], seen)
