"""Handlers of the shared delivery-guarantee suite (``test_guarantees*.py``), one for every source.

A handler is named ``guarantee_handlers:<callable>`` in a test config and sees the exact AWS event
of its source; :func:`view` reads any of the four shapes into :class:`Seen` records, so the handlers
and the tests stay broker-neutral. Handlers run in execution environments (other processes), so
what they saw is kept in files (``recording``), per resource (topic, queue or stream name): each
test reads only its own calls, with :func:`calls`, :func:`succeeded` and :func:`most_in_flight`.
Bodies decide what a handler does: one containing "poison" fails its invocation, one starting with
"flaky" is reported failed the first time it is seen.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import recording


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
    return view(event)


def _record(seen: list[Seen], started: float, *, succeeded: list[Seen]) -> None:
    """One line per invocation: its records, when it ran, and those of them that succeeded."""
    if seen:
        recording.append(
            seen[0].resource,
            {
                "records": [dataclasses.asdict(record) for record in seen],
                "succeeded": [seen.index(record) for record in succeeded],
                "span": [started, time.monotonic()],
            },
        )


def calls(resource: str) -> list[list[Seen]]:
    """Every invocation's records, in order."""
    return [[Seen(**record) for record in call["records"]] for call in recording.entries(resource)]


def succeeded(resource: str) -> list[Seen]:
    """The records of invocations (or items) that succeeded."""
    return [
        Seen(**call["records"][index]) for call in recording.entries(resource) for index in call["succeeded"]
    ]


def most_in_flight(resource: str, lane: str) -> int:
    """The most batches of ``lane`` that were in the handler at once."""
    return recording.most_at_once(
        tuple(call["span"])
        for call in recording.entries(resource)
        if any(record["lane"] == lane for record in call["records"])
    )


async def collect(event: dict[str, Any], context: Any) -> None:
    """Record the batch after a moment (so that batches could overlap); fail the invocation if a
    body contains "poison"."""
    started = time.monotonic()
    seen = _remember(event)
    await asyncio.sleep(0.01)
    poisoned = [record for record in seen if "poison" in record.body]
    _record(seen, started, succeeded=[] if poisoned else seen)
    if poisoned:
        raise ValueError(f"cannot handle {poisoned[0].body}")


def report_flaky_once(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A partial batch response: each "flaky..." record is reported failed the first time it is seen."""
    started = time.monotonic()
    seen = _remember(event)
    failed = [
        record
        for record in seen
        if record.body.startswith("flaky")
        and recording.first_time(f"{record.resource}.reported", record.body)
    ]
    _record(seen, started, succeeded=[record for record in seen if record not in failed])
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
