"""poller's events field by field against the events Lambda sends, as aws-lambda-go records them
(``fixtures/aws_lambda_go/``): the same keys, each with a value of the same JSON type, and the
fields AWS leaves out or sends as null treated as AWS does (a Kafka tombstone has no ``value``; an
SQS message without attributes has ``md5OfMessageAttributes: null``; a Kinesis record carries the
stream's ``encryptionType``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from poller.devtools.samples import sample_event
from poller.sources.kafka.event import KafkaEventFormat, to_records
from poller.sources.kinesis.event import to_record as kinesis_record

FIXTURES = Path(__file__).parent / "fixtures" / "aws_lambda_go"


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


def json_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def shape(record: dict[str, Any]) -> dict[str, str]:
    """Each key of a record (one level deep into nested objects) with the JSON type of its value."""
    fields: dict[str, str] = {}
    for key, value in record.items():
        fields[key] = json_type(value)
        if isinstance(value, dict) and key in ("kinesis", "attributes", "basicProperties"):
            fields.update(
                {f"{key}.{inner}": json_type(item) for inner, item in value.items() if inner != "headers"}
            )
    return fields


def first_record(event: dict[str, Any]) -> dict[str, Any]:
    if "Records" in event:
        return dict(event["Records"][0])
    if "records" in event:
        return dict(next(iter(event["records"].values()))[0])
    return dict(next(iter(event["rmqMessagesByQueue"].values()))[0])


@pytest.mark.parametrize(
    ("source", "aws", "optional"),
    [
        # AWS's sample is an MSK event; a self-managed one has no eventSourceArn (AWS's docs).
        ("kafka", "kafka-event", set()),
        (
            "sqs",
            "sqs-event",
            {
                "attributes.MessageGroupId",
                "attributes.MessageDeduplicationId",
                "attributes.SequenceNumber",
                "attributes.AWSTraceHeader",
            },
        ),
        ("kinesis", "kinesis-event", {"kinesis.encryptionType"}),
        ("rabbitmq", "rabbitmq-event", set()),
    ],
)
def test_records_have_lambdas_fields_with_lambdas_types(source: str, aws: str, optional: set[str]) -> None:
    ours, theirs = shape(first_record(sample_event(source))), shape(first_record(fixture(aws)))
    missing = set(theirs) - set(ours) - optional
    assert not missing, f"poller leaves out {sorted(missing)}"
    extra = set(ours) - set(theirs) - optional
    assert not extra, f"poller adds {sorted(extra)}"
    differ = {
        key: (ours[key], theirs[key])
        for key in set(ours) & set(theirs)
        if "null" not in (ours[key], theirs[key]) and ours[key] != theirs[key]
    }
    assert not differ, f"other JSON types: {differ}"


def test_a_kafka_tombstone_has_no_value_as_on_aws() -> None:
    tombstone = ConsumerRecord("t", 0, 7, 1_700_000_000_000, 0, b"k", None, None, 1, -1, [])
    [record] = to_records([tombstone], "t-0", "t", 0)
    entry = KafkaEventFormat("b:9092").event([record])["records"]["t-0"][0]
    assert "value" not in entry
    assert entry["key"] == "aw=="


def test_an_sqs_message_without_attributes_has_a_null_md5_of_them() -> None:
    records = sample_event("sqs")["Records"]
    assert records[0]["md5OfMessageAttributes"] is not None
    assert records[1]["md5OfMessageAttributes"] is None


def test_a_kinesis_record_passes_the_streams_encryption_type_on() -> None:
    raw = {
        "Data": "SGk=",
        "SequenceNumber": "1",
        "PartitionKey": "k",
        "ApproximateArrivalTimestamp": 1_700_000_000.5,
        "EncryptionType": "KMS",
    }
    record = kinesis_record(raw, shard_id="s", stream_arn="arn", region="r", role_arn="role")
    assert record.payload["kinesis"]["encryptionType"] == "KMS"
    del raw["EncryptionType"]
    assert (
        "encryptionType"
        not in kinesis_record(raw, shard_id="s", stream_arn="arn", region="r", role_arn="role").payload[
            "kinesis"
        ]
    )
