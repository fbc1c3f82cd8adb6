"""SNS destination: the failure record as the message of one Publish to ``topic_arn``.

SNS takes at most 256 KB: a larger record goes to the ``overflow_bucket`` (the message then names the
object) or is published without its records (see :mod:`poller.destinations._aws`). FIFO topics get
the mapping as the message group and the failure record's request id as the deduplication id. A
publish counts once SNS has answered it with a message id. A single message (``publish``) is
published as it is, with its attributes as message attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poller.config import AwsConnection, Config
from poller.config import SnsDestination as SnsDestinationConfig
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

SNS_MAX_MESSAGE_BYTES = 262_144


class SnsDestination:
    """Publishes each failure record to one topic; ``send`` returns once SNS answered Publish and
    raises DestinationError for anything else (the engine retries it)."""

    def __init__(self, name: str, settings: Any, config: Config) -> None:
        assert isinstance(settings, SnsDestinationConfig)
        connection = config.connection(settings.connection, AwsConnection)
        self.name = name
        self.topic_arn = settings.topic_arn
        self._client = LazyClient(connection, "sns")
        self._overflow = S3Writer(connection, settings.overflow_bucket) if settings.overflow_bucket else None

    async def send(self, failure: dict[str, Any], records: Sequence[Record], origin: EventFormat) -> None:
        attributes = message_attributes(failure)
        overflow = self._overflow

        async def store(document: dict[str, Any]) -> tuple[str, str]:
            assert overflow is not None
            return overflow.bucket, await overflow.put(document, partition_of(records))

        try:
            client = await self._client.get()
            message = await fit_message(
                failure,
                limit=SNS_MAX_MESSAGE_BYTES,
                reserved=attributes_size(attributes),
                where="SNS",
                overflow=store if overflow is not None else None,
            )
            params: dict[str, Any] = {
                "TopicArn": self.topic_arn,
                "Message": message,
                "MessageAttributes": attributes,
            }
            if self.topic_arn.endswith(".fifo"):
                params["MessageGroupId"] = str(failure.get("mapping") or self.name)
                params["MessageDeduplicationId"] = failure["requestContext"]["requestId"]
            await client.publish(**params)
        except AWS_ERRORS as exc:
            raise DestinationError(
                f"SNS topic {self.topic_arn} did not take the failure record: {error_text(exc)}"
            ) from exc

    async def publish(self, message: Message) -> None:
        """One message, its attributes as message attributes; FIFO topics get its group and id."""
        attributes = typed_attributes(message.attributes)
        overflow = self._overflow.put_message if self._overflow is not None else None
        try:
            client = await self._client.get()
            body = await fit_body(
                message,
                limit=SNS_MAX_MESSAGE_BYTES,
                reserved=attributes_size(attributes),
                where="SNS",
                overflow=overflow,
            )
            params: dict[str, Any] = {
                "TopicArn": self.topic_arn,
                "Message": body,
                "MessageAttributes": attributes,
            }
            if self.topic_arn.endswith(".fifo"):
                params["MessageGroupId"] = message.group
                params["MessageDeduplicationId"] = message.message_id
            await client.publish(**params)
        except AWS_ERRORS as exc:
            raise DestinationError(
                f"SNS topic {self.topic_arn} did not take the message: {error_text(exc)}"
            ) from exc

    async def close(self) -> None:
        await self._client.close()
        if self._overflow is not None:
            await self._overflow.close()
