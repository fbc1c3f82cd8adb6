"""One message for a destination, besides the ESM's failure records: a JSON document (an async
invocation record) or raw bytes (a dead-lettered event), with attributes that say what it is.

Each destination type carries the attributes where it has them: SQS and SNS message attributes
(an ``int`` as a Number), Kafka and RabbitMQ headers, S3 object metadata, and for a file an
envelope around the document (``{"attributes": ..., "body": ...}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from poller.errors import DestinationError


@dataclass(frozen=True)
class Message:
    body: bytes  # JSON
    message_id: str  # unique per message: SQS/SNS FIFO deduplication id, RabbitMQ message id, Kafka key
    group: str  # what the message belongs to (a function): FIFO message group, part of an S3 key
    attributes: Mapping[str, str | int] = field(default_factory=dict)


class MessageTooLarge(DestinationError):
    """The destination refuses a message of this size: sending it again cannot help."""

    retriable = False
