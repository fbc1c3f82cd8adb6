"""The Kinesis event source mapping against kinesalite, in process (SPEC sections 5-7).

Checkpoints go to a SQLite file in the test's directory, or to a DynamoDB lease table on moto.
The guarantees every source shares (order per shard, bisect and dead letters, partial batch
responses, a destination outage) are tested once for all four in ``test_guarantees.py``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kinesis_recorder as recorder
import pytest
from kinesis_helpers import (
    aws_connection,
    create_stream,
    delete_created_streams,
    dynamodb_client,
    dynamodb_leases,
    make_config,
    merge,
    put,
    shards,
    split,
    sqlite_leases,
)
from support import FakeClock, running, unique_name, wait_for

from poller.app import App
from poller.sources.kinesis.source import KinesisSource

pytestmark = pytest.mark.kinesis


@pytest.fixture(autouse=True)
async def _delete_streams() -> AsyncIterator[None]:
    yield
    await delete_created_streams()


def handled(stream: str) -> list[dict[str, Any]]:
    return [record for call in recorder.calls(stream) for record in call]


def sequences(records: list[dict[str, Any]]) -> list[int]:
    return [int(record["kinesis"]["sequenceNumber"]) for record in records]


def source_of(app: App) -> KinesisSource:
    source = app.runners["m"].source
    assert isinstance(source, KinesisSource)
    return source


def checkpoints(tmp_path: Path, stream: str) -> dict[str, str]:
    return {
        shard: lease["checkpoint"] for shard, lease in sqlite_leases(tmp_path / "cp.db", "m", stream).items()
    }


def sqlite_store(tmp_path: Path) -> dict[str, Any]:
    return {"type": "sqlite", "path": str(tmp_path / "cp.db")}


async def test_parallelization_factor_runs_batches_of_a_shard_at_once_in_order_per_key(
    kinesis_endpoint: str, tmp_path: Path
) -> None:
    stream = unique_name("clicks")
    await create_stream(kinesis_endpoint, stream, 4)
    keys = [f"user-{i % 200}" for i in range(10_000)]
    written = await put(
        kinesis_endpoint, stream, [(key, json.dumps({"i": i}).encode()) for i, key in enumerate(keys)]
    )
    config = make_config(
        aws_connection(kinesis_endpoint),
        stream,
        "kinesis_recorder:slow",
        function={"environment": {"DELAY": "0.005"}},
        checkpoints=sqlite_store(tmp_path),
        parallelization_factor=4,
    )
    started = time.monotonic()
    async with running(config) as app:
        await wait_for(
            lambda: len(handled(stream)) >= 10_000, timeout=60, interval=0.2, message="10,000 records handled"
        )
        elapsed = time.monotonic() - started
        last = {shard: sequence for shard, sequence in written}  # the last write per shard wins
        await wait_for(
            lambda: checkpoints(tmp_path, stream) == last, message="checkpoints at each shard's end"
        )
        stats = app.runners["m"].status.counts
        assert stats.failed == stats.dead_lettered == 0
        assert set(source_of(app).iterator_age()) == set(last), "MillisBehindLatest of every shard"
    print(f"factor 4: 10,000 records in {elapsed:.2f} s")
    seen = handled(stream)
    assert len(seen) == 10_000, "each record exactly once on the happy path"
    by_shard: dict[str, list[int]] = defaultdict(list)
    for shard, sequence in written:
        by_shard[shard].append(int(sequence))
    assert sorted(len(s) for s in by_shard.values())[0] >= 2000, "spread over 4 shards"
    assert len(by_shard) == 4
    for shard, expected in by_shard.items():
        got = sequences([r for r in seen if recorder.shard_of(r) == shard])
        assert sorted(got) == expected, f"{shard}: every record once"
    for key in set(keys):
        per_key = sequences([r for r in seen if r["kinesis"]["partitionKey"] == key])
        assert per_key == sorted(per_key), f"{key} in order"
    assert max(len(call) for call in recorder.calls(stream)) <= 100  # batch_size default
    assert all(len({recorder.shard_of(r) for r in call}) == 1 for call in recorder.calls(stream))
    concurrency = max(recorder.most_in_flight(stream, shard) for shard in by_shard)
    assert 1 < concurrency <= 4, "several batches of a shard at once, at most the factor"


async def test_shard_split_during_consumption_reads_the_parent_before_its_children(
    kinesis_endpoint: str, tmp_path: Path
) -> None:
    stream = unique_name("split")
    await create_stream(kinesis_endpoint, stream, 1)
    keys = [f"p{i % 20}" for i in range(600)]
    before = await put(kinesis_endpoint, stream, [(keys[i], str(i).encode()) for i in range(300)])
    config = make_config(
        aws_connection(kinesis_endpoint),
        stream,
        "kinesis_recorder:slow",
        function={"environment": {"DELAY": "0.02"}},
        checkpoints=sqlite_store(tmp_path),
        batch_size=10,
    )
    async with running(config):
        await wait_for(lambda: len(handled(stream)) >= 50, timeout=30, message="consuming")
        await split(kinesis_endpoint, stream, "shardId-000000000000")
        after = await put(kinesis_endpoint, stream, [(keys[i], str(i).encode()) for i in range(300, 600)])
        assert {shard for shard, _ in after} == {"shardId-000000000001", "shardId-000000000002"}
        assert len(handled(stream)) < 300, "the split happened during consumption"
        await wait_for(lambda: len(handled(stream)) >= 600, timeout=60, message="everything handled")
        await wait_for(
            lambda: checkpoints(tmp_path, stream).get("shardId-000000000000") == "SHARD_END",
            message="the parent's end recorded",
        )
    seen = handled(stream)
    assert sorted(int(recorder.data_of(r)) for r in seen) == list(range(600)), "nothing lost or repeated"
    parent = [i for i, r in enumerate(seen) if recorder.shard_of(r) == "shardId-000000000000"]
    children = [i for i, r in enumerate(seen) if recorder.shard_of(r) != "shardId-000000000000"]
    assert len(parent) == len(before) == 300
    assert max(parent) < min(children), "every parent record before any child record"
    for key in set(keys):
        order = [int(recorder.data_of(r)) for r in seen if r["kinesis"]["partitionKey"] == key]
        assert order == sorted(order), f"{key} in order across the split"
    leases = sqlite_leases(tmp_path / "cp.db", "m", stream)
    assert leases["shardId-000000000001"]["parents"] == ["shardId-000000000000"]


async def test_merged_shard_is_read_after_both_parents(kinesis_endpoint: str, tmp_path: Path) -> None:
    stream = unique_name("merge")
    await create_stream(kinesis_endpoint, stream, 2)
    await put(kinesis_endpoint, stream, [(f"k{i % 10}", str(i).encode()) for i in range(200)])
    await merge(kinesis_endpoint, stream, "shardId-000000000000", "shardId-000000000001")
    await put(kinesis_endpoint, stream, [(f"k{i % 10}", str(i).encode()) for i in range(200, 300)])
    config = make_config(
        aws_connection(kinesis_endpoint),
        stream,
        "kinesis_recorder:collect",
        checkpoints=sqlite_store(tmp_path),
    )
    async with running(config):
        await wait_for(lambda: len(handled(stream)) >= 300, timeout=30, message="everything handled")
    seen = handled(stream)
    assert sorted(int(recorder.data_of(r)) for r in seen) == list(range(300))
    child = [i for i, r in enumerate(seen) if recorder.shard_of(r) == "shardId-000000000002"]
    parents = [i for i, r in enumerate(seen) if recorder.shard_of(r) != "shardId-000000000002"]
    assert len(child) == 100
    assert max(parents) < min(child)


async def test_restart_with_the_default_sqlite_store_resumes_after_the_checkpoint(
    kinesis_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default checkpoint file is relative to the working directory
    stream = unique_name("restart")
    await create_stream(kinesis_endpoint, stream, 2)
    first = await put(kinesis_endpoint, stream, [(f"k{i}", f"first-{i}".encode()) for i in range(200)])
    config = make_config(aws_connection(kinesis_endpoint), stream, "kinesis_recorder:collect")
    default_file = tmp_path / ".poller" / "checkpoints.db"
    last = {shard: sequence for shard, sequence in first}
    async with running(config):
        await wait_for(lambda: len(handled(stream)) >= 200, timeout=30)
        await wait_for(
            lambda: (
                {s: lease["checkpoint"] for s, lease in sqlite_leases(default_file, "m", stream).items()}
                == last
            ),
            message="checkpoints in .poller/checkpoints.db",
        )
    leases = sqlite_leases(default_file, "m", stream)
    assert all(lease["owner"] is None for lease in leases.values()), "leases released on shutdown"
    second = await put(kinesis_endpoint, stream, [(f"k{i}", f"second-{i}".encode()) for i in range(100)])
    calls_before = len(recorder.calls(stream))
    async with running(config):
        await wait_for(lambda: len(handled(stream)) >= 300, timeout=30)
    resumed = [r for call in recorder.calls(stream)[calls_before:] for r in call]
    assert sorted(r["kinesis"]["sequenceNumber"] for r in resumed) == sorted(s for _, s in second)
    assert all(recorder.data_of(r).startswith(b"second-") for r in resumed), "not from the start"


async def test_powertools_batch_processor_works_unchanged(kinesis_endpoint: str, tmp_path: Path) -> None:
    stream = unique_name("powertools")
    await create_stream(kinesis_endpoint, stream, 1)
    written = await put(
        kinesis_endpoint,
        stream,
        [(f"user-{i}", json.dumps({"click": i, "fail": i == 4}).encode()) for i in range(10)],
    )
    config = make_config(
        aws_connection(kinesis_endpoint),
        stream,
        "kinesis_recorder:powertools",
        checkpoints=sqlite_store(tmp_path),
        function_response_types=["ReportBatchItemFailures"],
    )
    shard, last = written[-1]
    async with running(config, FakeClock()) as app:
        await wait_for(lambda: checkpoints(tmp_path, stream) == {shard: last}, timeout=30)
        stats = app.runners["m"].status.counts
    seen = recorder.powertools_seen(stream)
    # The first invocation saw all ten, decoded by Powertools' data classes; record 4 failed, so
    # the batch was retried from it (records 4..9), as AWS does for streams.
    assert seen[:10] == [(f"user-{i}", written[i][1], {"click": i, "fail": i == 4}) for i in range(10)]
    assert [sequence for _, sequence, _ in seen[10:]] == [sequence for _, sequence in written[4:]]
    assert stats.invocations == 2
    assert stats.dead_lettered == 0


async def test_two_replicas_in_one_process_split_the_shards_and_hand_them_over(
    kinesis_endpoint: str, moto_endpoint: str
) -> None:
    stream, table = unique_name("shared"), unique_name("leases")
    await create_stream(kinesis_endpoint, stream, 4)
    written = await put(kinesis_endpoint, stream, [(f"k{i}", str(i).encode()) for i in range(3000)])
    config = make_config(
        aws_connection(kinesis_endpoint, moto_endpoint),
        stream,
        "kinesis_recorder:slow",
        function={"environment": {"DELAY": "0.1"}},
        # Renewals must answer within d/6 or a lease is lost at d/2, and a lost lease (unlike a
        # hand-over) re-reads from the checkpoint: 6 s leaves a loaded machine's moto 1 s per
        # renewal, while its eight environments start in this one process.
        checkpoints={"type": "dynamodb", "connection": "aws", "table": table, "lease_duration_seconds": 6},
        batch_size=10,
    )
    async with running(config) as first:
        await wait_for(lambda: len(source_of(first).shards()) == 4, timeout=30, message="first holds all")
        async with running(config) as second:
            await wait_for(
                lambda: len(source_of(first).shards()) == len(source_of(second).shards()) == 2,
                timeout=30,
                message="two shards each",
            )
            leases = await dynamodb_leases(moto_endpoint, table, "m", stream)
            owners = {lease["owner"] for lease in leases.values()}
            assert owners == {source_of(first).owner, source_of(second).owner}
            await wait_for(lambda: second.runners["m"].status.counts.succeeded >= 50, message="second works")
        # The second replica left and released its leases: the first takes them at once.
        await wait_for(lambda: len(source_of(first).shards()) == 4, timeout=10, message="all back")
        await wait_for(lambda: len(handled(stream)) >= 3000, timeout=60, message="everything handled")
    seen = sorted(int(r["kinesis"]["sequenceNumber"]) for r in handled(stream))
    # Handoffs finish the in-flight batch and checkpoint before the other replica starts: no
    # record was handled twice.
    assert seen == sorted(int(sequence) for _, sequence in written)


async def test_a_lost_lease_stops_the_shard_and_its_checkpoints(
    kinesis_endpoint: str, moto_endpoint: str
) -> None:
    stream, table = unique_name("lost"), unique_name("leases")
    await create_stream(kinesis_endpoint, stream, 2)
    config = make_config(
        aws_connection(kinesis_endpoint, moto_endpoint),
        stream,
        "kinesis_recorder:collect",
        checkpoints={"type": "dynamodb", "connection": "aws", "table": table},
    )
    listed = await shards(kinesis_endpoint, stream)
    stolen, kept = listed[0], listed[1]
    async with running(config) as app:
        await wait_for(lambda: len(source_of(app).shards()) == 2, timeout=30)
        leases = await dynamodb_leases(moto_endpoint, table, "m", stream)
        # Another process takes the lease over (as it would after an expiry) behind this one's back.
        async with dynamodb_client(moto_endpoint) as client:
            await client.update_item(
                TableName=table,
                Key={"leaseGroup": {"S": f"m/{stream}"}, "shardId": {"S": stolen["ShardId"]}},
                UpdateExpression="SET leaseOwner = :intruder, leaseCounter = leaseCounter + :one",
                ExpressionAttributeValues={":intruder": {"S": "intruder"}, ":one": {"N": "1"}},
            )
        await wait_for(
            lambda: source_of(app).shards() == [kept["ShardId"]], timeout=10, message="the shard given up"
        )
        await wait_for(lambda: stolen["ShardId"] not in source_of(app).iterator_age())
        await put(
            kinesis_endpoint, stream, [("a", b"stolen")], hash_key=stolen["HashKeyRange"]["StartingHashKey"]
        )
        await put(
            kinesis_endpoint, stream, [("b", b"kept")], hash_key=kept["HashKeyRange"]["StartingHashKey"]
        )
        await wait_for(lambda: any(recorder.data_of(r) == b"kept" for r in handled(stream)), timeout=10)
        assert not any(recorder.data_of(r) == b"stolen" for r in handled(stream))
        # The intruder keeps the lease: this process neither took it back nor checkpointed it.
        after = await dynamodb_leases(moto_endpoint, table, "m", stream)
        assert after[stolen["ShardId"]]["owner"] == "intruder"
        assert after[stolen["ShardId"]]["checkpoint"] == leases[stolen["ShardId"]]["checkpoint"]


async def test_latest_reads_only_what_arrives_after_the_start_and_takes_an_arn(
    kinesis_endpoint: str, tmp_path: Path
) -> None:
    stream = unique_name("latest")
    await create_stream(kinesis_endpoint, stream, 2)
    await put(kinesis_endpoint, stream, [(f"k{i}", b"old") for i in range(50)])
    config = make_config(
        aws_connection(kinesis_endpoint),
        f"arn:aws:kinesis:us-east-1:000000000000:stream/{stream}",
        "kinesis_recorder:collect",
        checkpoints=sqlite_store(tmp_path),
        starting_position="LATEST",
    )
    async with running(config) as app:
        # Both shards have an iterator at their end once each has answered a GetRecords.
        await wait_for(lambda: len(source_of(app).iterator_age()) == 2, timeout=10)
        new = await put(kinesis_endpoint, stream, [(f"k{i}", b"new") for i in range(50)])
        await wait_for(lambda: len(handled(stream)) >= 50, timeout=10)
    seen = handled(stream)
    assert {recorder.data_of(r) for r in seen} == {b"new"}
    assert sorted(r["kinesis"]["sequenceNumber"] for r in seen) == sorted(s for _, s in new)


async def test_at_timestamp_starts_at_the_first_record_at_or_after_it(
    kinesis_endpoint: str, tmp_path: Path
) -> None:
    stream = unique_name("timestamp")
    await create_stream(kinesis_endpoint, stream, 1)
    await put(kinesis_endpoint, stream, [(f"k{i}", b"before") for i in range(20)])
    start = datetime.now(UTC)
    await wait_for(lambda: datetime.now(UTC) > start + timedelta(milliseconds=20))
    after = await put(kinesis_endpoint, stream, [(f"k{i}", b"after") for i in range(20)])
    config = make_config(
        aws_connection(kinesis_endpoint),
        stream,
        "kinesis_recorder:collect",
        checkpoints=sqlite_store(tmp_path),
        starting_position="AT_TIMESTAMP",
        starting_position_timestamp=start.isoformat(),
    )
    async with running(config):
        await wait_for(lambda: len(handled(stream)) >= 20, timeout=10)
        await wait_for(lambda: checkpoints(tmp_path, stream) == {after[-1][0]: after[-1][1]})
    assert [r["kinesis"]["sequenceNumber"] for r in handled(stream)] == [s for _, s in after]
