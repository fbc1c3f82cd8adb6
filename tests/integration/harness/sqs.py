"""The SQS harness: a standard queue on the moto stand-in, failures to another SQS queue.

moto may hand one message to two concurrent ReceiveMessage calls, so the mapping runs one batch (and
so one receiver) at a time unless a test asks for more, and then allows for ``stand_in_duplicates``.
The destination queue is named at once but, while the destination is down, created only by
:meth:`SqsHarness.repair_destination`: until then SendMessage finds no such queue.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

from sqs_support import ATTRIBUTES, EVENT_ATTRIBUTES, REGION, aws, create_queue, receive_all, send
from support import sqs_queue_is_empty, unique_name

from .base import BrokerHarness, Sent


class SqsHarness(BrokerHarness):
    kind = "sqs"
    ordered = False
    stand_in_duplicates = 10

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._stack = AsyncExitStack()
        self._dlq_url = ""

    async def create(self, lanes: int = 1, *, destination_up: bool = True) -> None:
        self.sqs = await self._stack.enter_async_context(aws(self.endpoint, "sqs"))
        # A short visibility timeout: what a killed process held comes back soon.
        self.url, self.resource = await create_queue(self.sqs, "guarantee", VisibilityTimeout="5")
        self.dlq = unique_name("guarantee-dlq")[:75]
        if destination_up:
            await self.repair_destination()

    async def repair_destination(self) -> None:
        self._dlq_url = (await self.sqs.create_queue(QueueName=self.dlq))["QueueUrl"]

    async def close(self) -> None:
        await self._stack.aclose()

    def connections(self) -> dict[str, Any]:
        return {"aws": {"type": "aws", "region": REGION, "endpoint_url": self.endpoint}}

    def source(self) -> dict[str, Any]:
        # Long polls of one second end within the grace a stopping poller gives them.
        return {"type": "sqs", "connection": "aws", "queue": self.url, "wait_time_seconds": 1}

    def destination(self) -> dict[str, Any]:
        return {"type": "sqs", "connection": "aws", "queue": self.dlq}

    def mapping_defaults(self) -> dict[str, Any]:
        return {"scaling_config": {"maximum_concurrency": 1}}

    async def produce(self, bodies: list[str]) -> list[Sent]:
        # Every message carries attributes of the three data types.
        ids = await send(self.sqs, self.url, bodies, attributes=ATTRIBUTES)
        return [Sent(self.resource, message_id, body) for message_id, body in zip(ids, bodies, strict=True)]

    async def unsettled(self) -> int:
        attributes = (
            await self.sqs.get_queue_attributes(
                QueueUrl=self.url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        messages = await receive_all(self.sqs, self._dlq_url, count, timeout=60)
        if not await sqs_queue_is_empty(self.sqs, self._dlq_url):
            messages += await receive_all(self.sqs, self._dlq_url, 1)  # more than expected
        failures = []
        for message in messages:
            failure = json.loads(message["Body"])
            condition = failure["requestContext"]["condition"]
            assert message["MessageAttributes"]["poller-condition"]["StringValue"] == condition
            failures.append(failure)
        return failures

    def check_source_info(self, info: dict[str, Any], sent: Sent) -> None:
        assert info["type"] == "sqs"
        assert info["messageIds"] == [sent.position]
        assert info["queueArn"].endswith(":" + self.resource)

    def check_record(self, record: dict[str, Any], sent: Sent) -> None:
        assert record["messageId"] == sent.position
        assert record["body"] == sent.body
        assert record["eventSource"] == "aws:sqs"
        assert record["awsRegion"] == REGION
        assert record["messageAttributes"] == EVENT_ATTRIBUTES
        assert len(record["md5OfMessageAttributes"]) == 32

    def check_redeliveries(self, alone: list[dict[str, Any]]) -> None:
        # The first attempt alone came from bisecting in process; each retry is a new receive.
        counts = [record["attributes"]["ApproximateReceiveCount"] for record in alone]
        assert counts == [str(n) for n in range(1, len(alone) + 1)], counts
