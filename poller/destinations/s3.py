"""S3 destination: one object per failure record, with the records in it.

Keys follow AWS's layout for S3 on-failure destinations
(https://docs.aws.amazon.com/lambda/latest/dg/kinesis-on-failure-destination.html), under the
destination's prefix, with the mapping name where AWS has the mapping's UUID:
``<prefix>/aws/lambda/<mapping>/<partition>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>``; the time is the
failure record's ``timestamp``. A single message (``publish``: an asynchronous invocation's record
or dead-lettered event) goes to ``<prefix>/aws/lambda/async/<function>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<id>``,
its attributes as the object's metadata. A write counts once S3 has answered PutObject.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from poller.config import AwsConnection, Config
from poller.config import S3Destination as S3DestinationConfig
from poller.connections.aws import AWS_ERRORS, error_text
from poller.destinations._aws import LazyClient, encode
from poller.destinations.message import Message
from poller.engine.records import Record
from poller.errors import DestinationError
from poller.sources.protocol import EventFormat


def object_key(prefix: str, mapping: str, partition: str, timestamp: str, unique: str | None = None) -> str:
    """The key of a failure record's object. ``timestamp`` is the record's ISO 8601 time (UTC)."""
    when = datetime.fromisoformat(timestamp).astimezone(UTC)
    # A partition or mapping name holding '/' must not add levels to the layout.
    parts = [
        "aws/lambda",
        quote(mapping, safe=""),
        quote(partition, safe=""),
        when.strftime("%Y/%m/%d"),
        f"{when.strftime('%Y-%m-%dT%H.%M.%S')}-{unique or uuid.uuid4()}",
    ]
    head = prefix.strip("/")
    return "/".join([head, *parts] if head else parts)


def message_key(prefix: str, group: str, when: datetime, unique: str) -> str:
    """The key of a single message's object (``group``: the function it belongs to)."""
    parts = [
        "aws/lambda/async",
        quote(group, safe=""),
        when.strftime("%Y/%m/%d"),
        f"{when.strftime('%Y-%m-%dT%H.%M.%S')}-{quote(unique, safe='')}",
    ]
    head = prefix.strip("/")
    return "/".join([head, *parts] if head else parts)


class S3Writer:
    """Writes failure records as objects in one bucket (the S3 destination, and the overflow of
    the SQS and SNS destinations)."""

    def __init__(self, connection: AwsConnection, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client = LazyClient(connection, "s3")

    async def put(self, failure: dict[str, Any], partition: str) -> str:
        """Store the record; return its key once S3 confirmed it. Raises DestinationError."""
        key = object_key(self.prefix, str(failure.get("mapping", "")), partition, failure["timestamp"])
        try:
            client = await self._client.get()
            await client.put_object(
                Bucket=self.bucket, Key=key, Body=encode(failure), ContentType="application/json"
            )
        except AWS_ERRORS as exc:
            raise DestinationError(f"S3 bucket {self.bucket} did not store {key}: {error_text(exc)}") from exc
        return key

    async def put_message(self, message: Message) -> tuple[str, str]:
        """Store one message, its attributes as the object's metadata (ASCII, as S3 wants it);
        return (bucket, key) once S3 confirmed it. Raises DestinationError."""
        key = message_key(self.prefix, message.group, datetime.now(UTC), message.message_id)
        metadata = {
            name: str(value).encode("ascii", "backslashreplace").decode()
            for name, value in message.attributes.items()
        }
        try:
            client = await self._client.get()
            await client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=message.body,
                ContentType="application/json",
                Metadata=metadata,
            )
        except AWS_ERRORS as exc:
            raise DestinationError(f"S3 bucket {self.bucket} did not store {key}: {error_text(exc)}") from exc
        return self.bucket, key

    async def close(self) -> None:
        await self._client.close()


def partition_of(records: Sequence[Record]) -> str:
    return records[0].partition if records else "unknown"


class S3Destination:
    """Stores each failure record as one object; ``send`` returns once S3 answered PutObject and
    raises DestinationError for anything else (the engine retries it)."""

    def __init__(self, name: str, settings: Any, config: Config) -> None:
        assert isinstance(settings, S3DestinationConfig)
        connection = config.connection(settings.connection, AwsConnection)
        self.name = name
        self.writer = S3Writer(connection, settings.bucket, settings.prefix)

    async def send(self, failure: dict[str, Any], records: Sequence[Record], origin: EventFormat) -> None:
        await self.writer.put(failure, partition_of(records))

    async def publish(self, message: Message) -> None:
        await self.writer.put_message(message)

    async def close(self) -> None:
        await self.writer.close()
