"""Valid sample events, built by the same code that builds real ones (``poller sample-event``)."""

from __future__ import annotations

from typing import Any

from aiokafka.structs import ConsumerRecord

from poller.sources.kafka import KafkaEventFormat, to_record


def sample_event(source_type: str) -> dict[str, Any]:
    if source_type == "kafka":
        messages = [
            ConsumerRecord(
                topic="orders",
                partition=0,
                offset=offset,
                timestamp=1718000000456 + offset,
                timestamp_type=0,
                key=f"order-{offset}".encode(),
                value=b'{"orderId": %d, "amount": 42.5}' % offset,
                checksum=None,
                serialized_key_size=-1,
                serialized_value_size=-1,
                headers=[("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
            )
            for offset in (15, 16)
        ]
        return KafkaEventFormat("localhost:9092").event([to_record(message) for message in messages])
    raise ValueError(f"no sample event for source type {source_type!r}")
