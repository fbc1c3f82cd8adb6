"""SQS helpers for the integration tests: clients of the moto stand-in, queues, sending, receiving.

moto's SQS costs time in proportion to a queue's depth (``reference/brokers.md``): keep the queues
these make shallow, a few hundred messages at most.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiobotocore.session import get_session
from support import unique_name

REGION = "us-east-1"

# Message attributes of the three data types ...
ATTRIBUTES = {
    "tenant": {"DataType": "String", "StringValue": "acme"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff\x80"},
    "count": {"DataType": "Number", "StringValue": "7"},
}
# ... as an SQS event (and a failure record) shows them.
EVENT_ATTRIBUTES = {
    "tenant": {"stringValue": "acme", "stringListValues": [], "binaryListValues": [], "dataType": "String"},
    "blob": {"binaryValue": "AP+A", "stringListValues": [], "binaryListValues": [], "dataType": "Binary"},
    "count": {"stringValue": "7", "stringListValues": [], "binaryListValues": [], "dataType": "Number"},
}


@asynccontextmanager
async def aws(endpoint: str, service: str) -> AsyncIterator[Any]:
    async with get_session().create_client(service, region_name=REGION, endpoint_url=endpoint) as client:
        yield client


async def create_queue(sqs: Any, prefix: str, **attributes: str) -> tuple[str, str]:
    """A fresh queue; returns (url, name). A ``.fifo`` prefix makes a FIFO queue."""
    fifo = prefix.endswith(".fifo")
    name = unique_name(prefix.removesuffix(".fifo"))[:75] + (".fifo" if fifo else "")
    if fifo:
        attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true", **attributes}
    url = (await sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
    return url, name


async def send(
    sqs: Any, url: str, bodies: list[str], attributes: dict[str, Any] | None = None, group: Any = None
) -> list[str]:
    """Send in batches of ten, in order; returns the message ids. ``group(body)`` names the FIFO group."""
    ids: list[str] = []
    for start in range(0, len(bodies), 10):
        entries = []
        for index, body in enumerate(bodies[start : start + 10]):
            entry: dict[str, Any] = {"Id": str(index), "MessageBody": body}
            if attributes:
                entry["MessageAttributes"] = attributes
            if group is not None:
                entry["MessageGroupId"] = group(body)
            entries.append(entry)
        response = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not response.get("Failed"), response
        by_id = {ok["Id"]: ok["MessageId"] for ok in response["Successful"]}
        ids += [by_id[str(index)] for index in range(len(entries))]
    return ids


async def receive_all(sqs: Any, url: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
    """Receive (and delete) ``count`` messages from ``url`` within ``timeout`` seconds."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(received)} of {count} messages arrived in {timeout:g} s")
        response = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        for message in response.get("Messages", []):
            received.append(message)
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return received
