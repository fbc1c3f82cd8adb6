"""Micro-benchmark of filter criteria: ``python -m bench.filters_micro``.

Times, with plain ``timeit``, what filtering costs per record for a few representative patterns:
building the record's view (decoding and parsing the data field when a pattern needs it) and
matching it. Best of several repeats, in nanoseconds per record. Not part of the test suite, which
never asserts on speed: run it before and after a change to ``poller.engine.filters``.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from typing import Any

import pybase64

from poller.engine.filters import KAFKA_FILTER_FIELD, KINESIS_FILTER_FIELD, SQS_FILTER_FIELD, FilterCriteria

BODY = {"kind": "order", "amount": 150, "region": "eu-west-1", "items": [{"sku": "A-1"}, {"sku": "B-2"}]}

SQS = {
    "messageId": "6c2f1e7a-2b0c-4c55-9d6e-1a2b3c4d5e6f",
    "receiptHandle": "AQEBexampleReceiptHandle",
    "body": json.dumps(BODY),
    "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1718000000000"},
    "messageAttributes": {"tenant": {"stringValue": "acme", "dataType": "String"}},
    "md5OfBody": "11111111111111111111111111111111",
    "eventSource": "aws:sqs",
    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:orders",
    "awsRegion": "us-east-1",
}
KINESIS = {
    "kinesis": {
        "kinesisSchemaVersion": "1.0",
        "partitionKey": "user-17",
        "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
        "data": pybase64.b64encode_as_string(json.dumps(BODY).encode()),
        "approximateArrivalTimestamp": 1718000000.123,
    },
    "eventSource": "aws:kinesis",
}
KAFKA = {
    "topic": "orders",
    "partition": 0,
    "offset": 1500,
    "timestamp": 1718000000456,
    "timestampType": "CREATE_TIME",
    "value": pybase64.b64encode_as_string(json.dumps(BODY).encode()),
    "headers": [],
}

CASES: list[tuple[str, dict[str, Any], Any, list[Any]]] = [
    ("sqs metadata only", SQS, SQS_FILTER_FIELD, [{"attributes": {"ApproximateReceiveCount": ["1"]}}]),
    ("sqs body equals", SQS, SQS_FILTER_FIELD, [{"body": {"kind": ["order"]}}]),
    (
        "sqs body numeric+prefix",
        SQS,
        SQS_FILTER_FIELD,
        [{"body": {"amount": [{"numeric": [">", 100]}], "region": [{"prefix": "eu-"}]}}],
    ),
    ("sqs body no match", SQS, SQS_FILTER_FIELD, [{"body": {"kind": ["refund"]}}]),
    (
        "sqs 5 filters, last matches",
        SQS,
        SQS_FILTER_FIELD,
        [{"body": {"kind": [f"k{i}"]}} for i in range(4)] + [{"body": {"kind": ["order"]}}],
    ),
    (
        "sqs $or",
        SQS,
        SQS_FILTER_FIELD,
        [{"body": {"$or": [{"kind": ["refund"]}, {"amount": [{"numeric": [">=", 150]}]}]}}],
    ),
    ("sqs array of objects", SQS, SQS_FILTER_FIELD, [{"body": {"items": {"sku": [{"prefix": "B-"}]}}}]),
    ("kinesis data equals", KINESIS, KINESIS_FILTER_FIELD, [{"data": {"kind": ["order"]}}]),
    (
        "kafka value anything-but",
        KAFKA,
        KAFKA_FILTER_FIELD,
        [{"value": {"kind": [{"anything-but": ["refund"]}]}}],
    ),
    ("kafka metadata only", KAFKA, KAFKA_FILTER_FIELD, [{"topic": ["orders"], "partition": [0]}]),
]


def best_ns(call: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="records per repeat")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'pattern':34} {'view+match':>11} {'match':>8}  (ns per record)")
    for name, record, field, patterns in CASES:
        criteria = FilterCriteria.compile(patterns, field=field)
        view = criteria.view(record, field)
        assert criteria.matches(view) == ("no match" not in name), name
        whole = best_ns(
            lambda c=criteria, r=record, f=field: c.matches_record(r, f), args.number, args.repeat
        )
        only = best_ns(lambda c=criteria, v=view: c.matches(v), args.number, args.repeat)
        print(f"{name:34} {whole:11.0f} {only:8.0f}")


if __name__ == "__main__":
    main()
