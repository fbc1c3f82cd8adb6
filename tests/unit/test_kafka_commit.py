"""Kafka offsets are committed in the background without weakening at least once: offsets are
queued once their records completed, one request is in flight at a time and the next carries what
finished meanwhile, a failed request's offsets are sent again, a partition no longer assigned is
never committed, and the final flush (the source's close) commits what is queued, even a request
that was cut short."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from poller.engine.backoff import Backoff
from poller.sources.kafka.commits import OffsetCommitter


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


@asynccontextmanager
async def committing(consumer: FakeConsumer) -> AsyncIterator[OffsetCommitter]:
    """A committer on ``consumer`` with its task running, as a started source has it; at the end
    the task is cancelled and what is queued flushed, as the source's close does."""
    committer = OffsetCommitter(consumer, "m", retry=Backoff(first=0.0, maximum=0.0))
    task = asyncio.create_task(committer.run())
    try:
        yield committer
    finally:
        task.cancel()
        await asyncio.wait([task])


def tp(partition: int) -> TopicPartition:
    return TopicPartition("t", partition)


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
    async with committing(consumer) as committer:
        committer.add({tp(0): 10})  # queued: it does not wait for the broker
        await asyncio.sleep(0)
        committer.add({tp(1): 20})
        committer.add({tp(2): 20})
        committer.add({tp(2): 30})
        await settle(consumer, 0)
        await settle(consumer, 1)
        await committer.flush()  # nothing left to send
    assert consumer.requests == [{tp(0): 10}, {tp(1): 20, tp(2): 30}]
    assert committer.committed == {tp(0): 10, tp(1): 20, tp(2): 30}


async def test_a_failed_request_keeps_its_offsets_for_the_next() -> None:
    consumer = FakeConsumer(2)
    async with committing(consumer) as committer:
        committer.add({tp(0): 5})
        await asyncio.sleep(0)
        committer.add({tp(1): 8})
        await settle(consumer, 0, KafkaConnectionError("gone"))
        await settle(consumer, 1)
    assert consumer.requests == [{tp(0): 5}, {tp(0): 5, tp(1): 8}]


async def test_a_partition_given_up_meanwhile_is_not_committed() -> None:
    consumer = FakeConsumer(2)
    async with committing(consumer) as committer:
        committer.add({tp(0): 2})
        await asyncio.sleep(0)
        committer.add({tp(1): 2})
        consumer.assigned = {tp(0)}
        await settle(consumer, 0)
        await committer.flush()
    assert consumer.requests == [{tp(0): 2}]


async def test_the_final_flush_commits_everything_queued_even_a_request_cut_short() -> None:
    consumer = FakeConsumer(2)
    async with committing(consumer) as committer:
        committer.add({tp(0): 5})
        await asyncio.sleep(0)  # the committer's request is on the way
        committer.add({tp(1): 8})
    # The task was cancelled with its request in flight: a flush sends everything again.
    flushing = asyncio.ensure_future(committer.flush())
    await settle(consumer, 1)
    await flushing
    assert consumer.requests[1] == {tp(0): 5, tp(1): 8}
