"""Helpers shared by the unit and integration tests (import as ``from support import ...``).

Kafka helpers talk to whatever broker the ``kafka_bootstrap`` fixture gives: the tansu stand-in by
default. They work around tansu's quirks (``/work/shared/reference/brokers.md``) so that the tests
themselves assert Kafka semantics only.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar, overload

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

T = TypeVar("T")

# tansu takes 5 s to form a group and up to 18 s to re-form it with the default timeouts; these make
# it 1 s. Tests put them into Kafka mapping source configs. Real Kafka rejects a session timeout
# below 6 s by default, so they belong to tests against the stand-in, never to product defaults.
KAFKA_TEST_GROUP_SETTINGS: dict[str, int] = {
    "session_timeout_ms": 1000,
    "heartbeat_interval_ms": 200,
    "rebalance_timeout_ms": 1000,
}

# (partition, key, value, headers); partition None lets the producer's partitioner choose.
KafkaRecord: TypeAlias = tuple[
    int | None, bytes | str | None, bytes | str | None, Sequence[tuple[str, bytes]] | None
]

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9._-]+")


def unique_name(prefix: str = "test") -> str:
    """A fresh name that is valid as a Kafka topic, a group id, an SQS queue or a RabbitMQ queue."""
    cleaned = _INVALID_NAME_CHARS.sub("-", prefix).strip("-.") or "test"
    return f"{cleaned[:64]}-{uuid.uuid4().hex}"


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,  # noqa: ASYNC109 (a polling deadline that fails the test with a message)
    interval: float = 0.05,
    message: str = "condition was not met",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that.

    Fails the test with ``message`` after ``timeout`` seconds. Exceptions from the predicate
    propagate at once: a broken check should not look like a slow one.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{message} (waited {timeout:g} s)")
        await asyncio.sleep(interval)


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 (passed on to wait_for)
) -> None:
    """Create ``name`` and return once metadata lists all of its partitions with a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        )
        for topic, code, error_message in _topic_errors(response):
            if code != 0:
                pytest.fail(f"creating topic {topic} failed: error {code} {error_message}")

        async def partitions_visible() -> bool:
            described = await admin.describe_topics([name])
            return any(
                entry["topic"] == name
                and entry["error_code"] == 0
                and len([p for p in entry["partitions"] if p["leader"] >= 0]) == partitions
                for entry in described
            )

        await wait_for(
            partitions_visible, timeout=timeout, message=f"topic {name} has no {partitions} partitions"
        )
    finally:
        await admin.close()


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    # CreateTopics v0 has no error message, later versions do.
    return [(entry[0], entry[1], entry[2] if len(entry) > 2 else None) for entry in response.topic_errors]


async def produce(bootstrap: str, topic: str, records: Iterable[KafkaRecord]) -> list[tuple[int, int]]:
    """Send each record and wait for its acknowledgement; return their (partition, offset).

    One record per request on purpose: tansu reports a wrong high watermark when several records
    share a batch, and tests that read end offsets would see it.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    positions: list[tuple[int, int]] = []
    try:
        for partition, key, value, headers in records:
            metadata = await producer.send_and_wait(
                topic,
                value=_as_bytes(value),
                key=_as_bytes(key),
                partition=partition,
                headers=list(headers or ()),
            )
            positions.append((int(metadata.partition), int(metadata.offset)))
    finally:
        await producer.stop()
    return positions


def _as_bytes(data: bytes | str | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


async def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int | Iterable[int]
) -> dict[int, int | None]:
    """The offsets ``group`` has committed for ``topic``; None where it committed nothing.

    ``partitions`` is a partition count or the partition numbers. A consumer's ``committed()``
    is used because the admin client's list_consumer_group_offsets is broken on tansu. The consumer
    never joins the group, so it does not disturb the group's members.
    """
    numbers = range(partitions) if isinstance(partitions, int) else list(partitions)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        result: dict[int, int | None] = {}
        for number in numbers:
            offset = await consumer.committed(TopicPartition(topic, number))
            result[number] = None if offset is None else int(offset)
        return result
    finally:
        await consumer.stop()


async def consume_all(
    bootstrap: str,
    topic: str,
    expected_count: int,
    timeout: float = 30.0,  # noqa: ASYNC109 (the test fails with a count, not a bare TimeoutError)
) -> list[Any]:
    """Read ``topic`` from the beginning without a group until ``expected_count`` records arrived.

    Returns aiokafka ``ConsumerRecord`` objects ordered by (partition, offset), possibly more than
    expected if more were there; fails the test if fewer arrive within ``timeout`` seconds.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(received) < expected_count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(
                    f"topic {topic}: {len(received)} of {expected_count} records arrived in {timeout:g} s"
                )
            batches = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000) + 1)
            for messages in batches.values():
                received.extend(messages)
    finally:
        await consumer.stop()
    received.sort(key=lambda message: (message.partition, message.offset))
    return received
