"""Handlers for the Kinesis integration tests. They record what they saw keyed by stream name, so
each test reads only its own calls. Subprocess tests set RECORDER_FILE to get the records as JSON
lines ``[shardId, sequenceNumber, pid]``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections import defaultdict
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

CALLS: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
# Per-stream switches set by tests.
DELAY: dict[str, float] = {}
# Batches of one shard running at once, now and at most (parallelization_factor).
IN_FLIGHT: dict[tuple[str, str], int] = defaultdict(int)
MAX_IN_FLIGHT: dict[tuple[str, str], int] = defaultdict(int)
_lock = threading.Lock()


def stream_of(record: dict[str, Any]) -> str:
    return str(record["eventSourceARN"]).rsplit("/", 1)[1]


def shard_of(record: dict[str, Any]) -> str:
    return str(record["eventID"]).split(":", 1)[0]


def data_of(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["kinesis"]["data"])


def _remember(event: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = event["Records"]
    stream = stream_of(records[0])
    with _lock:
        CALLS[stream].append(records)
    return stream, records


def collect(event: dict[str, Any], context: Any) -> None:
    """Record the batch."""
    _remember(event)


async def slow(event: dict[str, Any], context: Any) -> None:
    """Record the batch, take DELAY[stream] seconds without blocking the loop, and count how many
    batches of the same shard run at once."""
    stream, records = _remember(event)
    key = (stream, shard_of(records[0]))
    IN_FLIGHT[key] += 1
    MAX_IN_FLIGHT[key] = max(MAX_IN_FLIGHT[key], IN_FLIGHT[key])
    try:
        await asyncio.sleep(DELAY.get(stream, 0.0))
    finally:
        IN_FLIGHT[key] -= 1


# --- AWS Lambda Powertools, used exactly as in a Lambda function -------------------------------

processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
POWERTOOLS_SEEN: dict[str, list[tuple[str, str, Any]]] = defaultdict(list)
_powertools_failed: set[str] = set()


def _powertools_record(record: KinesisStreamRecord) -> None:
    payload = record.kinesis.data_as_json()
    stream = record.event_source_arn.rsplit("/", 1)[1]
    POWERTOOLS_SEEN[stream].append((record.kinesis.partition_key, record.kinesis.sequence_number, payload))
    # A record marked "fail" fails the first time it is processed, then succeeds.
    if payload.get("fail") and record.kinesis.sequence_number not in _powertools_failed:
        _powertools_failed.add(record.kinesis.sequence_number)
        raise ValueError(f"failing {record.kinesis.sequence_number} once")


def powertools(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(
        event=event, record_handler=_powertools_record, processor=processor, context=context
    )


# --- subprocess tests -------------------------------------------------------------------------


def to_file(event: dict[str, Any], context: Any) -> None:
    """Sleep HANDLER_SLEEP seconds, then append the batch's records to RECORDER_FILE (fsynced)."""
    time.sleep(float(os.environ.get("HANDLER_SLEEP", "0")))
    lines = "".join(
        json.dumps([shard_of(record), record["kinesis"]["sequenceNumber"], os.getpid()]) + "\n"
        for record in event["Records"]
    )
    with open(os.environ["RECORDER_FILE"], "a") as file:
        file.write(lines)
        file.flush()
        os.fsync(file.fileno())
