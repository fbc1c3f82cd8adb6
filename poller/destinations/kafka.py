"""Kafka destination: one message per failed record, as AWS's Kafka-topic on-failure destination.

Each message keeps the original key and headers, adds ``x-poller-*`` headers naming where the
record came from and why it failed, and carries the failure record (with that one record) as its
value. A send counts only when every message is acknowledged by all in-sync replicas. A single
message (``publish``: an invocation record, a dead-lettered event) is produced with its id as key
and its attributes as headers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from poller.config import Config, KafkaConnection
from poller.config import KafkaDestination as KafkaDestinationConfig
from poller.connections.kafka import client_options, start_client
from poller.destinations.message import Message, MessageTooLarge
from poller.engine.records import Record
from poller.errors import DestinationError, SourceError
from poller.observability.tracing import trace_headers
from poller.sources.protocol import EventFormat, OriginalMessage

log = logging.getLogger(__name__)

# Larger than the 6 MB invocation limit, so a failure record of an invocable batch fits; the
# topic's own max.message.bytes may still refuse it (then the records are left out, see send).
MAX_REQUEST_SIZE = 8 * 1024 * 1024
MAX_ERROR_HEADER = 1024


class KafkaDestination:
    def __init__(self, name: str, settings: Any, config: Config) -> None:
        assert isinstance(settings, KafkaDestinationConfig)
        connection = config.connection(settings.connection, KafkaConnection)
        self.name = name
        self.topic = settings.topic
        self.connection = connection
        self._producer: AIOKafkaProducer | None = None

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            try:
                options = client_options(self.connection)
            except SourceError as exc:
                raise DestinationError(f"Kafka topic {self.topic}: {exc}") from exc
            producer = AIOKafkaProducer(**options, acks="all", max_request_size=MAX_REQUEST_SIZE)
            try:
                await start_client(producer, self.connection, options)
            except SourceError as exc:
                await _stop_quietly(producer)
                raise DestinationError(f"Kafka topic {self.topic}: {exc}") from exc
            except BaseException:
                await _stop_quietly(producer)
                raise
            self._producer = producer
        return self._producer

    async def send(self, failure: dict[str, Any], records: Sequence[Record], origin: EventFormat) -> None:
        producer = await self._started()
        try:
            # One at a time: failures are rare, and each message's acknowledgement is then certain.
            for record in records:
                await self._send_one(producer, failure, record, origin)
            if not records:  # a tumbling window's final invocation failed: it had no records
                await producer.send_and_wait(
                    self.topic, orjson.dumps(failure), headers=_headers(failure, OriginalMessage())
                )
        except KafkaError as exc:
            raise DestinationError(f"Kafka topic {self.topic} did not acknowledge: {exc}") from exc

    async def publish(self, message: Message) -> None:
        producer = await self._started()
        headers = [(name, str(value).encode()) for name, value in message.attributes.items()]
        headers += [(name, value.encode()) for name, value in trace_headers().items()]
        try:
            await producer.send_and_wait(
                self.topic, message.body, key=message.message_id.encode(), headers=headers
            )
        except MessageSizeTooLargeError as exc:
            raise MessageTooLarge(
                f"Kafka topic {self.topic} refused a message of {len(message.body)} bytes"
            ) from exc
        except KafkaError as exc:
            raise DestinationError(f"Kafka topic {self.topic} did not acknowledge: {exc}") from exc

    async def _send_one(
        self, producer: AIOKafkaProducer, failure: dict[str, Any], record: Record, origin: EventFormat
    ) -> None:
        # One message per record: its failure record describes that record alone.
        value = {**failure, "source": origin.describe([record]), "records": [record.payload]}
        original = origin.original_message(record) or OriginalMessage()
        headers = _headers(failure, original)
        try:
            await producer.send_and_wait(self.topic, orjson.dumps(value), key=original.key, headers=headers)
        except MessageSizeTooLargeError:
            log.error(
                "destination %s: failure record too large for topic %s; sending it without the record",
                self.name,
                self.topic,
            )
            value["records"] = []
            value["recordsOmitted"] = "the record is larger than the destination accepts"
            await producer.send_and_wait(self.topic, orjson.dumps(value), key=original.key, headers=headers)

    async def close(self) -> None:
        if self._producer is not None:
            await _stop_quietly(self._producer)
            self._producer = None


def _headers(failure: dict[str, Any], original: OriginalMessage) -> list[tuple[str, bytes]]:
    context = trace_headers()
    # The message continues the failed batch's trace; the producer's own context stays readable
    # in the failure record's copy of the record.
    headers = [(name, value) for name, value in original.headers if name not in context]
    headers += [(f"x-poller-{name}", value.encode()) for name, value in original.location.items()]
    error = failure["errorInfo"]
    headers += [(name, value.encode()) for name, value in context.items()]
    headers += [
        ("x-poller-mapping", str(failure["mapping"]).encode()),
        ("x-poller-condition", str(failure["requestContext"]["condition"]).encode()),
        ("x-poller-error-type", str(error["errorType"]).encode()),
        ("x-poller-error-message", str(error["errorMessage"]).encode()[:MAX_ERROR_HEADER]),
        ("x-poller-trace-id", str(failure["traceId"]).encode()),
    ]
    return headers


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception as exc:
        log.debug("error while stopping a Kafka producer: %s", exc)
