"""Micro-benchmarks of the hot path: ``python -m bench.micro``.

Times, with plain ``timeit``, what the poller does per batch between a client's messages and the
handler's event, for a 500-record Kafka batch and a 100-record SQS batch (1 KiB payloads):
converting the client's messages to Records (once per record read) and building the AWS event
(once per invocation; the handler gets it without a further copy, see EventFormat.event). Best of
several repeats, in microseconds per batch and per record. Not part of the test suite, which
never asserts on speed: run it before and after a change to the hot path and compare.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import timeit
from collections.abc import Callable
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatch

from poller.devtools.samples import kafka_record_batch
from poller.sources.kafka.event import KafkaEventFormat
from poller.sources.kafka.event import to_records as kafka_records_of
from poller.sources.sqs.event import QueueInfo, SqsEventFormat
from poller.sources.sqs.event import to_record as sqs_record

QUEUE = QueueInfo(
    url="https://sqs.us-east-1.amazonaws.com/000000000000/bench",
    arn="arn:aws:sqs:us-east-1:000000000000:bench",
    name="bench",
    region="us-east-1",
    fifo=False,
    visibility_timeout=30,
    maximum_message_size=262144,
)


def kafka_messages(count: int, size: int = 1024, *, values: list[bytes] | None = None) -> list[Any]:
    """``count`` Kafka records of ``size`` random bytes each, or with the given ``values``, as
    poller's consumers get them from aiokafka: parsed from a record batch
    (poller/sources/kafka/fetched.py)."""
    random = os.urandom(size)
    now = int(time.time() * 1000)
    entries = [
        (offset, now, b"key-%d" % offset, value, [])
        for offset, value in enumerate(values or [random] * count)
    ]
    return list(DefaultRecordBatch(kafka_record_batch(entries)))


def sqs_messages(count: int, size: int = 1024) -> list[dict[str, Any]]:
    body = os.urandom(size // 2).hex()
    digest = hashlib.md5(body.encode()).hexdigest()
    return [
        {
            "MessageId": f"00000000-0000-0000-0000-{number:012d}",
            "ReceiptHandle": f"handle-{number}-" + "x" * 150,
            "MD5OfBody": digest,
            "Body": body,
            "Attributes": {
                "SenderId": "AIDAEXAMPLE",
                "SentTimestamp": "1718000000123",
                "ApproximateReceiveCount": "1",
                "ApproximateFirstReceiveTimestamp": "1718000000200",
            },
        }
        for number in range(count)
    ]


def cases() -> dict[str, tuple[int, Callable[[], object]]]:
    """name -> (records per batch, the work of one batch)."""
    kafka = kafka_messages(500)
    kafka_format = KafkaEventFormat("127.0.0.1:9092")
    kafka_records = kafka_records_of(kafka, "bench-0", "bench", 0)
    sqs = sqs_messages(100)
    sqs_format = SqsEventFormat()
    sqs_records = [sqs_record(message, QUEUE, "bench#0") for message in sqs]
    return {
        "kafka 500: messages -> records": (500, lambda: kafka_records_of(kafka, "bench-0", "bench", 0)),
        "kafka 500: records -> event": (500, lambda: kafka_format.event(kafka_records)),
        "kafka 500: all of it": (
            500,
            lambda: kafka_format.event(kafka_records_of(kafka, "bench-0", "bench", 0)),
        ),
        "sqs 100: messages -> records": (100, lambda: [sqs_record(m, QUEUE, "bench#0") for m in sqs]),
        "sqs 100: records -> event": (100, lambda: sqs_format.event(sqs_records)),
        "sqs 100: all of it": (
            100,
            lambda: sqs_format.event([sqs_record(m, QUEUE, "bench#0") for m in sqs]),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit repeats; the best is reported")
    parser.add_argument("--seconds", type=float, default=0.2, help="about how long each repeat runs")
    parser.add_argument(
        "--run",
        metavar="CASE",
        help="only run this case --times times, untimed: for instruction counts under "
        "valgrind --tool=callgrind (see docs/benchmarks.md)",
    )
    parser.add_argument("--times", type=int, default=20, help="how often --run runs its case")
    args = parser.parse_args(argv)
    if args.run is not None:
        _, work = cases()[args.run]
        for _ in range(args.times):
            work()
        return 0
    print(f"{'case':40} {'us/batch':>10} {'us/record':>10}")
    for name, (records, work) in cases().items():
        timer = timeit.Timer(work)
        number, _ = timer.autorange()
        number = max(1, int(number * args.seconds / 0.2))
        best = min(timer.repeat(repeat=args.repeat, number=number)) / number
        print(f"{name:40} {best * 1e6:10.1f} {best * 1e6 / records:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
