"""The lease store contract, the same for SQLite and for DynamoDB (on moto): every write that a
stale holder makes is refused, so a process that lost a lease can neither renew nor checkpoint it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kinesis_helpers import aws_connection, dynamodb_client
from support import unique_name

from poller.config import AwsConnection
from poller.errors import SourceError
from poller.sources.kinesis.leases import SHARD_END, TRIM_HORIZON, Lease, LeaseStore
from poller.sources.kinesis.leases.dynamodb import DynamoDBLeaseStore
from poller.sources.kinesis.leases.sqlite import SqliteLeaseStore

pytestmark = pytest.mark.kinesis


@pytest.fixture(params=["sqlite", "dynamodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LeaseStore]:
    opened: LeaseStore
    if request.param == "sqlite":
        opened = SqliteLeaseStore(str(tmp_path / "leases.db"), "m/stream", lease_duration=10)
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        connection = AwsConnection.model_validate(aws_connection("http://unused", endpoint))
        opened = DynamoDBLeaseStore(connection, unique_name("leases"), "m/stream", lease_duration=10)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_conditional_writes_refuse_a_stale_holder(store: LeaseStore) -> None:
    assert await store.create(Lease("shardId-1", ("shardId-0",), TRIM_HORIZON))
    assert not await store.create(Lease("shardId-1", (), "LATEST")), "an existing lease is kept"
    [fresh] = await store.list_leases()
    assert fresh == Lease("shardId-1", ("shardId-0",), TRIM_HORIZON, owner=None, counter=0)

    held = await store.take(fresh, "a")
    assert held is not None
    assert held.owner == "a"
    assert held.counter == 1
    assert await store.take(fresh, "b") is None, "taken on a counter that moved on"
    renewed = await store.renew(held)
    assert renewed is not None
    assert renewed.counter == 2
    assert await store.renew(held) is None, "a stale counter cannot renew"

    checkpointed = await store.checkpoint(renewed, "4959")
    assert checkpointed is not None
    assert checkpointed.checkpoint == "4959"
    assert checkpointed.owner == "a"

    # b takes the lease over (as after an expiry): a's writes are all refused from now on.
    stolen = await store.take(checkpointed, "b")
    assert stolen is not None
    assert stolen.owner == "b"
    assert stolen.checkpoint == "4959"
    assert await store.checkpoint(checkpointed, "5000") is None
    assert await store.renew(checkpointed) is None
    assert await store.free(checkpointed) is None
    [current] = await store.list_leases()
    assert current == stolen


async def test_graceful_handoff_and_release(store: LeaseStore) -> None:
    await store.create(Lease("shardId-1"))
    [fresh] = await store.list_leases()
    held = await store.take(fresh, "a")
    assert held is not None
    asked = await store.request_handoff(held, "b")
    assert asked is not None
    assert asked.pending_owner == "b"
    assert asked.counter == held.counter
    assert await store.request_handoff(held, "c") is None, "one pending owner at a time"
    # The owner keeps renewing (the request did not move the counter) and sees who asked.
    renewed = await store.renew(held)
    assert renewed is not None
    assert renewed.pending_owner == "b"
    handed = await store.hand_over(renewed)
    assert handed is not None
    assert handed.owner == "b"
    assert handed.pending_owner is None
    adopted = await store.take(handed, "b")
    assert adopted is not None
    assert adopted.owner == "b"
    released = await store.free(adopted)
    assert released is not None
    assert released.owner is None
    finished = await store.checkpoint(await _take(store, released, "c"), SHARD_END, free=True)
    assert finished is not None
    assert finished.finished
    assert finished.owner is None


async def _take(store: LeaseStore, lease: Lease, owner: str) -> Lease:
    taken = await store.take(lease, owner)
    assert taken is not None
    return taken


async def test_sqlite_file_is_used_by_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "leases.db"
    first = SqliteLeaseStore(str(path), "m/stream", lease_duration=10)
    await first.open()
    await first.create(Lease("shardId-1"))
    [lease] = await first.list_leases()
    assert await first.take(lease, "a") is not None
    await first.close()
    # Another process holds the file: opening it waits (a retriable error) instead of sharing it.
    descriptor = os.open(str(path) + ".lock", os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        blocked = SqliteLeaseStore(str(path), "m/stream", lease_duration=10)
        with pytest.raises(SourceError, match="in use by another poller process") as raised:
            await blocked.open()
        assert raised.value.retriable
    finally:
        os.close(descriptor)
    # Once it is free, the leases the previous process left behind are free too.
    second = SqliteLeaseStore(str(path), "m/stream", lease_duration=10)
    await second.open()
    try:
        [left] = await second.list_leases()
        assert left.owner is None
        assert left.counter == 2
    finally:
        await second.close()


async def test_dynamodb_table_is_created_once_and_checked(moto_endpoint: str) -> None:
    connection = AwsConnection.model_validate(aws_connection("http://unused", moto_endpoint))
    table = unique_name("leases")
    for _ in range(2):  # the second open finds the table
        store = DynamoDBLeaseStore(connection, table, "m/stream", lease_duration=10)
        await store.open()
        await store.close()
    other = unique_name("other")
    async with dynamodb_client(moto_endpoint) as client:
        await client.create_table(
            TableName=other,
            KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    wrong = DynamoDBLeaseStore(connection, other, "m/stream", lease_duration=10)
    with pytest.raises(SourceError, match="another key schema") as raised:
        await wrong.open()
    assert not raised.value.retriable
