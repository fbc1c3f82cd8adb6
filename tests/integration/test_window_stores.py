"""The window store contract, the same for SQLite and for DynamoDB (on moto): a partition's open
window comes back as it was saved, a state too large for one DynamoDB item is split into parts and
read back whole, the parts of a replaced state are deleted, and mappings do not see each other's
windows."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from kinesis_helpers import dynamodb_client
from support import unique_name

from poller.config import Config, DynamoDBCheckpoints, SqliteCheckpoints
from poller.engine.windows import OpenWindow, Window
from poller.runtime.window_store import WindowStore, build_window_store
from poller.runtime.window_store_dynamodb import DynamoDBWindowStore

pytestmark = pytest.mark.kinesis

MakeStore = Callable[[str], WindowStore]


@pytest.fixture(params=["sqlite", "dynamodb"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Opens a store of the parametrised kind for a mapping's group, all of them on one file or table."""
    connections = {}
    settings: SqliteCheckpoints | DynamoDBCheckpoints
    if request.param == "sqlite":
        settings = SqliteCheckpoints(type="sqlite", path=str(tmp_path / "windows.db"))
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        connections = {"aws": {"type": "aws", "region": "us-east-1", "endpoint_url": endpoint}}
        settings = DynamoDBCheckpoints(type="dynamodb", connection="aws", table=unique_name("windows"))
    config = Config.model_validate({"connections": connections})
    opened: list[WindowStore] = []

    def make(group: str) -> WindowStore:
        store = build_window_store(settings, group, config)
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in opened:
            await store.close()


def large_state() -> dict[str, str]:
    """A state too large for one DynamoDB item: random bytes in base64 compress to about three
    quarters, some 700 KB, two parts."""
    return {"blob": base64.b64encode(os.urandom(700 * 1024)).decode()}


async def test_a_saved_window_comes_back_and_a_dropped_one_does_not(make_store: MakeStore) -> None:
    store = make_store("m/orders")
    await store.open()
    assert await store.load("orders-0") is None
    window = OpenWindow(
        Window(1_700_000_040.0, 1_700_000_070.0), {"count": 3, "keys": ["a", "b"]}, through=41
    )
    await store.save("orders-0", window)
    assert await store.load("orders-0") == window
    assert await store.load("orders-1") is None, "another partition has no window"

    later = OpenWindow(window.window, {"count": 4, "keys": ["a", "b", "c"]}, through=42)
    await store.save("orders-0", later)
    assert await store.load("orders-0") == later, "a save replaces the window"

    await store.drop("orders-0")
    assert await store.load("orders-0") is None


async def test_a_state_larger_than_an_item_is_read_back_whole(make_store: MakeStore) -> None:
    store = make_store("m/clicks")
    await store.open()
    window = OpenWindow(Window(0.0, 60.0), large_state(), through=7)
    await store.save("shardId-0", window)
    assert await store.load("shardId-0") == window

    small = OpenWindow(Window(0.0, 60.0), {"count": 1}, through=8)
    await store.save("shardId-0", small)
    assert await store.load("shardId-0") == small


async def test_mappings_sharing_a_file_or_table_keep_their_own_windows(make_store: MakeStore) -> None:
    first, second = make_store("m/one"), make_store("m/two")
    await first.open()
    await second.open()
    await first.save("p-0", OpenWindow(Window(0.0, 10.0), {"of": "one"}, through=1))
    assert await second.load("p-0") is None
    await second.save("p-0", OpenWindow(Window(0.0, 10.0), {"of": "two"}, through=2))
    loaded = await first.load("p-0")
    assert loaded is not None
    assert loaded.state == {"of": "one"}


@pytest.mark.parametrize("make_store", ["dynamodb"], indirect=True)
async def test_dynamodb_deletes_the_parts_of_a_state_it_replaced(
    make_store: MakeStore, moto_endpoint: str
) -> None:
    store = make_store("m/clicks")
    await store.open()
    await store.save("shardId-0", OpenWindow(Window(0.0, 60.0), large_state(), through=7))
    assert isinstance(store, DynamoDBWindowStore)
    table = store.table

    async def parts() -> list[str]:
        async with dynamodb_client(moto_endpoint) as client:
            items = (await client.scan(TableName=table))["Items"]
        return sorted(
            item["shardId"]["S"] for item in items if item["leaseGroup"]["S"].endswith("#window-parts")
        )

    assert len(await parts()) >= 2, "the large state went into parts"
    await store.save("shardId-0", OpenWindow(Window(0.0, 60.0), {"count": 1}, through=8))
    assert await parts() == [], "the replaced state's parts are gone"
