"""How the RabbitMQ source retries a message without holding its delivery: delay queues.

RabbitMQ closes a channel that keeps a delivery unacknowledged past ``consumer_timeout`` (30
minutes by default), and a retry may back off for up to a day. So a failed message is handed back
to the broker: a copy is published, with publisher confirms and ``mandatory``, to a delay queue
that the poller declares per mapping, source queue and delay tier
(``poller.retry.<mapping>.<queue>.<tier>``), with the backoff as its per-message TTL. The delay
queue dead-letters the expired copy back to the source queue through the default exchange, and
only after the broker confirmed the copy is the original acked. The copy carries:

* ``x-poller-attempts``: the failed attempts so far (``Record.receive_count``, counted against
  ``maximum_retry_attempts``);
* ``x-poller-first-seen``: when the poller first received the message, in epoch milliseconds
  (``Record.timestamp``, checked against ``maximum_record_age_in_seconds``);
* ``x-poller-properties``: a lossless snapshot of the original properties, so that every attempt
  shows the handler the same ``basicProperties`` (``user_id`` and ``expiration`` cannot travel as
  properties: the broker checks the one and would expire the copy by the other).

All of it is in the broker, so it survives a restart of the poller. A delay queue expires only
the message at its head, so each tier holds one range of TTLs (``[t, 2t)``): a message never
waits behind one with a much longer delay, at worst for about its own delay again.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any

from pamqp.commands import Basic

from poller.sources.rabbitmq.event import MessageProperties

ATTEMPTS_HEADER = "x-poller-attempts"
FIRST_SEEN_HEADER = "x-poller-first-seen"
PROPERTIES_HEADER = "x-poller-properties"

# Delay tiers in milliseconds: a delay goes to the largest tier not above it. The engine's backoff
# runs from 0.5 s to 60 s (retry.py), so the last tier holds 32-60 s.
RETRY_TIERS_MS = (500, 1000, 2000, 4000, 8000, 16000, 32000)
MAX_QUEUE_NAME = 255  # bytes, AMQP short string


def retry_tier(delay: float) -> tuple[int, int]:
    """(tier, per-message TTL), both in milliseconds, for a retry ``delay`` seconds away."""
    ttl = max(0, round(delay * 1000))
    index = bisect.bisect_right(RETRY_TIERS_MS, ttl) - 1
    return RETRY_TIERS_MS[max(0, index)], ttl


def retry_queue_name(mapping: str, queue: str, tier_ms: int) -> str:
    """The delay queue of one mapping, source queue and tier."""
    label = f"{tier_ms / 1000:g}s"
    name = f"poller.retry.{mapping}.{queue}.{label}"
    if len(name.encode()) <= MAX_QUEUE_NAME:
        return name
    digest = hashlib.sha256(f"{mapping}\0{queue}".encode()).hexdigest()[:24]
    return f"poller.retry.{digest}.{label}"


def retry_queue_arguments(queue: str) -> dict[str, Any]:
    """Declare arguments of a delay queue feeding ``queue``.

    Expired copies go back to the source queue only (through the default exchange), not to the
    exchange the message was first published to, whose other queues had their copy already.
    """
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue}


def retry_copy_properties(
    original: MessageProperties, *, attempts: int, first_seen_ms: int, ttl_ms: int
) -> Basic.Properties:
    """The properties of a retry copy that has failed ``attempts`` times in all."""
    return Basic.Properties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers={
            ATTEMPTS_HEADER: attempts,
            FIRST_SEEN_HEADER: first_seen_ms,
            PROPERTIES_HEADER: original.to_snapshot(),
        },
        delivery_mode=2,  # the retry must survive a broker restart
        priority=original.priority,  # a priority queue keeps ordering it
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        expiration=str(ttl_ms),
        message_id=original.message_id,
        timestamp=original.timestamp,
        message_type=original.type,
        app_id=original.app_id,
    )


def read_retry_headers(headers: dict[str, Any]) -> tuple[MessageProperties, int, int] | None:
    """(original properties, failed attempts, first seen in epoch ms) of a retry copy, or None
    for a message that is not one. Raises ValueError for a copy whose snapshot is malformed."""
    snapshot = headers.get(PROPERTIES_HEADER)
    if not isinstance(snapshot, str | bytes):
        return None
    properties = MessageProperties.from_snapshot(snapshot)
    return properties, _count(headers, ATTEMPTS_HEADER), _count(headers, FIRST_SEEN_HEADER)


def _count(headers: dict[str, Any], name: str) -> int:
    value = headers.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{name} is not a non-negative integer: {value!r}")
