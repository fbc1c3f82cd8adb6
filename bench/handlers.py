"""Handlers that the poller under test invokes (``bench.handlers:noop``, ``bench.handlers:consumed``,
``bench.handlers:latency`` and, behind a function URL, ``bench.handlers.http_ok``).

``noop`` only counts the records of its event into the shared progress file, so that the poller's
throughput is measured exactly like the raw loops': per batch handed to user code. ``latency``
also writes, per record, the send time the producer put into the record and the handler's start
time minus it (``<sent ns> <seconds>`` a line) to the file named by ``BENCH_LATENCY``.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

from bench.progress import Progress

_progress = Progress.from_env()
# Open for the life of the process: the handler appends a few lines per batch.
_latency_out = open(os.environ["BENCH_LATENCY"], "a") if os.environ.get("BENCH_LATENCY") else None  # noqa: SIM115
FILTER_KEEPS_ONE_IN = 10  # poller-filtered's filter keeps one kind of value of this many
SENT_AT = "sent_at"  # header / attribute name that carries the producer's time.time_ns()


def count(event: dict[str, Any]) -> int:
    """Records in an event of any of the four AWS shapes."""
    if "Records" in event:  # SQS, Kinesis
        return len(event["Records"])
    grouped = event.get("records") or event.get("rmqMessagesByQueue") or {}
    return sum(len(records) for records in grouped.values())


async def noop(event: dict[str, Any], context: object) -> None:
    if _progress is not None:
        _progress.add(count(event))


async def consumed(event: dict[str, Any], context: object) -> None:
    """``noop`` for poller-filtered's Kafka mapping, whose filter keeps one record in
    ``FILTER_KEEPS_ONE_IN``: counts each record handed over with those filtered out before it. The
    harness's fill makes every tenth record of a partition, counted from its last, the kept kind,
    so the record at offset ``o`` stands for ``min(10, o + 1)`` records, whichever process handles it."""
    consumed = sum(
        min(FILTER_KEEPS_ONE_IN, record["offset"] + 1)
        for records in event["records"].values()
        for record in records
    )
    if _progress is not None:
        _progress.add(consumed)


async def latency(event: dict[str, Any], context: object) -> None:
    started = time.time_ns()
    lines = [f"{sent} {(started - sent) / 1e9:.6f}\n" for sent in sent_times(event)]
    if _latency_out is not None:
        _latency_out.writelines(lines)
        _latency_out.flush()
    if _progress is not None:
        _progress.add(len(lines))


def http_ok(event: dict[str, Any], context: object) -> dict[str, Any]:
    """A function URL's smallest useful answer: a status and a two-byte body."""
    return {"statusCode": 200, "body": "ok"}


def sent_times(event: dict[str, Any]) -> list[int]:
    """The producer's ``time.time_ns()`` of each record, wherever its source type carries it."""
    if "records" in event:  # Kafka: headers as Java signed bytes
        return [
            int(bytes(b & 0xFF for b in header[SENT_AT]))
            for records in event["records"].values()
            for record in records
            for header in record["headers"]
            if SENT_AT in header
        ]
    if "rmqMessagesByQueue" in event:  # RabbitMQ: an AMQP header
        return [
            int(_header_text(message["basicProperties"]["headers"][SENT_AT]))
            for messages in event["rmqMessagesByQueue"].values()
            for message in messages
        ]
    times = []
    for record in event["Records"]:
        if "messageAttributes" in record:  # SQS: a message attribute
            times.append(int(record["messageAttributes"][SENT_AT]["stringValue"]))
        else:  # Kinesis has no headers: the data starts with the time
            times.append(int(base64.b64decode(record["kinesis"]["data"])[:19]))
    return times


def _header_text(value: Any) -> str:
    # AWS's RabbitMQ event writes string headers as {"bytes": [...]}; plain strings also occur.
    if isinstance(value, dict) and "bytes" in value:
        return bytes(b & 0xFF for b in value["bytes"]).decode()
    if isinstance(value, list):
        return bytes(b & 0xFF for b in value).decode()
    return str(value)
