"""SQS destination: the failure record as the body of one message.

The queue is given as a name, URL or ARN. A record larger than the queue's ``MaximumMessageSize``
goes to the ``overflow_bucket`` (the message then names the object) or is sent without its records
(see :mod:`poller.destinations._aws`). FIFO queues get the mapping as the message group and the
failure record's request id as the deduplication id, so a send retried after a lost answer is
stored once. A send counts once SQS has answered SendMessage. A single message (``publish``) is sent
as its body, with its attributes as message attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poller.config import AwsConnection, Config
from poller.config import SqsDestination as SqsDestinationConfig
from poller.connections.aws import AWS_ERRORS, error_text
from poller.destinations._aws import (
    LazyClient,
    attributes_size,
    fit_body,
    fit_message,
    message_attributes,
    typed_attributes,
)
from poller.destinations.message import Message
from poller.destinations.s3 import S3Writer, partition_of
from poller.engine.records import Record
from poller.errors import DestinationError
from poller.sources.protocol import EventFormat
from poller.sources.sqs.event import QueueInfo, resolve_queue


class SqsDestination:
    """Sends each failure record to one queue; ``send`` returns once SQS answered SendMessage and
    raises DestinationError for anything else (the engine retries it)."""

    def __init__(self, name: str, settings: Any, config: Config) -> None:
        assert isinstance(settings, SqsDestinationConfig)
        connection = config.connection(settings.connection, AwsConnection)
        self.name = name
        self.queue = settings.queue
        self._client = LazyClient(connection, "sqs")
        self._queue: QueueInfo | None = None
        self._overflow = S3Writer(connection, settings.overflow_bucket) if settings.overflow_bucket else None

    async def send(self, failure: dict[str, Any], records: Sequence[Record], origin: EventFormat) -> None:
        try:
            client = await self._client.get()
            if self._queue is None:
                self._queue = await resolve_queue(client, self.queue)
            queue = self._queue
            attributes = message_attributes(failure)
            overflow = self._overflow

            async def store(document: dict[str, Any]) -> tuple[str, str]:
                assert overflow is not None
                return overflow.bucket, await overflow.put(document, partition_of(records))

            body = await fit_message(
                failure,
                limit=queue.maximum_message_size,
                reserved=attributes_size(attributes),
                where=f"SQS queue {queue.name}",
                overflow=store if overflow is not None else None,
            )
            params: dict[str, Any] = {
                "QueueUrl": queue.url,
                "MessageBody": body,
                "MessageAttributes": attributes,
            }
            if queue.fifo:
                params["MessageGroupId"] = str(failure.get("mapping") or self.name)
                params["MessageDeduplicationId"] = failure["requestContext"]["requestId"]
            await client.send_message(**params)
        except AWS_ERRORS as exc:
            raise DestinationError(
                f"SQS queue {self.queue} did not take the failure record: {error_text(exc)}"
            ) from exc
        except ValueError as exc:  # an ARN that is not an SQS queue's
            raise DestinationError(str(exc)) from exc

    async def publish(self, message: Message) -> None:
        """One message, its attributes as message attributes; FIFO queues get its group and id."""
        try:
            client = await self._client.get()
            if self._queue is None:
                self._queue = await resolve_queue(client, self.queue)
            queue = self._queue
            attributes = typed_attributes(message.attributes)
            overflow = self._overflow.put_message if self._overflow is not None else None
            body = await fit_body(
                message,
                limit=queue.maximum_message_size,
                reserved=attributes_size(attributes),
                where=f"SQS queue {queue.name}",
                overflow=overflow,
            )
            params: dict[str, Any] = {
                "QueueUrl": queue.url,
                "MessageBody": body,
                "MessageAttributes": attributes,
            }
            if queue.fifo:
                params["MessageGroupId"] = message.group
                params["MessageDeduplicationId"] = message.message_id
            await client.send_message(**params)
        except AWS_ERRORS as exc:
            raise DestinationError(
                f"SQS queue {self.queue} did not take the message: {error_text(exc)}"
            ) from exc
        except ValueError as exc:  # an ARN that is not an SQS queue's
            raise DestinationError(str(exc)) from exc

    async def close(self) -> None:
        await self._client.close()
        if self._overflow is not None:
            await self._overflow.close()
