"""Handlers for the RabbitMQ integration tests. They record what they saw keyed by queue (each test
uses its own queues)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections import defaultdict
from typing import Any

from aws_lambda_powertools.utilities.data_classes.rabbit_mq_event import RabbitMQEvent

# queue key ("<queue>::<vhost>") -> the messages of each invocation that held messages of it
CALLS: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
# queue key -> [invocations running now, most at once]
CONCURRENCY: dict[str, list[int]] = defaultdict(lambda: [0, 0])
BATCH_DELAY: dict[str, float] = {}
FAIL_IDS: set[str] = set()  # stubborn: messages that always fail
FAILED_AT: dict[str, list[float]] = defaultdict(list)  # stubborn: when each of them failed (monotonic)
FAIL_ONCE: set[bytes] = set()  # partial_once: bodies reported as failed the first time seen
POWERTOOLS: dict[str, list[dict[str, Any]]] = defaultdict(list)
_lock = threading.Lock()


def body(message: dict[str, Any]) -> bytes:
    return base64.b64decode(message["data"])


def _remember(event: dict[str, Any]) -> list[dict[str, Any]]:
    messages = []
    with _lock:
        for key, batch in event["rmqMessagesByQueue"].items():
            CALLS[key].append(batch)
            messages += batch
    return messages


async def collect(event: dict[str, Any], context: Any) -> None:
    """Record the batch; take BATCH_DELAY[key] seconds, counting how many run at once."""
    _remember(event)
    keys = list(event["rmqMessagesByQueue"])
    for key in keys:
        running = CONCURRENCY[key]
        running[0] += 1
        running[1] = max(running[1], running[0])
    try:
        await asyncio.sleep(max(BATCH_DELAY.get(key, 0.0) for key in keys))
    finally:
        for key in keys:
            CONCURRENCY[key][0] -= 1


def poison(event: dict[str, Any], context: Any) -> None:
    """Fail the batch if a message body contains b"poison"."""
    for message in _remember(event):
        if b"poison" in body(message):
            raise ValueError(f"poison message {message['basicProperties']['messageId']}")


def stubborn(event: dict[str, Any], context: Any) -> None:
    """Fail the batch if it holds a message whose id is in FAIL_IDS."""
    failing = [
        m["basicProperties"]["messageId"]
        for m in _remember(event)
        if m["basicProperties"]["messageId"] in FAIL_IDS
    ]
    for message_id in failing:
        FAILED_AT[message_id].append(time.monotonic())
    if failing:
        raise RuntimeError(f"cannot handle {failing[0]} yet")


def partial_once(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Report the messages whose body is in FAIL_ONCE as failed, the first time each is seen."""
    failures = []
    for message in _remember(event):
        with _lock:
            if body(message) in FAIL_ONCE:
                FAIL_ONCE.discard(body(message))
                failures.append({"itemIdentifier": message["basicProperties"]["messageId"]})
    return {"batchItemFailures": failures}


def powertools(event: dict[str, Any], context: Any) -> None:
    """Read the event through AWS Lambda Powertools' RabbitMQ data class, as a Lambda handler would."""
    parsed = RabbitMQEvent(event)
    for key, messages in parsed.rmq_messages_by_queue.items():
        for message in messages:
            properties = message.basic_properties
            POWERTOOLS[key].append(
                {
                    "event_source": parsed.event_source,
                    "event_source_arn": parsed.event_source_arn,
                    "content_type": properties.content_type,
                    "content_encoding": properties.content_encoding,
                    "headers": properties.headers,
                    "delivery_mode": properties.delivery_mode,
                    "priority": properties.priority,
                    "correlation_id": properties.correlation_id,
                    "reply_to": properties.reply_to,
                    "expiration": properties.expiration,
                    "message_id": properties.message_id,
                    "timestamp": properties.timestamp,
                    "type": properties.get_type,
                    "user_id": properties.user_id,
                    "app_id": properties.app_id,
                    "cluster_id": properties.cluster_id,
                    "body_size": properties.body_size,
                    "redelivered": message.redelivered,
                    "decoded_data": message.decoded_data,
                    "json_data": message.json_data,
                }
            )
