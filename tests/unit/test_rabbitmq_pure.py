"""RabbitMQ source without a broker: the event format, the properties snapshot, retry tiers, acks, lanes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aws_lambda_powertools.utilities.data_classes.rabbit_mq_event import RabbitMQEvent
from pamqp.commands import Basic

from poller.config import RabbitMQConnection
from poller.connections.rabbitmq import virtual_host
from poller.devtools.samples import sample_event
from poller.engine.outcome import PartiallyFailed, outcome_of
from poller.sources.rabbitmq.delay_queues import (
    ATTEMPTS_HEADER,
    FIRST_SEEN_HEADER,
    PROPERTIES_HEADER,
    read_retry_headers,
    retry_copy_properties,
    retry_queue_arguments,
    retry_queue_name,
    retry_tier,
)
from poller.sources.rabbitmq.event import (
    MessageProperties,
    RabbitMQEventFormat,
    broker_arn,
    format_timestamp,
    message_record,
)
from poller.sources.rabbitmq.flow import AckTracker, LaneAssigner

EVERY_TYPE: dict[str, Any] = {
    "text": "héllo",
    "not-utf8": b"\xff\xfe",
    "array": bytearray(b"\x00\x80\x7f"),
    "int": -5,
    "big": 2**40,
    "double": 0.1,
    "nan": float("nan"),
    "bool": False,
    "decimal": Decimal("12.50"),
    "whole-decimal": Decimal("3"),
    "when": datetime(2024, 6, 10, 18, 5, 9, tzinfo=UTC),
    "none": None,
    "list": ["a", 1, [True]],
    "table": {"inner": "x", "deeper": {"n": 1}},
}


def record(properties: MessageProperties, *, queue: str = "orders", data: bytes = b"{}", tag: int = 1) -> Any:
    return message_record(
        queue=queue,
        vhost="/",
        lane="slot-0",
        delivery_tag=tag,
        properties=properties,
        body=data,
        redelivered=False,
        attempts=0,
        first_seen=1718000000.0,
    )


# --- event ---------------------------------------------------------------------------------------


def test_timestamps_are_formatted_as_aws_does() -> None:
    assert format_timestamp(datetime(1970, 1, 1, 0, 33, 41, tzinfo=UTC)) == "Jan 1, 1970, 12:33:41 AM"
    assert format_timestamp(datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)) == "Jun 10, 2024, 6:13:20 AM"
    assert format_timestamp(datetime(2024, 12, 31, 12, 0, 5, tzinfo=UTC)) == "Dec 31, 2024, 12:00:05 PM"
    assert format_timestamp(datetime(2024, 3, 3, 23, 59, 59, tzinfo=UTC)) == "Mar 3, 2024, 11:59:59 PM"


def test_header_values_are_shown_as_aws_serialises_the_java_client() -> None:
    properties = MessageProperties(headers=EVERY_TYPE, message_id="m-1")
    headers = properties.to_event(2)["headers"]
    assert headers == {
        "text": {"bytes": [104, -61, -87, 108, 108, 111]},  # UTF-8, as Java signed bytes
        "not-utf8": {"bytes": [-1, -2]},
        "array": [0, -128, 127],
        "int": -5,
        "big": 2**40,
        "double": 0.1,
        "nan": None,
        "bool": False,
        "decimal": 12.5,
        "whole-decimal": 3,
        "when": "Jun 10, 2024, 6:05:09 PM",
        "none": None,
        "list": [{"bytes": [97]}, 1, [True]],
        "table": {"inner": {"bytes": [120]}, "deeper": {"n": 1}},
    }
    orjson.dumps(headers)  # serialisable as it is


def test_unset_properties_are_null_and_keys_come_in_aws_order() -> None:
    wire = Basic.Properties(message_id="m-1")
    wire.cluster_id = ""  # what pamqp decodes when the property is absent
    properties = MessageProperties.from_wire(wire)
    event = properties.to_event(0)
    assert list(event) == [
        "contentType",
        "contentEncoding",
        "headers",
        "deliveryMode",
        "priority",
        "correlationId",
        "replyTo",
        "expiration",
        "messageId",
        "timestamp",
        "type",
        "userId",
        "appId",
        "clusterId",
        "bodySize",
    ]
    assert all(value is None for name, value in event.items() if name not in ("messageId", "bodySize"))
    assert (event["messageId"], event["bodySize"]) == ("m-1", 0)


def test_a_message_id_is_filled_in_only_when_the_publisher_set_none() -> None:
    assert MessageProperties(message_id="given").with_message_id().message_id == "given"
    filled = MessageProperties().with_message_id().message_id
    assert filled is not None
    assert len(filled) == 36
    assert MessageProperties(message_id="").with_message_id().message_id != ""
    assert MessageProperties().with_message_id().message_id != filled


def test_event_groups_by_queue_and_vhost_and_describes_the_batch() -> None:
    arn = broker_arn("amqp://guest:guest@rabbit.internal:5672/", "eu-west-1")
    form = RabbitMQEventFormat(arn, "/")
    records = [
        record(MessageProperties(message_id="a"), queue="orders", data=b"1", tag=1),
        record(MessageProperties(message_id="b"), queue="refunds", data=b"2", tag=2),
        record(MessageProperties(message_id="c"), queue="orders", data=b"3", tag=3),
    ]
    event = form.event(records)
    assert event["eventSource"] == "aws:rmq"
    assert event["eventSourceArn"] == arn
    assert list(event["rmqMessagesByQueue"]) == ["orders::/", "refunds::/"]
    assert [m["data"] for m in event["rmqMessagesByQueue"]["orders::/"]] == ["MQ==", "Mw=="]
    assert form.describe(records) == {
        "type": "rabbitmq",
        "eventSourceArn": arn,
        "virtualHost": "/",
        "queues": ["orders", "refunds"],
        "batchSize": 3,
        "messageIds": ["a", "b", "c"],
    }
    assert all(r.size == len(orjson.dumps(r.payload)) + 1 for r in records)


def test_item_identifier_is_the_message_id() -> None:
    form = RabbitMQEventFormat("arn", "/")
    assert form.item_key("m-1") == "m-1"
    assert form.item_key("") is None
    assert form.item_key(7) is None
    assert form.item_key({"messageId": "m-1"}) is None
    records = [record(MessageProperties(message_id=i)) for i in ("a", "b")]
    outcome = outcome_of(
        {"batchItemFailures": [{"itemIdentifier": "b"}]},
        report_batch_item_failures=True,
        batch_keys=[r.item_key for r in records],
        item_key=form.item_key,
    )
    assert isinstance(outcome, PartiallyFailed)
    assert outcome.failed == {"b"}


def test_broker_arn_and_virtual_host_come_from_the_url() -> None:
    arn = broker_arn("amqps://u:p@b-1.mq.us-east-1.amazonaws.com:5671/", "us-east-1")
    prefix, broker_id = arn.rsplit(":", 1)
    assert prefix == "arn:aws:mq:us-east-1:000000000000:broker:b-1-mq-us-east-1-amazonaws-com"
    assert broker_id.startswith("b-")
    assert len(broker_id) == 38
    assert arn == broker_arn("amqps://other:creds@b-1.mq.us-east-1.amazonaws.com:5671/x", "us-east-1")
    assert virtual_host("amqp://h") == "/"
    assert virtual_host("amqp://h/") == "/"
    assert virtual_host("amqp://h/%2F") == "/"
    assert virtual_host("amqp://h/prod") == "prod"


def test_connection_url_must_be_an_amqp_url() -> None:
    assert (
        RabbitMQConnection(type="rabbitmq", url="amqps://u:p@host:5671/prod").url.reveal().endswith("/prod")
    )
    for url in ("http://host/", "amqp://host:port/", "amqp:///vhost"):
        with pytest.raises(ValueError, match=r"AMQP URL|amqp://"):
            RabbitMQConnection(type="rabbitmq", url=url)


def test_sample_event_is_read_by_powertools() -> None:
    event = json.loads(json.dumps(sample_event("rabbitmq")))
    parsed = RabbitMQEvent(event)
    assert parsed.event_source == "aws:rmq"
    [messages] = parsed.rmq_messages_by_queue.values()
    assert [m.json_data["paymentId"] for m in messages] == [42, 43]
    assert messages[0].basic_properties.message_id == "m-42"
    assert messages[0].basic_properties.timestamp == "Jun 10, 2024, 6:14:02 AM"


# --- snapshot and retry copies -------------------------------------------------------------------


def test_properties_snapshot_round_trips_every_header_type_exactly() -> None:
    properties = MessageProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers=EVERY_TYPE,
        delivery_mode=1,
        priority=9,
        correlation_id="c",
        reply_to="r",
        expiration="60000",
        message_id="m",
        timestamp=datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC),
        type="t",
        user_id="u",
        app_id="a",
    )
    again = MessageProperties.from_snapshot(properties.to_snapshot())
    assert again.to_event(3) == properties.to_event(3)
    assert again.headers is not None
    assert type(again.headers["not-utf8"]) is bytes
    assert type(again.headers["array"]) is bytearray
    assert again.headers["double"] == 0.1  # a double, not pamqp's 32-bit float
    assert again.headers["decimal"] == Decimal("12.50")
    assert MessageProperties.from_snapshot(MessageProperties().to_snapshot()) == MessageProperties()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"unknown": 1}',
        '{"priority": "high"}',
        '{"headers": {"x": {"d": "nope"}}}',
        '{"headers": {"x": {"q": 1}}}',
        '{"timestamp": "yesterday"}',
    ],
)
def test_a_malformed_snapshot_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        MessageProperties.from_snapshot(text)


def test_retry_copy_carries_attempts_first_seen_and_the_original_properties() -> None:
    original = MessageProperties(
        content_type="text/plain",
        headers={"a": "b"},
        message_id="m-1",
        user_id="alice",
        expiration="5000",
        priority=3,
    )
    copy = retry_copy_properties(original, attempts=2, first_seen_ms=1718000000123, ttl_ms=1500)
    assert copy.expiration == "1500"
    assert copy.user_id is None  # the broker would refuse another user's id
    assert copy.delivery_mode == 2
    assert copy.priority == 3
    assert copy.message_id == "m-1"
    assert copy.headers is not None
    assert set(copy.headers) == {ATTEMPTS_HEADER, FIRST_SEEN_HEADER, PROPERTIES_HEADER}
    properties, attempts, first_seen = read_retry_headers(copy.headers) or (None, 0, 0)
    assert properties == original
    assert (attempts, first_seen) == (2, 1718000000123)
    assert read_retry_headers({"a": "b"}) is None
    with pytest.raises(ValueError, match=ATTEMPTS_HEADER):
        read_retry_headers({**copy.headers, ATTEMPTS_HEADER: "two"})


def test_retry_tiers_hold_a_factor_of_two_of_delays() -> None:
    assert retry_tier(0.1) == (500, 100)
    assert retry_tier(0.75) == (500, 750)
    assert retry_tier(1.0) == (1000, 1000)
    assert retry_tier(3.9) == (2000, 3900)
    assert retry_tier(45.0) == (32000, 45000)
    assert retry_tier(600.0) == (32000, 600000)


def test_retry_queue_names_and_arguments() -> None:
    assert retry_queue_name("payments", "orders", 500) == "poller.retry.payments.orders.0.5s"
    assert retry_queue_name("payments", "orders", 32000) == "poller.retry.payments.orders.32s"
    long = retry_queue_name("m" * 200, "q" * 200, 1000)
    assert len(long) <= 255
    assert long.endswith(".1s")
    assert long != retry_queue_name("m" * 200, "q" * 199, 1000)
    assert retry_queue_arguments("orders") == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "orders",
    }


# --- acks ----------------------------------------------------------------------------------------


def test_in_order_completions_are_one_multiple_ack() -> None:
    acks = AckTracker()
    for tag in range(1, 11):
        acks.delivered(tag)
    assert acks.settle(range(1, 6)) == [(5, True)]
    assert acks.settle(range(6, 11)) == [(10, True)]
    assert len(acks) == 0


def test_completions_behind_an_unfinished_delivery_are_acked_at_once_and_never_twice() -> None:
    acks = AckTracker()
    for tag in range(1, 9):
        acks.delivered(tag)
    assert acks.settle([5, 6]) == [(5, False), (6, False)]
    assert len(acks) == 6
    assert acks.settle([2]) == [(2, False)]
    # 1 completes: the head run 1..2 is covered by acking 1 alone (2 was acked already).
    assert acks.settle([1]) == [(1, True)]
    # 3 and 4 complete: the multiple ack names 4, which is still unacked, and covers 5 and 6 too.
    assert acks.settle([3, 4]) == [(4, True)]
    assert acks.settle([4, 99]) == []  # already settled, unknown: ignored
    assert len(acks) == 2


def test_nacked_deliveries_are_never_named_by_an_ack() -> None:
    acks = AckTracker()
    for tag in (1, 2, 3):
        acks.delivered(tag)
    assert acks.settle([3], sent=True) == []
    assert acks.settle([2]) == [(2, False)]
    assert acks.settle([1]) == [(1, True)]
    assert len(acks) == 0
    acks.delivered(4)
    acks.delivered(5)
    assert acks.settle([4, 5], sent=True) == []
    assert len(acks) == 0


# --- lanes ---------------------------------------------------------------------------------------


def test_a_backlog_fills_one_lane_a_batch_at_a_time() -> None:
    lanes = LaneAssigner(3, batch_size=2, window=0.5)
    assert [lanes.assign(0.0) for _ in range(7)] == [0, 0, 1, 1, 2, 2, 0]
    for lane in (0, 0, 1):
        lanes.settled(lane)
    assert lanes.outstanding() == [1, 1, 2]
    assert lanes.assign(0.0) == 0  # still filling lane 0's second batch
    assert lanes.assign(0.0) == 1  # then the least loaded lane


def test_a_trickle_moves_on_once_the_batching_window_passed() -> None:
    lanes = LaneAssigner(2, batch_size=100, window=0.5)
    assert lanes.assign(0.0) == 0
    assert lanes.assign(0.4) == 0
    assert lanes.assign(0.6) == 1  # lane 0's batch is probably in flight
    lanes.settled(0)
    lanes.settled(0)
    assert lanes.assign(1.2) == 0  # lane 0 finished, and it is the emptier one
