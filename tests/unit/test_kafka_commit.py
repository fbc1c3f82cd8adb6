"""KafkaSource commits in the background without weakening at least once: offsets are queued once
their records completed, one request is in flight at a time and the next carries what finished
meanwhile, a failed request's offsets are sent again, a partition no longer assigned is never
committed, and close() commits what is queued before leaving."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from poller.config import KafkaConnection, Mapping
from poller.config import KafkaSource as KafkaSourceConfig
from poller.engine.records import Record
from poller.sources.kafka import source as kafka_module
from poller.sources.kafka.source import KafkaSource


class FakeConsumer:
    """Records each commit request; the test decides when each one completes and how."""

    def __init__(self, partitions: int) -> None:
        self.assigned = {TopicPartition("t", p) for p in range(partitions)}
        self.requests: list[dict[TopicPartition, int]] = []
        self.outcomes: list[asyncio.Future[None]] = []
        self.sent = asyncio.Event()
        self.stopped = False

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def stop(self) -> None:
        self.stopped = True

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


def committing(consumer: FakeConsumer) -> KafkaSource:
    """A source on ``consumer`` with its committer task running, as after start()."""
    kafka = source(consumer)
    kafka._committer = asyncio.create_task(kafka._commit_continuously())
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


async def test_commit_returns_at_once_and_offsets_finished_meanwhile_share_the_next_request() -> None:
    consumer = FakeConsumer(3)
    kafka = committing(consumer)
    await kafka.commit([record(0, 9)])  # queued: it does not wait for the broker
    await asyncio.sleep(0)
    await kafka.commit([record(1, 19)])
    await kafka.commit([record(2, 19), record(2, 29)])
    await settle(consumer, 0)
    await settle(consumer, 1)
    await kafka.flush_commits()  # nothing left to send
    assert consumer.requests == [
        {TopicPartition("t", 0): 10},
        {TopicPartition("t", 1): 20, TopicPartition("t", 2): 30},
    ]
    assert kafka._committed == {TopicPartition("t", p): o for p, o in ((0, 10), (1, 20), (2, 30))}
    await kafka.close()


async def test_a_failed_request_keeps_its_offsets_for_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_module, "COMMIT_RETRY_FIRST", 0.0)
    consumer = FakeConsumer(2)
    kafka = committing(consumer)
    await kafka.commit([record(0, 4)])
    await asyncio.sleep(0)
    await kafka.commit([record(1, 7)])
    await settle(consumer, 0, KafkaConnectionError("gone"))
    await settle(consumer, 1)
    assert consumer.requests == [
        {TopicPartition("t", 0): 5},
        {TopicPartition("t", 0): 5, TopicPartition("t", 1): 8},
    ]
    await kafka.close()


async def test_a_partition_given_up_meanwhile_is_not_committed() -> None:
    consumer = FakeConsumer(2)
    kafka = committing(consumer)
    await kafka.commit([record(0, 1)])
    await asyncio.sleep(0)
    await kafka.commit([record(1, 1)])
    consumer.assigned = {TopicPartition("t", 0)}
    await settle(consumer, 0)
    await kafka.flush_commits()
    assert consumer.requests == [{TopicPartition("t", 0): 2}]
    await kafka.close()


async def test_close_commits_everything_queued_even_a_request_cut_short() -> None:
    consumer = FakeConsumer(2)
    kafka = committing(consumer)
    await kafka.commit([record(0, 4)])
    await asyncio.sleep(0)  # the committer's request is on the way
    await kafka.commit([record(1, 7)])
    closing = asyncio.ensure_future(kafka.close())
    await settle(consumer, 1)  # close() cancelled the first request and sends everything again
    await closing
    assert consumer.requests[1] == {TopicPartition("t", 0): 5, TopicPartition("t", 1): 8}
    assert consumer.stopped
