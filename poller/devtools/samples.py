"""Valid sample events, built by the same code that builds real ones (``poller sample-event``)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from poller.engine.records import Record
from poller.sources import EventFormat
from poller.sources.kafka.event import KafkaEventFormat, lane_name, to_records
from poller.sources.sqs import event as sqs


def sample_event(source_type: str) -> dict[str, Any]:
    event_format, records = sample_records(source_type)
    return event_format.event(records)


def sample_records(source_type: str) -> tuple[EventFormat, list[Record]]:
    """Two records of a source type, with headers or attributes, and the format of their events."""
    if source_type == "kafka":
        return _kafka_sample()
    if source_type == "sqs":
        return _sqs_sample()
    if source_type == "kinesis":
        return _kinesis_sample()
    if source_type == "rabbitmq":
        return _rabbitmq_sample()
    raise ValueError(f"no sample event for source type {source_type!r}")


def _kafka_sample() -> tuple[EventFormat, list[Record]]:
    batch = kafka_record_batch(
        [
            (
                offset,
                1718000000456 + offset,
                f"order-{offset}".encode(),
                b'{"orderId": %d, "amount": 42.5}' % offset,
                [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
            )
            for offset in (15, 16)
        ]
    )
    messages = list(DefaultRecordBatch(batch))
    return KafkaEventFormat("localhost:9092"), to_records(messages, lane_name("orders", 0), "orders", 0)


KafkaEntry = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def kafka_record_batch(entries: Iterable[KafkaEntry], compression_type: int = 0) -> bytes:
    """One Kafka record batch (format v2; ``compression_type`` as aiokafka numbers them, 0 for
    none) as a broker sends it in a fetch, of ``(offset, timestamp, key, value, headers)``;
    aiokafka parses its records for poller's consumers (sources/kafka/fetched.py)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression_type,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=2**31 - 1,
    )
    for offset, timestamp, key, value, headers in entries:
        builder.append(offset, timestamp=timestamp, key=key, value=value, headers=headers)
    return bytes(builder.build())


def _sqs_sample() -> tuple[EventFormat, list[Record]]:
    queue = sqs.QueueInfo(
        url="https://sqs.us-east-1.amazonaws.com/000000000000/orders",
        arn="arn:aws:sqs:us-east-1:000000000000:orders",
        name="orders",
        region="us-east-1",
        fifo=False,
        visibility_timeout=30,
        maximum_message_size=262144,
    )
    tenant = {"tenant": {"DataType": "String", "StringValue": "acme"}}
    messages: list[dict[str, Any]] = []
    for number, attributes in ((42, tenant), (43, {})):
        body = f'{{"orderId": {number}, "amount": 42.5}}'
        message: dict[str, Any] = {
            "MessageId": f"6c2f1e7a-2b0c-4c55-9d6e-1a2b3c4d5e{number:02d}",
            "ReceiptHandle": f"AQEBexampleReceiptHandle{number}==",
            "Body": body,
            "MD5OfBody": hashlib.md5(body.encode()).hexdigest(),
            "Attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": str(1718000000000 + number),
                "SenderId": "AIDAEXAMPLESENDER",
                "ApproximateFirstReceiveTimestamp": str(1718000000012 + number),
                "AWSTraceHeader": "Root=1-6667a1b0-0123456789abcdef01234567;Parent=89abcdef01234567;Sampled=1",
            },
        }
        if attributes:
            message["MessageAttributes"] = attributes
            message["MD5OfMessageAttributes"] = _md5_of_message_attributes(attributes)
        messages.append(message)
    return sqs.SqsEventFormat(queue), [sqs.to_record(message, queue, "orders#0") for message in messages]


def _md5_of_message_attributes(attributes: dict[str, dict[str, Any]]) -> str:
    """SQS's digest of message attributes: per attribute in name order, the length-prefixed name,
    data type and value, with a transport byte (1 string, 2 binary) before the value."""
    digest = hashlib.md5()

    def field(data: bytes) -> None:
        digest.update(struct.pack(">I", len(data)) + data)

    for name in sorted(attributes):
        value = attributes[name]
        field(name.encode())
        field(value["DataType"].encode())
        if "BinaryValue" in value:
            digest.update(b"\x02")
            field(value["BinaryValue"])
        else:
            digest.update(b"\x01")
            field(value["StringValue"].encode())
    return digest.hexdigest()


def _kinesis_sample() -> tuple[EventFormat, list[Record]]:
    from datetime import UTC, datetime

    from poller.sources.kinesis.event import KinesisEventFormat
    from poller.sources.kinesis.event import to_record as kinesis_record

    shard = "shardId-000000000003"
    raw = [
        {
            "SequenceNumber": f"4959033827149025660855969253836157109592157598913658{8898 + number}",
            "ApproximateArrivalTimestamp": datetime.fromtimestamp(1718000000.123 + number, UTC),
            "Data": b'{"page": "/checkout", "userId": %d}' % (17 + number),
            "PartitionKey": f"user-{17 + number}",
        }
        for number in (0, 1)
    ]
    records = [
        kinesis_record(
            item,
            shard_id=shard,
            stream_arn="arn:aws:kinesis:us-east-1:000000000000:stream/clicks",
            region="us-east-1",
            role_arn="arn:aws:iam::000000000000:role/clicks",
        )
        for item in raw
    ]
    return KinesisEventFormat(), records


def _rabbitmq_sample() -> tuple[EventFormat, list[Record]]:
    from datetime import UTC, datetime

    from poller.sources.rabbitmq.event import (
        MessageProperties,
        RabbitMQEventFormat,
        broker_arn,
        message_record,
    )

    url = "amqp://guest:guest@localhost:5672/"
    records = []
    for number in (42, 43):
        properties = MessageProperties(
            content_type="application/json",
            headers={"source": "web", "attempt": 1},  # strings show as Java bytes, as on AWS
            delivery_mode=2,
            priority=0,
            correlation_id=f"c-{number}",
            message_id=f"m-{number}",
            timestamp=datetime.fromtimestamp(1718000000 + number, UTC),
            app_id="checkout",
        )
        records.append(
            message_record(
                queue="payments",
                vhost="/",
                lane="slot-0",
                delivery_tag=number - 41,
                properties=properties,
                body=b'{"paymentId": %d, "amount": 42.5}' % number,
                redelivered=False,
                attempts=0,
                first_seen=1718000000.0 + number,
            )
        )
    return RabbitMQEventFormat(broker_arn(url, "us-east-1"), "/"), records
