"""SQS queues and Lambda's SQS event: finding a queue given as a name, URL or ARN, and turning a
ReceiveMessage message into the event record Lambda would hand the handler.

Event: https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html
"""

from __future__ import annotations

import base64
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from poller.engine.filters import SQS_FILTER_FIELD
from poller.engine.records import Record, json_copy, new_record
from poller.sources.protocol import OriginalMessage

# --- the queue -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueInfo:
    """What the source and the SQS destination need to know about a queue."""

    url: str
    arn: str
    name: str
    region: str
    fifo: bool
    visibility_timeout: int
    maximum_message_size: int


async def resolve_queue(client: Any, queue: str) -> QueueInfo:
    """Find a queue given as a name, a URL or an ARN. Raises botocore's errors (the caller maps
    them) and ValueError for an ARN that is not an SQS queue's."""
    if queue.startswith(("https://", "http://")):
        url = queue
    elif queue.startswith("arn:"):
        parts = queue.split(":")
        if len(parts) != 6 or parts[2] != "sqs":
            raise ValueError(f"{queue!r} is not an SQS queue ARN (arn:aws:sqs:REGION:ACCOUNT:NAME)")
        url = (await client.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4]))["QueueUrl"]
    else:
        url = (await client.get_queue_url(QueueName=queue))["QueueUrl"]
    response = await client.get_queue_attributes(
        QueueUrl=url, AttributeNames=["QueueArn", "VisibilityTimeout", "FifoQueue", "MaximumMessageSize"]
    )
    attributes = response["Attributes"]
    arn = attributes["QueueArn"]
    return QueueInfo(
        url=url,
        arn=arn,
        name=arn.rsplit(":", 1)[-1],
        region=arn.split(":")[3],
        fifo=attributes.get("FifoQueue") == "true",
        visibility_timeout=int(attributes.get("VisibilityTimeout", "30")),
        maximum_message_size=int(attributes.get("MaximumMessageSize", "262144")),
    )


# --- the event -----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """A ReceiveMessage attribute value as Lambda writes it: camelCase, binary values in base64,
    both list fields always present."""
    converted: dict[str, Any] = {}
    if "StringValue" in value:
        converted["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        converted["binaryValue"] = _b64(value["BinaryValue"])
    converted["stringListValues"] = list(value.get("StringListValues", []))
    converted["binaryListValues"] = [_b64(item) for item in value.get("BinaryListValues", [])]
    converted["dataType"] = value["DataType"]
    return converted


def to_record(message: dict[str, Any], queue: QueueInfo, lane: str) -> Record:
    """A ReceiveMessage message (all system and message attributes requested) as a Record whose
    payload is Lambda's SQS event record."""
    attributes: dict[str, str] = dict(message.get("Attributes", {}))
    payload: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": {
            name: message_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
    }
    payload.update(
        # null when the message has no attributes, as Lambda sends it
        md5OfMessageAttributes=message.get("MD5OfMessageAttributes"),
        md5OfBody=message["MD5OfBody"],
        eventSource="aws:sqs",
        eventSourceARN=queue.arn,
        awsRegion=queue.region,
    )
    sent = _count(attributes.get("SentTimestamp"))
    return new_record(
        partition=queue.name,
        lane=lane,
        position=message["MessageId"],
        item_key=message["MessageId"],
        payload=payload,
        size=len(orjson.dumps(payload)) + 1,
        timestamp=sent / 1000 if sent else time.time(),
        # The broker's count includes this delivery; the engine wants the earlier ones.
        receive_count=max(0, (_count(attributes.get("ApproximateReceiveCount")) or 1) - 1),
        # Standard queues may carry a MessageGroupId too (fair queues), which orders nothing.
        group=attributes.get("MessageGroupId") if queue.fifo else None,
    )


def _count(text: str | None) -> int | None:
    """A numeric system attribute, or None when it is missing or not a number: SQS always sends
    digits, but a record must not stop a poller because an SQS-compatible server did not
    (found by fuzzing, tests/fuzz/)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _fresh(payload: dict[str, Any]) -> dict[str, Any]:
    """The event record with containers of its own (EventFormat.event). ``dict.copy`` rather than
    ``{**payload}``: it clones the table, several times faster on this hot path."""
    fresh = payload.copy()
    fresh["attributes"] = payload["attributes"].copy()
    attributes = payload["messageAttributes"]
    fresh["messageAttributes"] = json_copy(attributes) if attributes else {}
    return fresh


class SqsEventFormat:
    """Lambda's SQS event: ``{"Records": [...]}``; an item is identified by its ``messageId``."""

    messaging_system = "aws_sqs"
    filter_field = SQS_FILTER_FIELD

    def __init__(self, queue: QueueInfo | None = None) -> None:
        self.queue = queue  # known once the source has started

    def event(self, records: Sequence[Record], *, own: bool = True) -> dict[str, Any]:
        if not own:
            return {"Records": [record.payload for record in records]}
        return {"Records": [_fresh(record.payload) for record in records]}

    def describe(self, records: Sequence[Record]) -> dict[str, Any]:
        first = records[0].payload
        described: dict[str, Any] = {
            "type": "sqs",
            "queueArn": first["eventSourceARN"],
            "queueUrl": self.queue.url if self.queue else None,
            "batchSize": len(records),
            "messageIds": [record.payload["messageId"] for record in records],
        }
        groups = sorted({record.group for record in records if record.group is not None})
        if groups:
            described["messageGroupIds"] = groups
        return described

    def item_key(self, identifier: object) -> Hashable | None:
        return identifier if isinstance(identifier, str) and identifier else None

    def trace_parent(self, record: Record) -> str | None:
        """A W3C ``traceparent`` message attribute, else the X-Ray ``AWSTraceHeader`` that SQS
        adds for producers traced by X-Ray, as a traceparent."""
        payload = record.payload
        value = payload["messageAttributes"].get("traceparent")
        if isinstance(value, dict) and isinstance(value.get("stringValue"), str):
            return str(value["stringValue"])
        xray = payload["attributes"].get("AWSTraceHeader")
        return xray_to_traceparent(xray) if isinstance(xray, str) else None

    def original_message(self, record: Record) -> OriginalMessage | None:
        return None


def xray_to_traceparent(header: str) -> str | None:
    """An X-Ray trace header (``Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=0|1``) as a W3C
    traceparent: X-Ray's trace id is the epoch and random parts of its root together
    (https://docs.aws.amazon.com/xray/latest/devguide/xray-concepts.html#xray-concepts-tracingheader)."""
    fields = dict(part.split("=", 1) for part in header.split(";") if "=" in part)
    root, parent = fields.get("Root", ""), fields.get("Parent", "")
    pieces = root.split("-")
    if len(pieces) != 3 or len(parent) != 16:
        return None
    return f"00-{pieces[1]}{pieces[2]}-{parent}-{'01' if fields.get('Sampled') == '1' else '00'}"
