"""Handlers for the SQS integration tests. They record what they saw keyed by queue name (taken from
``eventSourceARN``), so each test reads only its own calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

_lock = threading.Lock()
# Per queue: every invocation's records, in order.
CALLS: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
# Per queue: the records of invocations that succeeded, in order.
SUCCEEDED: dict[str, list[dict[str, Any]]] = defaultdict(list)
# Per queue: invocations running now, and the most seen at once.
RUNNING: dict[str, int] = defaultdict(int)
MOST_RUNNING: dict[str, int] = defaultdict(int)
# Behaviour switches set by tests, per queue.
DELAY: dict[str, float] = {}
FAIL_BELOW_RECEIVE: dict[str, dict[str, int]] = {}  # body -> fail while ApproximateReceiveCount < this


def queue_of(event: dict[str, Any]) -> str:
    return str(event["Records"][0]["eventSourceARN"]).rsplit(":", 1)[-1]


def _remember(event: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    queue, records = queue_of(event), event["Records"]
    with _lock:
        CALLS[queue].append(records)
    return queue, records


def _succeeded(queue: str, records: list[dict[str, Any]]) -> None:
    with _lock:
        SUCCEEDED[queue].extend(records)


async def collect(event: dict[str, Any], context: Any) -> None:
    """Record the batch, take DELAY[queue] seconds, fail if a body contains "poison"."""
    queue, records = _remember(event)
    RUNNING[queue] += 1
    MOST_RUNNING[queue] = max(MOST_RUNNING[queue], RUNNING[queue])
    try:
        await asyncio.sleep(DELAY.get(queue, 0.0))
    finally:
        RUNNING[queue] -= 1
    for record in records:
        if "poison" in record["body"]:
            raise ValueError(f"poison message {record['messageId']}")
    _succeeded(queue, records)


def always_fail(event: dict[str, Any], context: Any) -> None:
    _remember(event)
    raise RuntimeError("always failing")


def slow(event: dict[str, Any], context: Any) -> None:
    """A sync handler that blocks its thread for DELAY[queue] seconds."""
    queue, records = _remember(event)
    time.sleep(DELAY.get(queue, 0.0))
    _succeeded(queue, records)


def in_order(event: dict[str, Any], context: Any) -> None:
    """Process records in order; a body in FAIL_BELOW_RECEIVE[queue] fails the batch until SQS has
    delivered it that many times."""
    queue, records = _remember(event)
    for record in records:
        below = FAIL_BELOW_RECEIVE.get(queue, {}).get(record["body"], 0)
        if int(record["attributes"]["ApproximateReceiveCount"]) < below:
            raise RuntimeError(f"{record['body']} failed")
    _succeeded(queue, records)


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
    with _lock:
        CALLS["powertools:" + queue].append([seen])
    if record.json_body.get("fail") and record.attributes.approximate_receive_count == "1":
        raise ValueError(f"order {record.json_body['order']} failed")


_processor = BatchProcessor(event_type=EventType.SQS)


def powertools(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda Powertools' partial batch processing, exactly as a Lambda handler uses it."""
    return process_partial_response(
        event=event, record_handler=_powertools_record, processor=_processor, context=context
    )
