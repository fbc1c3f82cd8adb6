"""The RabbitMQ harness: a classic queue, failures to another queue through the default exchange.

While the destination is down its queue is not declared: the failure record is unroutable, the
broker returns it, and poller keeps the delivery unacked until :meth:`RabbitMQHarness.repair_destination`
declares the queue. Nothing unacked is read from ``rabbitmqctl``, so these tests need the local node.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Any

import aio_pika
from rabbitmq_support import ascii_bytes, declare, delete, depth, publish, retry_depth, take, unacked
from support import unique_name, wait_for
from yarl import URL

from .base import BrokerHarness, Sent

WHEN = datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)
# Every message carries every property and headers of each AMQP table type ...
HEADERS: dict[str, Any] = {
    "source": "web",
    "count": 7,
    "ratio": 0.25,
    "flag": True,
    "nested": {"k": "x"},
    "list": [1, "a"],
    "when": WHEN,
    "raw": bytearray(b"\xff\x00"),
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


# ... and this is how the RabbitMQ event shows them (as AWS's Java-built events do).
EVENT_HEADERS = {
    "source": ascii_bytes("web"),
    "count": 7,
    "ratio": 0.25,
    "flag": True,
    "nested": {"k": ascii_bytes("x")},
    "list": [1, ascii_bytes("a")],
    "when": "Jun 10, 2024, 6:13:20 AM",
    "raw": [-1, 0],
    "traceparent": ascii_bytes(HEADERS["traceparent"]),
}


class RabbitMQHarness(BrokerHarness):
    kind = "rabbitmq"
    ordered = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.user = URL(url).user or "guest"  # the broker checks user_id against the connection's user

    async def create(self, lanes: int = 1, *, destination_up: bool = True) -> None:
        self.resource, self.dlq = unique_name("rmq-guarantee"), unique_name("rmq-guarantee-dlq")
        await declare(self.url, self.resource)
        if destination_up:
            await self.repair_destination()

    async def repair_destination(self) -> None:
        await declare(self.url, self.dlq)

    async def close(self) -> None:
        if hasattr(self, "resource"):
            await delete(self.url, self.resource, self.dlq)

    def connections(self) -> dict[str, Any]:
        return {"rabbit": {"type": "rabbitmq", "url": self.url}}

    def source(self) -> dict[str, Any]:
        return {"type": "rabbitmq", "connection": "rabbit", "queues": [self.resource]}

    def destination(self) -> dict[str, Any]:
        return {"type": "rabbitmq", "connection": "rabbit", "exchange": "", "routing_key": self.dlq}

    async def produce(self, bodies: list[str]) -> list[Sent]:
        messages = [
            aio_pika.Message(
                body.encode(),
                headers=HEADERS,
                content_type="application/json",
                content_encoding="identity",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                priority=5,
                correlation_id=f"corr-{i}",
                reply_to="replies",
                expiration=600,
                message_id=f"msg-{i}",
                timestamp=WHEN,
                type="order.created",
                user_id=self.user,
                app_id="checkout",
            )
            for i, body in enumerate(bodies)
        ]
        await publish(self.url, self.resource, messages)
        return [Sent(f"{self.resource}::/", f"msg-{i}", body) for i, body in enumerate(bodies)]

    def event_properties(self, i: int, body: str) -> dict[str, Any]:
        """The ``basicProperties`` of message ``i`` in the event."""
        return {
            "contentType": "application/json",
            "contentEncoding": "identity",
            "headers": EVENT_HEADERS,
            "deliveryMode": 2,
            "priority": 5,
            "correlationId": f"corr-{i}",
            "replyTo": "replies",
            "expiration": "600000",
            "messageId": f"msg-{i}",
            "timestamp": "Jun 10, 2024, 6:13:20 AM",
            "type": "order.created",
            "userId": self.user,
            "appId": "checkout",
            "clusterId": None,
            "bodySize": len(body.encode()),
        }

    async def unsettled(self) -> int:
        # Ready before unacked: a message that is not retried again only moves that way, so it is
        # seen in one of them until it is acked.
        waiting = await depth(self.url, self.resource) + await retry_depth(self.url, self.resource)
        if waiting:
            return waiting
        return await asyncio.to_thread(unacked, self.resource)  # rabbitmqctl takes a while: only if needed

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        if count:
            await wait_for(
                lambda: _at_least(depth(self.url, self.dlq), count), timeout=60, message="dead-lettered"
            )
        failures = []
        for message in await take(self.url, self.dlq):
            failure = json.loads(message.body)
            properties = message.header.properties
            assert properties.content_type == "application/json"
            assert properties.delivery_mode == 2
            assert properties.message_id == failure["requestContext"]["requestId"]
            headers = properties.headers or {}
            assert headers["x-poller-condition"] == failure["requestContext"]["condition"]
            assert headers["x-poller-error-type"] == failure["errorInfo"]["errorType"]
            assert headers["x-poller-mapping"] == failure["mapping"]
            assert headers["x-poller-trace-id"] == failure["traceId"]
            failures.append(failure)
        return failures

    def check_source_info(self, info: dict[str, Any], sent: Sent) -> None:
        assert info["type"] == "rabbitmq"
        assert info["queues"] == [self.resource]
        assert info["virtualHost"] == "/"
        assert info["messageIds"] == [sent.position]
        assert info["eventSourceArn"].startswith("arn:aws:mq:")

    def check_record(self, record: dict[str, Any], sent: Sent) -> None:
        index = int(str(sent.position).removeprefix("msg-"))
        assert record == {
            "basicProperties": self.event_properties(index, sent.body),
            "redelivered": record["redelivered"],  # see check_redeliveries
            "data": base64.b64encode(sent.body.encode()).decode(),
        }

    def check_redeliveries(self, alone: list[dict[str, Any]]) -> None:
        # The first attempt alone came from bisecting in process; each retry through a delay queue.
        flags = [record["redelivered"] for record in alone]
        assert flags == [False] + [True] * (len(alone) - 1), flags


async def _at_least(count: Any, expected: int) -> bool:
    return bool(await count >= expected)
