"""RabbitMQ destination: each failure record as one message, confirmed by the broker.

The message body is the failure record (SPEC section 7, ``application/json``, persistent), its
message id the record's ``requestId``; headers name the mapping, the condition, the error and the
trace (``x-poller-*``) and carry the W3C context of the delivery span. A send counts only when the
broker confirmed the message (publisher confirms) *and* routed it to a queue: it is published
``mandatory``, and an unroutable message comes back as ``basic.return``, which aio-pika hands back
instead of raising (it is a failure here, so nothing is acked on the strength of a message that
went nowhere). A single message (``publish``) goes the same way, its attributes as headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiormq
import orjson
from aio_pika.abc import AbstractConnection
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from poller.config import Config, RabbitMQConnection
from poller.config import RabbitMQDestination as RabbitMQDestinationConfig
from poller.connections.rabbitmq import AMQP_ERRORS, OPERATION_TIMEOUT, close_quietly, connect
from poller.destinations.message import Message, MessageTooLarge
from poller.engine.records import Record
from poller.errors import DestinationError, SourceError
from poller.observability.tracing import trace_headers
from poller.sources.protocol import EventFormat

log = logging.getLogger(__name__)

MAX_ERROR_HEADER = 1024


class RabbitMQDestination:
    """Publishes failure records to ``exchange`` with ``routing_key`` ("" is the default exchange,
    where the routing key names a queue). Connects on first use and again after a failure."""

    def __init__(self, name: str, settings: Any, config: Config) -> None:
        assert isinstance(settings, RabbitMQDestinationConfig)
        connection = config.connection(settings.connection, RabbitMQConnection)
        self.name = name
        self.connection = connection
        self.exchange = settings.exchange
        self.routing_key = settings.routing_key
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._connecting = asyncio.Lock()

    async def send(self, failure: dict[str, Any], records: Sequence[Record], origin: EventFormat) -> None:
        """Returns once the broker confirmed and routed the message; raises DestinationError."""
        try:
            await self._publish(failure)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            # The broker refuses messages over its max_message_size (16 MiB by default since
            # RabbitMQ 4.0); the failure itself must still get through, so without the records.
            if "max size" not in str(exc):
                raise DestinationError(f"{self._where()} refused the message: {exc}") from exc
            log.error(
                "destination %s: failure record too large for %s; sending it without the records",
                self.name,
                self._where(),
            )
            smaller = {
                **failure,
                "records": [],
                "recordsOmitted": "the records are larger than the broker accepts",
            }
            try:
                await self._publish(smaller)
            except aiormq.exceptions.ChannelPreconditionFailed as again:
                raise DestinationError(f"{self._where()} refused the message: {again}") from again

    async def close(self) -> None:
        if self._connection is not None:
            await close_quietly(self._connection)
        self._connection = self._channel = None

    async def publish(self, message: Message) -> None:
        """One message, its attributes as headers; returns once the broker confirmed and routed it."""
        headers: dict[str, Any] = {**message.attributes, **trace_headers()}
        try:
            await self._publish_body(message.body, headers, message.message_id)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            if "max size" in str(exc):
                raise MessageTooLarge(
                    f"{self._where()} refused a message of {len(message.body)} bytes"
                ) from exc
            raise DestinationError(f"{self._where()} refused the message: {exc}") from exc

    async def _publish(self, failure: dict[str, Any]) -> None:
        error = failure["errorInfo"]
        headers: dict[str, Any] = {
            "x-poller-mapping": str(failure["mapping"]),
            "x-poller-condition": str(failure["requestContext"]["condition"]),
            "x-poller-error-type": str(error["errorType"]),
            "x-poller-error-message": str(error["errorMessage"])[:MAX_ERROR_HEADER],
            "x-poller-trace-id": str(failure["traceId"]),
            **trace_headers(),
        }
        await self._publish_body(orjson.dumps(failure), headers, str(failure["requestContext"]["requestId"]))

    async def _publish_body(self, body: bytes, headers: dict[str, Any], message_id: str) -> None:
        channel = await self._ready_channel()
        properties = Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            message_id=message_id,
            timestamp=datetime.now(UTC).replace(microsecond=0),
            app_id="poller",
            headers=headers,
        )
        try:
            result = await channel.basic_publish(
                body,
                exchange=self.exchange,
                routing_key=self.routing_key,
                properties=properties,
                mandatory=True,
                timeout=OPERATION_TIMEOUT,
            )
        except aiormq.exceptions.ChannelPreconditionFailed:
            raise  # send() and publish() decide
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise DestinationError(f"{self._where()}: the exchange does not exist ({exc})") from exc
        except AMQP_ERRORS as exc:
            raise DestinationError(f"{self._where()} did not confirm the message: {exc!r}") from exc
        if isinstance(result, DeliveredMessage):  # basic.return
            raise DestinationError(
                f"{self._where()}: no queue is bound for routing key {self.routing_key!r} (message returned)"
            )
        if not isinstance(result, Basic.Ack):
            raise DestinationError(f"{self._where()} did not take the message ({type(result).__name__})")

    async def _ready_channel(self) -> AbstractChannel:
        async with self._connecting:
            channel = self._channel
            if channel is not None and not channel.is_closed:
                return channel
            if self._connection is not None and not self._connection.is_closed:
                connection = self._connection
            else:
                await self.close()
                try:
                    connection = await connect(self.connection, f"poller destination {self.name}")
                except SourceError as exc:
                    raise DestinationError(str(exc)) from exc
                self._connection = connection
            try:
                channel = await (await connection.channel(publisher_confirms=True)).get_underlay_channel()
            except AMQP_ERRORS as exc:
                await self.close()
                raise DestinationError(f"cannot open a channel to {self._where()}: {exc!r}") from exc
            self._channel = channel
            return channel

    def _where(self) -> str:
        return f"RabbitMQ exchange {self.exchange or '(default)'!r}"
