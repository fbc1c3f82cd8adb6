"""Handlers for the SQS integration tests. They run in execution environments (other processes),
so they record what they saw in files (``recording``), keyed by queue name (taken from
``eventSourceARN``): each test reads only its own calls with :func:`calls`, :func:`succeeded` and
:func:`most_running`. What a test wants of them it sets in the function's ``environment``: ``DELAY``
(seconds a batch) and ``FAIL_BELOW_RECEIVE`` (JSON: body -> fail while ApproximateReceiveCount is
below this)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import recording
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord


def queue_of(event: dict[str, Any]) -> str:
    return str(event["Records"][0]["eventSourceARN"]).rsplit(":", 1)[-1]


def calls(queue: str) -> list[list[dict[str, Any]]]:
    """Every invocation's records, in order."""
    return [call["records"] for call in recording.entries(queue)]


def succeeded(queue: str) -> list[dict[str, Any]]:
    """The records of invocations that succeeded, in order."""
    return [record for call in recording.entries(queue) if call["succeeded"] for record in call["records"]]


def most_running(queue: str) -> int:
    """The most invocations in the handler at once."""
    return recording.most_at_once(tuple(call["span"]) for call in recording.entries(queue))


def _record(event: dict[str, Any], started: float, *, ok: bool) -> None:
    recording.append(
        queue_of(event), {"records": event["Records"], "succeeded": ok, "span": [started, time.monotonic()]}
    )


def _delay() -> float:
    return float(os.environ.get("DELAY", "0"))


async def collect(event: dict[str, Any], context: Any) -> None:
    """Take DELAY seconds, record the batch, fail if a body contains "poison"."""
    started = time.monotonic()
    await asyncio.sleep(_delay())
    poisoned = [record for record in event["Records"] if "poison" in record["body"]]
    _record(event, started, ok=not poisoned)
    if poisoned:
        raise ValueError(f"poison message {poisoned[0]['messageId']}")


def always_fail(event: dict[str, Any], context: Any) -> None:
    _record(event, time.monotonic(), ok=False)
    raise RuntimeError("always failing")


def slow(event: dict[str, Any], context: Any) -> None:
    """A sync handler that blocks for DELAY seconds."""
    started = time.monotonic()
    time.sleep(_delay())
    _record(event, started, ok=True)


def in_order(event: dict[str, Any], context: Any) -> None:
    """Process records in order; a body in FAIL_BELOW_RECEIVE fails the batch until SQS has
    delivered it that many times."""
    fail_below = json.loads(os.environ.get("FAIL_BELOW_RECEIVE", "{}"))
    for record in event["Records"]:
        if int(record["attributes"]["ApproximateReceiveCount"]) < fail_below.get(record["body"], 0):
            _record(event, time.monotonic(), ok=False)
            raise RuntimeError(f"{record['body']} failed")
    _record(event, time.monotonic(), ok=True)


def _powertools_record(record: SQSRecord) -> None:
    queue = record.event_source_arn.rsplit(":", 1)[-1]
    tenant = record.message_attributes["tenant"]
    seen = {
        "messageId": record.message_id,
        "body": record.json_body,
        "receiveCount": record.attributes.approximate_receive_count,
        "tenant": tenant.string_value if tenant else None,
        "region": record.aws_region,
    }
    recording.append("powertools:" + queue, [seen])
    if record.json_body.get("fail") and record.attributes.approximate_receive_count == "1":
        raise ValueError(f"order {record.json_body['order']} failed")


_processor = BatchProcessor(event_type=EventType.SQS)


def powertools(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda Powertools' partial batch processing, exactly as a Lambda handler uses it."""
    return process_partial_response(
        event=event, record_handler=_powertools_record, processor=_processor, context=context
    )
