"""The SQS event format, the SQS/SNS/S3 failure-record helpers, and the SQS source's lane and
settlement logic with a fake client: no broker needed."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

import orjson
from aws_lambda_powertools.utilities.parser.models import SqsModel

from poller.destinations._aws import encode, fit_message, message_attributes
from poller.destinations.s3 import object_key
from poller.devtools.samples import sample_event
from poller.engine.records import Batch, Record
from poller.engine.retry import Invoke, Release, RetryPolicy, plan_attempt
from poller.sources.sqs.event import QueueInfo, SqsEventFormat, to_record

QUEUE = QueueInfo(
    url="https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
    arn="arn:aws:sqs:eu-west-1:123456789012:orders",
    name="orders",
    region="eu-west-1",
    fifo=False,
    visibility_timeout=30,
    maximum_message_size=262144,
)
FIFO = dataclasses.replace(
    QUEUE,
    url=QUEUE.url + ".fifo",
    arn=QUEUE.arn + ".fifo",
    name="orders.fifo",
    fifo=True,
)

_numbers = iter(range(1_000_000))


def message(
    body: str = "hello", *, group: str | None = None, receives: int = 1, **extra: Any
) -> dict[str, Any]:
    """A ReceiveMessage message as botocore returns it."""
    number = next(_numbers)
    attributes = {
        "SenderId": "AIDAEXAMPLE",
        "SentTimestamp": "1718000000123",
        "ApproximateReceiveCount": str(receives),
        "ApproximateFirstReceiveTimestamp": "1718000000200",
    }
    if group is not None:
        attributes.update(
            MessageGroupId=group, SequenceNumber=str(number), MessageDeduplicationId=f"d{number}"
        )
    return {
        "MessageId": f"id-{number}",
        "ReceiptHandle": f"handle-{number}",
        "MD5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "Body": body,
        "Attributes": attributes,
        **extra,
    }


# --- the event -----------------------------------------------------------------------------------


_POLICY = RetryPolicy(maximum_retry_attempts=-1, maximum_record_age=-1, bisect=True, ordered=False)


def test_record_payload_is_lambdas_sqs_event_record() -> None:
    sent = message('{"orderId": 42}')
    record = to_record(sent, QUEUE, "orders#0")
    assert record.payload == {
        "messageId": sent["MessageId"],
        "receiptHandle": sent["ReceiptHandle"],
        "body": '{"orderId": 42}',
        "attributes": sent["Attributes"],
        "messageAttributes": {},
        "md5OfMessageAttributes": None,  # null without attributes, as Lambda sends it
        "md5OfBody": sent["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE.arn,
        "awsRegion": "eu-west-1",
    }
    assert list(record.payload) == [
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfMessageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    ]


def test_message_attributes_take_lambdas_shape() -> None:
    sent = message(
        MessageAttributes={
            "tenant": {"DataType": "String", "StringValue": "acme"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
            "price": {"DataType": "Number.float", "StringValue": "4.5"},
            "tags": {"DataType": "String", "StringListValues": ["a", "b"], "BinaryListValues": [b"\x01"]},
        },
        MD5OfMessageAttributes="0" * 32,
    )
    payload = to_record(sent, QUEUE, "orders#0").payload
    assert payload["messageAttributes"] == {
        "tenant": {
            "stringValue": "acme",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
        "blob": {"binaryValue": "AP8=", "stringListValues": [], "binaryListValues": [], "dataType": "Binary"},
        "price": {
            "stringValue": "4.5",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Number.float",
        },
        "tags": {"stringListValues": ["a", "b"], "binaryListValues": ["AQ=="], "dataType": "String"},
    }
    assert payload["md5OfMessageAttributes"] == "0" * 32
    assert list(payload).index("md5OfMessageAttributes") == list(payload).index("md5OfBody") - 1


def test_record_bookkeeping_comes_from_the_message() -> None:
    sent = message("x" * 100, receives=3)
    record = to_record(sent, QUEUE, "orders#4")
    assert record.partition == "orders"
    assert record.lane == "orders#4"
    assert record.item_key == record.position == sent["MessageId"]
    assert record.receive_count == 2, "earlier deliveries, not counting this one"
    assert record.timestamp == 1718000000.123
    assert record.size == len(orjson.dumps(record.payload)) + 1
    assert record.group is None


def test_message_group_orders_only_on_fifo_queues() -> None:
    # A standard queue's MessageGroupId (fair queues) orders nothing.
    assert to_record(message(group="tenant-1"), QUEUE, "orders#0").group is None
    fifo = to_record(message(group="tenant-1"), FIFO, "orders.fifo#0")
    assert fifo.group == "tenant-1"
    assert fifo.payload["eventSourceARN"].endswith(".fifo")
    assert fifo.payload["attributes"]["MessageGroupId"] == "tenant-1"


def test_describe_and_item_key() -> None:
    records = [to_record(message(group=g), FIFO, "orders.fifo#0") for g in ("b", "a", "b")]
    described = SqsEventFormat(FIFO).describe(records)
    assert described == {
        "type": "sqs",
        "queueArn": FIFO.arn,
        "queueUrl": FIFO.url,
        "batchSize": 3,
        "messageIds": [r.payload["messageId"] for r in records],
        "messageGroupIds": ["a", "b"],
    }
    format = SqsEventFormat(QUEUE)
    assert format.event(records) == {"Records": [r.payload for r in records]}
    assert format.item_key("id-7") == "id-7"
    for wrong in ("", None, 7, {"itemIdentifier": "id-7"}):
        assert format.item_key(wrong) is None


def test_sample_event_is_valid_for_powertools_parser() -> None:
    event = sample_event("sqs")
    parsed = SqsModel.model_validate(event)
    assert [record.body for record in parsed.Records] == [r["body"] for r in event["Records"]]
    assert parsed.Records[0].messageAttributes["tenant"].stringValue == "acme"
    assert event["Records"][1]["md5OfMessageAttributes"] is None


# --- FIFO hold-back (engine) ---------------------------------------------------------------------


def _grouped(*groups: str | None) -> list[Record]:
    return [
        Record(partition="q", lane="q#0", position=i, item_key=i, payload={}, size=1, timestamp=0.0, group=g)
        for i, g in enumerate(groups)
    ]


def test_records_of_handed_back_groups_go_back_before_a_later_half_is_invoked() -> None:
    records = _grouped("a", "b", "a", None, "c")
    batch = Batch(records, retries=1, invocations=3)
    release, invoke = plan_attempt(batch, 0.0, _POLICY, {"a": 2.0, "c": 5.0})
    assert release == Release([records[0], records[2], records[4]], 5.0, held_back=True)
    assert isinstance(invoke, Invoke)
    assert invoke.batch.records == [records[1], records[3]]
    assert (invoke.batch.retries, invoke.batch.invocations) == (1, 3), "what is left keeps its history"


def test_without_handed_back_groups_the_batch_is_invoked_whole() -> None:
    batch = Batch(_grouped(None, "a"))
    assert plan_attempt(batch, 0.0, _POLICY, {}) == [Invoke(batch)]
    assert plan_attempt(batch, 0.0, _POLICY, {"z": 1.0}) == [Invoke(batch)]
    [release] = plan_attempt(Batch(_grouped("a", "a")), 0.0, _POLICY, {"a": 1.0})
    assert isinstance(release, Release)
    assert len(release.records) == 2


# --- destinations --------------------------------------------------------------------------------


def test_object_key_follows_aws_layout_under_the_prefix() -> None:
    key = object_key("failed/", "orders-from-sqs", "orders.fifo", "2026-11-22T10:04:05.123Z")
    assert re.fullmatch(
        r"failed/aws/lambda/orders-from-sqs/orders\.fifo/2026/11/22/2026-11-22T10\.04\.05-[0-9a-f-]{36}", key
    ), key
    assert object_key("", "m", "topic-3", "2026-01-02T03:04:05.000Z", "u") == (
        "aws/lambda/m/topic-3/2026/01/02/2026-01-02T03.04.05-u"
    )
    # A partition name with a slash does not add a level.
    assert object_key("/p/", "m", "a/b", "2026-01-02T03:04:05.000Z", "u").split("/")[:5] == [
        "p",
        "aws",
        "lambda",
        "m",
        "a%2Fb",
    ]


def _failure(records: list[dict[str, Any]], message: str = "boom") -> dict[str, Any]:
    return {
        "version": "1.0",
        "timestamp": "2026-11-22T10:00:00.000Z",
        "requestContext": {
            "requestId": "r-1",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 1,
        },
        "errorInfo": {"errorType": "ValueError", "errorMessage": message, "stackTrace": ["line"] * 50},
        "mapping": "m",
        "source": {
            "type": "sqs",
            "batchSize": len(records),
            "messageIds": [f"id-{i}" for i in range(len(records))],
        },
        "traceId": "t" * 32,
        "records": records,
    }


async def test_a_failure_record_that_fits_is_sent_whole() -> None:
    failure = _failure([{"body": "small"}])
    body = await fit_message(failure, limit=262144, where="SNS", overflow=None)
    assert orjson.loads(body) == failure


async def test_a_failure_record_too_large_leaves_the_records_out_and_says_so() -> None:
    failure = _failure([{"body": "x" * 300_000}])
    body = await fit_message(failure, limit=262144, where="SNS", overflow=None, reserved=100)
    sent = orjson.loads(body)
    assert sent["records"] == []
    assert sent["recordsOmitted"].endswith("more than the 262144 bytes SNS accepts")
    assert sent["errorInfo"] == failure["errorInfo"]
    assert len(body) + 100 <= 262144


async def test_a_failure_record_too_large_overflows_to_the_store() -> None:
    failure = _failure([{"body": "x" * 300_000}])
    stored: list[dict[str, Any]] = []

    async def store(document: dict[str, Any]) -> tuple[str, str]:
        stored.append(document)
        return "bucket", "key"

    sent = orjson.loads(await fit_message(failure, limit=262144, where="SQS queue q", overflow=store))
    assert stored == [failure]
    assert sent["recordsLocation"] == {"bucket": "bucket", "key": "key"}
    assert sent["records"] == []


async def test_a_huge_error_and_source_are_cut_to_fit() -> None:
    failure = _failure([{"body": "x"}] * 20_000, message="e" * 100_000)
    body = await fit_message(failure, limit=4096, where="SNS", overflow=None)
    sent = orjson.loads(body)
    assert len(body) <= 4096
    assert sent["errorInfo"]["stackTrace"] == []
    assert len(sent["errorInfo"]["errorMessage"]) == 1024
    assert sent["source"] == {"type": "sqs", "batchSize": 20_000, "truncated": True}
    assert sent["requestContext"] == failure["requestContext"]


def test_noncharacters_sqs_refuses_are_escaped() -> None:
    document = {"body": "a\ufffeb\uffffc"}
    data = encode(document)
    assert b"\xef\xbf\xbe" not in data
    assert b"\xef\xbf\xbf" not in data
    assert orjson.loads(data) == document


def test_message_attributes_skip_empty_values() -> None:
    failure = _failure([])
    failure["errorInfo"]["errorType"] = ""
    assert message_attributes(failure) == {
        "poller-mapping": {"DataType": "String", "StringValue": "m"},
        "poller-condition": {"DataType": "String", "StringValue": "RetryAttemptsExhausted"},
    }
