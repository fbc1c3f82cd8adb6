"""Handlers of the shared delivery-guarantee suite (``test_guarantees*.py``), one for every source.

A handler is named ``guarantee_handlers:<callable>`` in a test config and sees the exact AWS event
of its source; :func:`view` reads any of the four shapes into :class:`Seen` records, so the handlers
and the tests stay broker-neutral. What a handler saw is kept per resource (topic, queue or stream
name), so each test reads only its own calls. Bodies decide what a handler does: one containing
"poison" fails its invocation, one starting with "flaky" is reported failed the first time it is seen.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

# Per resource: every invocation's records, in order; the records of invocations (or items) that
# succeeded; the batches of each lane running now and at most.
CALLS: dict[str, list[list[Seen]]] = defaultdict(list)
SUCCEEDED: dict[str, list[Seen]] = defaultdict(list)
IN_FLIGHT: dict[tuple[str, str], int] = defaultdict(int)
MOST_IN_FLIGHT: dict[tuple[str, str], int] = defaultdict(int)
_REPORTED: set[tuple[str, str]] = set()  # (resource, body) reported failed once already
_lock = threading.Lock()


@dataclass(frozen=True)
class Seen:
    """One record of an event, read the same way for every source."""

    resource: str  # topic, queue or stream name
    lane: str  # ordered sources: "<topic>-<partition>" or the shard id; queues: the queue
    position: int | str  # Kafka offset, Kinesis sequence number (int); queues: the message id
    body: str
    item: Any  # its itemIdentifier in a partial batch response
    record: dict[str, Any]  # the record exactly as it is in the event


def view(event: dict[str, Any]) -> list[Seen]:
    """The records of a Kafka, SQS, Kinesis or RabbitMQ event, in event order."""
    if "records" in event:  # SelfManagedKafka
        return [_kafka(record) for records in event["records"].values() for record in records]
    if "rmqMessagesByQueue" in event:
        return [
            _rabbitmq(key, message)
            for key, messages in event["rmqMessagesByQueue"].items()
            for message in messages
        ]
    return [_kinesis(r) if r["eventSource"] == "aws:kinesis" else _sqs(r) for r in event["Records"]]


def _decode(data: str | None) -> str:
    return base64.b64decode(data or "").decode(errors="replace")


def _kafka(record: dict[str, Any]) -> Seen:
    lane = f"{record['topic']}-{record['partition']}"
    item = {"partition": lane, "offset": record["offset"]}
    return Seen(record["topic"], lane, record["offset"], _decode(record.get("value")), item, record)


def _sqs(record: dict[str, Any]) -> Seen:
    queue = str(record["eventSourceARN"]).rsplit(":", 1)[-1]
    message_id = record["messageId"]
    return Seen(queue, queue, message_id, record["body"], message_id, record)


def _kinesis(record: dict[str, Any]) -> Seen:
    stream = str(record["eventSourceARN"]).rsplit("/", 1)[-1]
    shard = str(record["eventID"]).split(":", 1)[0]
    sequence = record["kinesis"]["sequenceNumber"]
    return Seen(stream, shard, int(sequence), _decode(record["kinesis"]["data"]), sequence, record)


def _rabbitmq(key: str, message: dict[str, Any]) -> Seen:
    message_id = message["basicProperties"]["messageId"]
    return Seen(key.split("::", 1)[0], key, message_id, _decode(message["data"]), message_id, message)


def _remember(event: dict[str, Any]) -> list[Seen]:
    seen = view(event)
    with _lock:
        CALLS[seen[0].resource].append(seen)
    return seen


def _succeeded(seen: list[Seen]) -> None:
    if seen:
        with _lock:
            SUCCEEDED[seen[0].resource].extend(seen)


async def collect(event: dict[str, Any], context: Any) -> None:
    """Record the batch and take a moment (so that batches could overlap); fail the invocation if a
    body contains "poison"."""
    seen = _remember(event)
    lanes = {(record.resource, record.lane) for record in seen}
    for lane in lanes:
        IN_FLIGHT[lane] += 1
        MOST_IN_FLIGHT[lane] = max(MOST_IN_FLIGHT[lane], IN_FLIGHT[lane])
    try:
        await asyncio.sleep(0.01)
    finally:
        for lane in lanes:
            IN_FLIGHT[lane] -= 1
    for record in seen:
        if "poison" in record.body:
            raise ValueError(f"cannot handle {record.body}")
    _succeeded(seen)


def report_flaky_once(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A partial batch response: each "flaky..." record is reported failed the first time it is seen."""
    seen = _remember(event)
    failed = []
    with _lock:
        for record in seen:
            if record.body.startswith("flaky") and (record.resource, record.body) not in _REPORTED:
                _REPORTED.add((record.resource, record.body))
                failed.append(record)
    _succeeded([record for record in seen if record not in failed])
    return {"batchItemFailures": [{"itemIdentifier": record.item} for record in failed]}


def to_file(event: dict[str, Any], context: Any) -> None:
    """Process tests: note the start of the batch in RECORDER_FILE.started, sleep HANDLER_SLEEP
    seconds, append ``[lane, position, body]`` per record to RECORDER_FILE (fsynced), then note the
    end in RECORDER_FILE.finished."""
    path = os.environ["RECORDER_FILE"]
    _append(path + ".started", "started\n")
    time.sleep(float(os.environ.get("HANDLER_SLEEP", "0")))
    _append(path, "".join(json.dumps([r.lane, r.position, r.body]) + "\n" for r in view(event)))
    _append(path + ".finished", "finished\n")


def _append(path: str, text: str) -> None:
    with open(path, "a") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
