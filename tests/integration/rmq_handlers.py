"""Handlers for the RabbitMQ integration tests. They run in execution environments (other
processes), so they record what they saw in files (``recording``), keyed by queue
(``"<queue>::<vhost>"``; each test uses its own queues): read with :func:`calls`,
:func:`most_running`, :func:`failed_at` and :func:`powertools_seen`. What a test wants of them it
sets in the function's ``environment``: ``BATCH_DELAY`` (seconds a batch), ``FAIL_IDS`` (message ids
that always fail, comma-separated) and ``FAIL_ONCE`` (JSON list of bodies reported failed the first
time each is seen)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import recording
from aws_lambda_powertools.utilities.data_classes.rabbit_mq_event import RabbitMQEvent


def body(message: dict[str, Any]) -> bytes:
    return base64.b64decode(message["data"])


def calls(key: str) -> list[list[dict[str, Any]]]:
    """The messages of ``key`` of each invocation that held messages of it, in order."""
    return [call["messages"] for call in recording.entries(key)]


def most_running(key: str) -> int:
    """The most invocations holding messages of ``key`` in the handler at once."""
    return recording.most_at_once(tuple(call["span"]) for call in recording.entries(key))


def failed_at(message_id: str) -> list[float]:
    """When (``time.monotonic()``) each invocation that :func:`stubborn` failed for it began."""
    return [float(when) for when in recording.entries(f"failed-at:{message_id}")]


def _remember(event: dict[str, Any], started: float) -> list[dict[str, Any]]:
    messages = []
    for key, batch in event["rmqMessagesByQueue"].items():
        recording.append(key, {"messages": batch, "span": [started, time.monotonic()]})
        messages += batch
    return messages


async def collect(event: dict[str, Any], context: Any) -> None:
    """Take BATCH_DELAY seconds, then record the batch and when it ran."""
    started = time.monotonic()
    await asyncio.sleep(float(os.environ.get("BATCH_DELAY", "0")))
    _remember(event, started)


def poison(event: dict[str, Any], context: Any) -> None:
    """Fail the batch if a message body contains b"poison"."""
    for message in _remember(event, time.monotonic()):
        if b"poison" in body(message):
            raise ValueError(f"poison message {message['basicProperties']['messageId']}")


def stubborn(event: dict[str, Any], context: Any) -> None:
    """Fail the batch if it holds a message whose id is in FAIL_IDS."""
    started = time.monotonic()
    fail_ids = set(os.environ.get("FAIL_IDS", "").split(","))
    failing = [
        m["basicProperties"]["messageId"]
        for m in _remember(event, started)
        if m["basicProperties"]["messageId"] in fail_ids
    ]
    for message_id in failing:
        recording.append(f"failed-at:{message_id}", started)
    if failing:
        raise RuntimeError(f"cannot handle {failing[0]} yet")


def partial_once(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Report the messages whose body is in FAIL_ONCE as failed, the first time each is seen."""
    fail_once = set(json.loads(os.environ.get("FAIL_ONCE", "[]")))
    failures = [
        {"itemIdentifier": message["basicProperties"]["messageId"]}
        for message in _remember(event, time.monotonic())
        if body(message).decode() in fail_once
        and recording.first_time("partial-once", body(message).decode())
    ]
    return {"batchItemFailures": failures}


def powertools_seen(key: str) -> list[dict[str, Any]]:
    """What :func:`powertools` read of each message of ``key``."""
    return list(recording.entries("powertools:" + key))


def powertools(event: dict[str, Any], context: Any) -> None:
    """Read the event through AWS Lambda Powertools' RabbitMQ data class, as a Lambda handler would."""
    parsed = RabbitMQEvent(event)
    for key, messages in parsed.rmq_messages_by_queue.items():
        for message in messages:
            properties = message.basic_properties
            recording.append(
                "powertools:" + key,
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
                },
            )
