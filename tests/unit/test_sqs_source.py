"""The SQS source through its public interface (start, poll, commit, release, close) against an
in-memory SQS client, and its lane assignment on its own: which lane a message goes to, when a FIFO
lane gets its next batch, and which messages go back with a FIFO group that was handed back."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from test_sqs_pure import FIFO, QUEUE

from poller.config import Config
from poller.engine.records import Record
from poller.errors import SourceError
from poller.sources.sqs import source as sqs_source
from poller.sources.sqs.event import QueueInfo, to_record
from poller.sources.sqs.lanes import LaneAssignment
from poller.sources.sqs.source import SqsSource
from poller.tasks import BackgroundTasks

_numbers = iter(range(1_000_000))


def message(body: str = "hello", *, group: str | None = None) -> dict[str, Any]:
    """A ReceiveMessage message as botocore returns it."""
    number = next(_numbers)
    attributes = {"SentTimestamp": "1718000000123", "ApproximateReceiveCount": "1"}
    if group is not None:
        attributes.update(MessageGroupId=group, SequenceNumber=str(number))
    return {
        "MessageId": f"id-{number}",
        "ReceiptHandle": f"handle-{number}",
        "MD5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "Body": body,
        "Attributes": attributes,
    }


class FakeSqs:
    """One queue in memory: what ReceiveMessage hands out, and the deletes and visibility changes
    it was asked for. ``delete_errors`` maps a receipt handle to the errors of its next deletes."""

    def __init__(self, queue: QueueInfo) -> None:
        self.queue = queue
        self.waiting: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.deleted: list[str] = []
        self.visibility: list[tuple[str, int]] = []
        self.delete_errors: dict[str, list[dict[str, Any]]] = {}

    def put(self, messages: Iterable[dict[str, Any]]) -> None:
        self.waiting += messages
        self.arrived.set()

    async def get_queue_url(self, QueueName: str, **_: Any) -> dict[str, Any]:
        return {"QueueUrl": self.queue.url}

    async def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        return {
            "Attributes": {
                "QueueArn": self.queue.arn,
                "VisibilityTimeout": str(self.queue.visibility_timeout),
                "FifoQueue": "true" if self.queue.fifo else "false",
                "MaximumMessageSize": str(self.queue.maximum_message_size),
                "ApproximateNumberOfMessages": str(len(self.waiting)),
            }
        }

    async def receive_message(self, QueueUrl: str, MaxNumberOfMessages: int, **_: Any) -> dict[str, Any]:
        if not self.waiting:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.05)  # a (very) short long poll
            except TimeoutError:
                return {}
        taken, self.waiting = self.waiting[:MaxNumberOfMessages], self.waiting[MaxNumberOfMessages:]
        return {"Messages": taken}

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


class NoRevocations:
    async def partitions_revoked(self, partitions: Collection[str]) -> None:
        raise AssertionError("an SQS source never revokes partitions")


def make_source(queue: QueueInfo, fake: FakeSqs, **mapping: Any) -> SqsSource:
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

    @asynccontextmanager
    async def client() -> AsyncIterator[FakeSqs]:
        yield fake

    return SqsSource("m", config.mappings["m"], config.connections["aws"], client_factory=client)


@pytest.fixture(autouse=True)
def _short_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqs_source, "POLL_WAIT_SECONDS", 0.02)


@asynccontextmanager
async def started(queue: QueueInfo, **mapping: Any) -> AsyncIterator[tuple[SqsSource, FakeSqs]]:
    """A started source on a fake queue, closed (and its tasks stopped) at the end of the block."""
    fake = FakeSqs(queue)
    source = make_source(queue, fake, **mapping)
    async with asyncio.TaskGroup() as group:
        tasks = BackgroundTasks(group, "sqs test")
        await source.start(NoRevocations(), tasks)
        try:
            yield source, fake
        finally:
            await source.close()
            await tasks.close()


async def receive(source: SqsSource, count: int) -> list[Record]:
    """Poll until ``count`` records arrived (the test fails if they do not within a second)."""
    records: list[Record] = []
    async with asyncio.timeout(1):
        while len(records) < count:
            records += await source.poll()
    return records


def bodies(records: list[Record]) -> list[str]:
    return [record.payload["body"] for record in records]


async def test_delete_retries_server_faults_and_reports_the_rest() -> None:
    async with started(QUEUE) as (source, fake):
        fake.put(message() for _ in range(3))
        records = await receive(source, 3)
        handles = [r.payload["receiptHandle"] for r in records]
        fake.delete_errors[handles[0]] = [
            {"SenderFault": False, "Code": "InternalError", "Message": "try again"}
        ]
        fake.delete_errors[handles[1]] = [
            {"SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "gone"}
        ]
        with pytest.raises(SourceError, match="could not delete 1 message"):
            await source.commit(records)
        assert sorted(fake.deleted) == sorted([handles[0], handles[2]])
        assert source.in_flight == 0


async def test_release_makes_messages_visible_after_the_delay_in_whole_seconds() -> None:
    async with started(QUEUE) as (source, fake):
        fake.put([message(), message()])
        records = await receive(source, 2)
        await source.release(records, 1.2)
        assert fake.visibility == [(r.payload["receiptHandle"], 2) for r in records]
        assert source.in_flight == 0
        await source.release(records, 1.2)
        assert len(fake.visibility) == 2, "settled records are not handed back twice"


async def test_close_hands_back_what_is_still_in_flight() -> None:
    async with started(QUEUE) as (source, fake):
        fake.put([message(), message()])
        records = await receive(source, 2)
        await source.commit(records[:1])
    assert fake.visibility == [(records[1].payload["receiptHandle"], 0)]


async def test_fifo_lane_gets_its_next_batch_only_once_the_last_one_settled() -> None:
    async with started(FIFO, scaling_config={"maximum_concurrency": 2}, batch_size=2) as (source, fake):
        fake.put(message(f"a{i}", group="a") for i in range(5))
        first = await receive(source, 2)
        assert bodies(first) == ["a0", "a1"], "one batch, in order"
        fake.put([message("a5", group="a")])
        assert await source.poll() == [], "the lane is busy"
        await source.commit(first[:1])
        assert await source.poll() == []
        await source.commit(first[1:])
        assert bodies(await receive(source, 2)) == ["a2", "a3"]


async def test_fifo_release_hands_back_the_groups_later_messages_after_it() -> None:
    async with started(FIFO, scaling_config={"maximum_concurrency": 2}, batch_size=2) as (source, fake):
        sent = [message(f"a{i}", group="a") for i in range(4)]
        fake.put(sent)
        batch = await receive(source, 2)
        # a0 failed: a1 (held back by the engine) and a2, a3 (still held here) must wait for it.
        await source.release(batch[:1], 3.0)
        await source.release(batch[1:], 3.0)
        assert fake.visibility == [
            (sent[0]["ReceiptHandle"], 3),  # holds the group while it waits
            (sent[2]["ReceiptHandle"], 0),
            (sent[3]["ReceiptHandle"], 0),
            (sent[1]["ReceiptHandle"], 0),
        ]
        assert await source.poll() == []
        assert source.in_flight == 0


async def test_fifo_limits_are_refused_at_start() -> None:
    for mapping, reason in [
        ({"batch_size": 11}, "too large for a FIFO queue"),
        ({"maximum_batching_window_in_seconds": 1}, "not supported for FIFO"),
    ]:
        source = make_source(FIFO, FakeSqs(FIFO), **mapping)
        async with asyncio.TaskGroup() as group:
            with pytest.raises(SourceError, match=reason) as raised:
                await source.start(NoRevocations(), BackgroundTasks(group, "sqs test"))
        assert not raised.value.retriable


# --- lanes ---------------------------------------------------------------------------------------


def records_for(lanes: LaneAssignment, queue: QueueInfo, count: int, now: float) -> list[Record]:
    lane = lanes.lane_for_receive(count, now)
    return [to_record(message(), queue, lane) for _ in range(count)]


def test_standard_batches_go_to_the_least_busy_lane() -> None:
    lanes = LaneAssignment("orders", 3, batch_size=10, window=0.0, fifo=False)
    now = time.monotonic()
    first = records_for(lanes, QUEUE, 10, now)
    second = records_for(lanes, QUEUE, 10, now)
    assert {r.lane for r in first} == {"orders#0"}
    assert {r.lane for r in second} == {"orders#1"}
    lanes.settled(first)
    assert lanes.lane_for_receive(1, now) == "orders#0", "lane 0 is idle again"
    assert [lanes.outstanding(name) for name in lanes.names] == [1, 10, 0]


def test_standard_receives_fill_one_lane_within_the_batching_window() -> None:
    lanes = LaneAssignment("orders", 10, batch_size=25, window=5.0, fifo=False)
    now = time.monotonic()
    assert [lanes.lane_for_receive(10, now) for _ in range(4)] == ["orders#0"] * 3 + ["orders#1"]
    assert lanes.lane_for_receive(1, now + 6) == "orders#2", "a new batch once the window has passed"


def test_fifo_groups_keep_their_lane_and_later_messages_go_back_with_a_handed_back_one() -> None:
    lanes = LaneAssignment("orders.fifo", 4, batch_size=2, window=0.0, fifo=True)
    assert lanes.lane_for_group("a") == lanes.lane_for_group("a")
    records = [to_record(message(f"a{i}", group="a"), FIFO, lanes.lane_for_group("a")) for i in range(4)]
    for record in records:
        lanes.hold(record)
    assert lanes.dispatch() == records[:2]
    assert lanes.dispatch() == [], "the lane's batch has not settled"
    assert lanes.take_behind(records[:1]) == records[2:]
    assert lanes.held(records[0].lane) == []
    assert lanes.waits_for_group(records[:2], 3, now=0.0) == [True, False]
    assert lanes.waits_for_group(records[2:3], 3, now=4.0) == [True], "the group's wait has ended"
