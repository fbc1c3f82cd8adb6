"""Kinesis without a broker: the event format, the lease decisions, the shard reader against a
scripted client, and the lease coordinator over a SQLite store with a hand-driven clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aws_lambda_powertools.utilities.data_classes import KinesisStreamEvent
from botocore.exceptions import ClientError
from support import wait_for

from poller.devtools.samples import sample_event
from poller.engine.backoff import Backoff
from poller.engine.records import Record
from poller.errors import SourceError
from poller.sources.kinesis.event import (
    KinesisEventFormat,
    lane_of,
    lanes_of_shard,
    partition_key_bucket,
    to_record,
)
from poller.sources.kinesis.leases import LATEST, SHARD_END, TRIM_HORIZON, Lease
from poller.sources.kinesis.leases.balance import Shard, new_leases, plan_leases, workable
from poller.sources.kinesis.leases.coordinator import LeaseCoordinator
from poller.sources.kinesis.leases.sqlite import SqliteLeaseStore
from poller.sources.kinesis.reader import ShardReader
from poller.sources.kinesis.source import stream_name_of

SEQUENCE = "49590338271490256608559692538361571095921575989136588898"
STREAM_ARN = "arn:aws:kinesis:eu-west-1:000000000000:stream/clicks"
ROLE_ARN = "arn:aws:iam::000000000000:role/fn"


def raw(
    sequence: str = SEQUENCE, key: str = "user-17", data: bytes = b'{"a": 1}', at: float = 1718000000.1234
) -> dict[str, Any]:
    return {
        "SequenceNumber": sequence,
        "ApproximateArrivalTimestamp": datetime.fromtimestamp(at, UTC),
        "Data": data,
        "PartitionKey": key,
    }


def record(sequence: str = SEQUENCE, **kwargs: Any) -> Record:
    return to_record(
        raw(sequence, **kwargs),
        shard_id="shardId-000000000003",
        stream_arn=STREAM_ARN,
        region="eu-west-1",
        role_arn=ROLE_ARN,
    )


# --- event format --------------------------------------------------------------------------------


def test_record_is_the_lambda_kinesis_event_record() -> None:
    converted = record(data=b"\xff\x00 not json")
    assert converted.payload == {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "user-17",
            "sequenceNumber": SEQUENCE,
            "data": "/wAgbm90IGpzb24=",
            "approximateArrivalTimestamp": 1718000000.123,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000003:{SEQUENCE}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": ROLE_ARN,
        "awsRegion": "eu-west-1",
        "eventSourceARN": STREAM_ARN,
    }
    assert converted.partition == converted.lane == "shardId-000000000003"
    assert converted.position == int(SEQUENCE)
    assert converted.item_key == SEQUENCE
    assert converted.timestamp == 1718000000.123
    assert converted.size >= len(str(converted.payload)) * 0.8


def test_sequence_numbers_order_as_integers_not_strings() -> None:
    shorter, longer = record("9" * 55), record("1" + "0" * 55)
    assert shorter.position < longer.position
    assert shorter.item_key > longer.item_key  # as strings the order would be wrong


def test_describe_is_kinesis_batch_info() -> None:
    records = [record("100", at=1718000000.5), record("205", at=1718000001.25)]
    assert KinesisEventFormat().describe(records) == {
        "type": "kinesis",
        "shardId": "shardId-000000000003",
        "startSequenceNumber": "100",
        "endSequenceNumber": "205",
        "approximateArrivalOfFirstRecord": "2024-06-10T06:13:20.500Z",
        "approximateArrivalOfLastRecord": "2024-06-10T06:13:21.250Z",
        "batchSize": 2,
        "streamArn": STREAM_ARN,
    }


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        (SEQUENCE, SEQUENCE),
        ("", None),
        ("12a", None),
        (12, None),
        ({"sequenceNumber": SEQUENCE}, None),
        (None, None),
    ],
)
def test_item_identifier_is_the_sequence_number_string(identifier: object, expected: object) -> None:
    assert KinesisEventFormat().item_key(identifier) == expected


def test_lanes_bucket_partition_keys_stably() -> None:
    assert lane_of("shardId-1", "user-17", 1) == "shardId-1"
    # md5, not hash(): the same bucket in every process, whatever PYTHONHASHSEED says.
    assert partition_key_bucket("user-17", 4) == 1
    assert partition_key_bucket("user-18", 4) == 2
    assert lane_of("shardId-1", "user-18", 4) == "shardId-1#2"
    assert lanes_of_shard("shardId-1", 1) == ["shardId-1"]
    assert lanes_of_shard("shardId-1", 3) == ["shardId-1#0", "shardId-1#1", "shardId-1#2"]
    buckets = {partition_key_bucket(f"user-{i}", 10) for i in range(200)}
    assert buckets == set(range(10))


def test_stream_may_be_named_by_arn() -> None:
    assert stream_name_of("clicks") == "clicks"
    assert stream_name_of(STREAM_ARN) == "clicks"
    with pytest.raises(SourceError, match="not a Kinesis stream ARN"):
        stream_name_of("arn:aws:sqs:eu-west-1:000000000000:clicks")


def test_sample_event_reads_with_powertools() -> None:
    event = KinesisStreamEvent(sample_event("kinesis"))
    records = list(event.records)
    assert [r.kinesis.data_as_json()["userId"] for r in records] == [17, 18]
    assert records[0].event_id.startswith("shardId-000000000003:")
    assert records[0].kinesis.approximate_arrival_timestamp == 1718000000.123


# --- lease decisions -----------------------------------------------------------------------------


def test_new_leases_start_children_at_trim_horizon_and_skip_closed_shards_with_latest() -> None:
    shards = [
        Shard("s0", closed=True),
        Shard("s1", ("s0",)),
        Shard("s2", ("s0",)),
        Shard("s3"),
    ]
    first = new_leases(shards, {}, LATEST)
    assert [(lease.shard_id, lease.checkpoint) for lease in first] == [
        ("s0", SHARD_END),  # nothing newer than "now" in a closed shard
        ("s1", LATEST),
        ("s2", LATEST),
        ("s3", LATEST),
    ]
    existing = {"s3": Lease("s3", checkpoint="4959")}
    later = new_leases([Shard("s3", closed=True), Shard("s4", ("s3",))], existing, LATEST)
    assert later == [Lease("s4", ("s3",), TRIM_HORIZON)], "nothing written after the split is skipped"


def test_children_are_workable_only_after_their_parents_ended() -> None:
    leases = {
        "s0": Lease("s0", checkpoint="4959"),
        "s1": Lease("s1", ("s0",)),
        "s2": Lease("s2", ("s0", "gone")),
    }
    listed = {"s0", "s1", "s2"}
    assert [lease.shard_id for lease in workable(leases, listed)] == ["s0"]
    leases["s0"] = Lease("s0", checkpoint=SHARD_END)
    assert [lease.shard_id for lease in workable(leases, listed)] == ["s1", "s2"]
    # A parent past its retention period (no longer listed) has nothing left to wait for.
    assert [lease.shard_id for lease in workable({"s1": leases["s1"]}, {"s1"})] == ["s1"]
    # A lease whose shard left the stream is not read.
    assert workable({"old": Lease("old")}, set()) == []


def _plan(leases: list[Lease], me: str = "b", **kwargs: Any) -> tuple[list[str], list[str]]:
    options: dict[str, Any] = {"held": (), "expired": (), "max_steal": 1, "rng": random.Random(7), **kwargs}
    plan = plan_leases(leases, me=me, **options)
    return sorted(lease.shard_id for lease in plan.take), sorted(lease.shard_id for lease in plan.steal)


def owned(owner: str | None, *shards: str, pending: str | None = None) -> list[Lease]:
    return [Lease(shard, owner=owner, counter=1, pending_owner=pending) for shard in shards]


def test_a_new_process_takes_free_leases_up_to_its_share() -> None:
    take, steal = _plan(owned(None, "s0", "s1", "s2", "s3"), me="a")
    assert take == ["s0", "s1", "s2", "s3"]
    assert steal == []
    take, _ = _plan(owned("a", "s0", "s1") + owned(None, "s2", "s3"), me="b")
    assert len(take) == 2, "two workers: two each"


def test_expired_leases_are_taken_before_any_steal() -> None:
    leases = owned("a", "s0", "s1") + owned("dead", "s2", "s3", "s4", "s5")
    take, steal = _plan(leases, expired={"s2", "s3", "s4", "s5"})
    assert len(take) == 3, "a share of 6 over {a, b}"
    assert set(take) <= {"s2", "s3", "s4", "s5"}
    assert steal == []
    take, steal = _plan(leases[:4], expired={"s2", "s3"})
    assert take == ["s2", "s3"]
    assert steal == []


def test_a_process_below_its_share_steals_from_the_most_loaded_one_at_a_time() -> None:
    leases = owned("a", "s0", "s1", "s2") + owned("c", "s3")
    take, steal = _plan(leases)
    assert take == []
    assert len(steal) == 1
    assert steal[0] in {"s0", "s1", "s2"}
    take, steal = _plan(leases, max_steal=5)
    assert len(steal) == 1, "a holds 3 of a share of 2: one to spare"
    balanced = owned("a", "s0", "s1") + owned("b", "s2", "s3")
    assert _plan(balanced, held={"s2", "s3"}) == ([], [])


def test_uneven_counts_even_out() -> None:
    # 4 leases, 3 processes: share 2; a and c hold 2 each, b none: b asks for one.
    leases = owned("a", "s0", "s1") + owned("c", "s2", "s3")
    assert len(_plan(leases)[1]) == 1
    # b already has one on its way: 2/1/1 is as even as 4 over 3 gets.
    leases = owned("a", "s0", "s1") + owned("c", "s2") + owned("c", "s3", pending="b")
    assert _plan(leases) == ([], [])


def test_a_lease_recorded_as_mine_but_not_held_is_taken_back() -> None:
    take, _ = _plan(owned("b", "s0") + owned("a", "s1", "s2", "s3"))
    assert take == ["s0"]


def test_leases_with_a_pending_owner_are_not_stolen_again() -> None:
    leases = owned("a", "s0", "s1", pending="c") + owned("a", "s2", "s3", "s4")
    _, steal = _plan(leases)
    assert set(steal) <= {"s2", "s3", "s4"}


# --- shard reader --------------------------------------------------------------------------------


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "GetRecords")


class ScriptedKinesis:
    """get_records answers from a script per shard: a list of responses or exceptions."""

    def __init__(self, scripts: dict[str, list[Any]]) -> None:
        self.scripts = scripts
        self.iterator_requests: list[dict[str, Any]] = []
        self.calls: dict[str, int] = {shard: 0 for shard in scripts}

    async def get_shard_iterator(self, **request: Any) -> dict[str, Any]:
        self.iterator_requests.append(request)
        return {"ShardIterator": request["ShardId"]}

    async def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        self.calls[ShardIterator] += 1
        await asyncio.sleep(0)
        script = self.scripts[ShardIterator]
        step = (
            script.pop(0)
            if script
            else {"Records": [], "NextShardIterator": ShardIterator, "MillisBehindLatest": 0}
        )
        if isinstance(step, Exception):
            raise step
        result = dict(step)
        if result["NextShardIterator"] == "next":
            result["NextShardIterator"] = ShardIterator
        return result


def response(*sequences: str, end: bool = False, behind: int = 0) -> dict[str, Any]:
    return {
        "Records": [raw(sequence) for sequence in sequences],
        "NextShardIterator": None if end else "next",
        "MillisBehindLatest": behind,
    }


def reader(client: ScriptedKinesis, shard: str, checkpoint: str = TRIM_HORIZON, **kwargs: Any) -> ShardReader:
    def convert(shard_id: str, items: Any) -> list[Record]:
        return [
            to_record(item, shard_id=shard_id, stream_arn=STREAM_ARN, region="eu-west-1", role_arn=ROLE_ARN)
            for item in items
        ]

    options: dict[str, Any] = {
        "stream": "clicks",
        "shard_id": shard,
        "checkpoint": checkpoint,
        "timestamp": None,
        "limit": 100,
        "idle_interval": 0.01,
        "convert": convert,
        "notify": lambda: None,
        "backoff": Backoff(first=0.02, maximum=0.05),
        **kwargs,
    }
    # The scripted client answers by shard: the iterator it hands out is the shard id.
    return ShardReader(client, **options)


async def drain(shard_reader: ShardReader, count: int, within: float = 5.0) -> list[str]:
    taken: list[str] = []
    async with asyncio.timeout(within):
        while len(taken) < count:
            taken += [r.item_key for r in shard_reader.take()]  # type: ignore[misc]
            await asyncio.sleep(0.005)
    return taken


async def test_reader_starts_after_the_checkpoint_and_ends_with_its_shard() -> None:
    client = ScriptedKinesis({"s0": [response("11", "12", behind=500), response("13", end=True)]})
    shard = reader(client, "s0", checkpoint="10")
    task = asyncio.create_task(shard.run())
    assert await drain(shard, 3) == ["11", "12", "13"]
    await asyncio.wait_for(task, 5)
    assert shard.ended
    assert shard.last_read == "13"
    assert shard.millis_behind == 0
    assert client.iterator_requests == [
        {
            "StreamName": "clicks",
            "ShardId": "s0",
            "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
            "StartingSequenceNumber": "10",
        }
    ]


async def test_expired_iterator_is_renewed_after_the_last_record_read() -> None:
    client = ScriptedKinesis(
        {"s0": [response("1", "2"), client_error("ExpiredIteratorException"), response("3", end=True)]}
    )
    shard = reader(client, "s0")
    task = asyncio.create_task(shard.run())
    assert await drain(shard, 3) == ["1", "2", "3"]
    await asyncio.wait_for(task, 5)
    assert [r["ShardIteratorType"] for r in client.iterator_requests] == [
        "TRIM_HORIZON",
        "AFTER_SEQUENCE_NUMBER",
    ]
    assert client.iterator_requests[1]["StartingSequenceNumber"] == "2"
    assert shard.failure is None


async def test_a_throttled_shard_backs_off_without_stalling_another() -> None:
    throttled = [client_error("ProvisionedThroughputExceededException") for _ in range(4)]
    client = ScriptedKinesis(
        {"slow": [*throttled, response("9", end=True)], "fast": [response("1"), response("2", end=True)]}
    )
    slow, fast = (
        reader(client, "slow", backoff=Backoff(first=0.1, maximum=0.1, jitter=False)),
        reader(client, "fast"),
    )
    tasks = [asyncio.create_task(slow.run()), asyncio.create_task(fast.run())]
    assert await drain(fast, 2, within=1.0) == ["1", "2"]
    assert slow.take() == [], "still backing off"
    assert slow.failure is None, "throttling is expected, not a failure"
    assert await drain(slow, 1) == ["9"]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert client.calls["slow"] == 5


async def test_reader_holds_one_response_and_waits_while_a_lane_is_paused() -> None:
    client = ScriptedKinesis({"s0": [response("1"), response("2"), response("3", end=True)]})
    shard = reader(client, "s0")
    task = asyncio.create_task(shard.run())
    await asyncio.sleep(0.05)
    assert client.calls["s0"] == 1, "nothing more is fetched until the buffer is taken"
    shard.pause("s0#1")
    assert [r.item_key for r in shard.take()] == ["1"]
    await asyncio.sleep(0.05)
    assert client.calls["s0"] == 1, "a paused lane holds the whole shard"
    shard.resume("s0#1")
    assert await drain(shard, 2) == ["2", "3"]
    await asyncio.wait_for(task, 5)


async def test_other_errors_are_reported_and_retried_with_a_fresh_iterator() -> None:
    client = ScriptedKinesis({"s0": [client_error("InvalidArgumentException"), response("5", end=True)]})
    shard = reader(client, "s0", backoff=Backoff(first=0.2, maximum=0.2, jitter=False))
    task = asyncio.create_task(shard.run())
    await wait_for(lambda: shard.failure, timeout=1, message="the failure reported")
    assert "InvalidArgumentException" in (shard.failure or "")
    assert await drain(shard, 1) == ["5"]
    await asyncio.wait_for(task, 5)
    assert shard.failure is None
    assert len(client.iterator_requests) == 2


# --- coordinator ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def acquired(self, lease: Lease) -> None:
        self.events.append(("acquired", lease.shard_id))

    def lost(self, shard_id: str, reason: str) -> None:
        self.events.append(("lost", shard_id))

    def handoff_requested(self, shard_id: str) -> None:
        self.events.append(("handoff", shard_id))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteLeaseStore]:
    opened = SqliteLeaseStore(str(tmp_path / "leases.db"), "m/clicks", lease_duration=10)
    await opened.open()
    yield opened
    await opened.close()


def coordinator(
    store: SqliteLeaseStore, owner: str, clock: Clock, shards: list[Shard], **kwargs: Any
) -> tuple[LeaseCoordinator, list[tuple[str, str]]]:
    """A coordinator and the list of (callback, shard) it reports to its source."""
    listener = Listener()

    async def list_shards() -> list[Shard]:
        return list(shards)

    options: dict[str, Any] = {
        "name": "m",
        "owner": owner,
        "lease_duration": 10.0,
        "max_steal": 1,
        "starting_position": TRIM_HORIZON,
        "list_shards": list_shards,
        "listener": listener,
        "rng": random.Random(3),
        "clock": clock,
        **kwargs,
    }
    return LeaseCoordinator(store, **options), listener.events


FOUR = [Shard(f"s{i}") for i in range(4)]


async def test_a_joining_process_gets_its_share_by_graceful_handoff(store: SqliteLeaseStore) -> None:
    clock = Clock()
    a, a_events = coordinator(store, "a", clock, FOUR)
    b, b_events = coordinator(store, "b", clock, FOUR)
    await a.start()
    assert a.held() == ["s0", "s1", "s2", "s3"]
    for _ in range(2):
        await b.take_round()  # asks a for one lease
        clock.now += 3  # a's renewal is due
        await a.renew_due()
        [(_event, shard)] = [e for e in a_events if e[0] == "handoff"][-1:]
        assert shard in a.held(), "a keeps it until its in-flight batches are done"
        await a.hand_over(shard)
        await b.take_round()  # adopts what a handed over
        a_events.clear()
    assert len(a.held()) == len(b.held()) == 2
    assert sorted(a.held() + b.held()) == ["s0", "s1", "s2", "s3"]
    assert [event for event, _ in b_events] == ["acquired", "acquired"]
    await b.take_round()
    assert len(b.held()) == 2, "balanced: nothing more to steal"


async def test_an_expired_lease_is_taken_over_after_its_holder_dropped_it(store: SqliteLeaseStore) -> None:
    clock = Clock()
    a, a_events = coordinator(store, "a", clock, FOUR[:2])
    b, _ = coordinator(store, "b", clock, FOUR[:2])
    await a.start()
    await b.take_round()  # sees a's counters (and asks a for one of its two leases)
    clock.now += 5.5  # a did not renew (hung): it drops its leases at half the duration
    await a.renew_due()
    assert a.held() == []
    assert sorted(a_events[-2:]) == [("lost", "s0"), ("lost", "s1")]
    await b.take_round()
    assert b.held() == [], "not expired for b yet: b saw the counters only 5.5 s ago"
    clock.now += 5
    await b.take_round()
    assert b.held() == ["s0", "s1"], "a no longer counts: b's share is all of them"
    assert not await a.checkpoint("s0", "123"), "a's checkpoints are refused"


async def test_failed_renewals_drop_the_lease_before_anyone_may_take_it(store: SqliteLeaseStore) -> None:
    clock = Clock()
    a, events = coordinator(store, "a", clock, FOUR[:1])
    await a.start()

    async def unreachable(lease: Lease) -> Lease | None:
        raise SourceError("lease table unreachable")

    store.renew = unreachable  # type: ignore[method-assign]
    clock.now += 3
    await a.renew_due()
    assert a.held() == ["s0"]
    assert a.failure is not None
    assert "unreachable" in a.failure
    clock.now += 2.5
    await a.renew_due()
    assert a.held() == []
    assert events[-1] == ("lost", "s0")


async def test_a_child_is_taken_once_its_parent_was_read_to_its_end(store: SqliteLeaseStore) -> None:
    clock = Clock()
    shards = [Shard("s0", closed=True), Shard("s1", ("s0",)), Shard("s2", ("s0",))]
    a, events = coordinator(store, "a", clock, shards)
    await a.start()
    assert a.held() == ["s0"]
    assert await a.checkpoint("s0", "77")
    assert not await a.checkpoint("s1", "1"), "not held"
    assert await a.finish("s0")
    await a.take_round()
    assert a.held() == ["s1", "s2"]
    leases = {lease.shard_id: lease for lease in await store.list_leases()}
    assert leases["s0"].checkpoint == SHARD_END
    assert leases["s0"].owner is None
    assert leases["s1"].checkpoint == TRIM_HORIZON
    await a.free_all()
    assert all(lease.owner is None for lease in await store.list_leases())
    assert events[0] == ("acquired", "s0")
    assert sorted(events[1:]) == [("acquired", "s1"), ("acquired", "s2")]


async def test_a_dropped_connection_is_a_failure_the_reader_heals_from() -> None:
    # aiobotocore lets some of aiohttp's transport errors through unwrapped: they must not end
    # the shard's reading for good (the SQS source has always retried them).
    client = ScriptedKinesis({"s0": [aiohttp.ServerDisconnectedError(), response("7", end=True)]})
    shard = reader(client, "s0", backoff=Backoff(first=0.05, maximum=0.05, jitter=False))
    task = asyncio.create_task(shard.run())
    await wait_for(lambda: shard.failure, timeout=1, message="the failure reported")
    assert await drain(shard, 1) == ["7"]
    await asyncio.wait_for(task, 5)
    assert shard.failure is None
