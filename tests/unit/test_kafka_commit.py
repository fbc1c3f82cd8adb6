"""KafkaSource.commit shares OffsetCommit requests between lanes without weakening them: a caller
returns only once a successful request carried its offsets, and never commits a partition that
is no longer assigned."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from poller.config import KafkaConnection, Mapping
from poller.config import KafkaSource as KafkaSourceConfig
from poller.errors import SourceError
from poller.records import Record
from poller.sources.kafka import KafkaSource


class FakeConsumer:
    """Records each commit request; the test decides when each one completes and how."""

    def __init__(self, partitions: int) -> None:
        self.assigned = {TopicPartition("t", p) for p in range(partitions)}
        self.requests: list[dict[TopicPartition, int]] = []
        self.outcomes: list[asyncio.Future[None]] = []
        self.sent = asyncio.Event()

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.requests.append(dict(offsets))
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.outcomes.append(outcome)
        self.sent.set()
        await outcome


def source(consumer: FakeConsumer) -> KafkaSource:
    mapping = Mapping(function_name="f", source=KafkaSourceConfig(type="kafka", connection="k", topics=["t"]))
    kafka = KafkaSource("m", mapping, KafkaConnection(type="kafka", bootstrap_servers="x:9092"))
    kafka._consumer = consumer
    return kafka


def record(partition: int, offset: int) -> Record:
    lane = f"t-{partition}"
    return Record(
        partition=lane, lane=lane, position=offset, item_key=(lane, offset), payload={}, size=1, timestamp=0.0
    )


async def settle(consumer: FakeConsumer, index: int, error: BaseException | None = None) -> None:
    while len(consumer.outcomes) <= index:
        consumer.sent.clear()
        await asyncio.wait_for(consumer.sent.wait(), 1)
    if error is None:
        consumer.outcomes[index].set_result(None)
    else:
        consumer.outcomes[index].set_exception(error)
    await asyncio.sleep(0)


async def test_lanes_finishing_during_a_commit_share_the_next_request() -> None:
    consumer = FakeConsumer(3)
    kafka = source(consumer)
    first = asyncio.ensure_future(kafka.commit([record(0, 9)]))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(kafka.commit([record(p, 19)])) for p in (1, 2)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in [first, *later])
    await settle(consumer, 0)
    assert first.done()
    assert not any(task.done() for task in later), "not carried by the first request"
    await settle(consumer, 1)
    await asyncio.gather(first, *later)
    assert consumer.requests == [
        {TopicPartition("t", 0): 10},
        {TopicPartition("t", 1): 20, TopicPartition("t", 2): 20},
    ]


async def test_a_failed_request_fails_its_caller_and_the_others_send_again() -> None:
    consumer = FakeConsumer(3)
    kafka = source(consumer)
    first = asyncio.ensure_future(kafka.commit([record(0, 4)]))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(kafka.commit([record(1, 7)]))
    third = asyncio.ensure_future(kafka.commit([record(2, 7)]))
    await settle(consumer, 0)
    await first
    # The second caller's request carries the third's offsets too, and fails.
    await settle(consumer, 1, KafkaConnectionError("gone"))
    with pytest.raises(SourceError):
        await second
    # The third was in it, so it was not committed: it sends its own.
    await settle(consumer, 2)
    await third
    assert consumer.requests == [
        {TopicPartition("t", 0): 5},
        {TopicPartition("t", 1): 8, TopicPartition("t", 2): 8},
        {TopicPartition("t", 2): 8},
    ]


async def test_a_partition_given_up_meanwhile_is_not_committed() -> None:
    consumer = FakeConsumer(2)
    kafka = source(consumer)
    first = asyncio.ensure_future(kafka.commit([record(0, 1)]))
    await asyncio.sleep(0)
    revoked = asyncio.ensure_future(kafka.commit([record(1, 1)]))
    await asyncio.sleep(0)
    consumer.assigned = {TopicPartition("t", 0)}
    await settle(consumer, 0)
    await asyncio.gather(first, revoked)
    assert consumer.requests == [{TopicPartition("t", 0): 2}]
