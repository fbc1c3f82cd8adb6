"""Handlers for the Kinesis integration tests. They run in execution environments (other
processes), so they record what they saw in files (``recording``), keyed by stream name: each test
reads only its own calls with :func:`calls`, :func:`most_in_flight` and :func:`powertools_seen`.
``DELAY`` in the function's environment makes :func:`slow` take that many seconds a batch.
Subprocess tests set RECORDER_FILE to get the records as JSON lines ``[shardId, sequenceNumber, pid]``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import recording
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord


def stream_of(record: dict[str, Any]) -> str:
    return str(record["eventSourceARN"]).rsplit("/", 1)[1]


def shard_of(record: dict[str, Any]) -> str:
    return str(record["eventID"]).split(":", 1)[0]


def data_of(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["kinesis"]["data"])


def calls(stream: str) -> list[list[dict[str, Any]]]:
    """The records of every invocation, in order."""
    return [call["records"] for call in recording.entries(stream)]


def most_in_flight(stream: str, shard: str) -> int:
    """The most batches of ``shard`` in the handler at once (parallelization_factor)."""
    return recording.most_at_once(
        tuple(call["span"]) for call in recording.entries(stream) if shard_of(call["records"][0]) == shard
    )


def _remember(records: list[dict[str, Any]], started: float) -> None:
    recording.append(stream_of(records[0]), {"records": records, "span": [started, time.monotonic()]})


def collect(event: dict[str, Any], context: Any) -> None:
    """Record the batch."""
    _remember(event["Records"], time.monotonic())


async def slow(event: dict[str, Any], context: Any) -> None:
    """Take DELAY seconds without blocking the loop, then record the batch and when it ran."""
    started = time.monotonic()
    await asyncio.sleep(float(os.environ.get("DELAY", "0")))
    _remember(event["Records"], started)


# --- AWS Lambda Powertools, used exactly as in a Lambda function -------------------------------

processor = BatchProcessor(event_type=EventType.KinesisDataStreams)


def powertools_seen(stream: str) -> list[tuple[str, str, Any]]:
    """(partition key, sequence number, JSON data) of every record the batch processor handed over."""
    return [(key, sequence, data) for key, sequence, data in recording.entries("powertools:" + stream)]


def _powertools_record(record: KinesisStreamRecord) -> None:
    payload = record.kinesis.data_as_json()
    stream = record.event_source_arn.rsplit("/", 1)[1]
    sequence = record.kinesis.sequence_number
    recording.append("powertools:" + stream, [record.kinesis.partition_key, sequence, payload])
    # A record marked "fail" fails the first time it is processed, then succeeds.
    if payload.get("fail") and recording.first_time(f"powertools:{stream}.failed", sequence):
        raise ValueError(f"failing {sequence} once")


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
