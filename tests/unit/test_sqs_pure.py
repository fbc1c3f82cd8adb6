"""The SQS event format, the SQS/SNS/S3 failure-record helpers, and the SQS source's lane and
settlement logic with a fake client: no broker needed."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from typing import Any

import orjson
import pytest
from aws_lambda_powertools.utilities.parser.models import SqsModel

from poller.config import Config
from poller.destinations._aws import encode, fit_message, message_attributes
from poller.destinations.s3 import object_key
from poller.devtools.samples import sample_event
from poller.engine.records import Batch, Record
from poller.engine.retry import hold_back
from poller.errors import SourceError
from poller.sources.sqs.event import QueueInfo, SqsEventFormat, to_record
from poller.sources.sqs.source import SqsSource

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


def test_record_payload_is_lambdas_sqs_event_record() -> None:
    sent = message('{"orderId": 42}')
    record = to_record(sent, QUEUE, "orders#0")
    assert record.payload == {
        "messageId": sent["MessageId"],
        "receiptHandle": sent["ReceiptHandle"],
        "body": '{"orderId": 42}',
        "attributes": sent["Attributes"],
        "messageAttributes": {},
        "md5OfBody": sent["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE.arn,
        "awsRegion": "eu-west-1",
    }
    assert "md5OfMessageAttributes" not in record.payload, "only when the message has attributes"
    assert list(record.payload) == [
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
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
    assert "md5OfMessageAttributes" not in event["Records"][1]


# --- FIFO hold-back (engine) ---------------------------------------------------------------------


def _grouped(*groups: str | None) -> list[Record]:
    return [
        Record(partition="q", lane="q#0", position=i, item_key=i, payload={}, size=1, timestamp=0.0, group=g)
        for i, g in enumerate(groups)
    ]


def test_hold_back_takes_the_released_groups_out_of_a_later_half() -> None:
    records = _grouped("a", "b", "a", None, "c")
    batch = Batch(records, retries=1, invocations=3)
    kept, held = hold_back(batch, {"a", "c"})
    assert held == [records[0], records[2], records[4]]
    assert kept is not None
    assert kept.records == [records[1], records[3]]
    assert (kept.retries, kept.invocations) == (1, 3), "what is left keeps its history"


def test_hold_back_without_released_groups_keeps_the_batch() -> None:
    batch = Batch(_grouped(None, "a"))
    assert hold_back(batch, set()) == (batch, [])
    assert hold_back(batch, {"z"}) == (batch, [])
    kept, held = hold_back(Batch(_grouped("a", "a")), {"a"})
    assert kept is None
    assert len(held) == 2


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


# --- the source, with a fake SQS client ----------------------------------------------------------


class FakeSqs:
    """Records DeleteMessageBatch and ChangeMessageVisibilityBatch calls. ``delete_errors`` maps a
    receipt handle to the errors its next delete attempts get."""

    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.visibility: list[tuple[str, int]] = []
        self.delete_errors: dict[str, list[dict[str, Any]]] = {}

    async def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        succeeded, failed = [], []
        for entry in Entries:
            errors = self.delete_errors.get(entry["ReceiptHandle"])
            if errors:
                failed.append({"Id": entry["Id"], **errors.pop(0)})
            else:
                self.deleted.append(entry["ReceiptHandle"])
                succeeded.append({"Id": entry["Id"]})
        return {"Successful": succeeded, "Failed": failed}

    async def change_message_visibility_batch(
        self, QueueUrl: str, Entries: list[dict[str, Any]]
    ) -> dict[str, Any]:
        self.visibility += [(entry["ReceiptHandle"], entry["VisibilityTimeout"]) for entry in Entries]
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries], "Failed": []}


def bound_source(queue: QueueInfo, **mapping: Any) -> tuple[SqsSource, FakeSqs]:
    config = Config.model_validate(
        {
            "connections": {"aws": {"type": "aws"}},
            "functions": {"fn": {"handler": "handlers.echo:handler"}},
            "mappings": {
                "m": {
                    "function_name": "fn",
                    "source": {"type": "sqs", "connection": "aws", "queue": queue.name},
                    **mapping,
                }
            },
        }
    )
    source = SqsSource("m", config.mappings["m"], config.connections["aws"])
    client = FakeSqs()
    source._bind(client, queue)
    return source, client


def take(source: SqsSource) -> list[Record]:
    records, source._ready = source._ready, []
    return records


def lanes_of(records: list[Record]) -> list[str]:
    return [record.lane for record in records]


async def test_standard_batches_go_to_the_least_busy_lane() -> None:
    source, client = bound_source(QUEUE, scaling_config={"maximum_concurrency": 3})
    now = time.monotonic()
    source._accept([message() for _ in range(10)], QUEUE, now)
    first = take(source)
    source._accept([message() for _ in range(10)], QUEUE, now)
    second = take(source)
    assert set(lanes_of(first)) == {"orders#0"}
    assert set(lanes_of(second)) == {"orders#1"}
    await source.commit(first)
    assert client.deleted == [r.payload["receiptHandle"] for r in first]
    source._accept([message()], QUEUE, now)
    assert lanes_of(take(source)) == ["orders#0"], "lane 0 is idle again"
    assert source.in_flight == 11


async def test_standard_receives_fill_one_lane_within_the_batching_window() -> None:
    source, _ = bound_source(QUEUE, batch_size=25, maximum_batching_window_in_seconds=5)
    now = time.monotonic()
    lanes = []
    for _ in range(4):
        source._accept([message() for _ in range(10)], QUEUE, now)
        lanes.append(set(lanes_of(take(source))))
    assert lanes == [{"orders#0"}, {"orders#0"}, {"orders#0"}, {"orders#1"}]
    source._accept([message()], QUEUE, now + 6)
    assert lanes_of(take(source)) == ["orders#2"], "a new batch once the window has passed"


async def test_release_makes_messages_visible_after_the_delay_in_whole_seconds() -> None:
    source, client = bound_source(QUEUE)
    source._accept([message(), message()], QUEUE, time.monotonic())
    records = take(source)
    await source.release(records, 1.2)
    assert client.visibility == [(r.payload["receiptHandle"], 2) for r in records]
    assert source.in_flight == 0
    await source.release(records, 1.2)
    assert len(client.visibility) == 2, "settled records are not released twice"


async def test_delete_retries_server_faults_and_reports_the_rest() -> None:
    source, client = bound_source(QUEUE)
    source._accept([message() for _ in range(3)], QUEUE, time.monotonic())
    records = take(source)
    handles = [r.payload["receiptHandle"] for r in records]
    client.delete_errors[handles[0]] = [
        {"SenderFault": False, "Code": "InternalError", "Message": "try again"}
    ]
    client.delete_errors[handles[1]] = [
        {"SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "gone"}
    ]
    with pytest.raises(SourceError, match="could not delete 1 message"):
        await source.commit(records)
    assert sorted(client.deleted) == sorted([handles[0], handles[2]])
    assert source.in_flight == 0


async def test_fifo_lane_gets_its_next_batch_only_once_the_last_one_settled() -> None:
    source, _ = bound_source(FIFO, scaling_config={"maximum_concurrency": 2}, batch_size=2)
    now = time.monotonic()
    source._accept([message(f"a{i}", group="a") for i in range(5)], FIFO, now)
    first = take(source)
    assert [r.payload["body"] for r in first] == ["a0", "a1"], "one batch, in order"
    source._accept([message("a5", group="a")], FIFO, now)
    assert take(source) == [], "the lane is busy"
    await source.commit(first[:1])
    assert take(source) == []
    await source.commit(first[1:])
    assert [r.payload["body"] for r in take(source)] == ["a2", "a3"]


async def test_fifo_release_hands_back_the_groups_later_messages_after_it() -> None:
    source, client = bound_source(FIFO, scaling_config={"maximum_concurrency": 2}, batch_size=2)
    now = time.monotonic()
    source._accept([message(f"a{i}", group="a") for i in range(4)], FIFO, now)
    batch = take(source)
    handles = {r.payload["body"]: r.payload["receiptHandle"] for r in source._held[batch[0].lane]}
    # a0 failed: a1 (held back by the engine) and a2, a3 (still held here) must wait for it.
    await source.release(batch[:1], 3.0)
    await source.release(batch[1:], 3.0)
    assert client.visibility == [
        (batch[0].payload["receiptHandle"], 3),  # holds the group while it waits
        (handles["a2"], 0),
        (handles["a3"], 0),
        (batch[1].payload["receiptHandle"], 0),
    ]
    assert take(source) == []
    assert source.in_flight == 0


async def test_fifo_limits_are_refused_at_start() -> None:
    source, _ = bound_source(FIFO, batch_size=11, maximum_batching_window_in_seconds=1)
    with pytest.raises(SourceError, match="too large for a FIFO queue") as raised:
        source._check_limits(FIFO)
    assert not raised.value.retriable
    source, _ = bound_source(FIFO, maximum_batching_window_in_seconds=1)
    with pytest.raises(SourceError, match="not supported for FIFO"):
        source._check_limits(FIFO)
