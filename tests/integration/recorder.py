"""Handlers for the integration tests. They record what they saw, keyed by topic, so each test
reads only its own calls. Subprocess tests set RECORDER_FILE to get the calls as JSON lines."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections import defaultdict
from typing import Any

from aws_lambda_powertools.utilities.data_classes import KafkaEvent

CALLS: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
_lock = threading.Lock()
# Per-topic behaviour switches set by tests.
SLOW_PARTITION: dict[str, tuple[int, float]] = {}
BATCH_DELAY: dict[str, float] = {}


def _records(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for records in event["records"].values() for record in records]


def _remember(event: dict[str, Any]) -> list[dict[str, Any]]:
    records = _records(event)
    with _lock:
        CALLS[records[0]["topic"]].append(records)
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
    """A sync handler that sleeps (blocking its thread) on SLOW_PARTITION[topic]'s partition."""
    records = _remember(event)
    partition, seconds = SLOW_PARTITION.get(records[0]["topic"], (-1, 0.0))
    if records[0]["partition"] == partition:
        time.sleep(seconds)


async def slow_every_batch(event: dict[str, Any], context: Any) -> None:
    """Record the batch, then take BATCH_DELAY[topic] seconds (without blocking the loop)."""
    records = _remember(event)
    await asyncio.sleep(BATCH_DELAY.get(records[0]["topic"], 0.0))


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
    with _lock:
        CALLS["powertools:" + seen[0]["topic"]].append(seen)
