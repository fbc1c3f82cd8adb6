"""Destinations: where records go when retries end (on-failure destinations of mappings), and
where asynchronous invocations send their invocation records and dead-lettered events, behind one
small protocol."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

from poller.config import Config
from poller.destinations.message import Message
from poller.engine.records import Record
from poller.sources.protocol import EventFormat


class Destination(Protocol):
    """Delivers failure records, and single messages."""

    async def send(self, failure: dict[str, Any], records: Sequence[Record], origin: EventFormat) -> None:
        """Write the failure record of ``records`` (SPEC section 7); ``origin`` is the event format
        of the source they came from, which describes them. Returns only once the write is
        confirmed (Kafka acks, an fsync, a publisher confirm) and raises DestinationError otherwise;
        the caller retries it and advances the source only after it returned."""

    async def publish(self, message: Message) -> None:
        """Write one message (an invocation record, a dead-lettered event) with its attributes.
        Returns only once the write is confirmed; raises DestinationError otherwise (the caller
        retries), MessageTooLarge when the destination can never take it."""

    async def close(self) -> None: ...


_DESTINATIONS = {
    "kafka": "poller.destinations.kafka:KafkaDestination",
    "file": "poller.destinations.file:FileDestination",
    "sqs": "poller.destinations.sqs:SqsDestination",
    "sns": "poller.destinations.sns:SnsDestination",
    "s3": "poller.destinations.s3:S3Destination",
    "rabbitmq": "poller.destinations.rabbitmq:RabbitMQDestination",
}


def build_destination(name: str, config: Config) -> Destination:
    settings = config.destinations[name]
    module_name, _, class_name = _DESTINATIONS[settings.type].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    destination: Destination = cls(name, settings, config)
    return destination
