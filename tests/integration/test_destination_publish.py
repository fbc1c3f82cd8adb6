"""Every destination type sends one message with its attributes (``Destination.publish``, what an
asynchronous invocation's records and dead-lettered events use), against the real brokers: SQS
(standard and FIFO) and SNS message attributes, S3 object metadata, Kafka and RabbitMQ headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rabbitmq_support import declare, delete, take
from sqs_support import REGION, aws, create_queue, receive_all
from support import consume_all, create_topic, unique_name

from poller.config import Config
from poller.destinations import Destination, build_destination
from poller.destinations.message import Message, MessageTooLarge

BODY = {"order": 7, "note": "ünïcode"}
ATTRIBUTES: dict[str, str | int] = {"RequestID": "r-1", "ErrorCode": 200, "ErrorMessage": "cannot handle 7"}
MESSAGE = Message(json.dumps(BODY).encode(), "r-1:dead-letter", "orders", ATTRIBUTES)


def destination(connections: dict[str, Any], settings: dict[str, Any]) -> Destination:
    config = Config.model_validate({"connections": connections, "destinations": {"d": settings}})
    return build_destination("d", config)


def aws_connection(endpoint: str) -> dict[str, Any]:
    return {"aws": {"type": "aws", "region": REGION, "endpoint_url": endpoint}}


SQS_ATTRIBUTES = {
    "RequestID": {"DataType": "String", "StringValue": "r-1"},
    "ErrorCode": {"DataType": "Number", "StringValue": "200"},
    "ErrorMessage": {"DataType": "String", "StringValue": "cannot handle 7"},
}


@pytest.mark.sqs
async def test_sqs_sends_the_body_with_message_attributes_and_fifo_group_and_id(moto_endpoint: str) -> None:
    async with aws(moto_endpoint, "sqs") as sqs:
        url, name = await create_queue(sqs, "publish")
        fifo_url, fifo = await create_queue(sqs, "publish.fifo", ContentBasedDeduplication="false")
        for queue in (name, fifo):
            sink = destination(
                aws_connection(moto_endpoint), {"type": "sqs", "connection": "aws", "queue": queue}
            )
            try:
                await sink.publish(MESSAGE)
                await sink.publish(MESSAGE)  # a FIFO queue keeps one of two sends of the same message
            finally:
                await sink.close()
        standard = await receive_all(sqs, url, 2)
        [ordered] = await receive_all(sqs, fifo_url, 1)
        fifo_attributes = await sqs.get_queue_attributes(QueueUrl=fifo_url, AttributeNames=["All"])
    for message in [*standard, ordered]:
        assert json.loads(message["Body"]) == BODY
        assert message["MessageAttributes"] == SQS_ATTRIBUTES
    assert fifo_attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"


@pytest.mark.sqs
async def test_sqs_refuses_a_message_over_its_limit_or_overflows_it_to_s3(moto_endpoint: str) -> None:
    big = Message(json.dumps({"blob": "x" * 2000}).encode(), "r-2", "orders")
    async with aws(moto_endpoint, "sqs") as sqs, aws(moto_endpoint, "s3") as s3:
        url, name = await create_queue(sqs, "small", MaximumMessageSize="1024")
        bucket = unique_name("overflow")[:63]
        await s3.create_bucket(Bucket=bucket)
        plain = destination(
            aws_connection(moto_endpoint), {"type": "sqs", "connection": "aws", "queue": name}
        )
        overflowing = destination(
            aws_connection(moto_endpoint),
            {"type": "sqs", "connection": "aws", "queue": name, "overflow_bucket": bucket},
        )
        try:
            with pytest.raises(MessageTooLarge):
                await plain.publish(big)
            await overflowing.publish(big)
        finally:
            await plain.close()
            await overflowing.close()
        [message] = await receive_all(sqs, url, 1)
        location = json.loads(message["Body"])["bodyLocation"]
        stored = await s3.get_object(Bucket=location["bucket"], Key=location["key"])
        assert json.loads(await stored["Body"].read()) == {"blob": "x" * 2000}


@pytest.mark.sqs
async def test_sns_publishes_the_body_with_message_attributes(moto_endpoint: str) -> None:
    async with aws(moto_endpoint, "sqs") as sqs, aws(moto_endpoint, "sns") as sns:
        url, _ = await create_queue(sqs, "sns-sink")
        topic = (await sns.create_topic(Name=unique_name("publish")))["TopicArn"]
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
            "QueueArn"
        ]
        await sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
        )
        sink = destination(
            aws_connection(moto_endpoint), {"type": "sns", "connection": "aws", "topic_arn": topic}
        )
        try:
            await sink.publish(MESSAGE)
        finally:
            await sink.close()
        [message] = await receive_all(sqs, url, 1)
    assert json.loads(message["Body"]) == BODY
    assert message["MessageAttributes"] == SQS_ATTRIBUTES


@pytest.mark.sqs
async def test_s3_stores_the_body_with_its_attributes_as_metadata(moto_endpoint: str) -> None:
    bucket = unique_name("publish")[:63]
    async with aws(moto_endpoint, "s3") as s3:
        await s3.create_bucket(Bucket=bucket)
        sink = destination(
            aws_connection(moto_endpoint),
            {"type": "s3", "connection": "aws", "bucket": bucket, "prefix": "async"},
        )
        try:
            await sink.publish(MESSAGE)
        finally:
            await sink.close()
        [entry] = (await s3.list_objects_v2(Bucket=bucket))["Contents"]
        stored = await s3.get_object(Bucket=bucket, Key=entry["Key"])
        body = await stored["Body"].read()
    assert entry["Key"].startswith("async/aws/lambda/async/orders/")
    assert entry["Key"].endswith("-r-1%3Adead-letter")
    assert json.loads(body) == BODY
    assert stored["Metadata"] == {"requestid": "r-1", "errorcode": "200", "errormessage": "cannot handle 7"}


@pytest.mark.kafka
async def test_kafka_produces_the_body_keyed_by_its_id_with_attributes_as_headers(
    kafka_bootstrap: str,
) -> None:
    topic = unique_name("publish")
    await create_topic(kafka_bootstrap, topic)
    sink = destination(
        {"kafka": {"type": "kafka", "bootstrap_servers": kafka_bootstrap}},
        {"type": "kafka", "connection": "kafka", "topic": topic},
    )
    try:
        await sink.publish(MESSAGE)
    finally:
        await sink.close()
    [record] = await consume_all(kafka_bootstrap, topic, 1)
    assert json.loads(record.value) == BODY
    assert record.key == b"r-1:dead-letter"
    headers = dict(record.headers)
    assert headers["RequestID"] == b"r-1"
    assert headers["ErrorCode"] == b"200"
    assert headers["ErrorMessage"] == b"cannot handle 7"


@pytest.mark.rabbitmq
async def test_rabbitmq_publishes_the_body_with_attributes_as_headers(amqp_url: str) -> None:
    queue = unique_name("publish")
    sink = destination(
        {"rabbit": {"type": "rabbitmq", "url": amqp_url}},
        {"type": "rabbitmq", "connection": "rabbit", "exchange": "", "routing_key": queue},
    )
    await declare(amqp_url, queue)
    try:
        await sink.publish(MESSAGE)
        [message] = await take(amqp_url, queue)
    finally:
        await sink.close()
        await delete(amqp_url, queue)
    assert json.loads(message.body) == BODY
    properties = message.header.properties
    assert properties.message_id == "r-1:dead-letter"
    assert properties.delivery_mode == 2
    assert {name: properties.headers[name] for name in ATTRIBUTES} == {
        "RequestID": "r-1",
        "ErrorCode": 200,
        "ErrorMessage": "cannot handle 7",
    }


async def test_a_file_writes_the_document_or_an_envelope_with_its_attributes(tmp_path: Path) -> None:
    sink = destination({}, {"type": "file", "path": str(tmp_path / "out.jsonl")})
    await sink.publish(Message(b'{"a":\n 1}', "r-3", "orders"))
    await sink.publish(MESSAGE)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines == [{"a": 1}, {"attributes": ATTRIBUTES, "body": BODY}]
